"""Benchmark: the inversion solvers (Euler / DDIM, FireFlow, fixed-point) against their model calls, on held-out digits.

The EasyInv paper's reconstruction table (DDIM, fixed-point, ReNoise, EasyInv) on our own model: the shipped
test-bed UNet inverts held-out canvases (digits it never saw) at guidance 1 with each solver and step count,
and reconstructs them with the sampler that inverts each (FireFlow's own sampler for FireFlow, DDIM for the
others; InvEdit Reconstruct picks it). Prints a markdown table: PSNR, SSIM and MSE of the round trip, model
calls of the inversion and of the reconstruction, and seconds per image. The flow test-bed rows are to come
(issue 14, part 2).

    python benchmarks/solvers.py [--count 64] [--out benchmarks/results]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from comfy_headless import inversion_options  # noqa: E402
from reconstruction import SSIM_ENLARGEMENT, enlarge, run_heldout_benchmark  # noqa: E402

# (label, steps, inversion options), in the order of the table.
METHODS = [
    ("DDIM (Euler, reference rule)", 10, {}),
    ("DDIM (Euler, reference rule)", 20, {}),
    ("DDIM (Euler, reference rule)", 25, {}),
    ("DDIM (Euler, reference rule)", 50, {}),
    ("DDIM (Euler, reference rule)", 100, {}),
    ("DDIM (Euler, simple rule)", 50, {"timestep_rule": "simple"}),
    ("EasyInv SD1.x (input variant)", 50, {"easyinv": "SD1.x"}),
    ("FireFlow", 10, {"solver": "fireflow"}),
    ("FireFlow", 25, {"solver": "fireflow"}),
    ("FireFlow", 50, {"solver": "fireflow"}),
    ("fixed-point k=2", 10, {"solver": "fixed-point", "fixed_point_iterations": 2}),
    ("fixed-point k=2", 25, {"solver": "fixed-point", "fixed_point_iterations": 2}),
    ("fixed-point k=2", 50, {"solver": "fixed-point", "fixed_point_iterations": 2}),
    ("fixed-point k=3", 50, {"solver": "fixed-point", "fixed_point_iterations": 3}),
    ("fixed-point k=6", 50, {"solver": "fixed-point", "fixed_point_iterations": 6}),
]
COLUMNS = ["steps", "inversion calls", "reconstruction calls", "PSNR", f"SSIM x{SSIM_ENLARGEMENT}", "MSE",
           "s per image"]


def counting_clone(model, counter: list):
    """A clone of ``model`` that counts its guided model calls (one per call, whatever the batch)."""
    clone = model.clone()

    def wrapper(apply_model, args):
        counter[0] += 1
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone.set_model_unet_function_wrapper(wrapper)
    return clone


def measure(nodes_map, metrics, count: int, seed: int) -> dict:
    """Every solver on ``count`` held-out canvases; returns {row label: {column: value}}."""
    model, text_encoder = nodes_map["InvEditTestbedModelLoader"].execute(verify=True).result
    images, prompts = nodes_map["InvEditTestbedHeldOutDigits"].execute(count=count, seed=seed).result
    encode = nodes_map["InvEditTestbedTextEncode"]
    positive = encode.execute(text_encoder=text_encoder, text=prompts).result[0]
    negative = encode.execute(text_encoder=text_encoder, text="").result[0]
    latent = nodes_map["InvEditTestbedImageToLatent"].execute(image=images).result[0]
    source = images.movedim(-1, 1)
    calls = [0]
    counted = counting_clone(model, calls)
    rows = {}
    for label, steps, overrides in METHODS:
        start = time.perf_counter()
        _, record, _ = nodes_map["InvEditDDIMInversion"].execute(
            model=counted, positive=positive, negative=negative, latent=latent, steps=steps, inversion_cfg=1.0,
            scheduler="auto", clean_level="zero", **inversion_options(**overrides)).result
        inversion_calls, calls[0] = calls[0], 0
        rebuilt = nodes_map["InvEditReconstruct"].execute(model=counted, positive=positive, negative=negative,
                                                          inversion=record, cfg=1.0).result[0]
        seconds = time.perf_counter() - start
        result = nodes_map["InvEditTestbedLatentToImage"].execute(latent=rebuilt, scale=1).result[0].movedim(-1, 1)
        scores = metrics.reconstruction_scores(source, result)
        rows[f"{label}, {steps} steps"] = {
            "steps": steps, "inversion calls": inversion_calls, "reconstruction calls": calls[0],
            "PSNR": float(scores.psnr.mean()), "MSE": float(scores.mse.mean()),
            f"SSIM x{SSIM_ENLARGEMENT}": float(metrics.ssim(enlarge(source, SSIM_ENLARGEMENT),
                                                            enlarge(result, SSIM_ENLARGEMENT)).mean()),
            "s per image": seconds / count,
        }
        calls[0] = 0
    return rows


def markdown(rows: dict, count: int) -> str:
    lines = [f"Held-out digits (test-bed UNet): {count} canvases, inverted and reconstructed at guidance 1; model calls "
             "are guided calls for the whole batch.", "",
             "| method | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for label, row in rows.items():
        cells = [f"{row[column]:d}" if isinstance(row[column], int) else
                 f"{row[column]:.4f}" if abs(row[column]) < 1 else f"{row[column]:.2f}" for column in COLUMNS]
        lines.append(f"| {label.rsplit(', ', 1)[0]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    run_heldout_benchmark(__doc__.splitlines()[0], "solvers", 64, "held-out canvases", measure, markdown)


if __name__ == "__main__":
    main()
