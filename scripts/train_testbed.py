"""Train InvEdit's test-bed model: a tiny text-conditional ComfyUI UNet on two-digit canvases.

Not run in CI. One run takes about 20 minutes on 2 shared CPU cores (1600 steps of batch 64
in 18.6 min, then ~3 min of evaluation) and writes ``models/testbed_digits.safetensors``
(float32, 4.4 MB; see ``testbed/weights.py`` for the layout). Seeds are fixed; the
learning-rate schedule also ends at ``--max-minutes``, so a much slower machine stops early
(and then does not reproduce the committed weights bit for bit).

The model is ComfyUI's own ``UNetModel`` (SD1.x layout, narrow and shallow), eps-prediction
with ComfyUI's SD1.x discrete schedule, trained on 8x16 canvases of two scikit-learn digits
(``testbed/data.py``) with prompts such as "a photo of three and seven" embedded by a
token + position embedding (``testbed/text.py``), 15 % prompt dropout for classifier-free
guidance. An auxiliary attention-localisation loss (weight ``--attention-loss-weight``)
teaches each cross-attention layer to take a digit word's attention from that digit's own
half of the canvas, so Prompt-to-Prompt edits have word-selective maps to work with.
(Measured without it, after 600 steps: selectivity ~0.5 in the 8x16 blocks, 0.56 in
input.3, 0.80-0.96 in middle.0/output.0/output.1. With it: >= 0.97 in every block; the
blocks that cannot tell left from right, input.1 and output.3, learn to give the digit
words almost no attention instead, see ``word_mass_share`` in the evaluation.)

Usage (from the repository root, in a venv with torch, ComfyUI's requirements, safetensors
and scikit-learn)::

    python scripts/train_testbed.py --comfyui /path/to/ComfyUI
    python scripts/train_testbed.py --comfyui /path/to/ComfyUI --evaluate-only

The script prints the loss and the word selectivity as it trains, then evaluates the EMA
weights: class agreement of guided samples for all 100 digit pairs, selectivity per
cross-attention block and noise bucket, and the DDIM inversion round trip.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional

# On a shared CPU, OpenMP threads that spin while waiting slow training down ~10x.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from testbed import data as data_lib  # noqa: E402
from testbed import schedule as schedule_lib  # noqa: E402
from testbed import vocabulary as vocab  # noqa: E402
from testbed.classifier import training_split_classifier  # noqa: E402
from testbed.selectivity import SelectivityAccumulator, attention_map_size, own_half_share  # noqa: E402
from testbed.text import CONTEXT_DIM, PromptEmbedding  # noqa: E402
from testbed.weights import DEFAULT_MODEL_PATH, FORMAT_NAME, FORMAT_VERSION, HASH_KEY, UNET_PREFIX  # noqa: E402
from testbed.weights import load_testbed, save_testbed  # noqa: E402

SEED = 20251014
PROMPT_DROPOUT = 0.15
NOISE_BUCKETS = {"high": (667, 999), "mid": (334, 666), "low": (0, 333)}
"""Timestep ranges (inclusive) of the noise-level buckets used to report selectivity."""

EVAL_GUIDANCE = 4.0
EVAL_STEPS = 50
EVAL_SAMPLES_PER_PAIR = 4
EVAL_SELECTIVITY_CANVASES = 256
EVAL_INVERSION_CANVASES = 64
PROBE_CANVASES = 64
EMA_DECAY = 0.999

COMFY_BUILD_NOTE = (
    "class Latent(comfy.latent_formats.LatentFormat): latent_channels = 1; scale_factor = 1.0. "
    "class Config(comfy.supported_models.SD15): unet_config = <unet_config>; unet_extra_config = {}; "
    "latent_format = Latent. model = Config(unet_config).get_model({}); "
    "model.diffusion_model.load_state_dict(<tensors under 'diffusion_model.', prefix stripped>); "
    "conditioning = [[text_encoder(token_ids) [B, 8, 64], {}]]"
)

Recorder = dict
"""Block key ``(name, index, depth)`` -> attention probabilities ``[B, heads, Nq, Nk]``."""


# --------------------------------------------------------------------------- ComfyUI model


def prepare_comfy(comfyui_path: Path) -> None:
    """Make a ComfyUI work tree importable: CPU, no argument parsing."""
    sys.path.insert(0, str(comfyui_path))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


def import_comfy(comfyui_path: Path):
    """Import ComfyUI's UNet and ops from a ComfyUI work tree (CPU, no argument parsing)."""
    prepare_comfy(comfyui_path)
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel, comfy.ops.disable_weight_init


def make_unet_config(model_channels: int, res_blocks_first_level: int, head_channels: int) -> dict:
    """``UNetModel`` kwargs: SD1.x layout, attention on both levels, linear transformer proj."""
    num_res_blocks = [res_blocks_first_level, 1]
    return {
        "image_size": data_lib.CANVAS_HEIGHT,
        "in_channels": data_lib.CANVAS_CHANNELS,
        "out_channels": data_lib.CANVAS_CHANNELS,
        "model_channels": model_channels,
        "channel_mult": [1, 2],
        "num_res_blocks": num_res_blocks,
        "transformer_depth": [1] * sum(num_res_blocks),
        "transformer_depth_middle": 1,
        "transformer_depth_output": [1] * (sum(num_res_blocks) + len(num_res_blocks)),
        "context_dim": CONTEXT_DIM,
        "num_heads": -1,
        "num_head_channels": head_channels,
        "use_linear_in_transformer": True,
        "use_spatial_transformer": True,
        "legacy": False,
        "use_checkpoint": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
    }


def build_unet(unet_class, operations, unet_config: dict) -> torch.nn.Module:
    """A float32 ``UNetModel`` on the CPU (weights uninitialised: comfy ops skip init)."""
    return unet_class(**unet_config, dtype=torch.float32, device="cpu", operations=operations)


def init_unet(unet: torch.nn.Module) -> None:
    """PyTorch's default init for every layer, zero for the layers that end a residual branch.

    The zeroed layers (each ResBlock's last conv, each SpatialTransformer's proj_out, the
    final conv) follow the original LDM code's ``zero_module``. Uses torch's global RNG.
    """
    torch_classes = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm)
    for module in unet.modules():
        for torch_class in torch_classes:
            if isinstance(module, torch_class):
                torch_class.reset_parameters(module)
                break
    ends = [unet.out[-1]]
    for module in unet.modules():
        kind = type(module).__name__
        if kind == "ResBlock":
            ends.append(module.out_layers[-1])
        elif kind == "SpatialTransformer":
            ends.append(module.proj_out)
    with torch.no_grad():
        for layer in ends:
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()


def cross_attention_blocks(unet: torch.nn.Module) -> list[tuple[str, int, int]]:
    """Patch keys ``(block_name, block_index, depth_index)`` of every cross-attention layer."""
    keys = []
    groups = [("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)]
    for name, blocks in groups:
        for index, block in enumerate(blocks):
            for module in block:
                if type(module).__name__ == "SpatialTransformer":
                    keys += [(name, index, depth) for depth in range(len(module.transformer_blocks))]
    return keys


def recording_attention(key, recorder: Recorder) -> Callable:
    """An attn2 replace patch: explicit softmax attention that stores its probabilities."""

    def attention(q, k, v, extra_options):
        heads = extra_options["n_heads"]
        rows, queries, inner = q.shape
        dim_head = inner // heads
        q, k, v = (t.reshape(rows, -1, heads, dim_head).transpose(1, 2) for t in (q, k, v))
        probs = (q.float() @ k.float().transpose(-1, -2) * dim_head**-0.5).softmax(dim=-1)
        recorder[key] = probs
        out = probs.to(v.dtype) @ v
        return out.transpose(1, 2).reshape(rows, queries, inner)

    return attention


def transformer_options_for(blocks, recorder: Recorder) -> dict:
    """ComfyUI ``transformer_options`` with recording attn2 patches on ``blocks``."""
    return {"patches_replace": {"attn2": {key: recording_attention(key, recorder) for key in blocks}}}


# --------------------------------------------------------------------------- training pieces


def prompt_token_ids(left_labels: torch.Tensor, right_labels: torch.Tensor) -> torch.Tensor:
    """Token ids ``[B, 8]`` of the template prompts for digit labels ``[B]``, ``[B]``."""
    template = torch.tensor(vocab.tokenize(vocab.prompt_for(0, 0)))
    ids = template.repeat(len(left_labels), 1)
    first_digit_id = vocab.TOKEN_IDS[vocab.DIGIT_WORDS[0]]
    ids[:, vocab.LEFT_WORD_POSITION] = first_digit_id + left_labels
    ids[:, vocab.RIGHT_WORD_POSITION] = first_digit_id + right_labels
    return ids


def localisation_loss(recorder: Recorder, conditional: torch.Tensor) -> torch.Tensor:
    """Mean over blocks of 1 - (share of the two digit words' attention mass on their own half).

    ``conditional [B]`` bool marks the rows whose prompt names the digits (not dropped).
    """
    losses = []
    for probs in recorder.values():  # [B, heads, Nq, Nk]
        height, width = attention_map_size(probs.shape[2])
        losses.append(1.0 - own_half_share(probs[conditional], height, width))
    return torch.stack(losses).mean()


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, step: int) -> None:
    """Exponential moving average of parameters with the usual warm-up of the decay."""
    decay = min(EMA_DECAY, (1 + step) / (10 + step))
    with torch.no_grad():
        for ema_param, param in zip(ema.parameters(), model.parameters()):
            ema_param.lerp_(param, 1.0 - decay)


def learning_rate(step: int, progress: float, peak: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 10 % of the peak at ``progress`` 1."""
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def optimiser_step(optimizer, parameters, total: torch.Tensor, ema_pairs, step: int) -> None:
    """Backward pass, gradient norm clipped to 1, optimiser step, then each ``(ema, model)`` pair's EMA."""
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(parameters, 1.0)
    optimizer.step()
    for ema, model in ema_pairs:
        update_ema(ema, model, step)


class TrainingLog:
    """A run's smoothed losses, the EMA model's word selectivity every ``log_every`` steps, its history."""

    def __init__(self, log_every: int, total_steps: int) -> None:
        self.log_every, self.total_steps = log_every, total_steps
        self.start = time.time()
        self.running = {"loss": 0.0, "attn": 0.0}
        self.history: list[dict] = []
        self.steps_done = 0

    def elapsed_s(self) -> float:
        return time.time() - self.start

    def after_step(self, step: int, loss: torch.Tensor, attn_loss: torch.Tensor, selectivity: Callable[[], dict]) -> None:
        """Record step ``step``'s losses; every ``log_every`` steps print and keep ``selectivity()``'s table."""
        for key, value in (("loss", loss), ("attn", attn_loss)):
            self.running[key] = 0.98 * self.running[key] + 0.02 * value.item() if step else value.item()
        self.steps_done = step + 1
        if (step + 1) % self.log_every and step + 1 != self.total_steps:
            return
        table = selectivity()
        mean_selectivity = sum(row["all"] for row in table.values()) / len(table)
        worst = min(table.items(), key=lambda item: item[1]["all"])
        minutes = self.elapsed_s() / 60
        print(f"step {step + 1:5d}  {minutes:5.1f} min  loss {self.running['loss']:.4f}  "
              f"attn-loss {self.running['attn']:.3f}  EMA selectivity mean {mean_selectivity:.3f} "
              f"(lowest {worst[0]} {worst[1]['all']:.3f})", flush=True)
        self.history.append({"step": step + 1, "minutes": round(minutes, 2), "loss": round(self.running["loss"], 4),
                             "attention_loss": round(self.running["attn"], 4),
                             "selectivity_mean": round(mean_selectivity, 4)})

    def stats(self) -> dict:
        return {"steps_done": self.steps_done, "minutes": round(self.elapsed_s() / 60, 2),
                "final_loss_ema": round(self.running["loss"], 4), "history": self.history}


def training_progress(step: int, total_steps: int, elapsed_s: float, budget_s: float) -> float:
    """Fraction of the run done: steps or wall-clock budget, whichever is further along.

    On a fast machine the run does all its steps; on a slow or shared one it ends at the
    time budget, still with a completed learning-rate schedule.
    """
    return max(step / total_steps, elapsed_s / budget_s)


# --------------------------------------------------------------------------- evaluation


class TestbedDenoiser:
    """eps and x0 predictions of (UNet, text encoder) in ComfyUI's k-diffusion convention."""

    def __init__(self, unet: torch.nn.Module, text: PromptEmbedding, recorder: Optional[Recorder] = None):
        self.unet, self.text = unet, text
        self.sigma_table = schedule_lib.sigmas()
        self.blocks = cross_attention_blocks(unet)
        self.recorder = recorder
        self.options = transformer_options_for(self.blocks, recorder) if recorder is not None else {}

    def timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        """Nearest integer timestep in log sigma (ComfyUI's ModelSamplingDiscrete.timestep)."""
        distance = sigma.log()[None, :] - self.sigma_table.log()[:, None]
        return distance.abs().argmin(dim=0).float()

    def eps(self, x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """``x [B,1,8,16]`` at k-diffusion level ``sigma [B]`` -> predicted eps ``[B,1,8,16]``."""
        scale = (sigma**2 + 1.0).rsqrt().view(-1, 1, 1, 1)
        return self.unet(x * scale, self.timestep(sigma), context, transformer_options=dict(self.options))

    def guided_eps(self, x, sigma, context, uncond_context, guidance: float) -> torch.Tensor:
        """Classifier-free guided eps (one batched call for cond and uncond)."""
        if guidance == 1.0:
            return self.eps(x, sigma, context)
        both = self.eps(torch.cat([x, x]), torch.cat([sigma, sigma]), torch.cat([context, uncond_context]))
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)


def ddim_sample(denoiser: TestbedDenoiser, noise, context, uncond_context, guidance, sigmas, on_step=None):
    """DDIM (eta 0) = Euler in sigma from ``noise * sqrt(1 + sigma_max^2)`` (ComfyUI's start)."""
    x = noise * (1.0 + sigmas[0] ** 2).sqrt()
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        sigma_batch = sigma.expand(x.shape[0])
        eps = denoiser.guided_eps(x, sigma_batch, context, uncond_context, guidance)
        if on_step is not None:
            on_step(sigma)
        x = x + (sigma_next - sigma) * eps
    return x


def ddim_invert(denoiser: TestbedDenoiser, x0, context, sigmas_ascending):
    """Reference DDIM inversion (model sees the current latent at the next level)."""
    x = x0 * (1.0 + sigmas_ascending[0] ** 2).sqrt()
    for sigma, sigma_next in zip(sigmas_ascending[:-1], sigmas_ascending[1:]):
        x_in = x * ((1.0 + sigma_next**2) / (1.0 + sigma**2)).sqrt()
        eps = denoiser.eps(x_in, sigma_next.expand(x.shape[0]), context)
        x = x + (sigma_next - sigma) * eps
    return x


def measure_selectivity(denoiser: TestbedDenoiser, canvases, prompts, seed: int) -> SelectivityAccumulator:
    """Digit-word attention masses per (block, bucket) on noised canvases with their own prompts."""
    generator = torch.Generator().manual_seed(seed)
    abar = schedule_lib.alphas_cumprod().float()
    accumulator = SelectivityAccumulator()
    context = denoiser.text.encode(prompts)
    with torch.no_grad():
        for bucket, (low, high) in NOISE_BUCKETS.items():
            t = torch.randint(low, high + 1, (len(canvases),), generator=generator)
            noise = torch.randn(canvases.shape, generator=generator)
            a = abar[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * canvases + (1 - a).sqrt() * noise
            denoiser.unet(x_t, t.float(), context, transformer_options=dict(denoiser.options))
            for key, probs in denoiser.recorder.items():
                height, width = attention_map_size(probs.shape[2])
                accumulator.add((key, bucket), probs.flatten(0, 1), height, width)
    return accumulator


def selectivity_rows(table: dict) -> dict:
    """``{"input.1": {"high": s, "mid": s, "low": s, "all": mean}, ...}`` from a (key, bucket) table."""
    rows: dict = {}
    for (key, bucket), share in table.items():
        rows.setdefault(f"{key[0]}.{key[1]}", {})[bucket] = round(share, 4)
    for row in rows.values():
        row["all"] = round(sum(row[b] for b in NOISE_BUCKETS) / len(NOISE_BUCKETS), 4)
    return rows


def print_selectivity(rows: dict, title: str) -> None:
    print(title)
    print("  block       " + "  ".join(f"{b:>6}" for b in (*NOISE_BUCKETS, "all")))
    for block, row in rows.items():
        print(f"  {block:<10}  " + "  ".join(f"{row[b]:6.3f}" for b in (*NOISE_BUCKETS, "all")))


def selectivity_results(measured: SelectivityAccumulator, share_title: str) -> dict:
    """Evaluation entries (printed) of the selectivity and word-share tables on noised held-out canvases."""
    results = {"selectivity_heldout_noised": selectivity_rows(measured.table()),
               "word_mass_share_heldout_noised": selectivity_rows(measured.word_share_table())}
    print_selectivity(results["selectivity_heldout_noised"],
                      "selectivity on noised held-out canvases (own-half share of digit-word attention):")
    print_selectivity(results["word_mass_share_heldout_noised"], share_title)
    return results


def every_pair_prompts(text: PromptEmbedding, samples_per_pair: int):
    """``(left [N], right [N], context [N, 8, 64], uncond [N, 8, 64])``: each of the 100 digit pairs
    ``samples_per_pair`` times (pairs in order, repeated), with the empty prompt's context."""
    digits = torch.arange(10)
    left = digits.repeat_interleave(10).repeat(samples_per_pair)
    right = digits.repeat(10).repeat(samples_per_pair)
    return left, right, text(prompt_token_ids(left, right)), text(vocab.tokenize_batch([""] * len(left)))


def evaluate(unet, text, seed: int, sampling: bool = True, log=print) -> dict:
    """Selectivity tables, and with ``sampling`` the agreement of guided samples and the inversion round trip."""
    recorder: Recorder = {}
    denoiser = TestbedDenoiser(unet, text, recorder)
    classifier = training_split_classifier()
    results: dict = {"classifier_heldout_accuracy": round(classifier.heldout_accuracy(), 4)}

    canvases, prompts, _ = data_lib.heldout_canvases(EVAL_SELECTIVITY_CANVASES, seed=seed)
    results.update(selectivity_results(measure_selectivity(denoiser, canvases, prompts, seed),
                                       "share of all cross-attention mass that goes to the two digit words:"))
    if not sampling:
        return results

    left, right, context, uncond = every_pair_prompts(text, EVAL_SAMPLES_PER_PAIR)
    sigmas = schedule_lib.ddim_uniform_sigmas(EVAL_STEPS)
    noise = torch.randn((len(left), *data_lib.CANVAS_SHAPE), generator=torch.Generator().manual_seed(seed))
    accumulator = SelectivityAccumulator()
    t_table = schedule_lib.sigmas()

    def record(sigma):
        t = int((sigma.log() - t_table.log()).abs().argmin())
        bucket = next(name for name, (low, high) in NOISE_BUCKETS.items() if low <= t <= high)
        for key, probs in recorder.items():
            cond = probs[: len(left)]  # rows of the conditional half
            height, width = attention_map_size(cond.shape[2])
            accumulator.add((key, bucket), cond.flatten(0, 1), height, width)

    start = time.time()
    with torch.no_grad():
        samples = ddim_sample(denoiser, noise, context, uncond, EVAL_GUIDANCE, sigmas, on_step=record)
    predicted = classifier.predict_canvases(samples)
    agreement = (predicted == torch.stack([left, right], dim=1)).float()
    results["sample_agreement"] = {
        "guidance": EVAL_GUIDANCE,
        "steps": EVAL_STEPS,
        "scheduler": "ddim_uniform",
        "samples": len(left),
        "per_half": round(float(agreement.mean()), 4),
        "both_halves": round(float(agreement.all(dim=1).float().mean()), 4),
        "left": round(float(agreement[:, 0].mean()), 4),
        "right": round(float(agreement[:, 1].mean()), 4),
        "seconds": round(time.time() - start, 1),
    }
    log(f"guided samples: {results['sample_agreement']}")
    results["selectivity_guided_sampling"] = selectivity_rows(accumulator.table())
    results["word_mass_share_guided_sampling"] = selectivity_rows(accumulator.word_share_table())
    print_selectivity(results["selectivity_guided_sampling"], "selectivity along guided DDIM sampling (cond rows):")
    print_selectivity(results["word_mass_share_guided_sampling"], "digit-word mass share along guided sampling:")

    canvases, prompts, _ = data_lib.heldout_canvases(EVAL_INVERSION_CANVASES, seed=seed + 1)
    ascending = torch.cat([schedule_lib.sigmas()[:1], schedule_lib.ddim_uniform_sigmas(EVAL_STEPS)[:-1].flip(0)])
    denoiser_plain = TestbedDenoiser(unet, text)
    with torch.no_grad():
        context = text.encode(prompts)
        inverted = ddim_invert(denoiser_plain, canvases, context, ascending)
        rebuilt = ddim_sample(denoiser_plain, inverted / (1.0 + ascending[-1] ** 2).sqrt(), context, None, 1.0,
                              schedule_lib.ddim_uniform_sigmas(EVAL_STEPS))
    mse = ((rebuilt.clamp(-1, 1) - canvases) / 2.0).pow(2).mean(dim=(1, 2, 3))
    psnr = (10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()
    results["inversion_round_trip"] = {
        "guidance": 1.0,
        "steps": EVAL_STEPS,
        "canvases": EVAL_INVERSION_CANVASES,
        "psnr_db_mean": round(float(psnr), 2),
        "rule": "reference (model sees z_t at t_next)",
        "inverted_std": round(float((inverted / (1.0 + ascending[-1] ** 2).sqrt()).std()), 3),
    }
    log(f"inversion round trip: {results['inversion_round_trip']}")
    return results


# --------------------------------------------------------------------------- main


def train(args, unet_class, operations) -> tuple[torch.nn.Module, PromptEmbedding, dict, dict]:
    """Train and return the EMA UNet, EMA text encoder, the unet config and run statistics."""
    torch.manual_seed(args.seed)
    unet_config = make_unet_config(args.model_channels, args.res_blocks_first_level, args.head_channels)
    unet = build_unet(unet_class, operations, unet_config)
    init_unet(unet)
    text = PromptEmbedding()
    text.reset_parameters(torch.Generator().manual_seed(args.seed + 1))
    ema_unet, ema_text = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text).requires_grad_(False)
    parameters = list(unet.parameters()) + list(text.parameters())
    print(f"UNet parameters: {sum(p.numel() for p in unet.parameters()):,}; "
          f"text: {sum(p.numel() for p in text.parameters()):,}")
    optimizer = torch.optim.AdamW(parameters, lr=args.lr, weight_decay=0.0)

    recorder: Recorder = {}
    blocks = cross_attention_blocks(unet)
    options = transformer_options_for(blocks, recorder)
    train_pool, _ = data_lib.split_indices()
    generator = torch.Generator().manual_seed(args.seed + 2)
    abar = schedule_lib.alphas_cumprod().float()
    probe_canvases, probe_prompts, _ = data_lib.heldout_canvases(PROBE_CANVASES, seed=args.seed)
    ema_probe = TestbedDenoiser(ema_unet, ema_text, {})

    log = TrainingLog(args.log_every, args.steps)
    for step in range(args.steps):
        pairs = data_lib.random_pairs(train_pool, args.batch_size, generator)
        x0 = data_lib.make_canvases(pairs[:, 0], pairs[:, 1])
        ids = prompt_token_ids(data_lib.labels_of(pairs[:, 0]), data_lib.labels_of(pairs[:, 1]))
        conditional = torch.rand(args.batch_size, generator=generator) >= PROMPT_DROPOUT
        ids[~conditional] = vocab.PAD_ID
        t = torch.randint(0, schedule_lib.NUM_TIMESTEPS, (args.batch_size,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        a = abar[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0 + (1.0 - a).sqrt() * noise

        progress = training_progress(step, args.steps, log.elapsed_s(), args.max_minutes * 60)
        if progress >= 1.0:
            print(f"stopping after {step} steps: the time budget of {args.max_minutes} min is spent", flush=True)
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, progress, args.lr, args.warmup)
        eps_pred = unet(x_t, t.float(), text(ids), transformer_options=dict(options))
        loss = F.mse_loss(eps_pred, noise)
        attn_loss = localisation_loss(recorder, conditional)
        optimiser_step(optimizer, parameters, loss + args.attention_loss_weight * attn_loss,
                       [(ema_unet, unet), (ema_text, text)], step)
        recorder.clear()
        log.after_step(step, loss, attn_loss, lambda: selectivity_rows(
            measure_selectivity(ema_probe, probe_canvases, probe_prompts, args.seed).table()))
    return ema_unet, ema_text, unet_config, log.stats()


def metadata_for(args, unet_config: dict, stats: dict, evaluation: dict) -> dict:
    """The file's metadata (every value becomes JSON; see testbed/weights.py)."""
    return {
        "format": {"name": FORMAT_NAME, "version": FORMAT_VERSION},
        "unet_config": unet_config,
        "model": {
            "family": "SD1.x UNetModel (comfy.ldm.modules.diffusionmodules.openaimodel)",
            "prediction": "eps",
            "schedule": {"beta_schedule": schedule_lib.SCHEDULE_NAME, "comfy_beta_schedule": "linear",
                         "linear_start": schedule_lib.LINEAR_START, "linear_end": schedule_lib.LINEAR_END,
                         "timesteps": schedule_lib.NUM_TIMESTEPS},
            "latent_format": {"latent_channels": 1, "scale_factor": 1.0, "shift_factor": 0.0,
                              "note": "no VAE: the latent is the [-1, 1] canvas itself"},
            "cross_attention_blocks": [list(key) for key in cross_attention_blocks_from_config(unet_config)],
            "comfy_build": COMFY_BUILD_NOTE,
        },
        **canvas_metadata(),
        "training": training_metadata(args, PROMPT_DROPOUT, "mse(eps_pred, eps), t uniform in 0..999, "
                                                            "x_t = sqrt(abar) x0 + sqrt(1 - abar) eps", stats),
        "evaluation": evaluation,
    }


def training_metadata(args, prompt_dropout: float, objective: str, stats: dict) -> dict:
    """The ``training`` metadata: the run's settings (both scripts share the optimiser and EMA) and statistics."""
    return {"seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
            "warmup": args.warmup, "optimizer": "AdamW, grad clip 1.0, cosine to 10 %", "ema_decay": EMA_DECAY,
            "prompt_dropout": prompt_dropout, "attention_loss_weight": args.attention_loss_weight,
            "objective": objective, "threads": torch.get_num_threads(), "torch": torch.__version__, **stats}


def canvas_metadata(**text_extra) -> dict:
    """The ``text``, ``image`` and ``data_split`` metadata, shared by both test-bed files.

    ``text_extra`` adds entries to ``text`` (the flow model's pooling).
    """
    _, heldout = data_lib.split_indices()
    return {
        "text": {
            "vocabulary": list(vocab.VOCABULARY),
            "pad_token": vocab.PAD_TOKEN,
            "unconditional_prompt": "",
            "prompt_template": vocab.PROMPT_TEMPLATE,
            "token_length": vocab.TOKEN_LENGTH,
            "digit_word_positions": {"left": vocab.LEFT_WORD_POSITION, "right": vocab.RIGHT_WORD_POSITION},
            "context_dim": CONTEXT_DIM,
            "encoder": "context[b, j] = text.token_embedding[ids[b, j]] + text.position_embedding[j]",
            **text_extra,
        },
        "image": {"shape_chw": list(data_lib.CANVAS_SHAPE), "value_range": [-1.0, 1.0],
                  "layout": "left digit columns 0-7, right digit columns 8-15; -1 is blank",
                  "source": "sklearn.datasets.load_digits (values 0..16 mapped by v / 8 - 1)"},
        "data_split": {"seed": data_lib.SPLIT_SEED, "heldout_fraction": data_lib.HELDOUT_FRACTION,
                       "rule": "perm = numpy.random.default_rng(seed).permutation(1797); "
                               "held out = sorted(perm[:round(fraction * 1797)]); train = the rest",
                       "heldout_indices": [int(i) for i in heldout],
                       "heldout_tensors": {data_lib.HELDOUT_INDICES_KEY: "[N] int64 dataset indices",
                                           data_lib.HELDOUT_PIXELS_KEY: "[N, 8, 8] uint8 raw values 0..16",
                                           data_lib.HELDOUT_LABELS_KEY: "[N] int64 labels",
                                           "file": "models/testbed_digits.safetensors"}},
    }


def cross_attention_blocks_from_config(unet_config: dict) -> list[tuple[str, int, int]]:
    """Cross-attention patch keys implied by a config of this script's layout."""
    first, second = unet_config["num_res_blocks"]
    keys = [("input", 1 + i, 0) for i in range(first)] + [("input", first + 2, 0), ("middle", 0, 0)]
    keys += [("output", i, 0) for i in range(2 + first + 1)]
    return keys


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, default=Path(os.environ.get("COMFYUI_PATH", "ComfyUI")),
                        help="ComfyUI work tree (default: $COMFYUI_PATH)")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--model-channels", type=int, default=32)
    parser.add_argument("--res-blocks-first-level", type=int, default=1)
    parser.add_argument("--head-channels", type=int, default=32)
    parser.add_argument("--attention-loss-weight", type=float, default=0.05)
    parser.add_argument("--max-minutes", type=float, default=20.0,
                        help="wall-clock budget of the training loop (evaluation adds a few minutes)")
    parser.add_argument("--log-every", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fp16", action="store_true", help="store float16 weights (default float32)")
    parser.add_argument("--no-save", action="store_true", help="train and evaluate only (probe runs)")
    parser.add_argument("--skip-sampling", action="store_true", help="with --no-save: selectivity only")
    parser.add_argument("--evaluate-only", action="store_true", help="evaluate the model at --out")
    parser.add_argument("--write-evaluation", action="store_true",
                        help="with --evaluate-only: store the new numbers in the file's metadata")
    parser.add_argument("--write-heldout-digits", action="store_true",
                        help="rewrite the file at --out with the held-out digits added (model tensors unchanged)")
    return parser.parse_args()


def write_heldout_digits(path: Path) -> None:
    """Add the held-out digits (``heldout.*`` tensors) to an existing file; every other tensor is kept."""
    loaded = load_testbed(path)
    metadata = {key: value for key, value in loaded.metadata.items() if key != HASH_KEY}
    metadata["data_split"] = canvas_metadata()["data_split"]
    digest = save_testbed(path, {**loaded.tensors, **data_lib.heldout_tensors()}, metadata)
    print(f"added the held-out digits to {path} (sha256 of tensors {digest})")


def main() -> None:
    args = parse_args()
    if args.write_heldout_digits:
        write_heldout_digits(args.out)
        return
    torch.set_num_threads(args.threads)
    unet_class, operations = import_comfy(args.comfyui)
    if args.evaluate_only:
        loaded = load_testbed(args.out)
        unet = build_unet(unet_class, operations, loaded.unet_config)
        unet.load_state_dict({k: v.float() for k, v in loaded.unet_state_dict().items()})
        evaluation = evaluate(unet.eval(), loaded.text_encoder(), args.seed)
        if args.write_evaluation:
            evaluation["stored_dtype"] = loaded.metadata["evaluation"].get("stored_dtype")
            metadata = {key: value for key, value in loaded.metadata.items() if key != HASH_KEY}
            metadata["evaluation"] = evaluation
            digest = save_testbed(args.out, loaded.tensors, metadata)
            print(f"rewrote the evaluation metadata of {args.out} (tensors unchanged, sha256 {digest})")
        return
    unet, text, unet_config, stats = train(args, unet_class, operations)
    if args.no_save:
        evaluate(unet.eval(), text, args.seed, sampling=not args.skip_sampling)
        return
    dtype = torch.float16 if args.fp16 else torch.float32
    tensors = {UNET_PREFIX + key: value.to(dtype) for key, value in unet.state_dict().items()}
    tensors.update({key: value.to(dtype) for key, value in text.tensors().items()})
    tensors.update(data_lib.heldout_tensors())
    # evaluate exactly what is stored (the rounded weights, computed in float32)
    unet.load_state_dict({k[len(UNET_PREFIX):]: v.float() for k, v in tensors.items() if k.startswith(UNET_PREFIX)})
    evaluation = evaluate(unet.eval(), PromptEmbedding.from_tensors(tensors), args.seed)
    evaluation["stored_dtype"] = str(dtype).removeprefix("torch.")
    digest = save_testbed(args.out, tensors, metadata_for(args, unet_config, stats, evaluation))
    print(f"saved {args.out} ({args.out.stat().st_size / 1e6:.2f} MB, sha256 of tensors {digest})")


if __name__ == "__main__":
    main()
