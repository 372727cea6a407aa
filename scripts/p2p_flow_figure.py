"""The README's joint-attention Prompt-to-Prompt picture, made on the flow test-bed inside ComfyUI.

    source scripts/env.sh && PYTHONSAFEPATH=1 python scripts/p2p_flow_figure.py [--count 4] [--seed 3]

For each held-out canvas ("a photo of LEFT and RIGHT") it Euler-inverts the image with the flow
test-bed (25 steps, guidance 1), swaps the right digit's word for the digit 5 further on and writes
one row of ``docs/images/p2p_flow_testbed.png``:

    image | source row (reconstruction) | plain regeneration | P2P word swap | P2P + mask on the right digit

at cfg 2 with the P2P Edit node's defaults (layout rule "source image q, k" over the first half of
the steps). Every image comes from the pack's nodes, run as ComfyUI runs them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_headless import inversion_options  # noqa: E402
from p2p_figure import figure_inputs, grid, swap_right_digit, to_pixels  # noqa: E402

STEPS = 25
CFG = 2.0
COLUMNS = ("image", "source row", "plain regeneration", "P2P word swap", "P2P + mask on the right digit")


def right_digit_mask():
    from invedit.testbed import data

    mask = torch.zeros(1, data.CANVAS_HEIGHT, data.CANVAS_WIDTH)
    mask[..., data.DIGIT_SIZE:] = 1.0
    return mask


def canvas_row(node, model, text_encoder, encode, canvas, prompt):
    """The five latent canvases of one held-out canvas."""
    _, record, _ = node["InvEditDDIMInversion"].execute(
        model=model, positive=encode(prompt), negative=encode(""), latent={"samples": canvas}, steps=STEPS,
        inversion_cfg=1.0, scheduler="auto", clean_level="zero", **inversion_options()).result
    edited, _, _ = swap_right_digit(prompt)
    plain = node["InvEditReconstruct"].execute(model=model, positive=encode(edited), inversion=record, cfg=CFG,
                                              negative=encode("")).result[0]["samples"]
    defaults = {widget.id: widget.default for widget in node["InvEditP2PEdit"].GET_SCHEMA().inputs
                if getattr(widget, "default", None) is not None}
    edit = node["InvEditP2PEdit"].execute(**{**defaults, "text_encoder": text_encoder, "source_prompt": prompt,
                                             "edited_prompts": edited}).result[0]

    def sample(mask=None):
        return node["InvEditP2PSample"].execute(model=model, inversion=record, edit=edit, cfg=CFG, map_budget_mib=0,
                                                negative=encode(""), mask=mask, mask_feather=1).result

    source_row, swapped, _ = sample()
    _, masked, _ = sample(right_digit_mask())
    return [canvas, source_row["samples"], plain, swapped["samples"], masked["samples"]], edited


def main() -> None:
    from PIL import Image

    inputs = figure_inputs(__doc__, "InvEditTestbedFlowModelLoader")
    with torch.inference_mode():
        node, model, text_encoder, encode, canvases = (inputs.node, inputs.model, inputs.text_encoder, inputs.encode,
                                                       inputs.canvases)
        rows = []
        for index, prompt in enumerate(inputs.prompts):
            latents, edited = canvas_row(node, model, text_encoder, encode, canvases[index:index + 1], prompt)
            rows.append([to_pixels(node, latent) for latent in latents])
            print(f"{prompt!r} -> {edited!r}")
    args = inputs.args
    args.out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid(rows)).save(args.out / "p2p_flow_testbed.png", optimize=True)
    print(f"Columns: {', '.join(COLUMNS)}. Written to {args.out}/p2p_flow_testbed.png")


if __name__ == "__main__":
    main()
