"""Benchmark: cost of a 2-row Prompt-to-Prompt edit against plain 2-row CFG sampling of the same size.

Both cases sample the same noise with the same 2-row conditioning ``[source, edited prompt]``, the
same negative prompt, cfg 7.5 and the same deterministic DDIM steps (the pack's replay sampler):

* plain: ComfyUI's CFGGuider, no patches (ComfyUI's own attention function: sub-quadratic on a
  CPU, PyTorch's scaled_dot_product_attention on NVIDIA GPUs);
* plain (SDPA): the same with every attention layer computed by ComfyUI's PyTorch attention
  (``attention_pytorch``), the kernel the P2P controller uses: the cost of P2P itself;
* P2P: InvEdit's P2P guider with the edit node's defaults (word swap, cross replace 0.8, self
  replace 0.5 on layers of at most 32x32), without and with the cross-attention map store of
  InvEdit P2P Sample (64 MiB budget, its default).

Models: the shipped test-bed (8x16 canvas, a real inversion of a held-out canvas) and an
SD1.5-architecture UNet (860M parameters, seeded random weights; ComfyUI's SD1 tokenizer with seeded
token embeddings) at 512x512 (64x64 latent). Every case runs in its own process. Measured:

* time: wall time per step after the first (the first step includes ComfyUI's set-up), median
  over the repeats;
* memory: the peak resident set size (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``
  right before sampling, so model building does not count) and its increase over the resident
  size before sampling (what sampling itself allocates; the weights are resident in both).

    python benchmarks/p2p_cost.py [--steps 3] [--threads 1] [--testbed-only]

Writes benchmarks/results/p2p_cost.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "p2p_cost.md"
sys.path.insert(0, str(HERE.parent / "scripts"))
sys.path.insert(0, str(HERE))

CFG = 7.5
CASES = ("plain", "plain (SDPA)", "p2p", "p2p + maps")
BASELINES = ("plain", "plain (SDPA)")
MODELS = ("test-bed", "SD1.5 512x512")
FLUX = "Flux-shaped 1024 + 256 tokens"
FLUX_CASES = ("plain", "p2p (source image q, k)", "p2p (source maps)")
FLUX_CFG = 2.0
FLUX_TEXT_TOKENS = 256
FLUX_LATENT_SIDE = 64  # 64x64 latent -> 32x32 = 1024 image patches
FLUX_NETWORK = {  # Flux's head width, RoPE axes and input sizes; 6 heads instead of 24, 1 double + 1 single block
    "image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768, "context_in_dim": 4096,
    "hidden_size": 768, "mlp_ratio": 4.0, "num_heads": 6, "depth": 1, "depth_single_blocks": 1,
    "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2, "qkv_bias": True, "guidance_embed": False,
}
SOURCE_SD15 = "a photo of a cat sitting on a wooden chair"
TARGET_SD15 = "a photo of a dog sitting on a wooden chair"
TIME_GOAL, MEMORY_GOAL = 1.25, 1.1
KIB = 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def _testbed_inputs():
    import torch

    from invedit.nodes.options import option_defaults
    from invedit.nodes.testbed_nodes import TestbedTextEncode, load_testbed_model
    from invedit.nodes.inversion_nodes import DDIMInversion
    from invedit.testbed import data

    model, text_encoder = load_testbed_model(verify=False)
    canvases, prompts, _ = data.heldout_canvases(1, seed=0)
    encode = lambda text: TestbedTextEncode.execute(text_encoder=text_encoder, text=text).result[0]  # noqa: E731
    with torch.inference_mode():
        _, record, _ = DDIMInversion.execute(model=model, positive=encode(prompts[0]), negative=encode(""),
                                             latent={"samples": canvases}, steps=50, inversion_cfg=1.0,
                                             scheduler="ddim_uniform", clean_level="zero", **option_defaults()).result
    words = prompts[0].split()
    words[3] = "one" if words[3] != "one" else "two"
    return model, text_encoder, prompts[0], " ".join(words), encode(""), record


def _sd15_inputs(steps: int):
    import torch

    import comfy.sd1_clip
    from inversion_speed import FULL_SD15_CONTEXT, full_size_sd15
    from invedit.inversion import InversionTrajectory
    from invedit.inversion.record import InversionRecord
    from invedit.nodes.schedules import schedule

    sys.path.insert(0, str(HERE.parent / "tests" / "host"))
    import p2p_models
    import tiny_models

    model = full_size_sd15(tiny_models)
    text_encoder = p2p_models.SeededClip(comfy.sd1_clip.SD1Tokenizer(), FULL_SD15_CONTEXT)
    sigmas = schedule(model, "ddim_uniform", steps)
    noise = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    latents = torch.zeros(steps + 1, 1, 4, 64, 64)
    latents[-1] = noise
    # A stand-in INVERSION: only its noise and schedule are used (no unconditioning, no pin).
    record = InversionRecord(InversionTrajectory(sigmas.flip(0), latents, 0), sigmas)
    negative = text_encoder.encode_from_tokens_scheduled(text_encoder.tokenize(""))
    return model, text_encoder, SOURCE_SD15, TARGET_SD15, negative, record


def _flux_inputs(steps: int):
    """A Flux-shaped model with seeded random weights, a 2-row conditioning and a stand-in INVERSION."""
    import torch

    import comfy.model_patcher
    import comfy.supported_models
    from invedit.inversion import PREDICTION_VELOCITY, InversionConfig, InversionTrajectory
    from invedit.inversion.process import RECTIFIED_FLOW
    from invedit.inversion.record import InversionRecord
    from invedit.nodes.schedules import schedule

    sys.path.insert(0, str(HERE.parent / "tests" / "host"))
    import tiny_flow_models

    class FluxShaped(comfy.supported_models.FluxSchnell):
        unet_config = FLUX_NETWORK

    config = FluxShaped(FLUX_NETWORK)
    config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():
        network = config.get_model({}, device=torch.device("cpu"))
        tiny_flow_models.init_parameters(network.diffusion_model, 0)
        network.eval()
    cpu = torch.device("cpu")
    model = comfy.model_patcher.ModelPatcher(network, load_device=cpu, offload_device=cpu)
    generator = torch.Generator().manual_seed(0)
    context = torch.randn(2, FLUX_TEXT_TOKENS, 4096, generator=generator)
    conditioning = [[context, {"pooled_output": torch.randn(2, 768, generator=generator)}]]
    negative = [[torch.randn(1, FLUX_TEXT_TOKENS, 4096, generator=generator),
                 {"pooled_output": torch.randn(1, 768, generator=generator)}]]
    sigmas = schedule(model, "simple", steps)
    shape = (1, 16, FLUX_LATENT_SIDE, FLUX_LATENT_SIDE)
    latents = torch.zeros(steps + 1, *shape)
    latents[-1] = torch.randn(shape, generator=generator)
    config = InversionConfig(prediction_type=PREDICTION_VELOCITY, process=RECTIFIED_FLOW.name)
    record = InversionRecord(InversionTrajectory(sigmas.flip(0), latents, 0, config), sigmas)
    return model, conditioning, negative, record


def run_flux_case(case: str, steps: int, repeats: int) -> dict:
    """Time ``repeats`` 2-row samplings of one case on the Flux-shaped model; peak memory of the last."""
    import comfy.samplers
    from invedit.attention import CrossSchedule, PromptEdit
    from invedit.attention.joint import LAYOUT_SOURCE_MAPS, LAYOUT_SOURCE_QK, JointPromptToPrompt, LayoutInjection
    from invedit.nodes.attention_patches import P2PGuider
    from invedit.nodes.sampling import inversion_noise_latent, replay_sampler

    model, conditioning, negative, record = _flux_inputs(steps)
    noise_raw = inversion_noise_latent(model, record).expand(2, -1, -1, -1).clone()

    def guider():
        if case == "plain":
            plain = comfy.samplers.CFGGuider(model)
            plain.set_conds(conditioning, negative)
            plain.set_cfg(FLUX_CFG)
            return plain
        rule = LAYOUT_SOURCE_QK if "q, k" in case else LAYOUT_SOURCE_MAPS
        controller = JointPromptToPrompt([PromptEdit(None, CrossSchedule())], layout=LayoutInjection(rule))
        return P2PGuider(model, record, conditioning, controller, negative, FLUX_CFG)

    return _timed(FLUX, case, guider, noise_raw, record, replay_sampler(), steps, repeats, clock=time.process_time)


def _timed(model_name, case, guider, noise_raw, record, sampler, steps, repeats, clock=time.perf_counter) -> dict:
    """Per-step time (``clock``: wall time, or the process's CPU time where other jobs share the CPU) and peak RSS."""
    import torch

    step_times, peaks, increases = [], [], []
    for _ in range(repeats):
        stamps = []
        sampling_guider = guider()
        before = _status_kib("VmRSS")
        _reset_peak()
        start = clock()
        with torch.inference_mode():
            sampling_guider.sample(torch.zeros_like(noise_raw), noise_raw, sampler, record.sampling_sigmas,
                                   callback=lambda *args: stamps.append(clock()), disable_pbar=True, seed=0)
        peak = _status_kib("VmHWM")
        per_step = [b - a for a, b in zip(stamps, stamps[1:])]
        step_times.append(statistics.mean(per_step) if per_step else stamps[0] - start)
        peaks.append(peak)
        increases.append(peak - before)
    return {"model": model_name, "case": case, "seconds_per_step": statistics.median(step_times),
            "peak_kib": max(peaks), "increase_kib": max(increases), "steps": steps, "repeats": repeats,
            "threads": torch.get_num_threads()}


def sdpa_model(model):
    """A clone whose every attention layer is ComfyUI's PyTorch (SDPA) attention."""
    import comfy.ldm.modules.attention as comfy_attention
    from invedit.nodes.attention_patches import ATTENTION_KINDS, transformer_sites

    def attend(q, k, v, extra_options):
        return comfy_attention.attention_pytorch(q, k, v, extra_options["n_heads"],
                                                 attn_precision=extra_options.get("attn_precision"))

    clone = model.clone()
    for site in transformer_sites(model):
        for kind in ATTENTION_KINDS:
            clone.set_model_patch_replace(attend, kind, site.block_name, site.block_id, site.depth)
    return clone


def run_case(model_name: str, case: str, steps: int, repeats: int) -> dict:
    """Build the model, then time ``repeats`` sampling runs of one case; peak memory of the last."""
    import torch

    import comfy.samplers
    from invedit.attention import CrossMapStore
    from invedit.nodes.attention_patches import P2PGuider
    from invedit.nodes.p2p_prompts import build_edit_plan
    from invedit.nodes.sampling import inversion_noise_latent, replay_sampler

    if model_name == "test-bed":
        model, text_encoder, source, target, negative, record = _testbed_inputs()
    else:
        model, text_encoder, source, target, negative, record = _sd15_inputs(steps)
    with torch.inference_mode():
        edit = build_edit_plan(text_encoder, source, target, "word swap", 0.8, 0.5, 1024)
    noise_raw = inversion_noise_latent(model, record).expand(2, -1, -1, -1).clone()
    sampler = replay_sampler()

    def guider():
        if case.startswith("plain"):
            plain = comfy.samplers.CFGGuider(sdpa_model(model) if case == "plain (SDPA)" else model)
            plain.set_conds(edit.conditioning, negative)
            plain.set_cfg(CFG)
            return plain
        store = CrossMapStore() if case == "p2p + maps" else None
        return P2PGuider(model, record, edit.conditioning, edit.controller(store), negative, CFG)

    return _timed(model_name, case, guider, noise_raw, record, sampler, steps, repeats)


def _child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from comfy_headless import boot_with_pack

    boot_with_pack("invedit-p2p-bench-")
    model_name, case = args.case.split(":", 1)
    run = run_flux_case(case, args.steps, args.repeats) if model_name == FLUX else run_case(
        model_name, case, args.steps, args.repeats)
    print("RESULT " + json.dumps(run), flush=True)


def _spawn(model_name: str, case: str, steps: int, repeats: int, threads: int) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", f"{model_name}:{case}", "--steps", str(steps),
               "--repeats", str(repeats), "--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONSAFEPATH="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{model_name} / {case} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


def _table(results: list[dict]) -> list[str]:
    rows = ["| model | case | s / step | vs plain | vs plain (SDPA) | peak RSS (MiB) | vs plain | vs plain (SDPA) "
            "| sampling's own (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    missing = " | -"
    for model_name in dict.fromkeys(r["model"] for r in results):
        group = [r for r in results if r["model"] == model_name]
        bases = [r for name in BASELINES for r in group if r["case"] == name]
        for r in group:
            time_ratios = " | ".join(f"{r['seconds_per_step'] / b['seconds_per_step']:.2f}" for b in bases)
            memory_ratios = " | ".join(f"{r['peak_kib'] / b['peak_kib']:.3f}" for b in bases)
            if len(bases) == 1:  # the Flux-shaped model's plain case already uses the same kernel as P2P
                time_ratios, memory_ratios = time_ratios + missing, memory_ratios + missing
            rows.append(f"| {model_name} | {r['case']} | {r['seconds_per_step']:.4f} | {time_ratios} | "
                        f"{r['peak_kib'] / KIB:.0f} | {memory_ratios} | {r['increase_kib'] / KIB:.0f} |")
    return rows


def notes_flux(args) -> list[str]:
    return [f"{FLUX}: ComfyUI's Flux class with Flux's heads of 128 (RoPE axes 16/56/56), T5 and CLIP-L input "
            f"sizes and token counts, but 6 heads (768 wide, Flux: 24, 3072) and 1 double + 1 single block (a CPU "
            f"budget; attention is a larger share of the cost than in Flux, so the ratios are upper bounds), seeded "
            f"random weights, float32; "
            f"{args.flux_steps} steps, cfg {FLUX_CFG}, 2 rows, 1 run, {args.threads} thread(s); time is the process's "
            "CPU time per step (the machine's CPUs were shared with other jobs, which made wall time swing 3x). "
            "'plain' is ComfyUI's "
            "CFGGuider with ComfyUI's own attention function, which the P2P override calls too (the same kernel). "
            "The P2P rows keep the layout in every block over the first half of the steps."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="DDIM steps of the SD1.5 cases (the test-bed uses 50)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per SD1.5 case (the test-bed does 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--testbed-only", action="store_true")
    parser.add_argument("--flux-only", action="store_true", help="only the Flux-shaped joint-attention rows")
    parser.add_argument("--flux-steps", type=int, default=3, help="steps of the Flux-shaped cases")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        _child(args)
        return
    results = []
    unet_models = [] if args.flux_only else MODELS[:1] if args.testbed_only else MODELS
    for model_name in unet_models:
        steps, repeats = (50, 5) if model_name == "test-bed" else (args.steps, args.repeats)
        for case in CASES:
            results.append(_spawn(model_name, case, steps, repeats, args.threads))
            print(json.dumps(results[-1]), flush=True)
    if not args.testbed_only:
        for case in FLUX_CASES:
            results.append(_spawn(FLUX, case, args.flux_steps, 1, args.threads))
            print(json.dumps(results[-1]), flush=True)
    table = _table(results)
    notes = [
        "# Cost of a 2-row Prompt-to-Prompt edit (benchmarks/p2p_cost.py)",
        "",
        f"CPU, {args.threads} thread(s); test-bed: 50 steps, median of 5 runs; SD1.5 architecture (random weights) at "
        f"512x512: {args.steps} steps, {args.repeats} run(s). Same noise, 2-row conditioning, cfg {CFG}, DDIM steps "
        "in every case. Time: seconds per step after the first. Memory: peak resident set while sampling (weights "
        "included) and its increase over the resident set before sampling. Goals: time ratio <= "
        f"{TIME_GOAL}, peak-memory ratio <= {MEMORY_GOAL}.",
        "",
        *table,
    ]
    notes += ["", *notes_flux(args)]
    print("\n".join(table))
    if args.flux_only and RESULTS.exists():  # keep the UNet rows measured before
        previous = RESULTS.read_text().splitlines()
        notes = [line for line in previous if not line.startswith(f"| {FLUX}") and not line.startswith(FLUX)]
        while notes and not notes[-1].strip():
            notes.pop()
        notes += [row for row in table if row.startswith(f"| {FLUX}")] + ["", *notes_flux(args)]
    RESULTS.write_text("\n".join(notes) + "\n")


if __name__ == "__main__":
    main()
