"""The flow-matching test-bed: ComfyUI's Flux transformer, built small, on the two-digit canvases.

Pure torch (no ComfyUI imports): the model's configuration, its rectified-flow maths and the
token layout of its joint attention. The transformer itself is ComfyUI's
``comfy.ldm.flux.model.Flux``, built from :func:`flux_config` (ComfyUI's ``unet_config``).

Rectified flow, as ComfyUI's ``CONST`` model sampling writes it: the state at noise level
``sigma`` in [0, 1] is ``x = (1 - sigma) * x0 + sigma * noise`` and the model predicts the
velocity ``v = noise - x0``, so ``x0 = x - sigma * v``. Flux takes ``sigma`` itself as its
timestep (ComfyUI's ``ModelSamplingFlux.timestep(sigma) = sigma``; Flux multiplies by 1000 inside).

Timesteps: training draws ``sigma = sigmoid(n)``, ``n ~ N(SHIFT, 1)`` (the logit-normal law of
SD3 and Flux, centred at :data:`SHIFT` instead of 0), and the model samples with
``ModelSamplingFlux`` at the same shift. Because ComfyUI's Flux time shift is
``sigma(t) = e^mu / (e^mu + 1/t - 1) = sigmoid(logit(t) + mu)``, drawing ``sigmoid(N(mu, 1))`` is
exactly the shift ``mu`` applied to SD3's ``sigmoid(N(0, 1))``: the scheduler's steps and the
training levels have the same median ``sigmoid(mu)``.

Token layout of the joint attention (text first, as in Flux, Chroma and Kontext):
``[TEXT_TOKENS text tokens | IMAGE_TOKENS image tokens]``. The text tokens are the prompt's
8 token ids (digit words at 3 and 5, see :mod:`.vocabulary`), all at RoPE position 0, so word
order comes from the text encoder's position embedding. The image tokens are the 2x2 patches of
the 8x16 canvas, row by row (``index = row * IMAGE_GRID[1] + column``): 4 rows of 8; the left
digit is token columns 0..3.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .data import CANVAS_CHANNELS, CANVAS_HEIGHT, CANVAS_WIDTH
from .text import CONTEXT_DIM
from .vocabulary import TOKEN_LENGTH

PATCH_SIZE = 2
"""Side of a Flux image patch (ComfyUI's Flux hard-codes 2 in its final rearrange)."""
TEXT_TOKENS = TOKEN_LENGTH
"""Text tokens in front of the image tokens in every joint attention (8)."""
IMAGE_GRID = (CANVAS_HEIGHT // PATCH_SIZE, CANVAS_WIDTH // PATCH_SIZE)
"""``(rows, columns)`` of image tokens: (4, 8)."""
IMAGE_TOKENS = IMAGE_GRID[0] * IMAGE_GRID[1]
POOLED_DIM = CONTEXT_DIM
"""Width of the pooled prompt vector ``y`` (Flux's ``vec_in_dim``)."""

SHIFT = 0.5
"""``ModelSamplingFlux`` shift ``mu`` of the test-bed and the centre of its logit-normal training law.

Flux's own rule (the ModelSamplingFlux node) puts mu at 0.5 for 256 image tokens and raises it
linearly to 1.15 at 4096; extended down to this canvas's 32 tokens it gives 0.46. 0.5 is Flux's
base value: a small image needs little shift towards high noise, and a non-zero shift keeps the
schedule's sigma(t) different from t, so code that confuses the two is caught.
"""
TRAINING_LOGIT_STD = 1.0
"""Standard deviation of the logit-normal training law (SD3's and Flux's 1.0)."""


def flux_config(
    hidden_size: int = 64,
    num_heads: int = 2,
    axes_dim: tuple[int, ...] = (4, 14, 14),
    depth: int = 2,
    depth_single_blocks: int = 2,
    mlp_ratio: float = 4.0,
    theta: int = 10000,
) -> dict[str, Any]:
    """ComfyUI ``unet_config`` of the test-bed Flux (``Flux(**config, dtype=, device=, operations=)``).

    No guidance embedding (real classifier-free guidance instead); qkv bias; patch size 2;
    ``axes_dim`` entries even and summing to the head dimension ``hidden_size / num_heads``.
    """
    head_dim = hidden_size // num_heads
    if hidden_size % num_heads or sum(axes_dim) != head_dim or any(size % 2 for size in axes_dim):
        raise ValueError(f"axes_dim {axes_dim} must be even sizes summing to the head dim {head_dim}")
    return {
        "image_model": "flux",
        "in_channels": CANVAS_CHANNELS,
        "out_channels": CANVAS_CHANNELS,
        "vec_in_dim": POOLED_DIM,
        "context_in_dim": CONTEXT_DIM,
        "hidden_size": hidden_size,
        "mlp_ratio": mlp_ratio,
        "num_heads": num_heads,
        "depth": depth,
        "depth_single_blocks": depth_single_blocks,
        "axes_dim": list(axes_dim),
        "theta": theta,
        "patch_size": PATCH_SIZE,
        "qkv_bias": True,
        "guidance_embed": False,
    }


def attention_blocks(config: dict[str, Any]) -> list[tuple[str, int]]:
    """Keys of the joint-attention blocks, as ComfyUI's ``patches_replace["dit"]`` names them.

    ``[("double_block", 0), ..., ("single_block", 0), ...]`` in the order the model runs them.
    """
    return [("double_block", index) for index in range(config["depth"])] + [
        ("single_block", index) for index in range(config["depth_single_blocks"])
    ]


# --------------------------------------------------------------------------- rectified flow


def time_shift(shift: float, t: torch.Tensor) -> torch.Tensor:
    """``sigma(t) = sigmoid(logit(t) + shift)``: ComfyUI's ``flux_time_shift(shift, 1.0, t)``."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return math.exp(shift) * t / (math.exp(shift) * t + (1.0 - t))


def training_sigmas(
    count: int, generator: torch.Generator, shift: float = SHIFT, std: float = TRAINING_LOGIT_STD
) -> torch.Tensor:
    """``[count]`` float32 noise levels ``sigmoid(N(shift, std))`` (logit-normal, in (0, 1))."""
    return torch.sigmoid(shift + std * torch.randn(count, generator=generator))


def simple_sigmas(steps: int, shift: float = SHIFT) -> torch.Tensor:
    """Descending ``[steps + 1]`` sigmas of ComfyUI's ``simple`` scheduler on ``ModelSamplingFlux``.

    ``time_shift(shift, 1 - i / steps)`` for ``i = 0..steps-1``, then 0. Equal to ComfyUI's
    (float32) when ``steps`` divides its 10000-entry sigma table.
    """
    t = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
    return torch.cat([time_shift(shift, t), torch.zeros(1, dtype=torch.float64)]).float()


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``(1 - sigma) * x0 + sigma * noise`` with ``sigma [B]`` broadcast over ``[B, C, H, W]``."""
    sigma = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1.0 - sigma) * x0 + sigma * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity ``d x / d sigma = noise - x0``."""
    return noise - x0


Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity(x [B, C, H, W], sigma [B]) -> v [B, C, H, W]`` (guidance already applied)."""


def euler_sample(velocity: Velocity, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Euler in sigma from ``sigmas[0] * noise`` (what ComfyUI's ``euler`` does on CONST models).

    ``x += (sigma_next - sigma) * v(x, sigma)`` for each step of the descending ``sigmas``.
    """
    x = sigmas[0] * noise
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = x + (sigma_next - sigma) * velocity(x, sigma.expand(x.shape[0]))
    return x


def euler_invert(velocity: Velocity, x0: torch.Tensor, sigmas: torch.Tensor, next_level: bool = True) -> torch.Tensor:
    """Euler inversion: walk the descending ``sigmas`` backwards from ``x0`` to the noise at ``sigmas[0]``.

    Each step ``sigma -> sigma_up`` adds ``(sigma_up - sigma) * v``. With ``next_level`` (the DDIM
    inversion analogue) ``v`` is the model's velocity for the current state at ``sigma_up``, the
    level where the sampling step that this step undoes evaluates it; otherwise at ``sigma``
    (plain Euler in increasing sigma, as ReFlow inversion does).
    """
    x = x0
    ascending = sigmas.flip(0)
    for sigma, sigma_up in zip(ascending[:-1], ascending[1:]):
        level = sigma_up if next_level else sigma
        x = x + (sigma_up - sigma) * velocity(x, level.expand(x.shape[0]))
    return x / ascending[-1]


# --------------------------------------------------------------------------- token layout


def image_query_attention(probs: torch.Tensor, text_tokens: int = TEXT_TOKENS) -> torch.Tensor:
    """The image tokens' rows of joint attention: ``[B, heads, L, L] -> [B * heads, IMAGE_TOKENS, L]``.

    ``L = text_tokens + image tokens``; key columns keep the joint order (text keys first), so a
    word's column is its token position. This is what :class:`.selectivity.SelectivityAccumulator`
    takes, with the map ``IMAGE_GRID``.
    """
    if probs.ndim != 4 or probs.shape[-1] != probs.shape[-2]:
        raise ValueError(f"expected joint attention [B, heads, L, L], got {tuple(probs.shape)}")
    return probs[:, :, text_tokens:, :].flatten(0, 1)


# --------------------------------------------------------------------------- recording joint attention

BLOCK_KEY_OPTION = "invedit_testbed_block"
"""``transformer_options`` entry that :func:`block_tagging_patch` sets to the running block's key."""


def block_tagging_patch(block_key: tuple[str, int]) -> Callable[[dict, dict], dict]:
    """A ComfyUI ``patches_replace["dit"][block_key]`` that runs the block unchanged, telling its
    attention which block it is in (``transformer_options[BLOCK_KEY_OPTION] = block_key``).

    ComfyUI's Flux blocks do not pass their index to the attention; this is the explicit way to
    give it (never by counting calls).
    """

    def patch(args: dict, extra: dict) -> dict:
        options = dict(args.get("transformer_options") or {})
        options[BLOCK_KEY_OPTION] = block_key
        return extra["original_block"]({**args, "transformer_options": options})

    return patch


class JointAttentionRecorder:
    """An ``optimized_attention_override``: explicit softmax attention that keeps its probabilities.

    ComfyUI's attention wrapper calls it as ``recorder(func, q, k, v, heads, ..., transformer_options=...)``;
    Flux passes ``q, k, v [B, heads, L, D]`` after RoPE (``skip_reshape=True``) and takes back
    ``[B, L, heads * D]``. ``probs[block_key]`` is then ``softmax(q k^T / sqrt(D)) [B, heads, L, L]``
    of the last call in that block (float32; part of the autograd graph when gradients are on).

    With ``uniform_words`` the image tokens' attention to the two digit words is replaced by its
    mean over the image tokens before it is used (a negative control: a model whose words are
    attended uniformly across the canvas).
    """

    def __init__(self, uniform_words: bool = False, word_positions: tuple[int, ...] = ()) -> None:
        self.probs: dict[tuple[str, int], torch.Tensor] = {}
        self.uniform_words = uniform_words
        self.word_positions = word_positions

    def __call__(self, func, q, k, v, heads, *args, transformer_options=None, skip_reshape=False, **kwargs):
        block_key = (transformer_options or {}).get(BLOCK_KEY_OPTION)
        if block_key is None or not skip_reshape or q.ndim != 4:
            raise ValueError("JointAttentionRecorder needs Flux's attention (q [B, heads, L, D]) inside "
                             "blocks tagged by block_tagging_patch")
        probs = (q.float() @ k.float().transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(dim=-1)
        if self.uniform_words:
            probs = probs.clone()
            words = list(self.word_positions)
            image_rows = probs[:, :, TEXT_TOKENS:, words]
            probs[:, :, TEXT_TOKENS:, words] = image_rows.mean(dim=2, keepdim=True).expand_as(image_rows)
        self.probs[block_key] = probs
        out = probs.to(v.dtype) @ v  # [B, heads, L, D]
        return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)

    def clear(self) -> None:
        self.probs.clear()


def recording_transformer_options(blocks: list[tuple[str, int]], recorder: JointAttentionRecorder) -> dict:
    """``transformer_options`` for a direct call of the Flux module: tagged blocks + the recorder."""
    return {"patches_replace": {"dit": {key: block_tagging_patch(key) for key in blocks}},
            "optimized_attention_override": recorder}
