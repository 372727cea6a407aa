"""The README's Prompt-to-Prompt pictures, made on the shipped test-bed model inside ComfyUI.

    source scripts/env.sh && PYTHONSAFEPATH=1 python scripts/p2p_figure.py [--count 4] [--seed 3]

For each held-out canvas ("a photo of LEFT and RIGHT", digits the model never saw) it inverts the
image (DDIM at guidance 1, then negative-prompt inversion for guidance 7.5, as the test-bed example
workflows do), swaps the right digit's word for the digit 5 further on and writes one row of
``docs/images/p2p_testbed.png``:

    image | source row (reconstruction) | plain regeneration | P2P word swap | P2P + LocalBlend

"plain regeneration" samples the edited prompt from the same inverted noise with no injection.
It also writes ``docs/images/p2p_word_maps.png``: the word maps of the first canvas's edit
(InvEdit P2P Attention Maps). Every image comes from the pack's nodes, run as ComfyUI runs them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_headless import REPO_ROOT, boot_with_pack, inversion_options  # noqa: E402

STEPS = 50
CFG = 7.5
SWAP_OFFSET = 5  # the right digit d becomes (d + 5) % 10, as in the tests
TESTBED_BLEND_DOWNSAMPLE = 2  # the test-bed's word-carrying layers are half the 8x16 latent
PIXEL_SCALE = 8  # nearest-neighbour upscaling of the 28x56 canvases
GAP = 4
WHITE = 255
COLUMNS = ("image", "source row", "plain regeneration", "P2P word swap", "P2P + LocalBlend")


def swap_right_digit(prompt: str) -> tuple[str, str, str]:
    """``(edited prompt, old word, new word)`` with the right digit's word swapped."""
    from invedit.testbed import vocabulary

    position = vocabulary.RIGHT_WORD_POSITION
    edited = vocabulary.shift_digit_word(prompt, position, SWAP_OFFSET)
    return edited, prompt.split()[position], edited.split()[position]


def invert(node, model, encode, canvas, prompt):
    """Negative-prompt INVERSION of one canvas ``[1, C, H, W]`` (DDIM at guidance 1 first)."""
    positive, negative = encode(prompt), encode("")
    _, record, _ = node["InvEditDDIMInversion"].execute(
        model=model, positive=positive, negative=negative, latent={"samples": canvas}, steps=STEPS, inversion_cfg=1.0,
        scheduler="ddim_uniform", clean_level="zero", **inversion_options()).result
    return node["InvEditNegativePromptInversion"].execute(inversion=record, empty_prompt_weight=0.0).result[0]


def p2p(node, model, text_encoder, record, prompt, edited, blend_words=""):
    """``(source row, edited row, maps)`` of a word swap with the edit node's defaults."""
    edit = node["InvEditP2PEdit"].execute(
        text_encoder=text_encoder, source_prompt=prompt, edited_prompts=edited, mode="word swap", cross_replace=0.8,
        self_replace=0.5, self_max_pixels=1024, word_windows="", reweight="", blend_words=blend_words,
        blend_start=0.2, blend_threshold=0.3, blend_layer_downsample=TESTBED_BLEND_DOWNSAMPLE).result[0]
    source, edited_latent, maps = node["InvEditP2PSample"].execute(model=model, inversion=record, edit=edit, cfg=CFG,
                                                                   map_budget_mib=64).result
    return source["samples"], edited_latent["samples"], maps


def canvas_row(node, model, text_encoder, encode, canvas, prompt):
    """The five images of one canvas (latent canvases ``[1, 1, H, W]`` in [-1, 1]) and its word maps."""
    record = invert(node, model, encode, canvas, prompt)
    edited, old, new = swap_right_digit(prompt)
    plain = node["InvEditReconstruct"].execute(model=model, positive=encode(edited), inversion=record,
                                              cfg=CFG).result[0]["samples"]
    source_row, swapped, maps = p2p(node, model, text_encoder, record, prompt, edited)
    _, blended, _ = p2p(node, model, text_encoder, record, prompt, edited, blend_words=f"{old}; {new}")
    return [canvas, source_row, plain, swapped, blended], maps, edited


def to_pixels(node, latent) -> np.ndarray:
    image = node["InvEditTestbedLatentToImage"].execute(latent={"samples": latent}, scale=PIXEL_SCALE).result[0]
    return np.asarray(image[0].clamp(0, 1).numpy() * WHITE, dtype=np.uint8)


def grid(rows: list[list[np.ndarray]]) -> np.ndarray:
    """Tiles ``[H, W, 3]`` joined with white gaps, row by row."""
    def join(tiles, axis):
        gap_shape = list(tiles[0].shape)
        gap_shape[axis] = GAP
        gap = np.full(gap_shape, WHITE, dtype=np.uint8)
        return np.concatenate([piece for tile in tiles for piece in (tile, gap)][:-1], axis=axis)

    return join([join(row, axis=1) for row in rows], axis=0)


@dataclass
class FigureInputs:
    """What a test-bed figure works on: its arguments, the booted nodes, a test-bed model and held-out canvases."""

    args: argparse.Namespace
    node: dict
    model: Any
    text_encoder: Any
    canvases: torch.Tensor  # [count, C, H, W]
    prompts: list[str]

    def encode(self, text: str) -> list:
        """CONDITIONING of ``text`` through the test-bed's text encoder."""
        return self.node["InvEditTestbedTextEncode"].execute(text_encoder=self.text_encoder, text=text).result[0]


def figure_inputs(doc: str, loader: str) -> FigureInputs:
    """Read ``--count`` / ``--seed`` / ``--out``, boot ComfyUI with the pack (one thread) and load the test-bed
    model of node ``loader`` and the held-out canvases (in inference mode)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--count", type=int, default=4, help="held-out canvases (one row each)")
    parser.add_argument("--seed", type=int, default=3, help="which held-out canvases")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    node = boot_with_pack("invedit-figure-").NODE_CLASS_MAPPINGS
    from invedit.testbed import data

    with torch.inference_mode():
        model, text_encoder = node[loader].execute(verify=True).result
        canvases, prompts, _ = data.heldout_canvases(args.count, seed=args.seed)
    return FigureInputs(args, node, model, text_encoder, canvases, prompts)


def main() -> None:
    from PIL import Image

    inputs = figure_inputs(__doc__, "InvEditTestbedModelLoader")
    with torch.inference_mode():
        node, model, text_encoder, encode, canvases = (inputs.node, inputs.model, inputs.text_encoder, inputs.encode,
                                                       inputs.canvases)
        rows, first_maps = [], None
        for index, prompt in enumerate(inputs.prompts):
            latents, maps, edited = canvas_row(node, model, text_encoder, encode, canvases[index:index + 1], prompt)
            rows.append([to_pixels(node, latent) for latent in latents])
            print(f"{prompt!r} -> {edited!r}")
            first_maps = first_maps or maps
        word_maps = node["InvEditP2PAttentionMaps"].execute(maps=first_maps, layer_downsample=TESTBED_BLEND_DOWNSAMPLE,
                                                           cell_height=96, labels=True).result[0]
    args = inputs.args
    args.out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid(rows)).save(args.out / "p2p_testbed.png", optimize=True)
    Image.fromarray(np.asarray(word_maps[0].numpy() * WHITE, dtype=np.uint8)).save(args.out / "p2p_word_maps.png",
                                                                                      optimize=True)
    print(f"Columns: {', '.join(COLUMNS)}. Written to {args.out}/p2p_testbed.png and p2p_word_maps.png")


if __name__ == "__main__":
    main()
