"""Benchmark: the inversion solvers (Euler / DDIM, FireFlow, fixed-point) against their model calls, on held-out digits.

The EasyInv paper's reconstruction table (DDIM, fixed-point, ReNoise, EasyInv) on our own models. ``--family unet``:
the shipped test-bed UNet inverts held-out canvases (digits it never saw) at guidance 1 with each solver and step
count. ``--family flow``: the flow test-bed (a tiny Flux) does the same at guidance 1 and at its usual CFG 2
(inverted and reconstructed at the same guidance), with EasyInv, the forward warm start and direct inversion beside
the solvers. Each inversion is reconstructed with the sampler that inverts it (FireFlow's own sampler for FireFlow,
DDIM / Euler for the others; InvEdit Reconstruct picks it). Prints a markdown table: PSNR, SSIM and MSE of the round
trip, model calls of the inversion and of the reconstruction, and seconds per image; writes ``solvers.md`` (UNet) or
``solvers_flow.md`` (flow).

    python benchmarks/solvers.py [--family unet|flow] [--count 64] [--out benchmarks/results]
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from comfy_headless import inversion_options  # noqa: E402
from reconstruction import SSIM_ENLARGEMENT, enlarge, heldout_arguments, run_heldout  # noqa: E402

# (label, steps, inversion options), in the order of the table.
UNET_METHODS = [
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
FLOW_GUIDANCES = (1.0, 2.0)  # guidance 1, and the flow test-bed's usual CFG (its recommended sampling guidance)
DIRECT = "direct"  # option key: pin the reconstruction to the recorded inversion (InvEdit Direct Inversion)
# The step-count curve (10 / 25 / 50) of each solver, Euler at 2N for "FireFlow at N + 1 calls against Euler at 2N",
# then the free additions at 50 steps.
FLOW_METHODS = [
    *[("Euler (reference rule)", steps, {}) for steps in (10, 20, 25, 50, 100)],
    ("Euler (simple rule)", 50, {"timestep_rule": "simple"}),
    *[("FireFlow", steps, {"solver": "fireflow"}) for steps in (10, 25, 50)],
    *[(f"fixed-point k={k}", steps, {"solver": "fixed-point", "fixed_point_iterations": k})
      for k in (2, 3) for steps in (10, 25, 50)],
    ("EasyInv SD1.x (input variant)", 50, {"easyinv": "SD1.x"}),
    ("EasyInv SDXL (input variant)", 50, {"easyinv": "SDXL"}),
    ("warm start k=2", 50, {"warm_start_steps": 2, "warm_start_seed": 1}),
    ("direct inversion (Euler)", 50, {DIRECT: True}),
]
COLUMNS = ["cfg", "steps", "inversion calls", "reconstruction calls", "PSNR", f"SSIM x{SSIM_ENLARGEMENT}", "MSE",
           "max latent error", "s per image"]
SCIENTIFIC_BELOW = 1e-3  # cells below this are printed as 1.2e-05, not 0.0000


def counting_clone(model, counter: list):
    """A clone of ``model`` that counts its guided model calls (one per call, whatever the batch)."""
    clone = model.clone()

    def wrapper(apply_model, args):
        counter[0] += 1
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone.set_model_unet_function_wrapper(wrapper)
    return clone


@dataclass(frozen=True)
class Family:
    """One test-bed model's rows: its loader node, the methods and the guidances (invert and reconstruct at each)."""

    name: str
    loader: str
    methods: list[tuple[str, int, dict]]  # (label, steps, inversion options)
    guidances: tuple[float, ...]
    result_name: str


FAMILIES = {
    "unet": Family("test-bed UNet", "InvEditTestbedModelLoader", UNET_METHODS, (1.0,), "solvers"),
    "flow": Family("flow test-bed, a tiny Flux", "InvEditTestbedFlowModelLoader", FLOW_METHODS, FLOW_GUIDANCES,
                   "solvers_flow"),
}


def measure_family(family: Family, nodes_map, metrics, count: int, seed: int) -> dict:
    """Every method of ``family`` on ``count`` held-out canvases at each guidance; {row label: {column: value}}."""
    model, text_encoder = nodes_map[family.loader].execute(verify=True).result
    images, prompts = nodes_map["InvEditTestbedHeldOutDigits"].execute(count=count, seed=seed).result
    encode = nodes_map["InvEditTestbedTextEncode"]
    positive = encode.execute(text_encoder=text_encoder, text=prompts).result[0]
    negative = encode.execute(text_encoder=text_encoder, text="").result[0]
    latent = nodes_map["InvEditTestbedImageToLatent"].execute(image=images).result[0]
    source = images.movedim(-1, 1)
    calls = [0]
    counted = counting_clone(model, calls)
    rows = {}
    for cfg in family.guidances:
        for label, steps, overrides in family.methods:
            options = dict(overrides)
            direct = options.pop(DIRECT, False)
            start = time.perf_counter()
            _, record, _ = nodes_map["InvEditDDIMInversion"].execute(
                model=counted, positive=positive, negative=negative, latent=latent, steps=steps, inversion_cfg=cfg,
                scheduler="auto", clean_level="zero", **inversion_options(**options)).result
            if direct:
                record = nodes_map["InvEditDirectInversion"].execute(inversion=record).result[0]
            inversion_calls, calls[0] = calls[0], 0
            rebuilt = nodes_map["InvEditReconstruct"].execute(model=counted, positive=positive, negative=negative,
                                                              inversion=record, cfg=cfg).result[0]
            seconds = time.perf_counter() - start
            result = nodes_map["InvEditTestbedLatentToImage"].execute(latent=rebuilt, scale=1).result[0].movedim(-1, 1)
            scores = metrics.reconstruction_scores(source, result)
            rows[f"{label}, {steps} steps, cfg {cfg:g}"] = {
                "cfg": f"{cfg:g}", "steps": steps, "inversion calls": inversion_calls, "reconstruction calls": calls[0],
                "PSNR": float(scores.psnr.mean()), "MSE": float(scores.mse.mean()),
                f"SSIM x{SSIM_ENLARGEMENT}": float(metrics.ssim(enlarge(source, SSIM_ENLARGEMENT),
                                                                enlarge(result, SSIM_ENLARGEMENT)).mean()),
                "max latent error": float((rebuilt["samples"] - latent["samples"]).abs().max()),
                "s per image": seconds / count,
            }
            calls[0] = 0
    return rows


def cell(value: float | int | str) -> str:
    """A table cell: text and integers as they are, small values in scientific notation, the rest to 2 or 4 places."""
    if isinstance(value, (int, str)):
        return str(value)
    if value == 0 or math.isinf(value):
        return f"{value:g}"
    if abs(value) < SCIENTIFIC_BELOW:
        return f"{value:.1e}"
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"


def markdown(family: Family, rows: dict, count: int) -> str:
    guidances = " and ".join(f"{cfg:g}" for cfg in family.guidances)
    lines = [f"Held-out digits ({family.name}): {count} canvases, inverted and reconstructed at guidance {guidances} "
             "(the same guidance both ways); model calls are guided calls for the whole batch.", "",
             "| method | " + " | ".join(COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for label, row in rows.items():
        lines.append(f"| {label.split(', ', 1)[0]} | " + " | ".join(cell(row[column]) for column in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = heldout_arguments(__doc__.splitlines()[0], 64, "held-out canvases")
    parser.add_argument("--family", choices=sorted(FAMILIES), default="unet", help="which test-bed model")
    args = parser.parse_args()
    family = FAMILIES[args.family]
    run_heldout(args, family.result_name, partial(measure_family, family), partial(markdown, family))


if __name__ == "__main__":
    main()
