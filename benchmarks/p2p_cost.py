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

    step_times, peaks, increases = [], [], []
    for _ in range(repeats):
        stamps = []
        sampling_guider = guider()
        before = _status_kib("VmRSS")
        _reset_peak()
        start = time.perf_counter()
        with torch.inference_mode():
            sampling_guider.sample(torch.zeros_like(noise_raw), noise_raw, sampler, record.sampling_sigmas,
                                   callback=lambda *args: stamps.append(time.perf_counter()), disable_pbar=True,
                                   seed=0)
        peak = _status_kib("VmHWM")
        per_step = [b - a for a, b in zip(stamps, stamps[1:])]
        step_times.append(statistics.mean(per_step) if per_step else stamps[0] - start)
        peaks.append(peak)
        increases.append(peak - before)
    return {"model": model_name, "case": case, "seconds_per_step": statistics.median(step_times),
            "peak_kib": max(peaks), "increase_kib": max(increases), "steps": steps, "repeats": repeats,
            "threads": torch.get_num_threads()}


def _child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from comfy_headless import boot_with_pack

    boot_with_pack("invedit-p2p-bench-")
    model_name, case = args.case.split(":", 1)
    print("RESULT " + json.dumps(run_case(model_name, case, args.steps, args.repeats)), flush=True)


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
    for model_name in dict.fromkeys(r["model"] for r in results):
        group = [r for r in results if r["model"] == model_name]
        bases = [next(r for r in group if r["case"] == name) for name in BASELINES]
        for r in group:
            time_ratios = " | ".join(f"{r['seconds_per_step'] / b['seconds_per_step']:.2f}" for b in bases)
            memory_ratios = " | ".join(f"{r['peak_kib'] / b['peak_kib']:.3f}" for b in bases)
            rows.append(f"| {model_name} | {r['case']} | {r['seconds_per_step']:.4f} | {time_ratios} | "
                        f"{r['peak_kib'] / KIB:.0f} | {memory_ratios} | {r['increase_kib'] / KIB:.0f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="DDIM steps of the SD1.5 cases (the test-bed uses 50)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per SD1.5 case (the test-bed does 5)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--testbed-only", action="store_true")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        _child(args)
        return
    results = []
    for model_name in MODELS[:1] if args.testbed_only else MODELS:
        steps, repeats = (50, 5) if model_name == "test-bed" else (args.steps, args.repeats)
        for case in CASES:
            results.append(_spawn(model_name, case, steps, repeats, args.threads))
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
    print("\n".join(table))
    RESULTS.write_text("\n".join(notes) + "\n")


if __name__ == "__main__":
    main()
