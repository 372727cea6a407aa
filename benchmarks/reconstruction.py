"""Benchmark: reconstruction quality and latent normality of each inversion method on held-out digits.

Runs inside ComfyUI on the shipped test-bed model (digits the model never saw), 50 steps:
DDIM inversion (reference and simple timestep rule), EasyInv (both variants, SD1.x preset) and the
forward warm start (k = 1, 2, 4 of 50), each inverted at guidance 1 and reconstructed at guidance
1 and 7.5. Prints a markdown table and writes a plot:

- reconstruction MSE, PSNR and SSIM on [0, 1] images (SSIM on a x4 nearest-neighbour enlargement:
  the 11x11 SSIM window does not fit an 8x16 canvas), and the MSE split into plain and non-plain
  areas of the source ("There and Back Again" mask: mean gradient < 0.025);
- normality of the inverted latents (DDPM scale): top-20 patch correlation and KL(noise || latents),
  with Gaussian noise as the baseline row;
- wall time and model calls per image.

A second table runs EasyInv under the protocol of its paper's official SD1.4 evaluation code
(potato-kitty/EasyInv, ``utilsV14.py`` and ``by_referenceSDV1-4.ipynb``): the empty prompt as both
the prompt and the negative prompt at guidance 7.5 for the inversion and the reconstruction (so
guidance changes nothing: the conditional and unconditional predictions are the same), 50 steps,
the image read as the state at timestep 0 (``final_alpha_cumprod = alphas_cumprod[0]``:
``clean_level: lowest timestep``), the model queried at the step's target timestep (``next_step``:
the reference rule), the SD1.x preset (eta 0.5, window 0.05 + 0.2), with the model computing in
float16 (the paper's setting) and in float32 (its ablation); plain DDIM under the same protocol
beside it. Not matched: the official code replays with the pipeline's default scheduler (PLMS for
SD1.4, and it inverts along PNDM's timesteps, which repeat t = 961); here the replay is DDIM along
the inversion's own schedule, the exact inverse. The test-bed has no VAE (its latent is the canvas),
so the official code's VAE posterior mean has no counterpart.

    bash scripts/run-demo.sh --benchmark          # or, inside the env:
    python benchmarks/reconstruction.py [--count 64] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from comfy_headless import REPO_ROOT, boot_with_pack, inversion_options  # noqa: E402

STEPS = 50
SSIM_ENLARGEMENT = 4
GUIDANCES = (1.0, 7.5)
METHODS = {
    "DDIM, reference rule": {},
    "DDIM, simple rule": {"timestep_rule": "simple"},
    "EasyInv SD1.x, input variant": {"easyinv": "SD1.x"},
    "EasyInv SD1.x, output variant": {"easyinv": "SD1.x", "easyinv_variant": "output"},
    "warm start k=1": {"warm_start_steps": 1},
    "warm start k=2": {"warm_start_steps": 2},
    "warm start k=4": {"warm_start_steps": 4},
}
NOISE_ROW = "Gaussian noise (baseline)"
PAPER_GUIDANCE = 7.5
"""Guidance of the official EasyInv SD1.4 evaluation, for the inversion and the reconstruction."""
PAPER_CLEAN_LEVEL = "lowest timestep"
PAPER_METHODS = {
    "DDIM": {},
    "EasyInv SD1.x, input variant": {"easyinv": "SD1.x"},
    "EasyInv SD1.x, output variant": {"easyinv": "SD1.x", "easyinv_variant": "output"},
}
PAPER_DTYPES = {"float16": torch.float16, "float32": torch.float32}
PAPER_COUNT = 8
"""Canvases of the paper-protocol rows (the first of the benchmark's): float16 convolutions are about
8x slower than float32 on a CPU."""
PAPER_PREFIX = "paper protocol"


def enlarge(images: torch.Tensor, factor: int) -> torch.Tensor:
    return images.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def measure(nodes_map, metrics, count: int, seed: int) -> dict:
    """Run every method on ``count`` held-out canvases; returns {method: {metric: value}}."""
    loader, encode = nodes_map["InvEditTestbedModelLoader"], nodes_map["InvEditTestbedTextEncode"]
    digits, to_latent = nodes_map["InvEditTestbedHeldOutDigits"], nodes_map["InvEditTestbedImageToLatent"]
    to_image = nodes_map["InvEditTestbedLatentToImage"]
    inversion, reconstruct = nodes_map["InvEditDDIMInversion"], nodes_map["InvEditReconstruct"]
    model, text_encoder = loader.execute(verify=True).result
    images, prompts = digits.execute(count=count, seed=seed).result
    positive = encode.execute(text_encoder=text_encoder, text=prompts).result[0]
    negative = encode.execute(text_encoder=text_encoder, text="").result[0]
    latent = to_latent.execute(image=images).result[0]
    source = images.movedim(-1, 1)
    plain = metrics.plain_mask(source)
    rows: dict[str, dict] = {}
    for method, overrides in METHODS.items():
        start = time.perf_counter()
        _, record, _ = inversion.execute(model=model, positive=positive, negative=negative, latent=latent,
                                         steps=STEPS, inversion_cfg=1.0, scheduler="ddim_uniform",
                                         clean_level="zero", **inversion_options(warm_start_seed=1, **overrides)).result
        invert_seconds = time.perf_counter() - start
        trajectory = record.trajectory
        noise_ddpm = trajectory.noise / (1 + trajectory.sigmas[-1] ** 2).sqrt()
        row = {"model calls per image": trajectory.model_calls,
               "inversion s per image": invert_seconds / count,
               "patch correlation": metrics.patch_correlation(noise_ddpm),
               "KL": metrics.kl_to_noise(noise_ddpm, torch.randn(noise_ddpm.shape, generator=torch.Generator().manual_seed(seed)))}
        for cfg in GUIDANCES:
            start = time.perf_counter()
            rebuilt = reconstruct.execute(model=model, positive=positive, negative=negative, inversion=record,
                                          cfg=cfg).result[0]
            row[f"reconstruction s per image @{cfg:g}"] = (time.perf_counter() - start) / count
            result = to_image.execute(latent=rebuilt, scale=1).result[0].movedim(-1, 1)
            scores = metrics.reconstruction_scores(source, result)
            row[f"MSE @{cfg:g}"] = float(scores.mse.mean())
            row[f"PSNR @{cfg:g}"] = float(scores.psnr.mean())
            row[f"SSIM x{SSIM_ENLARGEMENT} @{cfg:g}"] = float(metrics.ssim(enlarge(source, SSIM_ENLARGEMENT),
                                                                          enlarge(result, SSIM_ENLARGEMENT)).mean())
            row[f"MSE plain @{cfg:g}"] = float(metrics.mse(source, result, plain).mean())
            row[f"MSE non-plain @{cfg:g}"] = float(metrics.mse(source, result, ~plain).mean())
        rows[method] = row
    paper_count = min(count, PAPER_COUNT)
    rows.update(measure_paper_protocol(nodes_map, metrics, model, text_encoder,
                                       {"samples": latent["samples"][:paper_count]}, source[:paper_count]))
    generator = torch.Generator().manual_seed(seed + 1)
    gaussian = torch.randn(noise_ddpm.shape, generator=generator, dtype=torch.float64)
    rows[NOISE_ROW] = {"patch correlation": metrics.patch_correlation(gaussian),
                       "KL": metrics.kl_to_noise(gaussian, torch.randn(gaussian.shape, generator=generator,
                                                                       dtype=torch.float64))}
    return rows


def measure_paper_protocol(nodes_map, metrics, model, text_encoder, latent: dict, source: torch.Tensor) -> dict:
    """EasyInv and DDIM under the official SD1.4 evaluation's protocol (module docstring), per dtype.

    Returns ``{"paper protocol, <dtype>: <method>": {metric: value}}`` with the reconstruction's PSNR,
    SSIM and MSE, the patch correlation of the inverted latents and the time per image.
    """
    encode, to_image = nodes_map["InvEditTestbedTextEncode"], nodes_map["InvEditTestbedLatentToImage"]
    inversion, reconstruct = nodes_map["InvEditDDIMInversion"], nodes_map["InvEditReconstruct"]
    empty = encode.execute(text_encoder=text_encoder, text="").result[0]
    rows: dict[str, dict] = {}
    for dtype_name, dtype in PAPER_DTYPES.items():
        computing = model.clone()
        computing.set_model_compute_dtype(dtype)
        for method, overrides in PAPER_METHODS.items():
            start = time.perf_counter()
            _, record, _ = inversion.execute(model=computing, positive=empty, negative=empty, latent=latent,
                                             steps=STEPS, inversion_cfg=PAPER_GUIDANCE, scheduler="ddim_uniform",
                                             clean_level=PAPER_CLEAN_LEVEL, **inversion_options(**overrides)).result
            rebuilt = reconstruct.execute(model=computing, positive=empty, negative=empty, inversion=record,
                                          cfg=PAPER_GUIDANCE).result[0]
            seconds = time.perf_counter() - start
            result = to_image.execute(latent=rebuilt, scale=1).result[0].movedim(-1, 1)
            scores = metrics.reconstruction_scores(source, result)
            trajectory = record.trajectory
            noise_ddpm = trajectory.noise.double() / (1 + trajectory.sigmas[-1].double() ** 2).sqrt()
            count = source.shape[0]
            rows[f"{PAPER_PREFIX}, {dtype_name}: {method}"] = {
                "PSNR": float(scores.psnr.mean()), "MSE": float(scores.mse.mean()),
                f"SSIM x{SSIM_ENLARGEMENT}": float(metrics.ssim(enlarge(source, SSIM_ENLARGEMENT),
                                                                enlarge(result, SSIM_ENLARGEMENT)).mean()),
                "patch correlation": metrics.patch_correlation(noise_ddpm),
                "inversion + reconstruction s per image": seconds / count,
            }
    return rows


def is_paper_row(method: str) -> bool:
    return method.startswith(PAPER_PREFIX)


def markdown_table(rows: dict, columns: list[str]) -> list[str]:
    """Markdown lines of a table with one line per row (a method) and the given columns."""
    lines = ["| method | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for method, row in rows.items():
        cells = []
        for column in columns:
            value = row.get(column)
            cells.append("" if value is None else (f"{value:d}" if isinstance(value, int) else
                                                    f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def markdown(rows: dict, count: int) -> str:
    columns = ["PSNR @1", "PSNR @7.5", f"SSIM x{SSIM_ENLARGEMENT} @1", f"SSIM x{SSIM_ENLARGEMENT} @7.5", "MSE @1",
               "MSE @7.5", "MSE plain @1", "MSE non-plain @1", "MSE plain @7.5", "MSE non-plain @7.5",
               "patch correlation", "KL", "model calls per image", "inversion s per image"]
    today = {method: row for method, row in rows.items() if not is_paper_row(method)}
    paper = {method: row for method, row in rows.items() if is_paper_row(method)}
    lines = [f"Held-out digits: {count} canvases, {STEPS} steps, inverted at guidance 1, reconstructed at 1 and 7.5.",
             "", *markdown_table(today, columns)]
    if paper:
        paper_columns = ["PSNR", f"SSIM x{SSIM_ENLARGEMENT}", "MSE", "patch correlation",
                         "inversion + reconstruction s per image"]
        lines += ["", f"EasyInv's paper protocol (official SD1.4 evaluation code): the first {min(count, PAPER_COUNT)} "
                  f"of these canvases, {STEPS} "
                  f"steps, empty prompt as prompt and negative prompt, inverted and reconstructed at guidance "
                  f"{PAPER_GUIDANCE:g}, clean level at timestep 0.", "", *markdown_table(paper, paper_columns)]
    return "\n".join(lines)


def plot(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [name for name in rows if name != NOISE_ROW and not is_paper_row(name)]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    positions = torch.arange(len(methods)).numpy()
    for offset, cfg in zip((-0.2, 0.2), GUIDANCES):
        left.bar(positions + offset, [rows[m][f"PSNR @{cfg:g}"] for m in methods], width=0.4,
                 label=f"reconstructed at guidance {cfg:g}")
    left.set_xticks(positions, methods, rotation=30, ha="right", fontsize=8)
    left.set_ylabel("PSNR (dB), higher is better")
    left.legend(fontsize=8)
    left.set_title("Reconstruction of held-out digits")
    right.bar(positions, [rows[m]["patch correlation"] for m in methods], color="tab:green")
    right.axhline(rows[NOISE_ROW]["patch correlation"], color="black", linestyle="--", label="Gaussian noise")
    right.set_xticks(positions, methods, rotation=30, ha="right", fontsize=8)
    right.set_ylabel("top-20 patch correlation, lower is more noise-like")
    right.legend(fontsize=8)
    right.set_title("Normality of the inverted latents")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def heldout_arguments(description: str, default_count: int, count_help: str) -> argparse.ArgumentParser:
    """The command line every held-out-digits benchmark shares: ``--count``, ``--seed``, ``--out``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--count", type=int, default=default_count, help=count_help)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results")
    return parser


def run_heldout(args: argparse.Namespace, name: str, measure_rows, render) -> tuple[dict, Path]:
    """Boot, measure, print, write ``name``.md / .json under ``args.out``; returns the rows and the folder.

    ``measure_rows(nodes_map, metrics, count, seed) -> rows`` and ``render(rows, count) -> markdown``.
    """
    nodes = boot_with_pack("invedit-bench-")
    from invedit.inversion import metrics
    with torch.inference_mode():
        rows = measure_rows(nodes.NODE_CLASS_MAPPINGS, metrics, args.count, args.seed)
    table = render(rows, args.count)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.md").write_text(table + "\n")
    (args.out / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    return rows, args.out


def run_heldout_benchmark(description: str, name: str, default_count: int, count_help: str, measure_rows,
                          render) -> tuple[dict, Path]:
    """The command line of a held-out-digits benchmark: boot, measure, print, write ``name``.md / .json.

    ``measure_rows(nodes_map, metrics, count, seed) -> rows`` and ``render(rows, count) -> markdown``.
    Returns the rows and the output folder.
    """
    args = heldout_arguments(description, default_count, count_help).parse_args()
    return run_heldout(args, name, measure_rows, render)


def main() -> None:
    rows, out = run_heldout_benchmark(__doc__.splitlines()[0], "reconstruction", 64,
                                      "held-out canvases (>= 8 for the normality metrics)", measure, markdown)
    plot(rows, out / "reconstruction.png")
    print(f"\nPlot written to {out / 'reconstruction.png'}")


if __name__ == "__main__":
    main()
