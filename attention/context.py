"""Where and when an attention call happens: the explicit context every controller receives.

The controllers never work out a layer's location or the step by counting calls (the reference
Prompt-to-Prompt code does, which breaks as soon as a sampler calls the model a different number
of times); the caller states both. :func:`context_from_extra_options` reads ComfyUI's
``extra_options`` dict of an attention replace patch (a plain dict: no ComfyUI import); the
step index comes from the caller, which pairs the call's sigma with the run's schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

COND = 0
"""``cond_or_uncond`` entry of a conditional chunk of rows (ComfyUI's convention)."""
UNCOND = 1
"""``cond_or_uncond`` entry of an unconditional chunk of rows."""


@dataclass(frozen=True)
class AttentionSite:
    """One attention layer of the UNet.

    Attributes:
        block: ``("input", i)``, ``("middle", 0)`` or ``("output", i)``.
        depth: index of the transformer block inside its spatial transformer.
        is_cross: cross attention (keys from the prompt) rather than self attention.
        heads: number of attention heads; q/k/v carry ``heads * dim_head`` features.
        query_shape: ``(height, width)`` of the layer's feature map; one query per pixel.
    """

    block: tuple[str, int]
    depth: int
    is_cross: bool
    heads: int
    query_shape: tuple[int, int]

    @property
    def query_positions(self) -> int:
        """Number of queries, ``height * width``."""
        return self.query_shape[0] * self.query_shape[1]


@dataclass(frozen=True)
class AttentionContext:
    """An attention call: the site, the sampling step and the layout of the rows.

    The rows of q/k/v are ``len(cond_or_uncond)`` chunks of ``B`` rows each; a conditional chunk
    holds ``[source, edit_1, ..., edit_{B-1}]``.

    Attributes:
        site: the layer.
        step: 0-based index of the sampling step (the caller derives it from the call's sigma).
        n_steps: number of sampling steps of the run.
        cond_or_uncond: one entry per chunk, :data:`COND` (0) or :data:`UNCOND` (1).
        latent_shape: ``(height, width)`` of the latent; needed by LocalBlend to pick its layers.
        attn_precision: the layer's attention precision; ``torch.float32`` means upcast.
    """

    site: AttentionSite
    step: int
    n_steps: int
    cond_or_uncond: tuple[int, ...]
    latent_shape: tuple[int, int] | None = None
    attn_precision: torch.dtype | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.step < self.n_steps:
            raise ValueError(f"The step index must lie in [0, {self.n_steps}), got {self.step}.")
        if not self.cond_or_uncond or any(c not in (COND, UNCOND) for c in self.cond_or_uncond):
            raise ValueError(f"cond_or_uncond must list 0 (cond) or 1 (uncond) per chunk, got {self.cond_or_uncond!r}.")

    def rows_per_chunk(self, rows: int) -> int:
        """``B``: rows of each chunk, checked to divide ``rows`` evenly."""
        chunks = len(self.cond_or_uncond)
        if rows % chunks:
            raise ValueError(f"{rows} attention rows do not split into {chunks} chunks (cond_or_uncond={self.cond_or_uncond}).")
        return rows // chunks

    def cond_chunk_starts(self, rows: int) -> list[int]:
        """First row (the source row) of each conditional chunk."""
        batch = self.rows_per_chunk(rows)
        return [index * batch for index, kind in enumerate(self.cond_or_uncond) if kind == COND]


def context_from_extra_options(
    extra_options: Mapping[str, Any], *, is_cross: bool, step: int, n_steps: int
) -> AttentionContext:
    """Build the context from the ``extra_options`` of a ComfyUI attention replace patch.

    Reads ``block``, ``block_index``, ``n_heads``, ``cond_or_uncond``, ``activations_shape``
    (``[b, c, h, w]`` of the layer), ``original_shape`` (the latent's) and ``attn_precision``;
    the dict is not modified.
    """
    block_name, block_id = extra_options["block"][:2]
    activations = extra_options["activations_shape"]
    original = extra_options.get("original_shape")
    return AttentionContext(
        site=AttentionSite(
            block=(str(block_name), int(block_id)),
            depth=int(extra_options.get("block_index", 0)),
            is_cross=is_cross,
            heads=int(extra_options["n_heads"]),
            query_shape=(int(activations[-2]), int(activations[-1])),
        ),
        step=step,
        n_steps=n_steps,
        cond_or_uncond=tuple(int(c) for c in extra_options["cond_or_uncond"]),
        latent_shape=(int(original[-2]), int(original[-1])) if original is not None else None,
        attn_precision=extra_options.get("attn_precision"),
    )
