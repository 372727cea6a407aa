"""Benchmark: what InvEdit's null-text inversion costs over a plain optimisation loop (issue 18).

The same null-text optimisation (guidance 7.5, the reference's learning rate, ``after step``
order, early stop 0 so every Adam step runs) is run three ways on the same model, inversion,
prompts and schedule:

* sampling: plain ComfyUI sampling at cfg 7.5 (CFGGuider, ``ddim``, the inversion's sigmas), for
  the memory a forward pass needs;
* pack: the InvEdit Null-text Inversion node (its runner, ``run_null_text``, for models it does not
  take yet);
* plain loop: null-text written here in plain torch, as one would without ComfyUI: the same
  network built with its weights as normal tensors, ``BaseModel.apply_model`` called directly,
  only the context requires a gradient, ``torch.optim.Adam``;
* weight copies (``--with-copies``): the pack's mechanism before issue 18 (every weight through a
  copying weight wrapper, computed in float32), for comparison.

Every case runs in its own process, after a DDIM inversion (5 steps, cfg 1) that loads the model
and gives the targets. Measured: seconds per Adam step (the whole optimisation, source-prompt
and step-taking passes included, over the Adam steps) and the peak memory above the loaded model
(CPU: peak resident set, ``VmHWM`` reset through ``/proc/self/clear_refs`` right before the case,
minus the resident set then; glibc is told to return every freed block of 64 KiB or more, so
the resident set follows the live tensors. GPU: ``torch.cuda.max_memory_allocated`` above the
allocation before the case). The pack's contexts are compared with the plain loop's.

Models:

* ``sd15``: the SD1.5 architecture (ComfyUI's SD15 config, 860M parameters, seeded random
  weights), 256x256 (a 32x32 latent), 77-token prompts, 5 steps x 3 Adam steps;
* ``flux``: Flux-shaped (``comfy.ldm.flux`` at Flux's full width, 3072 with 24 heads, 1 double and
  1 single block, no guidance embedding since null-text needs real CFG: about 536M parameters), a
  64x64 image (8x8 latent, 16 image tokens), 16 T5 tokens;
* ``small-sd15``: the SD1.5 layout at 64 channels (35M parameters), an 8x8 latent: the model of
  the memory-bound test (tests/host/test_null_text_float16.py);
* ``sd15-gpu``: ``sd15`` on CUDA at 512x512 (``--gpu``; needs a GPU, weights float16).

    python benchmarks/null_text_cost.py [--models sd15,flux] [--dtypes float32,bfloat16]
                                        [--threads 1,2] [--with-copies] [--gpu]

Writes benchmarks/results/null_text_cost.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results" / "null_text_cost.md"
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(HERE))

GUIDANCE = 7.5
LEARNING_RATE, LEARNING_RATE_DECAY = 0.01, 0.01
CASES = ("sampling", "pack", "plain loop")
COPIES = "weight copies"
MEMORY_GOAL, TIME_GOAL = 1.2, 1.1
GIB, KIB = 2 ** 30, 1024
MALLOC_RETURN_THRESHOLD = "65536"  # glibc: blocks of 64 KiB and more are mapped, and unmapped when freed
SMALL_SD15_CHANNELS = 64


@dataclass(frozen=True)
class Spec:
    """One model setting of the benchmark."""

    title: str
    family: str  # "sd15" or "flux"
    latent_side: int
    tokens: int
    steps: int
    inner_steps: int
    device: str = "cpu"


SPECS = {
    "sd15": Spec("SD1.5 architecture, 256x256", "sd15", 32, 77, 5, 3),
    "flux": Spec("Flux-shaped (1 + 1 blocks at full width), 64x64", "flux", 8, 16, 5, 3),
    "small-sd15": Spec("SD1.5 layout at 64 channels, 64x64", "small-sd15", 8, 8, 2, 2),
    "sd15-gpu": Spec("SD1.5 architecture, 512x512, GPU", "sd15", 64, 77, 5, 3, device="cuda"),
}


# ---------------------------------------------------------------------------------------------
# One case, in its own process


class MemoryProbe:
    """Peak memory above what is allocated when :meth:`start` is called (CPU resident set or CUDA)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.before = 0

    def start(self) -> None:
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.before = _status_kib("VmRSS") * KIB
            Path("/proc/self/clear_refs").write_text("5")

    def peak_increase(self) -> int:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() - self.before
        return _status_kib("VmHWM") * KIB - self.before


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _model(spec: Spec, dtype, inference: bool):
    import torch

    from inversion_speed import FULL_SD15_UNET
    from null_text_models import FLUX_SHAPED, build_flux, sd15_layout

    if spec.family == "flux":
        patcher = build_flux(FLUX_SHAPED, dtype, inference=inference)
    elif spec.family == "small-sd15":
        patcher = sd15_layout(dict(FULL_SD15_UNET, model_channels=SMALL_SD15_CHANNELS), dtype, inference=inference)
    else:
        patcher = sd15_layout(FULL_SD15_UNET, dtype, inference=inference)
    if spec.device == "cuda":
        patcher.load_device = torch.device("cuda")
    return patcher


def _prompts(spec: Spec):
    import torch

    from inversion_speed import FULL_SD15_CONTEXT
    from null_text_models import flux_conditioning

    if spec.family == "flux":
        return flux_conditioning(spec.tokens, 1), flux_conditioning(spec.tokens, 2)
    return tuple([[torch.randn(1, spec.tokens, FULL_SD15_CONTEXT, generator=torch.Generator().manual_seed(seed)), {}]]
                 for seed in (1, 2))


def _latent(spec: Spec) -> dict:
    from null_text_models import flux_latent
    from tiny_models import tiny_latent

    if spec.family == "flux":
        return flux_latent(spec.latent_side, 3)
    return tiny_latent("sd15", 3, 1, spec.latent_side, spec.latent_side)


def _invert(model, spec: Spec, positive, negative):
    import torch

    from invedit.nodes.inversion_nodes import DDIMInversion
    from invedit.nodes.options import option_defaults

    scheduler = "simple" if spec.family == "flux" else "ddim_uniform"
    with torch.inference_mode():
        return DDIMInversion.execute(model=model, positive=positive, negative=negative, latent=_latent(spec),
                                     steps=spec.steps, inversion_cfg=1.0, scheduler=scheduler, clean_level="zero",
                                     **option_defaults()).result[1]


def _null_text_settings(spec: Spec) -> dict:
    return dict(guidance=GUIDANCE, inner_steps=spec.inner_steps, learning_rate=LEARNING_RATE,
                learning_rate_decay=LEARNING_RATE_DECAY, early_stop=0.0, early_stop_growth=0.0,
                stop_check="after step", start_from="empty prompt")


def run_sampling(model, record, positive, negative, spec: Spec):
    """Plain ComfyUI sampling at cfg 7.5 from the inverted noise: ``(None, seconds, 0)``."""
    import torch

    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(GUIDANCE)
    noise_raw = model.model.process_latent_out(record.trajectory.noise.clone())
    started = time.perf_counter()
    with torch.inference_mode():
        guider.sample(torch.zeros_like(noise_raw), noise_raw, comfy.samplers.sampler_object("ddim"),
                      record.sampling_sigmas, disable_pbar=True, seed=0)
    return None, time.perf_counter() - started, 0


def run_pack(model, record, positive, negative, spec: Spec):
    """The InvEdit Null-text Inversion node: ``(contexts [N, 1, L, D], seconds, Adam steps)``."""
    import torch

    from invedit.nodes.unconditioning_nodes import NullTextInversion

    with torch.inference_mode():
        result = NullTextInversion.execute(model=model, inversion=record, negative=negative,
                                           **_null_text_settings(spec)).result[0]
    report = result.unconditioning.report
    return result.unconditioning.step_contexts, report["seconds"], report["total_gradient_steps"]


def run_copies(model, record, positive, negative, spec: Spec):
    """The pack's node on the weight-copying clone it used before issue 18."""
    from null_text_models import weight_copying_clone

    return run_pack(weight_copying_clone(model), record, positive, negative, spec)


def run_plain_loop(model, record, positive, negative, spec: Spec):
    """Null-text in plain torch on ``model``'s network: ``(contexts [N, 1, L, D], seconds, Adam steps)``.

    Mokady et al. 2023, Algorithm 1 in the reference's order: per step one pass with the source
    prompt, ``inner_steps`` x (pass with the context, guided DDIM / Euler step, MSE against the
    inverted state on the model scale, Adam step), one pass that takes the step. ComfyUI's Flux
    blocks add to their residual streams in place, which autograd refuses for tensors it saved:
    for Flux, autograd keeps copies of the activations it saves (saved-tensor hooks).
    """
    import contextlib

    import torch

    import comfy.model_sampling

    base = model.model
    flow = isinstance(base.model_sampling, comfy.model_sampling.CONST)
    device = torch.device(spec.device)
    sigmas = record.sampling_sigmas.clone().to(device)  # clones: normal tensors, not the inversion's inference ones
    targets = record.step_targets().clone().to(device)
    # The latent as a sampler gets it from a LATENT (scaled out and back in: the pack's start, to the last bit).
    x = base.process_latent_in(base.process_latent_out(record.trajectory.noise.clone())).to(device)
    source, context = positive[0][0].to(device), negative[0][0].float().to(device)

    def extras(prompt) -> dict:
        """Flux's other inputs of a prompt: its pooled CLIP vector and the guidance value."""
        if spec.family != "flux":
            return {}
        return {"y": prompt[0][1]["pooled_output"].to(device),
                "guidance": torch.full([1], prompt[0][1]["guidance"], device=device)}

    source_extras, empty_extras = extras(positive), extras(negative)

    def denoise(x_in, sigma, text):
        return base.apply_model(x_in, sigma.reshape(1), c_crossattn=text,
                                **(source_extras if text is source else empty_extras))

    def model_scale(sigma):
        return 1.0 if flow else 1.0 / torch.sqrt(1.0 + sigma ** 2)

    weight_storages = {p.untyped_storage().data_ptr() for p in base.parameters()}

    def keep_copy(tensor):
        return tensor if tensor.untyped_storage().data_ptr() in weight_storages else tensor.clone()

    saved_copies = torch.autograd.graph.saved_tensors_hooks(keep_copy, lambda tensor: tensor)
    # float16 weights: PyTorch's own dynamic loss scaling, as a float16 training loop uses it.
    scaler = torch.amp.GradScaler(device.type, enabled=base.get_dtype() == torch.float16)
    contexts = []
    started = time.perf_counter()
    with saved_copies if spec.family == "flux" else contextlib.nullcontext():
        adam_steps = _plain_steps(denoise, model_scale, scaler, x, sigmas, targets, source, context, spec, contexts)
    return torch.stack(contexts), time.perf_counter() - started, adam_steps


def _plain_steps(denoise, model_scale, scaler, x, sigmas, targets, source, context, spec: Spec, contexts: list) -> int:
    """The loop of :func:`run_plain_loop`; appends each step's context to ``contexts``; its Adam steps."""
    import torch

    adam_steps = 0
    for step in range(sigmas.numel() - 1):
        sigma, sigma_next = sigmas[step], sigmas[step + 1]
        with torch.no_grad():
            x0_source = denoise(x, sigma, source)
        context = context.detach().clone().requires_grad_(True)  # a new leaf: the last step's context stays as it was
        optimizer = torch.optim.Adam([context], lr=LEARNING_RATE * (1.0 - LEARNING_RATE_DECAY * step))
        for _ in range(spec.inner_steps):
            x0_empty = denoise(x, sigma, context)
            x0 = x0_empty + (x0_source - x0_empty) * GUIDANCE
            x_next = x + (x - x0) / sigma * (sigma_next - sigma)
            loss = torch.nn.functional.mse_loss(x_next * model_scale(sigma_next), targets[step] * model_scale(sigma_next))
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            adam_steps += 1
        with torch.no_grad():
            x0_empty = denoise(x, sigma, context)
            x0 = x0_empty + (x0_source - x0_empty) * GUIDANCE
            x = x + (x - x0) / sigma * (sigma_next - sigma)
        contexts.append(context.detach().cpu())
    return adam_steps


RUNNERS = {"sampling": run_sampling, "pack": run_pack, "plain loop": run_plain_loop, COPIES: run_copies}


def run_cases(spec: Spec, cases: list[str], dtype_name: str, out_dir: str | None, repeats: int = 1) -> list[dict]:
    """Build the model, invert, then measure each case in turn; contexts go to ``out_dir/<case>.pt``.

    Memory is the first run's; time the fastest of ``repeats`` runs.

    The plain loop needs its own model (normal-tensor weights): it cannot share a process.
    """
    import torch

    if "plain loop" in cases and len(cases) > 1:
        raise ValueError("the plain loop runs alone in its process (its model has normal-tensor weights)")
    dtype = getattr(torch, dtype_name)
    model = _model(spec, dtype, inference="plain loop" not in cases)
    positive, negative = _prompts(spec)
    record = _invert(model, spec, positive, negative)
    weights = list(model.model.diffusion_model.parameters())
    results = []
    for case in cases:
        probe = MemoryProbe(spec.device)
        probe.start()
        contexts, seconds, adam_steps = RUNNERS[case](model, record, positive, negative, spec)
        increase = probe.peak_increase()
        for _ in range(repeats - 1):  # the machine may be shared: the fastest run counts
            seconds = min(seconds, RUNNERS[case](model, record, positive, negative, spec)[1])
        if out_dir and contexts is not None:
            torch.save(contexts.float().cpu(), Path(out_dir) / f"{case}.pt")
        results.append({"case": case, "dtype": dtype_name, "threads": torch.get_num_threads(), "seconds": seconds,
                        "adam_steps": adam_steps, "peak_increase": increase,
                        "parameters": sum(p.numel() for p in weights),
                        "weight_bytes": sum(p.numel() * p.element_size() for p in weights)})
    return results


def _child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    from comfy_headless import boot_with_pack

    boot_with_pack("invedit-null-text-bench-")
    sys.path.insert(0, str(REPO / "tests" / "host"))
    results = run_cases(SPECS[args.model], args.case.split(","), args.dtype, args.out, args.repeats)
    print("RESULT " + json.dumps(results), flush=True)


def _start(model: str, cases: list[str], dtype: str, threads: int, out_dir: str | None, repeats: int) -> subprocess.Popen:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", ",".join(cases), "--model", model,
               "--dtype", dtype, "--threads", str(threads), "--repeats", str(repeats)] + \
        (["--out", out_dir] if out_dir else [])
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONSAFEPATH="1",
               MALLOC_MMAP_THRESHOLD_=MALLOC_RETURN_THRESHOLD)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(process: subprocess.Popen, what: str) -> list[dict]:
    stdout, stderr = process.communicate()
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"{what} failed:\n{stdout[-3000:]}\n{stderr[-3000:]}")


def spawn(model: str, cases: list[str], dtype: str, threads: int, out_dir: str | None = None,
          repeats: int = 1) -> list[dict]:
    """Run ``cases`` one after the other in a fresh process (see the module docstring); their results."""
    return _finish(_start(model, cases, dtype, threads, out_dir, repeats), f"{model} / {cases} / {dtype}")


def spawn_side_by_side(model: str, cases: list[str], dtype: str, threads: int, out_dir: str | None = None,
                       repeats: int = 1) -> list[dict]:
    """Each case in its own process, all started at once (they meet the same load on a shared
    machine; each process measures its own memory); one result per case."""
    processes = [_start(model, [case], dtype, threads, out_dir, repeats) for case in cases]
    return [_finish(process, f"{model} / {case} / {dtype}")[0] for process, case in zip(processes, cases)]


# ---------------------------------------------------------------------------------------------
# The table


def _per_step(result: dict) -> float | None:
    return result["seconds"] / result["adam_steps"] if result["adam_steps"] else None


PAIRED = ("pack", "plain loop")


def _groups(cases: list[str], first_thread_count: bool, side_by_side: bool) -> list[list[str]]:
    """The cases to run at one thread count, grouped by process start (a group starts together).

    The weight-copy control and sampling (memory only) run at the first thread count only; with
    ``side_by_side`` the pack and the plain loop start together.
    """
    wanted = [case for case in cases if first_thread_count or case not in ("sampling", COPIES)]
    if not side_by_side:
        return [[case] for case in wanted]
    groups: list[list[str]] = []
    for case in wanted:
        if case in PAIRED and groups and groups[-1][0] in PAIRED:
            groups[-1].append(case)
        else:
            groups.append([case])
    return groups


def measure(model: str, dtype: str, threads: list[int], cases: list[str], repeats: int,
            side_by_side: bool = False) -> list[dict]:
    """Every case at every thread count, one process each, the cases of one thread count in a row
    (so that pack and plain loop meet the same load on a shared machine); memory from the first
    thread count."""
    import torch

    rows = {case: {"model": model, "dtype": dtype, "case": case, "per_step": dict.fromkeys(threads)}
            for case in cases}
    with tempfile.TemporaryDirectory() as folder:
        for index, count in enumerate(threads):
            for group in _groups(cases, index == 0, side_by_side):
                runs = 1 if group == ["sampling"] else repeats
                results = spawn_side_by_side(model, group, dtype, count, folder, runs) if len(group) > 1 else \
                    spawn(model, group, dtype, count, folder, runs)
                for case, result in zip(group, results):
                    print(json.dumps({"model": model, **result}), flush=True)
                    rows[case]["per_step"][count] = _per_step(result)
                    for key in ("peak_increase", "parameters", "weight_bytes"):
                        rows[case].setdefault(key, result[key])
        contexts = {case: torch.load(Path(folder) / f"{case}.pt") for case in cases
                    if (Path(folder) / f"{case}.pt").exists()}
    if "plain loop" in contexts:
        for case, tensor in contexts.items():
            if case != "plain loop":
                rows[case]["contexts_vs_plain"] = float((tensor - contexts["plain loop"]).abs().max())
    return list(rows.values())


def table(rows: list[dict], threads: list[int]) -> list[str]:
    thread_label = " / ".join(f"{count} thread{'s' if count > 1 else ''}" for count in threads)
    lines = [f"| model | weights | case | peak memory above the loaded model (GiB) | s / Adam step ({thread_label}) | "
             "memory vs plain loop | time vs plain loop | max abs context difference vs plain loop |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        plain = next(r for r in rows if r["model"] == row["model"] and r["dtype"] == row["dtype"]
                     and r["case"] == "plain loop")
        steps = " / ".join("-" if row["per_step"][count] is None else f"{row['per_step'][count]:.2f}" for count in threads)
        memory = f"{row['peak_increase'] / plain['peak_increase']:.2f}" if row["case"] != "sampling" else "-"
        times = " / ".join("-" if row["per_step"][count] is None else
                           f"{row['per_step'][count] / plain['per_step'][count]:.2f}" for count in threads)
        difference = f"{row['contexts_vs_plain']:.1e}" if "contexts_vs_plain" in row else "-"
        lines.append(f"| {SPECS[row['model']].title} ({row['parameters'] / 1e6:.0f}M) | {row['dtype']} | {row['case']} | "
                     f"{row['peak_increase'] / GIB:+.2f} | {steps} | {memory} | {times} | {difference} |")
    return lines


def _plan(args) -> list[tuple[str, str, list[int]]]:
    """``(model, dtype, thread counts)`` to measure: Flux in float32 and bfloat16, the others in ``--dtypes``."""
    plan = []
    for model in args.models.split(","):
        if model == "flux":
            plan += [(model, dtype, [int(t) for t in args.flux_threads.split(",")]) for dtype in ("float32", "bfloat16")]
        else:
            plan += [(model, dtype, [int(t) for t in args.threads.split(",")]) for dtype in args.dtypes.split(",")]
    if args.gpu:
        plan.append(("sd15-gpu", "float16", [1]))
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="sd15,flux")
    parser.add_argument("--dtypes", default="float32", help="for sd15; flux runs float32 and bfloat16")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--flux-threads", default="1")
    parser.add_argument("--with-copies", action="store_true")
    parser.add_argument("--gpu", action="store_true", help="also sd15 on CUDA at 512x512 in float16")
    parser.add_argument("--repeats", type=int, default=2, help="runs per case; the fastest counts")
    parser.add_argument("--side-by-side", action="store_true",
                        help="start the pack and the plain loop at the same time (a shared machine)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        args.threads = int(args.threads)
        _child(args)
        return
    cases = list(CASES) + ([COPIES] if args.with_copies else [])
    sections: list[str] = []
    header = [
        "# Null-text cost against a plain optimisation loop (benchmarks/null_text_cost.py)",
        "",
        f"Guidance {GUIDANCE}, Adam lr {LEARNING_RATE}, `after step`, early stop 0 (every Adam step runs); each case in "
        "its own process after a DDIM inversion that loads the model. Peak memory: above the loaded model while the "
        "case runs (resident set on the CPU), first run. s / Adam step: the whole optimisation over its Adam steps, "
        f"fastest of {args.repeats} runs (a shared 2-core machine"
        f"{'; the pack and the plain loop ran side by side, started together' if args.side_by_side else ''}). Goals "
        f"(SD1.5, CPU): memory <= {MEMORY_GOAL}x and time <= {TIME_GOAL}x the plain loop's.",
    ]
    for model, dtype, threads in _plan(args):
        lines = table(measure(model, dtype, threads, cases, args.repeats, args.side_by_side), threads)
        print("\n".join(lines), flush=True)
        sections += ["", *lines]
        RESULTS.write_text("\n".join(header + sections) + "\n")


if __name__ == "__main__":
    main()
