"""Benchmark: cost of InvEdit's inversion against a plain sampling pass of the same length.

Prints a markdown table: wall time of InvEdit DDIM Inversion (plain, EasyInv, forward warm start for
UNets; the Euler, FireFlow and fixed-point solvers for flow models) divided by the wall time of stock
KSamplerAdvanced (ddim / ddim_uniform for UNets, euler with the model's reference scheduler for flow
models) with the same model, steps and guidance, and the number of network evaluations (denoiser rows)
each made. Target: ratio <= 1.05 for the Euler / DDIM inversion, evaluations = steps (x2 with CFG),
fewer with a warm start, N + 1 for FireFlow and k N for the fixed-point solver.

    bash scripts/run-demo.sh --benchmark-speed           # or, inside the env:
    python benchmarks/inversion_speed.py [--full-sd15] [--medium-flux] [--steps 50] [--repeats 3]

``--full-sd15`` adds an SD1.5-architecture UNet (860M parameters, random weights) at 256x256;
``--medium-flux`` a Flux-architecture transformer (ComfyUI's Flux class, 512 wide, 2 double and 4 single
blocks, random weights) at 256x256 with a 64-token prompt.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "scripts"))
from comfy_headless import (  # noqa: E402
    REPO_ROOT,
    boot_comfyui,
    comfyui_path_from_env,
    import_pack_as_package,
    inversion_options,
    load_pack,
)

VARIANTS = {
    "DDIM inversion": {},
    "EasyInv (SD1.x preset)": {"easyinv": "SD1.x"},
    "forward warm start k=2": {"warm_start_steps": 2},
}
FLOW_VARIANTS = {
    "Euler inversion": {},
    "FireFlow": {"solver": "fireflow"},
    "fixed-point k=2": {"solver": "fixed-point", "fixed_point_iterations": 2},
}
FLOW_STEPS = 28


FULL_SD15_CONTEXT = 768
FULL_SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": FULL_SD15_CONTEXT,
    "num_heads": 8, "transformer_depth_output": [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def full_size_sd15(tiny_models):
    """An SD1.5-architecture model (ComfyUI's SD15 config, 860M parameters) with seeded random weights."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    import torch

    config = comfy.supported_models.SD15(dict(FULL_SD15_UNET))
    config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():
        model = comfy.model_base.BaseModel(config, device=torch.device("cpu"))
        tiny_models._init_parameters(model.diffusion_model, 0)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def counting_clone(model, counter: list):
    """A clone of ``model`` whose UNet wrapper counts evaluated rows (cond and uncond each count)."""
    clone = model.clone()

    def wrapper(apply_model, args):
        counter[0] += args["input"].shape[0]
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone.set_model_unet_function_wrapper(wrapper)
    return clone


def interleaved_medians(passes: dict, repeats: int, counter: list) -> dict[str, tuple[float, int]]:
    """``{label: (median seconds, rows evaluated per run)}``, the passes run round-robin ``repeats`` times.

    Round-robin, so that a change in the machine's load during the benchmark hits every pass alike.
    """
    times: dict[str, list[float]] = {label: [] for label in passes}
    rows: dict[str, int] = {}
    for _ in range(repeats):
        for label, run in passes.items():
            counter[0] = 0
            start = time.perf_counter()
            run()
            times[label].append(time.perf_counter() - start)
            rows[label] = counter[0]
    return {label: (statistics.median(times[label]), rows[label]) for label in passes}


def bench_model(nodes, name: str, model, cond, latent, steps: int, cfg: float, repeats: int,
                sampler: str = "ddim", scheduler: str = "ddim_uniform", variants: dict = VARIANTS) -> list[str]:
    import torch

    ksampler = nodes.NODE_CLASS_MAPPINGS["KSamplerAdvanced"]()
    inversion = nodes.NODE_CLASS_MAPPINGS["InvEditDDIMInversion"]
    counter = [0]
    counted = counting_clone(model, counter)
    reference_label = f"sampling (KSamplerAdvanced {sampler})"

    def sample():
        ksampler.sample(counted, "disable", 0, steps, cfg, sampler, scheduler, cond, cond, latent, 0, 10000, "disable")

    def inversion_pass(overrides: dict):
        settings = inversion_options(steps=steps, inversion_cfg=cfg, scheduler=scheduler, clean_level="zero")
        settings.update(overrides)
        return lambda: inversion.execute(model=counted, positive=cond, negative=cond, latent=latent, **settings)

    passes = {reference_label: sample, **{label: inversion_pass(overrides) for label, overrides in variants.items()}}
    with torch.inference_mode():
        sample()  # warm-up
        measured = interleaved_medians(passes, repeats, counter)
    reference = measured[reference_label][0]
    return [f"| {name} | {label} | {seconds:.3f} | {seconds / reference:.2f} | {rows} |"
            for label, (seconds, rows) in measured.items()]


MEDIUM_FLUX_WIDTH = 512
MEDIUM_FLUX_TOKENS = 64


def medium_flux(tiny_flow_models):
    """A Flux-architecture transformer (ComfyUI's Flux dev config and class) of 512 width, seeded random weights."""
    import comfy.model_patcher
    import torch

    class MediumFlux(tiny_flow_models.TinyFluxDev):
        unet_config = {**tiny_flow_models.TinyFluxDev.unet_config, "hidden_size": MEDIUM_FLUX_WIDTH, "num_heads": 8,
                       "axes_dim": [8, 28, 28], "depth": 2, "depth_single_blocks": 4}

    config = MediumFlux(MediumFlux.unet_config)
    config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():
        model = config.get_model({}, device=torch.device("cpu"))
        tiny_flow_models.init_parameters(model.diffusion_model, 0)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def flow_rows(nodes, args) -> list[str]:
    """Rows of the tiny flow models (and of the medium Flux with ``--medium-flux``), FLOW_STEPS steps."""
    import tiny_flow_models

    import_pack_as_package()
    from invedit.nodes.model_info import default_scheduler

    rows = []
    for family, cfg in ((tiny_flow_models.FLUX_DEV, 1.0), (tiny_flow_models.SD35, 1.0), (tiny_flow_models.SD35, 4.0)):
        model = tiny_flow_models.cached_tiny_flow_model(family)
        rows += bench_model(nodes, f"tiny {family} 16x16, cfg {cfg}", model, tiny_flow_models.tiny_flow_conditioning(
            family, 1), tiny_flow_models.tiny_flow_latent(family, 3), FLOW_STEPS, cfg, args.repeats, "euler",
            default_scheduler(model), FLOW_VARIANTS)
    if args.medium_flux:
        model = medium_flux(tiny_flow_models)
        cond = tiny_flow_models.tiny_flow_conditioning(tiny_flow_models.FLUX_DEV, 1, MEDIUM_FLUX_TOKENS)
        medium_variants = {label: FLOW_VARIANTS[label] for label in ("Euler inversion", "FireFlow")}
        rows += bench_model(nodes, f"Flux architecture {MEDIUM_FLUX_WIDTH} wide 32x32, cfg 1.0", model, cond,
                            tiny_flow_models.tiny_flow_latent(tiny_flow_models.FLUX_DEV, 3, 1, 32, 32), FLOW_STEPS,
                            1.0, args.repeats, "euler", default_scheduler(model), medium_variants)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full-sd15", action="store_true", help="also an SD1.5-size UNet (slow on CPU)")
    parser.add_argument("--medium-flux", action="store_true", help="also a 512-wide Flux-architecture model")
    parser.add_argument("--flow-only", action="store_true", help="only the flow rows")
    args = parser.parse_args()
    base_dir = Path(tempfile.mkdtemp(prefix="invedit-bench-"))
    nodes = boot_comfyui(comfyui_path_from_env(), base_dir)
    if not load_pack(nodes):
        raise SystemExit("ComfyUI could not load InvEdit; see the log above.")
    sys.path.insert(0, str(REPO_ROOT / "tests" / "host"))
    import tiny_models

    rows = ["| model | pass | seconds | ratio to sampling | network rows evaluated |", "|---|---|---|---|---|"]
    for arch in (() if args.flow_only else ("sd15", "sdxl")):
        for cfg in (1.0, 7.5):
            rows += bench_model(nodes, f"tiny {arch} 16x16, cfg {cfg}", tiny_models.cached_tiny_model(arch),
                                tiny_models.tiny_conditioning(arch, 1), tiny_models.tiny_latent(arch, 3),
                                args.steps, cfg, args.repeats)
    if args.full_sd15:
        import torch

        model = full_size_sd15(tiny_models)
        cond = [[torch.randn(1, 77, FULL_SD15_CONTEXT, generator=torch.Generator().manual_seed(1)), {}]]
        rows += bench_model(nodes, "SD1.5 architecture 256x256, cfg 1.0", model, cond,
                            tiny_models.tiny_latent("sd15", 3, 1, 32, 32), args.steps, 1.0, 1)
    rows += flow_rows(nodes, args)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
