"""Prompt-to-Prompt's cross-attention edits as data: word swap, refine and reweight.

Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control" (ICLR 2023), Sec. 3.2.
For an edited row, with ``attn_src`` the source row's cross-attention maps and ``attn_edit`` the
edited row's own maps (both ``[heads, queries, keys]``), the reference code computes

    attn_edit <- alpha * replace(attn_src, attn_edit) + (1 - alpha) * attn_edit

where ``alpha`` is 1 for the tokens whose cross-replace window holds the current step, and

* word swap (Replace): ``replace = einsum('hpw,wn->hpn', attn_src, M)``, ``M`` identity except the
  swapped words (1:1 when their token counts match, else spread evenly);
* Refine: ``replace = attn_src[..., mapper] * a + attn_edit * (1 - a)`` with the token alignment
  ``mapper`` and ``a = (mapper != -1)``;
* Reweight: ``replace = base * equalizer`` with ``base`` a previous edit's replacement, or
  ``attn_src`` when there is none.

When the keys hold several tokenizations of the prompt one after another (SD3's CLIP-L/G rows,
then its T5 rows; :meth:`~.tokens.TokenizedPrompt.from_segments`), word swap and refine map each
tokenization on its own and the padding between them to itself.

Every one of these acts on the key (token) axis only, linearly, so each edit is stored as a pair
``(C, d)`` with ``replace = attn_src @ C + attn_edit * d``: ``C`` is ``[keys, keys]`` and ``d``
is ``[keys]``. With the step's ``alpha`` the edited map becomes
``attn_src @ (C * alpha) + attn_edit * (d * alpha + 1 - alpha)`` (:func:`blend_with_alpha`), which
the controller applies either to explicit maps or, without materialising them, to the values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Union

import torch

from .tokens import NEW_TOKEN, PromptEditError, TokenizedPrompt, align_tokens, swapped_word_indices

DEFAULT_CROSS_REPLACE_FRACTION = 0.8
"""Cross-attention replacement runs over the first 80% of the steps (the null-text examples)."""

_STEP_ROUNDING = 1e-9  # int(0.29 * 100) is 28 in floating point; the window means 29.


@dataclass(frozen=True)
class StepWindow:
    """The steps ``[int(start * n_steps), int(end * n_steps))`` of an ``n_steps`` run.

    Attributes:
        start: first step as a fraction of the run, in [0, 1].
        end: end (exclusive) as a fraction of the run, in [start, 1].
    """

    start: float = 0.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.start <= self.end <= 1.0:
            raise ValueError(
                f"A step window needs 0 <= start <= end <= 1 (fractions of the steps); got "
                f"start={self.start}, end={self.end}."
            )

    @classmethod
    def of(cls, value: WindowLike) -> StepWindow:
        """A window from a fraction ``f`` (the steps ``[0, f)``), a ``(start, end)`` pair or a window."""
        if isinstance(value, StepWindow):
            return value
        if isinstance(value, (int, float)):
            return cls(0.0, float(value))
        start, end = value
        return cls(float(start), float(end))

    def contains(self, step: int, n_steps: int) -> bool:
        """Whether step ``step`` (0-based) of ``n_steps`` lies in the window."""
        first = math.floor(self.start * n_steps + _STEP_ROUNDING)
        stop = math.floor(self.end * n_steps + _STEP_ROUNDING)
        return first <= step < stop


WindowLike = Union[float, tuple[float, float], StepWindow]


@dataclass(frozen=True)
class CrossSchedule:
    """When cross-attention replacement is on, per key position (the reference's ``alpha_t``).

    Attributes:
        default: window of every key position without its own window.
        per_position: ``(key position, window)`` pairs overriding ``default`` (per-word windows).
    """

    default: StepWindow = field(default_factory=lambda: StepWindow(0.0, DEFAULT_CROSS_REPLACE_FRACTION))
    per_position: tuple[tuple[int, StepWindow], ...] = ()

    @classmethod
    def from_words(
        cls,
        prompt: TokenizedPrompt,
        default: WindowLike = DEFAULT_CROSS_REPLACE_FRACTION,
        words: Mapping[str, WindowLike] | None = None,
    ) -> CrossSchedule:
        """A schedule with per-word windows over the tokens of ``prompt`` (the edited prompt).

        Raises:
            PromptEditError: a word is not in the prompt.
        """
        per_position = []
        for word, window in (words or {}).items():
            per_position.extend((position, StepWindow.of(window)) for position in prompt.positions_of(word))
        return cls(StepWindow.of(default), tuple(per_position))

    def alphas(self, step: int, n_steps: int, key_length: int) -> torch.Tensor:
        """``[key_length]`` float64 (CPU): 1 where replacement is on at this step, else 0."""
        alphas = torch.full((key_length,), float(self.default.contains(step, n_steps)), dtype=torch.float64)
        for position, window in self.per_position:
            if position < key_length:
                alphas[position] = float(window.contains(step, n_steps))
        return alphas


def _check_positions(positions: list[int], key_length: int, what: str) -> None:
    if positions and max(positions) >= key_length:
        raise ValueError(
            f"The {what} reaches key position {max(positions)}, but the cross attention has only "
            f"{key_length} keys: the prompt given to the edit is not the one encoded for this row."
        )


@dataclass(frozen=True)
class WordSwap:
    """Word swap (the paper's "Replace"): the edited prompt's tokens take the source's maps.

    Attributes:
        links: ``(source position, target position, weight)`` entries of the mapper ``M``.
        content_length: target positions from here on (padding) map to themselves.
    """

    links: tuple[tuple[int, int, float], ...]
    content_length: int

    @classmethod
    def from_prompts(cls, source: TokenizedPrompt, target: TokenizedPrompt) -> WordSwap:
        """The mapper of a word swap from ``source`` to ``target``.

        Unchanged words and start/end tokens map 1:1; a swapped word maps 1:1 when both words have
        the same number of tokens, else (as in the reference) each of the target word's ``n``
        tokens takes the sum of the source word's maps divided by ``n``.

        Raises:
            PromptEditError: the word counts differ, or the prompts' tokens differ outside the
                swapped words (an unchanged word tokenized differently, chunks broken elsewhere).
        """
        links: list[tuple[int, int, float]] = []
        for start, source_part, target_part, length in _paired_tokenizations(source, target):
            part = cls._from_one_tokenization(source_part, target_part)
            links.extend((start + s, start + t, weight) for s, t, weight in part.links)
            if length is not None:  # the padding of a tokenization that more keys follow
                links.extend((start + p, start + p, 1.0) for p in range(part.content_length, length))
        return cls(tuple(links), start + part.content_length)

    @classmethod
    def _from_one_tokenization(cls, source: TokenizedPrompt, target: TokenizedPrompt) -> WordSwap:
        swapped = set(swapped_word_indices(source.text, target.text))
        source_segments, target_segments = _segments(source), _segments(target)
        links: list[tuple[int, int, float]] = []
        for index in range(max(len(source_segments), len(target_segments))):
            if index >= len(source_segments) or index >= len(target_segments):
                raise _structure_error(source, target, source_segments, target_segments, index)
            (source_word, source_positions), (target_word, target_positions) = source_segments[index], target_segments[index]
            if source_word != target_word:
                raise _structure_error(source, target, source_segments, target_segments, index)
            source_ids = [source.token_ids[p] for p in source_positions]
            target_ids = [target.token_ids[p] for p in target_positions]
            if source_word is not None and source_word in swapped:
                if len(source_positions) == len(target_positions):
                    links.extend((s, t, 1.0) for s, t in zip(source_positions, target_positions))
                else:
                    weight = 1.0 / len(target_positions)
                    links.extend((s, t, weight) for s in source_positions for t in target_positions)
                continue
            if source_ids != target_ids:
                raise _structure_error(source, target, source_segments, target_segments, index)
            links.extend((s, t, 1.0) for s, t in zip(source_positions, target_positions))
        return cls(tuple(links), target.content_length)

    def replacement(self, key_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, d)`` with ``C = M`` (``[key_length, key_length]``, float64) and ``d = 0``."""
        _check_positions([max(s, t) for s, t, _ in self.links], key_length, "word swap's prompt")
        mapper = torch.zeros(key_length, key_length, dtype=torch.float64)
        for source_position, target_position, weight in self.links:
            mapper[source_position, target_position] = weight
        tail = torch.arange(min(self.content_length, key_length), key_length)
        mapper[tail, tail] = 1.0
        return mapper, torch.zeros(key_length, dtype=torch.float64)


def _paired_tokenizations(source: TokenizedPrompt, target: TokenizedPrompt
                          ) -> list[tuple[int, TokenizedPrompt, TokenizedPrompt, int | None]]:
    """``(start, source part, target part, length)`` per tokenization; ``length`` None for the last.

    Raises:
        PromptEditError: the prompts' tokenizations start at different key positions (one prompt
            takes more token chunks than the other in a tokenization that more keys follow).
    """
    if source.segment_starts != target.segment_starts:
        raise PromptEditError(
            f"The source prompt {source.text!r} and the edited prompt {target.text!r} fill the text encoder's "
            f"first tokenizations differently (they start at key positions {list(source.segment_starts)} and "
            f"{list(target.segment_starts)}): one prompt takes another token chunk. Shorten the longer prompt or "
            f"lengthen the shorter one so that both take the same number of chunks."
        )
    ends = (*source.segment_starts[1:], None)
    return [(start, source_part, target_part, None if end is None else end - start)
            for (start, source_part), (_, target_part), end in zip(source.segments(), target.segments(), ends)]


def _segments(prompt: TokenizedPrompt) -> list[tuple[int | None, tuple[int, ...]]]:
    """The content positions as runs: ``(word index, positions)`` or ``(None, (position,))``."""
    word_of = {p: i for i, positions in enumerate(prompt.word_positions) for p in positions}
    segments: list[tuple[int | None, tuple[int, ...]]] = []
    for position in range(prompt.content_length):
        word = word_of.get(position)
        if word is not None and segments and segments[-1][0] == word:
            segments[-1] = (word, segments[-1][1] + (position,))
        else:
            segments.append((word, (position,)))
    return segments


def _structure_error(source, target, source_segments, target_segments, index) -> PromptEditError:
    def describe(prompt, segments):
        if index >= len(segments):
            return "nothing (the prompt has ended)"
        word, positions = segments[index]
        if word is None:
            return f"the non-text token {prompt.token_ids[positions[0]]} at key position {positions[0]}"
        return f"the word {prompt.words[word]!r} (tokens {[prompt.token_ids[p] for p in positions]})"

    return PromptEditError(
        f"The source prompt {source.text!r} and the edited prompt {target.text!r} tokenize differently outside "
        f"the swapped words: the source has {describe(source, source_segments)} where the edited prompt has "
        f"{describe(target, target_segments)}. A word swap needs the same tokens apart from the swapped words: "
        f"keep the prompt within one token chunk and unchanged words spelled the same, or use Refine."
    )


@dataclass(frozen=True)
class Refine:
    """Refine (adding or removing words): aligned tokens take the source's maps.

    Attributes:
        mapper: per target content position, its source position or -1 for a new token; target
            positions past the mapper (padding) map to themselves.
    """

    mapper: tuple[int, ...]

    @classmethod
    def from_prompts(cls, source: TokenizedPrompt, target: TokenizedPrompt) -> Refine:
        """Align the prompts' token ids over their content (see :func:`~.tokens.align_tokens`).

        Raises:
            PromptEditError: the prompts' tokenizations start at different key positions.
        """
        mapper: list[int] = []
        for start, source_part, target_part, length in _paired_tokenizations(source, target):
            aligned = align_tokens(source_part.token_ids[: source_part.content_length],
                                   target_part.token_ids[: target_part.content_length])
            mapper.extend(NEW_TOKEN if position == NEW_TOKEN else start + position for position in aligned)
            if length is not None:  # the padding of a tokenization that more keys follow maps to itself
                mapper.extend(range(start + target_part.content_length, start + length))
        return cls(tuple(mapper))

    def replacement(self, key_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C, d)``: ``C[mapper[j], j] = 1`` where aligned, ``d = 1 - a`` (``a``: aligned or padding)."""
        _check_positions([len(self.mapper) - 1, *self.mapper], key_length, "refine's prompt")
        gather = torch.zeros(key_length, key_length, dtype=torch.float64)
        aligned = torch.ones(key_length, dtype=torch.float64)
        for target_position, source_position in enumerate(self.mapper):
            if source_position == NEW_TOKEN:
                aligned[target_position] = 0.0
            else:
                gather[source_position, target_position] = 1.0
        tail = torch.arange(len(self.mapper), key_length)
        gather[tail, tail] = 1.0
        return gather, 1.0 - aligned


@dataclass(frozen=True)
class Reweight:
    """Reweight (attention re-weighting): scale chosen tokens' maps, after an optional edit.

    Attributes:
        scales: ``(key position, scale)`` pairs of the edited prompt; other positions keep 1.
        base: the edit whose replacement is reweighted (``None``: the source's maps).
    """

    scales: tuple[tuple[int, float], ...]
    base: WordSwap | Refine | None = None

    @classmethod
    def from_words(
        cls, prompt: TokenizedPrompt, scales: Mapping[str, float], base: WordSwap | Refine | None = None
    ) -> Reweight:
        """Scales per word of ``prompt`` (the edited prompt), e.g. ``{"fluffy": 2.0}``.

        Raises:
            PromptEditError: a word is not in the prompt, or no word is given.
        """
        if not scales:
            raise PromptEditError(
                f"Reweight needs at least one word of the prompt {prompt.text!r} with its scale, e.g. {{'word': 2.0}}."
            )
        pairs = [(position, float(scale)) for word, scale in scales.items() for position in prompt.positions_of(word)]
        return cls(tuple(pairs), base)

    def equalizer(self, key_length: int) -> torch.Tensor:
        """``[key_length]`` float64: the scale of each key position."""
        _check_positions([p for p, _ in self.scales], key_length, "reweight's prompt")
        equalizer = torch.ones(key_length, dtype=torch.float64)
        for position, scale in self.scales:
            equalizer[position] = scale
        return equalizer

    def replacement(self, key_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(C * eq, d * eq)`` of the base edit (``(I, 0)`` without one)."""
        if self.base is None:
            source_map, edit_scale = torch.eye(key_length, dtype=torch.float64), torch.zeros(key_length, dtype=torch.float64)
        else:
            source_map, edit_scale = self.base.replacement(key_length)
        equalizer = self.equalizer(key_length)
        return source_map * equalizer, edit_scale * equalizer


CrossEdit = Union[WordSwap, Refine, Reweight]


def blend_with_alpha(
    replacement: tuple[torch.Tensor, torch.Tensor], alphas: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold the step's ``alpha`` into an edit: ``attn_src @ C_src + attn_edit * c_edit``.

    Args:
        replacement: ``(C [keys, keys], d [keys])`` of the edit.
        alphas: ``[keys]`` 1 where replacement is on at this step.

    Returns:
        ``(C_src, c_edit)`` with ``C_src = C * alphas`` (per column) and
        ``c_edit = d * alphas + 1 - alphas``.
    """
    source_map, edit_scale = replacement
    return source_map * alphas, edit_scale * alphas + 1.0 - alphas


__all__ = [
    "DEFAULT_CROSS_REPLACE_FRACTION",
    "CrossEdit",
    "CrossSchedule",
    "PromptEditError",
    "Refine",
    "Reweight",
    "StepWindow",
    "WordSwap",
    "blend_with_alpha",
]
