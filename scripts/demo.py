"""InvEdit's headless demo: invert real images inside ComfyUI and reconstruct them.

    bash scripts/run-demo.sh                          # the shipped test-bed model, held-out digits
    bash scripts/run-demo.sh --checkpoint sd15.safetensors --image photo.png --prompt "a cat"

With no arguments it loads the shipped test-bed model (no download), inverts held-out handwritten
digits the model never saw, reconstructs them with plain DDIM inversion, EasyInv and the forward
warm start at guidance 1 and 7.5, writes an image grid and prints PSNR and SSIM per method.
With a Stable Diffusion checkpoint and an image it runs the same graph on that photo through
ComfyUI's own CheckpointLoaderSimple, CLIPTextEncode, VAEEncode and VAEDecode.

Every step is a ComfyUI node run by ComfyUI's prompt executor, exactly as in the UI.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_headless import REPO_ROOT, boot_comfyui, comfyui_path_from_env, inversion_options, load_pack  # noqa: E402

METHODS = {
    "DDIM inversion": {},
    "EasyInv (SD1.x)": {"easyinv": "SD1.x"},
    "warm start k=2": {"warm_start_steps": 2},
}
GUIDANCES = (1.0, 7.5)
GRID_SCALE_TESTBED = 12
GRID_GAP = 4


def build_graph(graph, loaded, image, positive, negative, encode, decode, steps: int):
    """Source image -> latent -> (inversion -> reconstruction -> image) per method and guidance."""
    latent = encode(image)
    for method, overrides in METHODS.items():
        inversion = graph.node("InvEditDDIMInversion", model=loaded, positive=positive, negative=negative,
                               latent=latent, steps=steps, inversion_cfg=1.0, scheduler="ddim_uniform",
                               clean_level="zero", distilled_guidance=1.0,
                               **inversion_options(warm_start_seed=1, **overrides))
        for cfg in GUIDANCES:
            rebuilt = graph.node("InvEditReconstruct", model=loaded, positive=positive, negative=negative,
                                 inversion=inversion.out(1), cfg=cfg)
            result = decode(rebuilt)
            graph.capture(f"{method}|{cfg}", result)
            error = graph.node("InvEditReconstructionError", reference=image, result=result, heatmap_gain=4.0)
            graph.capture(f"{method}|{cfg}|psnr", error.out(2))
            graph.capture(f"{method}|{cfg}|ssim", error.out(3))
    graph.capture("source", image)


def testbed_graph(graph, count: int, seed: int, steps: int):
    loader = graph.node("InvEditTestbedModelLoader", verify=True)
    digits = graph.node("InvEditTestbedHeldOutDigits", count=count, seed=seed)
    positive = graph.node("InvEditTestbedTextEncode", text_encoder=loader.out(1), text=digits.out(1))
    negative = graph.node("InvEditTestbedTextEncode", text_encoder=loader.out(1), text="")
    graph.capture("prompts", digits.out(1))
    build_graph(graph, loader.out(0), digits.out(0), positive, negative,
                lambda image: graph.node("InvEditTestbedImageToLatent", image=image),
                lambda latent: graph.node("InvEditTestbedLatentToImage", latent=latent, scale=1), steps)


def checkpoint_graph(graph, checkpoint: str, image_name: str, prompt: str, steps: int):
    loader = graph.node("CheckpointLoaderSimple", ckpt_name=checkpoint)
    image = graph.node("LoadImage", image=image_name)
    positive = graph.node("CLIPTextEncode", clip=loader.out(1), text=prompt)
    negative = graph.node("CLIPTextEncode", clip=loader.out(1), text="")
    graph.capture("prompts", graph.node("PrimitiveString", value=prompt))
    build_graph(graph, loader.out(0), image.out(0), positive, negative,
                lambda pixels: graph.node("VAEEncode", pixels=pixels, vae=loader.out(2)),
                lambda latent: graph.node("VAEDecode", samples=latent, vae=loader.out(2)), steps)


def save_grid(result, path: Path, scale: int) -> None:
    """Rows: images; columns: source, then each method at each guidance."""
    from PIL import Image

    columns = [result["source"]] + [result[f"{method}|{cfg}"] for method in METHODS for cfg in GUIDANCES]
    rows = []
    for index in range(columns[0].shape[0]):
        tiles = [np.asarray(column[index].clamp(0, 1).numpy() * 255, dtype=np.uint8) for column in columns]
        tiles = [np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1) for tile in tiles]
        gap = np.full((tiles[0].shape[0], GRID_GAP, 3), 255, dtype=np.uint8)
        rows.append(np.concatenate([piece for tile in tiles for piece in (tile, gap)][:-1], axis=1))
    gap = np.full((GRID_GAP, rows[0].shape[1], 3), 255, dtype=np.uint8)
    grid = np.concatenate([piece for row in rows for piece in (row, gap)][:-1], axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def report(result) -> str:
    lines = ["| method | guidance | PSNR dB | SSIM |", "|---|---|---|---|"]
    for method in METHODS:
        for cfg in GUIDANCES:
            psnr, ssim = result[f"{method}|{cfg}|psnr"], result[f"{method}|{cfg}|ssim"]
            ssim_text = "n/a" if ssim != ssim else f"{ssim:.3f}"  # NaN: image smaller than the SSIM window
            lines.append(f"| {method} | {cfg:g} | {psnr:.2f} | {ssim_text} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="InvEdit headless demo")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "demo", help="output folder")
    parser.add_argument("--count", type=int, default=8, help="held-out digit canvases to invert")
    parser.add_argument("--seed", type=int, default=0, help="which held-out canvases")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--checkpoint", type=Path, help="a Stable Diffusion checkpoint (.safetensors)")
    parser.add_argument("--image", type=Path, help="the photo to invert (with --checkpoint)")
    parser.add_argument("--prompt", default="", help="what the photo shows (with --checkpoint)")
    args = parser.parse_args()
    if (args.checkpoint is None) != (args.image is None):
        parser.error("--checkpoint and --image go together")

    base_dir = Path(tempfile.mkdtemp(prefix="invedit-demo-"))
    nodes = boot_comfyui(comfyui_path_from_env(), base_dir)
    if not load_pack(nodes):
        raise SystemExit("ComfyUI could not load InvEdit; see the log above.")
    import comfy_graph
    import folder_paths

    comfy_graph.register_capture_node(nodes)
    graph = comfy_graph.Graph()
    if args.checkpoint is None:
        testbed_graph(graph, args.count, args.seed, args.steps)
        scale = GRID_SCALE_TESTBED
    else:
        folder_paths.add_model_folder_path("checkpoints", str(args.checkpoint.resolve().parent))
        shutil.copy(args.image, Path(folder_paths.get_input_directory()) / args.image.name)
        checkpoint_graph(graph, args.checkpoint.name, args.image.name, args.prompt, args.steps)
        scale = 1
    result = comfy_graph.run_prompt(graph)
    grid_path = args.out / "reconstructions.png"
    save_grid(result, grid_path, scale)
    columns = ", ".join(["source"] + [f"{method} @ cfg {cfg:g}" for method in METHODS for cfg in GUIDANCES])
    print(f"\nPrompts:\n{result['prompts']}\n")
    print(report(result))
    print(f"\nGrid written to {grid_path} (columns: {columns}).")
    shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
