"""The Prompt-to-Prompt attention controller: one callable for every attention layer.

Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control" (ICLR 2023), applied
to real images as in Mokady et al., "Null-text Inversion for Editing Real Images using Guided
Diffusion Models" (CVPR 2023). In every conditional chunk of rows ``[source, edit_1, ...]``:

* cross attention: each edited row's maps follow its :class:`PromptEdit` (word swap, refine,
  reweight; see :mod:`.edits`) inside the edit's per-token step windows;
* self attention: during an early step window and on layers with at most
  ``max_query_positions`` queries, every edited row takes the source row's maps;
* unconditional chunks and the source rows are computed plainly.

Outputs are computed with ``scaled_dot_product_attention`` on re-arranged queries, keys and values
(:func:`.maps.mixed_attention_flat`), so no map is materialised unless a LocalBlend or a map store
asks for a layer's cross maps, which are then computed for the conditional rows only. The state
that a run accumulates lives in the LocalBlend and the store; :meth:`PromptToPrompt.reset` clears
it together with cached coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from .blend import LocalBlend
from .context import AttentionContext, AttentionSite
from .edits import CrossEdit, CrossSchedule, StepWindow, blend_with_alpha
from .maps import RowMix, attention_maps, merge_heads, mix_maps, mixed_attention_explicit, mixed_attention_flat, split_heads
from .store import CrossMapStore

SELF_MAX_QUERY_POSITIONS_PTP = 16 * 16
"""Self-attention injection limit of the original Prompt-to-Prompt code (16x16 layers)."""
SELF_MAX_QUERY_POSITIONS_NULL_TEXT = 32 * 32
"""Self-attention injection limit of the null-text inversion code (up to 32x32 layers)."""
DEFAULT_SELF_REPLACE_FRACTION = 0.5
"""Self-attention injection over the first half of the steps (the null-text examples)."""

_REDUCED_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class SelfInjection:
    """Self-attention map injection: edited rows take the source's self-attention maps.

    Attributes:
        window: the steps it runs.
        max_query_positions: only layers with at most this many queries (the coarse layers that
            hold the layout; the fine ones keep the edit's detail).
    """

    window: StepWindow = field(default_factory=lambda: StepWindow(0.0, DEFAULT_SELF_REPLACE_FRACTION))
    max_query_positions: int = SELF_MAX_QUERY_POSITIONS_NULL_TEXT

    def applies(self, site: AttentionSite, step: int, n_steps: int) -> bool:
        """Whether the self-attention call at ``site`` in step ``step`` is injected."""
        return not site.is_cross and site.query_positions <= self.max_query_positions and self.window.contains(step, n_steps)


@dataclass(frozen=True)
class PromptEdit:
    """How one edited row's cross attention follows the source row.

    Attributes:
        cross: the cross-attention edit, or ``None`` to leave this row's cross attention alone.
        schedule: per-token windows of the cross replacement (the reference's ``alpha_t``).
    """

    cross: CrossEdit | None = None
    schedule: CrossSchedule = field(default_factory=CrossSchedule)


class PromptToPrompt:
    """Attention controller of a Prompt-to-Prompt edit: ``controller(q, k, v, context) -> out``.

    Args:
        edits: one :class:`PromptEdit` per edited row; a conditional chunk must hold
            ``1 + len(edits)`` rows (source first).
        self_injection: self-attention injection, or ``None`` for none.
        local_blend: optional LocalBlend fed with this run's cross maps (apply it with
            :meth:`blend` after each step).
        map_store: optional bounded store of cross maps for display.
        explicit_maps: compute every layer with materialised maps (the reference form, for
            tests and debugging) instead of the memory-flat SDPA form.
    """

    def __init__(
        self,
        edits: Sequence[PromptEdit],
        *,
        self_injection: SelfInjection | None = None,
        local_blend: LocalBlend | None = None,
        map_store: CrossMapStore | None = None,
        explicit_maps: bool = False,
    ) -> None:
        self.edits = tuple(edits)
        if local_blend is not None and local_blend.rows != 1 + len(self.edits):
            raise ValueError(
                f"The LocalBlend has words for {local_blend.rows} rows but the edit has {1 + len(self.edits)} "
                f"(source plus {len(self.edits)} edits)."
            )
        self.self_injection = self_injection
        self.local_blend = local_blend
        self.map_store = map_store
        self.explicit_maps = explicit_maps
        self._coefficients: dict[tuple, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def reset(self) -> None:
        """Clear the run's state: LocalBlend maps, stored maps and cached coefficients."""
        if self.local_blend is not None:
            self.local_blend.reset()
        if self.map_store is not None:
            self.map_store.reset()
        self._coefficients.clear()

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context: AttentionContext) -> torch.Tensor:
        """Attention of one layer call with the edits applied to the conditional rows.

        Args:
            q: ``[rows, Nq, heads * dim_head]`` projected queries.
            k, v: ``[rows, Nk, heads * dim_head]`` projected keys and values.
            context: the layer, the step and the chunk layout of the rows.

        Returns:
            ``[rows, Nq, heads * dim_head]`` in the dtype of ``q``.
        """
        site = context.site
        rows, n_query, _ = q.shape
        if k.shape[0] != rows or v.shape[0] != rows or k.shape[1] != v.shape[1]:
            raise ValueError(f"q/k/v disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}.")
        if n_query != site.query_positions:
            raise ValueError(f"q has {n_query} queries but the site's query shape {site.query_shape} has {site.query_positions}.")
        batch = context.rows_per_chunk(rows)
        starts = context.cond_chunk_starts(rows)
        if starts and batch != 1 + len(self.edits):
            raise ValueError(
                f"A conditional chunk has {batch} rows but this edit needs {1 + len(self.edits)}: the latent batch must "
                f"be the source followed by one row per edited prompt."
            )
        compute_dtype = torch.float32 if context.attn_precision == torch.float32 and q.dtype in _REDUCED_PRECISION else q.dtype
        qh, kh, vh = (split_heads(t, site.heads).to(compute_dtype) for t in (q, k, v))
        mixes = self._mixes(context, starts, k.shape[1], q.device, compute_dtype)
        attend = mixed_attention_explicit if self.explicit_maps else mixed_attention_flat
        out = attend(qh, kh, vh, mixes)
        if site.is_cross:
            self._record(qh, kh, mixes, starts, batch, context)
        return merge_heads(out).to(q.dtype)

    def blend(self, x: torch.Tensor, step: int, n_steps: int) -> torch.Tensor:
        """Apply the LocalBlend (if any) to the latents ``[rows, C, H, W]`` after step ``step``.

        Raises:
            ValueError: the LocalBlend's layer size matches none of the cross-attention layers
                that ran (it would silently blend nothing).
        """
        if self.local_blend is None:
            return x
        self.local_blend.check_fed()
        return self.local_blend.apply(x, step, n_steps)

    def _mixes(
        self, context: AttentionContext, starts: list[int], key_length: int, device: torch.device, dtype: torch.dtype
    ) -> list[RowMix]:
        site = context.site
        mixes: list[RowMix] = []
        if not site.is_cross:
            if self.self_injection is not None and self.self_injection.applies(site, context.step, context.n_steps):
                mixes = [RowMix(s + e, s, None, None) for s in starts for e in range(1, 1 + len(self.edits))]
            return mixes
        for index, edit in enumerate(self.edits):
            if edit.cross is None:
                continue
            coefficients = self._cross_coefficients(index, edit, context, key_length, device, dtype)
            if coefficients is not None:
                source_map, edit_scale = coefficients
                mixes.extend(RowMix(s + 1 + index, s, source_map, edit_scale) for s in starts)
        return mixes

    def _cross_coefficients(
        self, index: int, edit: PromptEdit, context: AttentionContext, key_length: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """``(C_src, c_edit)`` of an edit at this step on the device, ``None`` when it is off."""
        alphas = edit.schedule.alphas(context.step, context.n_steps, key_length)
        if not alphas.any():
            return None
        key = (index, key_length, tuple(alphas.tolist()), device, dtype)
        if key not in self._coefficients:
            source_map, edit_scale = blend_with_alpha(edit.cross.replacement(key_length), alphas)
            self._coefficients[key] = (
                source_map.to(device=device, dtype=dtype),
                edit_scale.to(device=device, dtype=dtype) if edit_scale.any() else None,
            )
        return self._coefficients[key]

    def _record(
        self, q: torch.Tensor, k: torch.Tensor, mixes: list[RowMix], starts: list[int], batch: int, context: AttentionContext
    ) -> None:
        """Feed the conditional rows' edited cross maps to the LocalBlend and the store."""
        site = context.site
        to_blend = self.local_blend is not None and self.local_blend.uses(site, context.latent_shape)
        to_store = self.map_store is not None and self.map_store.wants(site, batch, k.shape[2])
        if not (to_blend or to_store):
            return
        for start in starts:
            chunk_maps = attention_maps(q[start : start + batch].float(), k[start : start + batch].float())
            chunk_mixes = [m for m in mixes if start <= m.row < start + batch]
            maps = mix_maps(chunk_maps, chunk_mixes, offset=start).mean(dim=1)
            if to_blend:
                self.local_blend.accumulate(site, maps)
            if to_store:
                self.map_store.add(site, maps)
