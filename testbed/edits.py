"""Word-swap edits on held-out test-bed canvases and how they score (pure torch, no ComfyUI).

Each held-out canvas ("a photo of LEFT and RIGHT") is edited twice: once with its left digit word
swapped for the digit ``offset`` further on, once with its right one. An edit scores on two counts
(the issue-6 / issue-16 acceptance figures): the test-bed classifier (fitted on the training split)
reads the swapped half as the new digit, and the other half stays close to the source image (mean
absolute error on the [-1, 1] canvas) and keeps its class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from . import data, vocabulary

SWAP_OFFSET = 5
"""A digit d is swapped for (d + 5) % 10, as in the P2P test-bed test."""
SIDES = (0, 1)
SIDE_WORD_POSITIONS = (vocabulary.LEFT_WORD_POSITION, vocabulary.RIGHT_WORD_POSITION)


@dataclass(frozen=True)
class Swaps:
    """``2 * count`` swap edits, one row per edit (each canvas appears twice: left swap, right swap).

    Attributes:
        canvases: ``[2 * count, 1, 8, 16]`` the source canvas of each edit.
        source_prompts / target_prompts: the prompt of the source and of the edit, per row.
        sides: 0 (left digit swapped) or 1 (right), per row.
        target_digits: ``[2 * count]`` the digit the swapped half should show.
    """

    canvases: torch.Tensor
    source_prompts: list[str]
    target_prompts: list[str]
    sides: list[int]
    target_digits: torch.Tensor

    def __len__(self) -> int:
        return len(self.sides)

    def side_masks(self, swapped: bool = True) -> torch.Tensor:
        """``[2 * count, 8, 16]`` MASK: 1 on each row's swapped half (or on its other half)."""
        masks = torch.zeros(len(self), data.CANVAS_HEIGHT, data.CANVAS_WIDTH)
        for row, side in enumerate(self.sides):
            chosen = side if swapped else 1 - side
            masks[row, :, chosen * data.DIGIT_SIZE:(chosen + 1) * data.DIGIT_SIZE] = 1.0
        return masks


def heldout_swaps(count: int, seed: int, offset: int = SWAP_OFFSET) -> Swaps:
    """Both swaps of ``count`` held-out canvases drawn with ``seed``."""
    canvases, prompts, _ = data.heldout_canvases(count, seed=seed)
    rows, sources, targets, sides, digits = [], [], [], [], []
    for index, prompt in enumerate(prompts):
        for side in SIDES:
            target = vocabulary.shift_digit_word(prompt, SIDE_WORD_POSITIONS[side], offset)
            rows.append(index)
            sources.append(prompt)
            targets.append(target)
            sides.append(side)
            digits.append(vocabulary.DIGIT_WORDS.index(target.split()[SIDE_WORD_POSITIONS[side]]))
    return Swaps(canvases[rows], sources, targets, sides, torch.tensor(digits))


def half(canvases: torch.Tensor, side: int) -> torch.Tensor:
    """The left (0) or right (1) digit of ``[..., 8, 16]`` canvases."""
    return canvases[..., side * data.DIGIT_SIZE:(side + 1) * data.DIGIT_SIZE]


@dataclass(frozen=True)
class SwapScore:
    """How a set of edits did: rates in [0, 1], the other digit's mean |error| on the [-1, 1] canvas."""

    swapped_reads_new: float
    other_keeps_class: float
    other_error: float


def score_swaps(edited: torch.Tensor, swaps: Swaps, predict: Callable[[torch.Tensor], torch.Tensor]) -> SwapScore:
    """Score ``edited`` ``[2 * count, 1, 8, 16]`` canvases; ``predict`` maps canvases to ``[B, 2]`` digit labels."""
    labels, source_labels = predict(edited), predict(swaps.canvases)
    changed, kept, errors = [], [], []
    for row, side in enumerate(swaps.sides):
        other = 1 - side
        changed.append(int(labels[row, side]) == int(swaps.target_digits[row]))
        kept.append(int(labels[row, other]) == int(source_labels[row, other]))
        errors.append(float((half(edited[row], other) - half(swaps.canvases[row], other)).abs().mean()))
    count = len(swaps)
    return SwapScore(sum(changed) / count, sum(kept) / count, sum(errors) / count)
