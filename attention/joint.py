"""Prompt-to-Prompt on the joint attention of MM-DiT flow transformers (Flux, SD3.5, Qwen-Image, Chroma).

These models have no cross attention: text and image tokens attend jointly, in one sequence
``[text tokens | image tokens | (reference tokens)]``. The edits of the UNet controller act here on
the image queries of the edited rows (Hertz et al., ICLR 2023, on the image-to-text part of the
joint map), and the layout is kept by one of three rules (:data:`LAYOUT_RULES`):

* :data:`LAYOUT_SOURCE_QK` (Shin et al., "Exploring Multimodal Diffusion Transformers for Enhanced
  Prompt-based Image Editing", arXiv 2508.07519): in the chosen blocks and steps the edited row's
  image queries and keys are the source row's, then ONE ordinary attention call. The image-to-image
  map of the edited row is then the source's exactly, while its image queries read its own prompt
  (the new word) through its own text keys. Word swap needs nothing else; reweight scales the
  reweighted words' values.
* :data:`LAYOUT_SOURCE_QKV`: the same with the source's image values too (the key-value injection of
  Stable Flow, Avrahami et al., CVPR 2025, on every image token): the edited row's image-to-image
  attention output is then the source's, and only its own text keys and values (the new word) move
  it. Keeps what the prompt does not name closer than q, k alone, at the price of weaker shape
  changes while it runs.
* :data:`LAYOUT_SOURCE_MAPS` (the UNet controller's per-key linear map, extended to the joint key
  axis): the edited row's image queries get ``attn_src @ C + attn_edit * d`` with ``C`` a block
  matrix (text block: the edit's map, e.g. the word swap's; image block: identity where the layout
  is kept, else 0 with ``d = 1``), computed without maps as
  ``SDPA(q_src, k_src, C v_edit) + SDPA(q_edit, k_edit, d v_edit)``.

Text queries of edited rows are computed plainly (with :data:`LAYOUT_SOURCE_QK` they see the
source's image keys); source rows and unconditional chunks are never changed. Nothing of size
``L x L`` is materialised: every output comes from the attention backend handed in (``attend``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from .context import AttentionContext
from .controller import PromptEdit
from .edits import Reweight, StepWindow, blend_with_alpha

LAYOUT_SOURCE_QK = "source image q, k"
LAYOUT_SOURCE_MAPS = "source maps"
LAYOUT_SOURCE_QKV = "source image q, k, v"
LAYOUT_RULES = (LAYOUT_SOURCE_QK, LAYOUT_SOURCE_MAPS, LAYOUT_SOURCE_QKV)
DEFAULT_LAYOUT_FRACTION = 0.5
"""Layout kept over the first half of the steps (the UNet's self-replace default)."""

FAMILY_FLUX = "flux"
FAMILY_CHROMA = "chroma"
FAMILY_SD3 = "sd3"
FAMILY_QWEN_IMAGE = "qwen-image"

Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""The backend: ``(q, k, v [rows, heads, L, dim]) -> [rows, heads, Lq, dim]``."""


@dataclass(frozen=True)
class TokenLayout:
    """Where the tokens sit in one joint-attention sequence of length ``L``.

    Attributes:
        text_tokens: tokens of the text stream, first in the sequence (register tokens included).
        image_tokens: the latent's patches, right after the text.
        prompt_offset: register tokens before the prompt's first token (SD3 MMDiT's registers);
            word ``p`` of the prompt is key ``prompt_offset + p``.
    Tokens after the image (Flux Kontext's reference image) are keys the edit leaves to each row.
    """

    text_tokens: int
    image_tokens: int
    prompt_offset: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.text_tokens - self.prompt_offset

    @property
    def image(self) -> slice:
        return slice(self.text_tokens, self.text_tokens + self.image_tokens)

    @property
    def prompt(self) -> slice:
        return slice(self.prompt_offset, self.text_tokens)

    def fits(self, length: int) -> bool:
        """Whether a sequence of ``length`` tokens holds this text and image (a joint call)."""
        return length >= self.text_tokens + self.image_tokens and self.text_tokens > 0


@dataclass(frozen=True)
class FamilyTokenRule:
    """One model family's token order: text first in all four; what comes before the prompt."""

    registers_before_prompt: bool = False


TOKEN_RULES = {
    FAMILY_FLUX: FamilyTokenRule(),  # double blocks cat((txt, img)); Kontext appends references after img
    FAMILY_CHROMA: FamilyTokenRule(),  # Flux's layout (T5 text only)
    FAMILY_SD3: FamilyTokenRule(registers_before_prompt=True),  # cat((context, x)); registers lead the context
    FAMILY_QWEN_IMAGE: FamilyTokenRule(),  # cat((txt, img))
}


def token_layout(family: str, prompt_tokens: int, image_tokens: int, register_tokens: int = 0) -> TokenLayout:
    """The :class:`TokenLayout` of ``family`` for a prompt of ``prompt_tokens`` and ``image_tokens`` patches."""
    if family not in TOKEN_RULES:
        raise ValueError(f"No token layout rule for {family!r}; known: {sorted(TOKEN_RULES)}.")
    if register_tokens and not TOKEN_RULES[family].registers_before_prompt:
        raise ValueError(f"{family} has no register tokens, got {register_tokens}.")
    return TokenLayout(prompt_tokens + register_tokens, image_tokens, register_tokens)


@dataclass(frozen=True)
class JointContext:
    """One joint-attention call: rows and step (``rows.site.block`` is ``("double_block", i)`` etc.)."""

    rows: AttentionContext
    layout: TokenLayout


@dataclass(frozen=True)
class LayoutInjection:
    """Where and how the edited rows keep the source's layout.

    Attributes:
        rule: :data:`LAYOUT_SOURCE_QK` or :data:`LAYOUT_SOURCE_MAPS`.
        window: the steps it runs (fractions of the run).
        blocks: the block keys it runs in; ``None`` means every block.
    """

    rule: str = LAYOUT_SOURCE_QK
    window: StepWindow = field(default_factory=lambda: StepWindow(0.0, DEFAULT_LAYOUT_FRACTION))
    blocks: frozenset[tuple[str, int]] | None = None

    def __post_init__(self) -> None:
        if self.rule not in LAYOUT_RULES:
            raise ValueError(f"The layout rule must be one of {LAYOUT_RULES}, got {self.rule!r}.")

    def applies(self, block: tuple[str, int], step: int, n_steps: int) -> bool:
        return (self.blocks is None or tuple(block) in self.blocks) and self.window.contains(step, n_steps)


@dataclass(frozen=True)
class _RowEdit:
    """One edited row of one call: its source row and what it takes from it."""

    row: int
    source_row: int
    edit: PromptEdit
    alphas: torch.Tensor  # [P] 1 where the word's replacement window is on
    text_map: torch.Tensor | None  # [P, P] C on the prompt keys (None: none from the source)
    text_scale: torch.Tensor  # [P] d on the prompt keys


def value_scale(edit: PromptEdit, alphas: torch.Tensor) -> torch.Tensor | None:
    """``[P]`` a reweight's per-word scale where its window is on (1 elsewhere), or None (no reweight).

    Scaling a key's value by ``s`` is the same as scaling that key's attention weights by ``s``
    without renormalising, the paper's reweight, for every query of the row.
    """
    if not isinstance(edit.cross, Reweight) or not alphas.any():
        return None
    scale = torch.where(alphas > 0, edit.cross.equalizer(alphas.numel()), torch.ones_like(alphas))
    return scale if bool((scale != 1).any()) else None


def _with_source_image(tensor: torch.Tensor, edited: list[int], sources: list[int], layout: TokenLayout) -> torch.Tensor:
    """A copy of ``tensor`` ``[rows, heads, L, dim]`` whose edited rows hold their source rows' image tokens."""
    copy = tensor.clone()
    copy[edited, :, layout.image] = tensor[sources, :, layout.image]
    return copy


class JointPromptToPrompt:
    """Attention controller of a Prompt-to-Prompt edit on joint attention.

    Args:
        edits: one :class:`PromptEdit` per edited row (a conditional chunk is
            ``[source, edit_1, ...]``).
        layout: how and where the layout is kept (``None``: never).
        local_blend: optional :class:`JointLocalBlend` fed from the calls.
        map_store: optional :class:`JointWordMaps` for the viewer.
    """

    def __init__(self, edits: Sequence[PromptEdit], *, layout: LayoutInjection | None = None,
                 local_blend=None, map_store=None) -> None:
        self.edits = tuple(edits)
        self.layout = layout
        self.local_blend = local_blend
        self.map_store = map_store

    def reset(self) -> None:
        """Clear the run's state (LocalBlend maps, stored maps)."""
        for state in (self.local_blend, self.map_store):
            if state is not None:
                state.reset()

    def blend(self, x: torch.Tensor, step: int, n_steps: int) -> torch.Tensor:
        """LocalBlend of the latents ``[rows, C, H, W]`` after step ``step`` (identity without one)."""
        if self.local_blend is None:
            return x
        self.local_blend.check_fed()
        return self.local_blend.apply(x, step, n_steps)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context: JointContext,
                 attend: Attend) -> torch.Tensor:
        """Joint attention with the edits on the conditional chunks' edited rows.

        Args:
            q, k, v: ``[rows, heads, L, dim]`` (after RoPE), ``L`` = text + image (+ references).
            context: the call's block, step, row chunks and token layout.
            attend: the attention backend (the one the model would have used).

        Returns:
            ``[rows, heads, L, dim]``.
        """
        rows, layout = context.rows, context.layout
        starts = rows.cond_chunk_starts(q.shape[0])
        if starts and rows.rows_per_chunk(q.shape[0]) != 1 + len(self.edits):
            raise ValueError(
                f"A conditional chunk has {rows.rows_per_chunk(q.shape[0])} rows but this edit needs "
                f"{1 + len(self.edits)}: the latent batch must be the source followed by one row per edited prompt.")
        if not layout.fits(q.shape[2]):
            raise ValueError(f"A joint attention of {q.shape[2]} tokens cannot hold {layout}.")
        inject = self.layout is not None and self.layout.applies(rows.site.block, rows.step, rows.n_steps)
        row_edits = self._row_edits(starts, rows.step, rows.n_steps, layout.prompt_tokens)
        if self.local_blend is not None or self.map_store is not None:
            self._record(q, k, starts, context)
        if self.layout is not None and self.layout.rule == LAYOUT_SOURCE_MAPS:
            return self._source_maps(q, k, v, layout, row_edits, inject, attend)
        return self._source_qk(q, k, v, layout, row_edits, inject, attend)

    def _row_edits(self, starts: list[int], step: int, n_steps: int, prompt_tokens: int) -> list[_RowEdit]:
        edits = []
        for index, edit in enumerate(self.edits):
            alphas = edit.schedule.alphas(step, n_steps, prompt_tokens)
            if edit.cross is None or not alphas.any():
                text_map, text_scale = None, torch.ones(prompt_tokens, dtype=torch.float64)
            else:
                text_map, text_scale = blend_with_alpha(edit.cross.replacement(prompt_tokens), alphas)
            edits.extend(_RowEdit(s + 1 + index, s, edit, alphas, text_map, text_scale) for s in starts)
        return edits

    def _source_qk(self, q, k, v, layout: TokenLayout, row_edits: list[_RowEdit], inject: bool,
                   attend: Attend) -> torch.Tensor:
        """Shin et al.: the edited rows' image q, k (and with :data:`LAYOUT_SOURCE_QKV` v) are the
        source's; reweight scales the words' values."""
        if inject and row_edits:
            edited = [e.row for e in row_edits]
            sources = [e.source_row for e in row_edits]
            q = _with_source_image(q, edited, sources, layout)
            k = _with_source_image(k, edited, sources, layout)
            if self.layout.rule == LAYOUT_SOURCE_QKV:
                v = _with_source_image(v, edited, sources, layout)
        scales = [(e.row, value_scale(e.edit, e.alphas)) for e in row_edits]
        scales = [(row, scale) for row, scale in scales if scale is not None]
        if scales:
            v = v.clone()
            for row, scale in scales:
                v[row, :, layout.prompt] *= scale.to(v)[:, None]
        return attend(q, k, v)

    def _source_maps(self, q, k, v, layout: TokenLayout, row_edits: list[_RowEdit], inject: bool,
                     attend: Attend) -> torch.Tensor:
        """The per-key linear map on the edited rows' image queries, flat (two attention calls at most)."""
        out = attend(q, k, v)
        active = [e for e in row_edits if inject or e.text_map is not None]
        if not active:
            return out
        edited = [e.row for e in active]
        sources = [e.source_row for e in active]
        image = layout.image
        from_source, own = [], []
        for e in active:
            values = v[e.row]  # [heads, L, dim]
            source_values = torch.zeros_like(values)
            own_scale = torch.ones(values.shape[1], dtype=values.dtype, device=values.device)
            if e.text_map is not None:
                prompt = layout.prompt
                source_values[:, prompt] = torch.einsum("jk,hkd->hjd", e.text_map.to(values), values[:, prompt])
                own_scale[prompt] = e.text_scale.to(values)
                source_values[:, :layout.prompt_offset] = values[:, :layout.prompt_offset]
                own_scale[:layout.prompt_offset] = 0.0
            if inject:
                source_values[:, image] = values[:, image]
                own_scale[image] = 0.0
            from_source.append(source_values)
            own.append(values * own_scale[None, :, None])
        q_image = q[:, :, image]
        mixed = attend(q_image[sources], k[sources], torch.stack(from_source))
        mixed = mixed + attend(q_image[edited], k[edited], torch.stack(own))
        out = out.clone()
        out[edited, :, image] = mixed.to(out)
        return out

    def _record(self, q, k, starts, context: JointContext) -> None:
        """Feed the text-query maps of the conditional rows to the LocalBlend and the map store."""
        site, layout = context.rows.site, context.layout
        batch = context.rows.rows_per_chunk(q.shape[0])
        to_blend = self.local_blend is not None and self.local_blend.uses(site, context.rows.latent_shape)
        to_store = self.map_store is not None and self.map_store.wants(site, batch, layout.prompt_tokens)
        if not (to_blend or to_store):
            return
        for start in starts:
            maps = text_to_image_maps(q[start:start + batch], k[start:start + batch], layout)
            if to_blend:
                self.local_blend.accumulate(site, maps)
            if to_store:
                self.map_store.add(site, maps)


def text_to_image_maps(q: torch.Tensor, k: torch.Tensor, layout: TokenLayout) -> torch.Tensor:
    """The prompt tokens' text-query -> image-key maps ("T2I", Shin et al.), as cross maps ``[rows, Nimg, P]``.

    ``softmax(q_word . [k_text, k_image]^T / sqrt(d))`` over the whole joint key axis, its image part,
    averaged over heads one head at a time (``[rows, P, L]`` at most in memory), then transposed so that
    column ``p`` is word ``p``'s map over the image: the layout :class:`~.blend.LocalBlend` and
    :class:`~.store.CrossMapStore` take from cross attention.

    Args:
        q, k: ``[rows, heads, L, dim]``.
    """
    scale = q.shape[-1] ** -0.5
    total = None
    for head in range(q.shape[1]):
        logits = q[:, head, layout.prompt].float() @ k[:, head].float().transpose(-1, -2) * scale
        image_part = logits.softmax(dim=-1)[..., layout.image]
        total = image_part if total is None else total + image_part
    return (total / q.shape[1]).transpose(1, 2)
