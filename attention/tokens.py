"""Words, tokens and their alignment for Prompt-to-Prompt (no tokenizer, no ComfyUI).

Prompt-to-Prompt (Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control",
ICLR 2023) edits the cross-attention maps of chosen words, so every edit needs to know which key
positions of the cross attention hold which word. This module works from what any tokenizer can
give: the token ids as they sit in the key sequence and the decoded text piece of each of them.

* :func:`word_token_positions` maps the prompt's words (``text.split()``) to key positions by
  concatenating the pieces (a CLIP BPE piece such as ``"car</w>"`` ends a word; pieces without a
  marker, ``"sun" + "flower</w>"``, join into one word; SentencePiece's ``"▁"`` is dropped, and a
  piece that is nothing but ``"▁"``, as T5 writes ``"a"`` = ``"▁" + "a"``, belongs to the next word).
* A key sequence may hold several tokenizations of one prompt one after another (SD3's joint
  attention: the CLIP-L/G rows, then the T5 rows): :meth:`TokenizedPrompt.from_segments` records
  every word at its positions in each segment.
* :func:`align_tokens` is the Needleman-Wunsch global alignment of the reference code
  (gap 0, match +1, mismatch -1): for each target token, its source index or -1.
* :class:`TokenizedPrompt` bundles a prompt's text, ids and word positions and looks words up.

Bad prompts or word choices raise :class:`PromptEditError` (a ``ValueError``) whose message says
what to change.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

NEW_TOKEN = -1
"""Alignment value of a target token that has no counterpart in the source prompt."""

ALIGN_GAP = 0
ALIGN_MATCH = 1
ALIGN_MISMATCH = -1

# Word-boundary and sub-word markers that tokenizers put into their pieces; none is text.
PIECE_MARKERS = ("</w>", "\u2581", "\u0120", "##")

# Traceback moves of the alignment, in the reference's order of preference on ties.
_MOVE_NEW_TARGET = 1  # target token unmatched (left)
_MOVE_SKIP_SOURCE = 2  # source token unmatched (up)
_MOVE_PAIR = 3  # diagonal: source and target token paired


class PromptEditError(ValueError):
    """A prompt, or a word chosen in it, that a Prompt-to-Prompt edit cannot use.

    The message names the prompt and the word and says what to change.
    """


def normalise_text(text: str) -> str:
    """Lower-case ``text`` and drop whitespace and tokenizer markers (``</w>``, ``▁``, ``##``)."""
    for marker in PIECE_MARKERS:
        text = text.replace(marker, "")
    return "".join(text.split()).lower()


def prompt_words(text: str) -> tuple[str, ...]:
    """The words of a prompt: its whitespace-separated parts (the unit of a word swap)."""
    return tuple(text.split())


def word_token_positions(words: Sequence[str], pieces: Sequence[str | None]) -> list[tuple[int, ...]]:
    """Key positions of each word, from the decoded text piece of every key position.

    Args:
        words: the prompt's words in order (see :func:`prompt_words`).
        pieces: one entry per key position: the token's decoded text (``"cat</w>"``, ``"sun"``,
            ``"▁cat"``...), or ``None`` for tokens that are not text (start, end, padding).

    Returns:
        For each word, the positions of the tokens whose pieces spell it (case and markers
        ignored), e.g. ``["a", "sunflower"]`` with pieces
        ``[None, "a</w>", "sun", "flower</w>", None]`` gives ``[(1,), (2, 3)]`` and T5's
        ``["▁", "a", "▁sunflower", "</s>"]`` (``None`` for ``"</s>"``) gives ``[(0, 1), (2,)]``.

    Raises:
        PromptEditError: the pieces do not spell the words (another prompt's tokens, or text the
            tokenizer rewrote).
    """
    text_tokens = [(position, normalise_text(piece)) for position, piece in enumerate(pieces) if piece is not None]
    spelled = "".join(piece for _, piece in text_tokens)
    cursor = 0
    result: list[tuple[int, ...]] = []
    for word in words:
        target = normalise_text(word)
        collected, positions = "", []
        while cursor < len(text_tokens) and not text_tokens[cursor][1]:  # a bare "▁" leads into the word
            positions.append(text_tokens[cursor][0])
            cursor += 1
        while len(collected) < len(target) and cursor < len(text_tokens):
            position, piece = text_tokens[cursor]
            collected += piece
            positions.append(position)
            cursor += 1
        if collected != target:
            raise PromptEditError(
                f"The tokens do not spell the prompt's words: word {word!r} came out as {collected!r} "
                f"(all tokens spell {spelled!r}). Pass the pieces of this very prompt's tokens, decoded to "
                f"text, with None for start/end/padding tokens."
            )
        result.append(tuple(positions))
    rest = "".join(piece for _, piece in text_tokens[cursor:])
    if rest:
        raise PromptEditError(
            f"Tokens spelling {rest!r} are left over after the prompt's words {list(words)!r}. Pass the pieces "
            f"of this very prompt's tokens, with None for start/end/padding tokens."
        )
    return result


def align_tokens(source_ids: Sequence[int], target_ids: Sequence[int]) -> tuple[int, ...]:
    """Needleman-Wunsch alignment of two token sequences: each target token's source index.

    Scores as in Prompt-to-Prompt's ``seq_aligner``: gap 0, match +1, mismatch -1; on ties a new
    target token is preferred, then a skipped source token, then a pair (the reference's order).
    Because a gap costs nothing and a mismatch costs 1, only equal tokens are ever paired.

    Args:
        source_ids: token ids of the source prompt, length ``S``.
        target_ids: token ids of the edited prompt, length ``T``.

    Returns:
        ``T`` entries: the index in ``source_ids`` that the target token copies its attention from,
        or :data:`NEW_TOKEN` (-1) for a token new in the edited prompt.
    """
    n_source, n_target = len(source_ids), len(target_ids)
    score = [[0] * (n_target + 1) for _ in range(n_source + 1)]
    move = [[0] * (n_target + 1) for _ in range(n_source + 1)]
    for j in range(1, n_target + 1):
        score[0][j] = j * ALIGN_GAP
        move[0][j] = _MOVE_NEW_TARGET
    for i in range(1, n_source + 1):
        score[i][0] = i * ALIGN_GAP
        move[i][0] = _MOVE_SKIP_SOURCE
        for j in range(1, n_target + 1):
            new_target = score[i][j - 1] + ALIGN_GAP
            skip_source = score[i - 1][j] + ALIGN_GAP
            pair_score = ALIGN_MATCH if source_ids[i - 1] == target_ids[j - 1] else ALIGN_MISMATCH
            pair = score[i - 1][j - 1] + pair_score
            best = max(new_target, skip_source, pair)
            score[i][j] = best
            if best == new_target:
                move[i][j] = _MOVE_NEW_TARGET
            elif best == skip_source:
                move[i][j] = _MOVE_SKIP_SOURCE
            else:
                move[i][j] = _MOVE_PAIR
    mapper = [NEW_TOKEN] * n_target
    i, j = n_source, n_target
    while i > 0 or j > 0:
        step = move[i][j]
        if step == _MOVE_PAIR:
            mapper[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif step == _MOVE_NEW_TARGET:
            j -= 1
        else:
            i -= 1
    return tuple(mapper)


def _core_span(word: str) -> tuple[int, int]:
    """Character span of ``normalise_text(word)`` without leading/trailing punctuation."""
    normal = normalise_text(word)
    start, end = 0, len(normal)
    while start < end and not normal[start].isalnum():
        start += 1
    while end > start and not normal[end - 1].isalnum():
        end -= 1
    return start, end


@dataclass(frozen=True)
class TokenizedPrompt:
    """A prompt with its tokens as they sit in the cross-attention key sequence.

    Build it with :meth:`from_pieces` (one tokenization) or :meth:`from_segments` (several, one
    after another). Positions past :attr:`content_length` (padding) are mapped to themselves by
    every edit; nothing here assumes 77 tokens.

    Attributes:
        text: the prompt as the user wrote it.
        token_ids: token id per key position, from the first start token through the last end token
            (trailing padding may be included or left out).
        pieces: decoded text per key position, ``None`` for start/end/padding tokens.
        word_positions: key positions of each word of :attr:`words` (in every segment).
        segment_starts: the key position where each tokenization starts (``(0,)``: one).
    """

    text: str
    token_ids: tuple[int, ...]
    pieces: tuple[str | None, ...]
    word_positions: tuple[tuple[int, ...], ...]
    segment_starts: tuple[int, ...] = (0,)

    @classmethod
    def from_pieces(cls, text: str, token_ids: Sequence[int], pieces: Sequence[str | None]) -> TokenizedPrompt:
        """Check that ``pieces`` spell ``text`` and record each word's key positions.

        Raises:
            ValueError: ``token_ids`` and ``pieces`` differ in length.
            PromptEditError: the pieces do not spell the prompt's words.
        """
        if len(token_ids) != len(pieces):
            raise ValueError(f"Got {len(token_ids)} token ids but {len(pieces)} pieces; give one piece per token.")
        positions = word_token_positions(prompt_words(text), pieces)
        return cls(text, tuple(int(t) for t in token_ids), tuple(pieces), tuple(positions))

    @classmethod
    def from_segments(cls, text: str, segments: Sequence[tuple[Sequence[int], Sequence[str | None]]]
                      ) -> TokenizedPrompt:
        """A key sequence holding several tokenizations of ``text`` one after another.

        SD3's joint attention has the prompt's CLIP-L/G tokens (77 per chunk, padding included)
        and then its T5 tokens as text keys; a word's positions are its tokens in every segment.

        Args:
            text: the prompt.
            segments: per tokenization in key order, ``(token_ids, pieces)`` as for
                :meth:`from_pieces`; every segment but the last includes its padding.

        Raises:
            ValueError: no segment, or a segment's ids and pieces differ in length.
            PromptEditError: a segment's pieces do not spell the prompt's words.
        """
        if not segments:
            raise ValueError("Give at least one tokenization (token ids and pieces) of the prompt.")
        parts = [cls.from_pieces(text, token_ids, pieces) for token_ids, pieces in segments]
        starts = tuple(itertools.accumulate((len(part.token_ids) for part in parts[:-1]), initial=0))
        positions = tuple(
            tuple(start + position for start, part in zip(starts, parts) for position in part.word_positions[word])
            for word in range(len(parts[0].word_positions)))
        return cls(text, tuple(itertools.chain.from_iterable(part.token_ids for part in parts)),
                   tuple(itertools.chain.from_iterable(part.pieces for part in parts)), positions, starts)

    def segments(self) -> tuple[tuple[int, TokenizedPrompt], ...]:
        """``(start, prompt)`` per tokenization, each a one-segment prompt with positions from 0."""
        ends = (*self.segment_starts[1:], len(self.token_ids))
        return tuple(
            (start, TokenizedPrompt(self.text, self.token_ids[start:end], self.pieces[start:end],
                                    tuple(tuple(p - start for p in word if start <= p < end)
                                          for word in self.word_positions)))
            for start, end in zip(self.segment_starts, ends))

    @property
    def words(self) -> tuple[str, ...]:
        """The prompt's whitespace-separated words."""
        return prompt_words(self.text)

    @property
    def content_length(self) -> int:
        """Key positions up to and including the end token after the last word (no padding)."""
        text_positions = [p for word in self.word_positions for p in word]
        last = max(text_positions) if text_positions else 0
        return min(len(self.token_ids), last + 2)

    def positions_of(self, phrase: str) -> tuple[int, ...]:
        """Key positions of every occurrence of a word (or of consecutive words) of the prompt.

        Matching ignores case, and a prompt word also matches without its leading/trailing
        punctuation ("car" matches "car," and then only the tokens of "car" are returned).

        Raises:
            PromptEditError: the phrase does not occur in the prompt.
        """
        wanted = [normalise_text(w) for w in prompt_words(phrase)]
        words = self.words
        found: list[int] = []
        for start in range(len(words) - len(wanted) + 1):
            matched: list[int] = []
            for offset, target in enumerate(wanted):
                positions = self._word_match(start + offset, target)
                if positions is None:
                    break
                matched.extend(positions)
            else:
                found.extend(matched)
        if not wanted or not found:
            raise PromptEditError(
                f"{phrase!r} is not a word of the prompt {self.text!r} (its words: {', '.join(words)}). "
                f"Choose words exactly as they appear in that prompt, or change the prompt."
            )
        return tuple(sorted(set(found)))

    def _word_match(self, index: int, target: str) -> tuple[int, ...] | None:
        word = self.words[index]
        if normalise_text(word) == target:
            return self.word_positions[index]
        start, end = _core_span(word)
        if normalise_text(word)[start:end] != target:
            return None
        kept, offset, segment = [], 0, 0
        for position in self.word_positions[index]:
            if bisect.bisect_right(self.segment_starts, position) != segment:  # the word spelled again
                segment, offset = bisect.bisect_right(self.segment_starts, position), 0
            length = len(normalise_text(self.pieces[position] or ""))
            if offset < end and offset + length > start:
                kept.append(position)
            offset += length
        return tuple(kept)


def swapped_word_indices(source_text: str, target_text: str) -> tuple[int, ...]:
    """Indices of the words a word swap replaces; the prompts must have equally many words.

    Raises:
        PromptEditError: the word counts differ.
    """
    source_words, target_words = prompt_words(source_text), prompt_words(target_text)
    if len(source_words) != len(target_words):
        raise PromptEditError(
            f"A word swap needs prompts with the same number of words, but the source prompt "
            f"{source_text!r} has {len(source_words)} and the edited prompt {target_text!r} has "
            f"{len(target_words)}. Replace each word by exactly one word (join a multi-word replacement "
            f"with a hyphen, e.g. 'ice-cream'), or use Refine to add or remove words."
        )
    return tuple(i for i, (a, b) in enumerate(zip(source_words, target_words)) if normalise_text(a) != normalise_text(b))
