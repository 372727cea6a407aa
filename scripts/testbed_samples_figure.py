"""The README's sample grids of both test-bed models, drawn inside ComfyUI with its stock KSampler.

    source scripts/env.sh && PYTHONSAFEPATH=1 python scripts/testbed_samples_figure.py

For every prompt "a photo of LEFT and RIGHT" (row: LEFT, column: RIGHT) one sample from the same
seed, with each model's own sampler and scheduler:

* ``docs/images/testbed_unet_samples.png``: the digits UNet, ddim / ddim_uniform, 50 steps, cfg 4;
* ``docs/images/testbed_flow_samples.png``: the flow transformer, euler / simple, 25 steps, cfg 2.

It prints how many halves the test-bed classifier reads as the named digit.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_headless import REPO_ROOT, boot_with_pack  # noqa: E402

PIXEL_SCALE = 5
GAP = 3
WHITE = 255
GAP_COLOUR = (70, 110, 170)  # blue-grey: tiles stay apart where white strokes touch the border
MODELS = {
    # name: (loader node, sampler, scheduler, steps, cfg)
    "unet": ("InvEditTestbedModelLoader", "ddim", "ddim_uniform", 50, 4.0),
    "flow": ("InvEditTestbedFlowModelLoader", "euler", "simple", 25, 2.0),
}


def sample_grid(node, loader: str, sampler: str, scheduler: str, steps: int, cfg: float, seed: int):
    """``(canvases [100, 1, 8, 16], pairs [100, 2])``: one KSampler sample per prompt pair."""
    import nodes

    from invedit.testbed import data, vocabulary

    pairs = torch.tensor([(left, right) for left in range(10) for right in range(10)])
    prompts = [vocabulary.prompt_for(int(left), int(right)) for left, right in pairs]
    model, text_encoder = node[loader].execute(verify=True).result
    encode = node["InvEditTestbedTextEncode"]
    positive = encode.execute(text_encoder=text_encoder, text="\n".join(prompts)).result[0]
    negative = encode.execute(text_encoder=text_encoder, text="").result[0]
    latent = {"samples": torch.zeros(len(prompts), *data.CANVAS_SHAPE)}
    samples = nodes.NODE_CLASS_MAPPINGS["KSampler"]().sample(model, seed, steps, cfg, sampler, scheduler, positive,
                                                            negative, latent, 1.0)[0]["samples"]
    return samples, pairs


def grid_image(canvases: torch.Tensor) -> np.ndarray:
    """10 x 10 canvases ``[100, 1, 8, 16]`` -> one RGB picture ``[H, W, 3]``, tiles apart by coloured gaps."""
    tiles = ((canvases[:, 0].clamp(-1, 1) + 1) / 2 * WHITE).round().to(torch.uint8).numpy()
    tiles = np.repeat(np.repeat(tiles, PIXEL_SCALE, axis=1), PIXEL_SCALE, axis=2)[..., None].repeat(3, axis=-1)
    height, width = tiles.shape[1:3]
    picture = np.empty((10 * height + 9 * GAP, 10 * width + 9 * GAP, 3), dtype=np.uint8)
    picture[:] = GAP_COLOUR
    for index, tile in enumerate(tiles):
        row, column = divmod(index, 10)
        picture[row * (height + GAP):row * (height + GAP) + height, column * (width + GAP):column * (width + GAP) + width] = tile
    return picture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    node = boot_with_pack("invedit-figure-").NODE_CLASS_MAPPINGS
    from PIL import Image

    from invedit.testbed.classifier import training_split_classifier

    args.out.mkdir(parents=True, exist_ok=True)
    for name, (loader, sampler, scheduler, steps, cfg) in MODELS.items():
        with torch.inference_mode():
            samples, pairs = sample_grid(node, loader, sampler, scheduler, steps, cfg, args.seed)
        agreement = float((training_split_classifier().predict_canvases(samples) == pairs).float().mean())
        path = args.out / f"testbed_{name}_samples.png"
        Image.fromarray(grid_image(samples)).save(path, optimize=True)
        print(f"{name}: {sampler} / {scheduler}, {steps} steps, cfg {cfg:g}: {agreement:.1%} of the halves read as "
              f"the named digit; written to {path}")


if __name__ == "__main__":
    main()
