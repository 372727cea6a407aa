"""Train InvEdit's flow test-bed: ComfyUI's own Flux transformer, built small, on two-digit canvases.

Not run in CI. Writes ``models/testbed_flow.safetensors`` (float32, 1.9 MB; layout in
``testbed/weights.py``). Seeds are fixed; the learning-rate schedule also ends at
``--max-minutes`` (33), so a slower machine stops early and does not reproduce the weights bit for
bit. One torch thread by default: the machine is shared. A step takes about 0.22 s on an idle
thread (8,000 steps in about 30 minutes); the shipped run shared its 2 cores with other jobs and
stopped at the cap after 5,347 steps, then evaluated for 4 minutes (37 minutes in all).

The model is ``comfy.ldm.flux.model.Flux`` (double- and single-stream blocks, text tokens first in
the joint attention) with the configuration of ``testbed.flow.flux_config`` (467k parameters, no
guidance embedding), on the digits UNet's data: the same split, vocabulary and prompts, 8x16
canvases of two scikit-learn digits. The text encoder is the UNet's kind (token + position
embedding, 8 tokens) plus a pooled vector, the mean of its rows (``testbed.text.PooledPromptEmbedding``).

Objective: rectified flow. ``x = (1 - sigma) x0 + sigma * noise``, the model predicts
``v = noise - x0`` (mean squared error), ``sigma = sigmoid(N(0.5, 1))`` (logit-normal centred at
the model's ``ModelSamplingFlux`` shift 0.5, see ``testbed/flow.py``). 12 % of the prompts are
dropped to the empty prompt, so real classifier-free guidance works (no guidance embedding). An
auxiliary loss (weight ``--attention-loss-weight``) asks every block's joint attention to take a
digit word's attention from that digit's half of the canvas.

ComfyUI's Flux blocks add to their inputs in place (``txt += ...``, ``x += ...``), which autograd
refuses when the tensor was saved for backward. The forward pass therefore runs under
``torch.autograd.graph.saved_tensors_hooks`` whose pack hook stores a copy of each saved tensor
(:func:`copy_saved_tensors`): ComfyUI's forward runs unchanged, the gradients are exact (checked
against finite differences in ``tests/host/test_flow_testbed.py``).

Usage (from the repository root, in the test venv: ``source scripts/env.sh``)::

    python scripts/train_flow_testbed.py                  # train, evaluate, write the file
    python scripts/train_flow_testbed.py --evaluate-only  # evaluate the file at --out

It prints the loss and the word selectivity as it trains, then evaluates the EMA weights: class
agreement of samples for all 100 digit pairs at several guidance scales, selectivity per block
and noise level, and the Euler inversion round trip.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO_ROOT), str(REPO_ROOT / "scripts")]

from testbed import data as data_lib  # noqa: E402
from testbed import flow as flow_lib  # noqa: E402
from testbed import vocabulary as vocab  # noqa: E402
from testbed.classifier import training_split_classifier  # noqa: E402
from testbed.selectivity import SelectivityAccumulator, own_half_share  # noqa: E402
from testbed.text import PooledPromptEmbedding  # noqa: E402
from testbed.weights import FLOW_FORMAT_NAME, FLOW_MODEL_PATH, FORMAT_VERSION, HASH_KEY, UNET_PREFIX  # noqa: E402
from testbed.weights import load_testbed, save_testbed  # noqa: E402
from train_testbed import (  # noqa: E402
    NOISE_BUCKETS,
    TrainingLog,
    canvas_metadata,
    every_pair_prompts,
    learning_rate,
    optimiser_step,
    prepare_comfy,
    print_selectivity,
    prompt_token_ids,
    selectivity_results,
    selectivity_rows,
    training_metadata,
    training_progress,
)

SEED = 20251213
PROMPT_DROPOUT = 0.12
SIGMA_BUCKETS = {"high": (2 / 3, 1.0), "mid": (1 / 3, 2 / 3), "low": (0.0, 1 / 3)}
"""Noise-level ranges of the buckets the selectivity is reported in (same names as the UNet's)."""
assert tuple(SIGMA_BUCKETS) == tuple(NOISE_BUCKETS)

EVAL_GUIDANCES = (1.0, 2.0, 4.0)
EVAL_STEPS = 25
EVAL_SAMPLES_PER_PAIR = 4
EVAL_SELECTIVITY_CANVASES = 256
EVAL_INVERSION_CANVASES = 64
EVAL_INVERSION_STEPS = 50
EVAL_GAP_GUIDANCE = 4.0
PROBE_CANVASES = 64

COMFY_BUILD_NOTE = (
    "class Config(comfy.supported_models.Flux): unet_config = <unet_config>; "
    "sampling_settings = {'shift': <model.model_sampling.shift>}; latent_format = 1-channel, scale 1. "
    "model = Config(unet_config).get_model({}) (model_base.Flux, ModelType.FLUX: CONST + ModelSamplingFlux); "
    "model.diffusion_model.load_state_dict(<tensors under 'diffusion_model.', prefix stripped>); "
    "conditioning = [[context [B, 8, 64], {'pooled_output': context.mean(1) [B, 64]}]]"
)


# --------------------------------------------------------------------------- ComfyUI's Flux


def import_flux(comfyui_path: Path):
    """ComfyUI's ``Flux`` class and its weight-init-free ops (CPU, no argument parsing)."""
    prepare_comfy(comfyui_path)
    import comfy.ops
    from comfy.ldm.flux.model import Flux

    return Flux, comfy.ops.disable_weight_init


def build_flux(flux_class, operations, config: dict) -> torch.nn.Module:
    """A float32 Flux on the CPU (weights uninitialised: comfy ops skip init)."""
    return flux_class(**config, dtype=torch.float32, device="cpu", operations=operations)


def init_flux(model: torch.nn.Module) -> None:
    """PyTorch's default init for every linear layer, RMSNorm scales 1, adaLN-zero.

    adaLN-zero (DiT): every modulation layer and the final layer's modulation and projection
    start at 0, so each block starts as the identity and the output as 0. Uses torch's global RNG.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.Linear.reset_parameters(module)
        elif type(module).__name__ == "RMSNorm":
            with torch.no_grad():
                module.scale.fill_(1.0)
    zeroed = [model.final_layer.linear, model.final_layer.adaLN_modulation[-1]]
    zeroed += [module.lin for module in model.modules() if type(module).__name__ == "Modulation"]
    with torch.no_grad():
        for layer in zeroed:
            layer.weight.zero_()
            layer.bias.zero_()


@contextmanager
def copy_saved_tensors():
    """Autograd keeps a copy of every tensor it saves for backward, so in-place adds after the save are harmless."""
    with torch.autograd.graph.saved_tensors_hooks(lambda tensor: tensor.clone(), lambda tensor: tensor):
        yield


# --------------------------------------------------------------------------- model calls


class FlowDenoiser:
    """Velocity of (Flux, text encoder), optionally recording every block's joint attention."""

    def __init__(self, flux, text: PooledPromptEmbedding, recorder: flow_lib.JointAttentionRecorder | None = None):
        self.flux, self.text, self.recorder = flux, text, recorder
        self.blocks = flow_lib.attention_blocks(vars(flux.params))
        self.options = flow_lib.recording_transformer_options(self.blocks, recorder) if recorder is not None else {}

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x [B, 1, 8, 16]`` at ``sigma [B]`` with ``context [B, 8, 64]`` -> ``v [B, 1, 8, 16]``."""
        return self.flux(x, sigma, context, y=self.text.pool(context), transformer_options=dict(self.options))

    def guided(self, context: torch.Tensor, uncond_context: torch.Tensor | None, guidance: float):
        """``velocity(x, sigma)`` with classifier-free guidance (one batched call for cond and uncond)."""

        def velocity(x, sigma):
            if guidance == 1.0:
                return self.velocity(x, sigma, context)
            both = self.velocity(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([context, uncond_context]))
            cond, uncond = both.chunk(2)
            return uncond + guidance * (cond - uncond)

        return velocity


def add_image_attention(accumulator: SelectivityAccumulator, recorder, bucket: str, rows: slice = slice(None)) -> None:
    """Accumulate the image tokens' attention of every recorded block under ``(block, bucket)``."""
    for key, probs in recorder.probs.items():
        accumulator.add((key, bucket), flow_lib.image_query_attention(probs[rows]), *flow_lib.IMAGE_GRID)


def localisation_loss(recorder: flow_lib.JointAttentionRecorder, conditional: torch.Tensor) -> torch.Tensor:
    """Mean over blocks of 1 - (share of the two digit words' image-token attention on their own half)."""
    losses = []
    for probs in recorder.probs.values():  # [B, heads, L, L]
        image_rows = probs[conditional][:, :, flow_lib.TEXT_TOKENS:, :]
        losses.append(1.0 - own_half_share(image_rows, *flow_lib.IMAGE_GRID))
    return torch.stack(losses).mean()


# --------------------------------------------------------------------------- evaluation


def measure_selectivity(denoiser: FlowDenoiser, canvases, prompts, seed: int) -> SelectivityAccumulator:
    """Digit-word attention masses per (block, noise bucket) on noised canvases with their own prompts."""
    generator = torch.Generator().manual_seed(seed)
    accumulator = SelectivityAccumulator()
    context = denoiser.text.encode(prompts)
    with torch.no_grad():
        for bucket, (low, high) in SIGMA_BUCKETS.items():
            sigma = low + (high - low) * torch.rand(len(canvases), generator=generator)
            noise = torch.randn(canvases.shape, generator=generator)
            denoiser.velocity(flow_lib.noised(canvases, noise, sigma), sigma, context)
            add_image_attention(accumulator, denoiser.recorder, bucket)
    return accumulator


def psnr_db(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean PSNR (dB) of canvases in [-1, 1] (peak-to-peak 2), the clean ones clamped."""
    mse = ((images.clamp(-1, 1) - reference) / 2.0).pow(2).mean(dim=(1, 2, 3))
    return float((10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean())


def evaluate(flux, text: PooledPromptEmbedding, seed: int, shift: float, sampling: bool = True) -> dict:
    """Selectivity, and with ``sampling`` the sample agreement per guidance and the inversion round trip."""
    recorder = flow_lib.JointAttentionRecorder()
    denoiser = FlowDenoiser(flux, text, recorder)
    classifier = training_split_classifier()
    results: dict = {"classifier_heldout_accuracy": round(classifier.heldout_accuracy(), 4)}

    canvases, prompts, _ = data_lib.heldout_canvases(EVAL_SELECTIVITY_CANVASES, seed=seed)
    results.update(selectivity_results(measure_selectivity(denoiser, canvases, prompts, seed),
                                       "share of the image tokens' attention that goes to the two digit words:"))
    if not sampling:
        return results

    left, right, context, uncond = every_pair_prompts(text, EVAL_SAMPLES_PER_PAIR)
    sigmas = flow_lib.simple_sigmas(EVAL_STEPS, shift)
    noise = torch.randn((len(left), *data_lib.CANVAS_SHAPE), generator=torch.Generator().manual_seed(seed))
    results["sample_agreement"] = {}
    plain = FlowDenoiser(flux, text)
    for guidance in EVAL_GUIDANCES:
        start = time.time()
        with torch.no_grad():
            samples = flow_lib.euler_sample(plain.guided(context, uncond, guidance), noise, sigmas)
        agreement = (classifier.predict_canvases(samples) == torch.stack([left, right], dim=1)).float()
        row = {"per_half": round(float(agreement.mean()), 4), "both_halves": round(float(agreement.all(dim=1).float().mean()), 4),
               "seconds": round(time.time() - start, 1)}
        results["sample_agreement"][str(guidance)] = row
        print(f"samples at guidance {guidance}: {row}", flush=True)
    results["sample_agreement_setup"] = {"steps": EVAL_STEPS, "sampler": "euler", "scheduler": "simple", "shift": shift,
                                         "samples": len(left), "pairs": 100}

    accumulator = SelectivityAccumulator()
    guided = denoiser.guided(context, uncond, EVAL_GUIDANCES[-1])

    def recording_velocity(x, sigma):
        v = guided(x, sigma)
        level = float(sigma[0])
        bucket = next(name for name, (low, high) in SIGMA_BUCKETS.items() if low <= level <= high)
        add_image_attention(accumulator, recorder, bucket, rows=slice(0, len(left)))  # conditional rows
        return v

    with torch.no_grad():
        flow_lib.euler_sample(recording_velocity, noise, sigmas)
    results["selectivity_guided_sampling"] = selectivity_rows(accumulator.table())
    results["word_mass_share_guided_sampling"] = selectivity_rows(accumulator.word_share_table())
    print_selectivity(results["selectivity_guided_sampling"],
                      f"selectivity along sampling at guidance {EVAL_GUIDANCES[-1]} (cond rows):")

    canvases, prompts, _ = data_lib.heldout_canvases(EVAL_INVERSION_CANVASES, seed=seed + 1)
    context = text.encode(prompts)
    uncond = text.encode([""] * len(prompts))
    sigmas = flow_lib.simple_sigmas(EVAL_INVERSION_STEPS, shift)
    round_trips = {}
    with torch.no_grad():
        for rule, next_level in (("next level", True), ("current level", False)):
            noise = flow_lib.euler_invert(plain.guided(context, None, 1.0), canvases, sigmas, next_level=next_level)
            rebuilt = flow_lib.euler_sample(plain.guided(context, None, 1.0), noise, sigmas)
            round_trips[rule] = {"psnr_db_mean": round(psnr_db(rebuilt, canvases), 2),
                                 "inverted_std": round(float(noise.std()), 3)}
            if next_level:
                gap = flow_lib.euler_sample(plain.guided(context, uncond, EVAL_GAP_GUIDANCE), noise, sigmas)
                round_trips[rule][f"psnr_db_at_guidance_{EVAL_GAP_GUIDANCE}"] = round(psnr_db(gap, canvases), 2)
    results["inversion_round_trip"] = {"guidance": 1.0, "steps": EVAL_INVERSION_STEPS, "scheduler": "simple",
                                       "shift": shift, "canvases": EVAL_INVERSION_CANVASES, **round_trips}
    print(f"Euler inversion round trip: {results['inversion_round_trip']}", flush=True)
    return results


# --------------------------------------------------------------------------- training


def train(args, flux_class, operations):
    """Train; return the EMA Flux, the EMA text encoder, the config and run statistics."""
    torch.manual_seed(args.seed)
    config = flow_lib.flux_config(hidden_size=args.hidden_size, num_heads=args.heads, depth=args.depth,
                                  depth_single_blocks=args.single_depth, axes_dim=tuple(args.axes_dim))
    flux = build_flux(flux_class, operations, config)
    init_flux(flux)
    text = PooledPromptEmbedding()
    text.reset_parameters(torch.Generator().manual_seed(args.seed + 1))
    ema_flux, ema_text = copy.deepcopy(flux).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
    parameters = list(flux.parameters()) + list(text.parameters())
    print(f"Flux parameters: {sum(p.numel() for p in flux.parameters()):,}; "
          f"text: {sum(p.numel() for p in text.parameters()):,}", flush=True)
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.0)

    recorder = flow_lib.JointAttentionRecorder()
    denoiser = FlowDenoiser(flux, text, recorder)
    ema_probe = FlowDenoiser(ema_flux, ema_text, flow_lib.JointAttentionRecorder())
    train_pool, _ = data_lib.split_indices()
    generator = torch.Generator().manual_seed(args.seed + 2)
    probe_canvases, probe_prompts, _ = data_lib.heldout_canvases(PROBE_CANVASES, seed=args.seed)

    log = TrainingLog(args.log_every, args.steps)
    for step in range(args.steps):
        progress = training_progress(step, args.steps, log.elapsed_s(), args.max_minutes * 60)
        if progress >= 1.0:
            print(f"stopping after {step} steps: the time budget of {args.max_minutes} min is spent", flush=True)
            break
        pairs = data_lib.random_pairs(train_pool, args.batch_size, generator)
        x0 = data_lib.make_canvases(pairs[:, 0], pairs[:, 1])
        ids = prompt_token_ids(data_lib.labels_of(pairs[:, 0]), data_lib.labels_of(pairs[:, 1]))
        conditional = torch.rand(args.batch_size, generator=generator) >= PROMPT_DROPOUT
        ids[~conditional] = vocab.PAD_ID
        sigma = flow_lib.training_sigmas(args.batch_size, generator, shift=args.shift)
        noise = torch.randn(x0.shape, generator=generator)

        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, progress, args.lr, args.warmup)
        with copy_saved_tensors():
            v_pred = denoiser.velocity(flow_lib.noised(x0, noise, sigma), sigma, text(ids))
            loss = F.mse_loss(v_pred, flow_lib.velocity_target(x0, noise))
            attn_loss = localisation_loss(recorder, conditional)
        optimiser_step(optimizer, parameters, loss + args.attention_loss_weight * attn_loss,
                       [(ema_flux, flux), (ema_text, text)], step)
        recorder.clear()
        log.after_step(step, loss, attn_loss, lambda: selectivity_rows(
            measure_selectivity(ema_probe, probe_canvases, probe_prompts, args.seed).table()))
    return ema_flux, ema_text, config, log.stats()


def metadata_for(args, config: dict, stats: dict, evaluation: dict) -> dict:
    """The file's metadata (every value becomes JSON; see testbed/weights.py)."""
    return {
        "format": {"name": FLOW_FORMAT_NAME, "version": FORMAT_VERSION},
        "unet_config": config,
        "model": {
            "family": "Flux (comfy.ldm.flux.model.Flux): double- and single-stream blocks, text tokens first",
            "prediction": "velocity v = noise - x0 (rectified flow; ComfyUI CONST)",
            "model_type": "FLUX",
            "model_sampling": {"class": "ModelSamplingFlux", "shift": args.shift,
                               "sigma(t)": "sigmoid(logit(t) + shift)", "timestep(sigma)": "sigma"},
            "latent_format": {"latent_channels": 1, "scale_factor": 1.0, "shift_factor": 0.0,
                              "note": "no VAE: the latent is the [-1, 1] canvas itself"},
            "attention_blocks": [list(key) for key in flow_lib.attention_blocks(config)],
            "token_layout": {"text_tokens": flow_lib.TEXT_TOKENS, "image_grid": list(flow_lib.IMAGE_GRID),
                             "patch_size": flow_lib.PATCH_SIZE,
                             "order": "text tokens first (RoPE position 0), then image tokens row by row",
                             "left_half": f"image token column < {flow_lib.IMAGE_GRID[1] // 2}"},
            "comfy_build": COMFY_BUILD_NOTE,
        },
        **canvas_metadata(pooling=PooledPromptEmbedding.pooling, pooled_dim=flow_lib.POOLED_DIM),
        "training": training_metadata(args, PROMPT_DROPOUT, "mse(v_pred, noise - x0), x = (1 - sigma) x0 + sigma noise, "
                                      f"sigma = sigmoid(N({args.shift}, {flow_lib.TRAINING_LOGIT_STD}))", stats),
        "evaluation": evaluation,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, default=Path(os.environ.get("COMFYUI_PATH", "ComfyUI")),
                        help="ComfyUI work tree (default: $COMFYUI_PATH)")
    parser.add_argument("--out", type=Path, default=FLOW_MODEL_PATH)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=7e-4)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--axes-dim", type=int, nargs="+", default=[4, 14, 14])
    parser.add_argument("--depth", type=int, default=2, help="double-stream blocks")
    parser.add_argument("--single-depth", type=int, default=2, help="single-stream blocks")
    parser.add_argument("--shift", type=float, default=flow_lib.SHIFT,
                        help="ModelSamplingFlux shift and centre of the logit-normal training law")
    parser.add_argument("--attention-loss-weight", type=float, default=0.05)
    parser.add_argument("--max-minutes", type=float, default=33.0,
                        help="wall-clock budget of the training loop (evaluation adds a few minutes)")
    parser.add_argument("--log-every", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-save", action="store_true", help="train and evaluate only (probe runs)")
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the model at --out")
    parser.add_argument("--write-evaluation", action="store_true",
                        help="with --evaluate-only: store the new numbers in the file's metadata")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    flux_class, operations = import_flux(args.comfyui)
    if args.evaluate_only:
        loaded = load_testbed(args.out)
        flux = build_flux(flux_class, operations, loaded.unet_config)
        flux.load_state_dict(loaded.unet_state_dict())
        shift = loaded.metadata["model"]["model_sampling"]["shift"]
        evaluation = evaluate(flux.eval(), loaded.text_encoder(), args.seed, shift)
        if args.write_evaluation:
            metadata = {key: value for key, value in loaded.metadata.items() if key != HASH_KEY}
            metadata["evaluation"] = {**evaluation, "stored_dtype": loaded.metadata["evaluation"].get("stored_dtype")}
            digest = save_testbed(args.out, loaded.tensors, metadata)
            print(f"rewrote the evaluation metadata of {args.out} (tensors unchanged, sha256 {digest})")
        return
    flux, text, config, stats = train(args, flux_class, operations)
    if args.no_save:
        evaluate(flux.eval(), text, args.seed, args.shift)
        return
    tensors = {UNET_PREFIX + key: value.float() for key, value in flux.state_dict().items()}
    tensors.update(text.tensors())
    evaluation = evaluate(flux.eval(), text, args.seed, args.shift)
    evaluation["stored_dtype"] = "float32"
    digest = save_testbed(args.out, tensors, metadata_for(args, config, stats, evaluation))
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, sha256 of tensors {digest})")


if __name__ == "__main__":
    main()
