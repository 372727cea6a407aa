"""The test-bed model's closed vocabulary and prompt template.

Prompts name the two digits of an 8x16 canvas, left digit first:
``"a photo of three and seven"``. Every prompt is padded with :data:`PAD_TOKEN` to
:data:`TOKEN_LENGTH` tokens; the empty prompt (all padding) is the unconditional prompt.
There is no tokenizer model: a prompt is lower-cased, split on white space, and each word
is looked up in :data:`VOCABULARY`.
"""

from __future__ import annotations

from typing import Sequence

import torch

PAD_TOKEN = "<pad>"
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FILLER_WORDS = ("a", "photo", "of")
JOIN_WORD = "and"

VOCABULARY: tuple[str, ...] = (PAD_TOKEN, *DIGIT_WORDS, *FILLER_WORDS, JOIN_WORD)
"""All tokens, in id order (id = index): pad 0, digits 1..10, fillers, "and"."""

TOKEN_IDS: dict[str, int] = {word: index for index, word in enumerate(VOCABULARY)}
PAD_ID = TOKEN_IDS[PAD_TOKEN]
TOKEN_LENGTH = 8
"""Every prompt becomes exactly this many token ids."""

PROMPT_TEMPLATE = "a photo of {left} and {right}"
LEFT_WORD_POSITION = 3
"""Token index of the left digit's word in :data:`PROMPT_TEMPLATE`."""
RIGHT_WORD_POSITION = 5
"""Token index of the right digit's word in :data:`PROMPT_TEMPLATE`."""


class UnknownWordError(ValueError):
    """A prompt uses a word outside :data:`VOCABULARY` or is too long."""


def digit_word(digit: int) -> str:
    """English word of a digit 0..9."""
    if not 0 <= int(digit) <= 9:
        raise ValueError(f"digit must be 0..9, got {digit}")
    return DIGIT_WORDS[int(digit)]


def shift_digit_word(prompt: str, position: int, offset: int) -> str:
    """``prompt`` with its digit word at word ``position`` replaced by the digit ``offset`` further on (mod 10).

    E.g. ``shift_digit_word("a photo of three and seven", RIGHT_WORD_POSITION, 5)`` ->
    ``"a photo of three and two"``: the word swap the Prompt-to-Prompt tests and figures make.
    """
    words = prompt.split()
    digit = DIGIT_WORDS.index(words[position])
    words[position] = DIGIT_WORDS[(digit + offset) % len(DIGIT_WORDS)]
    return " ".join(words)


def prompt_for(left_digit: int, right_digit: int) -> str:
    """The template prompt naming a canvas's digits, e.g. (3, 7) -> "a photo of three and seven"."""
    return PROMPT_TEMPLATE.format(left=digit_word(left_digit), right=digit_word(right_digit))


def tokenize(prompt: str) -> list[int]:
    """Token ids of one prompt, padded to :data:`TOKEN_LENGTH`.

    Raises:
        UnknownWordError: a word is not in the vocabulary (the message lists the allowed
            words) or the prompt has more than :data:`TOKEN_LENGTH` words.
    """
    words = prompt.lower().split()
    unknown = [word for word in words if word not in TOKEN_IDS or word == PAD_TOKEN]
    if unknown:
        allowed = ", ".join(repr(word) for word in VOCABULARY if word != PAD_TOKEN)
        raise UnknownWordError(
            f"the test-bed model does not know the word(s) {', '.join(map(repr, unknown))}. "
            f"Allowed words: {allowed}. Write prompts like {prompt_for(3, 7)!r}; "
            "the empty prompt is the unconditional one."
        )
    if len(words) > TOKEN_LENGTH:
        raise UnknownWordError(
            f"the prompt has {len(words)} words; the test-bed model reads at most "
            f"{TOKEN_LENGTH}. Write prompts like {prompt_for(3, 7)!r}."
        )
    return [TOKEN_IDS[word] for word in words] + [PAD_ID] * (TOKEN_LENGTH - len(words))


def tokenize_batch(prompts: Sequence[str]) -> torch.Tensor:
    """Token ids of several prompts: ``[B, TOKEN_LENGTH]`` int64."""
    return torch.tensor([tokenize(prompt) for prompt in prompts], dtype=torch.long)


def word_positions(prompt: str, word: str) -> list[int]:
    """Token indices at which ``word`` occurs in ``prompt`` (after tokenization)."""
    ids = tokenize(prompt)
    if word.lower() not in TOKEN_IDS:
        tokenize(word)  # raises the helpful error
    target = TOKEN_IDS[word.lower()]
    return [index for index, token in enumerate(ids) if token == target]
