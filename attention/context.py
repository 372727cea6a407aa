"""Where and when an attention call happens: the explicit context every controller receives.

The controllers never work out a layer's location or the step by counting calls (the reference
Prompt-to-Prompt code does, which breaks as soon as a sampler calls the model a different number
of times); the caller states both: the host adapter reads the layer, the row layout and the
step from its own hooks and builds an :class:`AttentionContext`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

COND = 0
"""Kind of a conditional chunk of rows (the prompt's rows of a classifier-free-guided batch)."""
UNCOND = 1
"""Kind of an unconditional chunk of rows."""


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

    The rows of q/k/v are ``len(chunks)`` chunks of ``B`` rows each; a conditional chunk
    holds ``[source, edit_1, ..., edit_{B-1}]``.

    Attributes:
        site: the layer.
        step: 0-based index of the sampling step (the caller derives it from the call's sigma).
        n_steps: number of sampling steps of the run.
        chunks: the kind of each chunk of rows, in order: :data:`COND` or :data:`UNCOND`.
        latent_shape: ``(height, width)`` of the latent; needed by LocalBlend to pick its layers.
        attn_precision: the layer's attention precision; ``torch.float32`` means upcast.
    """

    site: AttentionSite
    step: int
    n_steps: int
    chunks: tuple[int, ...]
    latent_shape: tuple[int, int] | None = None
    attn_precision: torch.dtype | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.step < self.n_steps:
            raise ValueError(f"The step index must lie in [0, {self.n_steps}), got {self.step}.")
        if not self.chunks or any(c not in (COND, UNCOND) for c in self.chunks):
            raise ValueError(f"chunks must list COND ({COND}) or UNCOND ({UNCOND}) per chunk of rows, got {self.chunks!r}.")

    def rows_per_chunk(self, rows: int) -> int:
        """``B``: rows of each chunk, checked to divide ``rows`` evenly."""
        count = len(self.chunks)
        if rows % count:
            raise ValueError(f"{rows} attention rows do not split into {count} chunks (chunks={self.chunks}).")
        return rows // count

    def cond_chunk_starts(self, rows: int) -> list[int]:
        """First row (the source row) of each conditional chunk."""
        batch = self.rows_per_chunk(rows)
        return [index * batch for index, kind in enumerate(self.chunks) if kind == COND]
