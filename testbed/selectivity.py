"""Word selectivity of cross-attention on a two-digit canvas.

For a digit word (column ``j`` of the cross-attention probabilities
``softmax(q k^T / sqrt(d))``), its *selectivity* is the share of the column's mass, summed
over heads, batch and the query positions of one half of the canvas, that falls on the half
holding the digit it names (left word -> left half). 0.5 means the word is attended
uniformly across the canvas; 1.0 means only its own digit's pixels attend to it.

Query positions are the attention map's pixels in ComfyUI's row-major order
(``index = row * map_width + column``); the left half is ``column < map_width / 2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .data import CANVAS_HEIGHT, CANVAS_WIDTH
from .vocabulary import LEFT_WORD_POSITION, RIGHT_WORD_POSITION


def attention_map_size(
    num_queries: int, canvas_height: int = CANVAS_HEIGHT, canvas_width: int = CANVAS_WIDTH
) -> tuple[int, int]:
    """``(map_height, map_width)`` of a UNet level with ``num_queries`` pixels.

    UNet levels halve both sides, so the map keeps the canvas's aspect ratio.
    """
    for factor in (1, 2, 4, 8, 16):
        height, width = canvas_height // factor, canvas_width // factor
        if height * width == num_queries and height * factor == canvas_height:
            return height, width
    raise ValueError(
        f"{num_queries} query positions match no downsampled {canvas_height}x{canvas_width} canvas"
    )


def half_masks(map_height: int, map_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean ``[map_height * map_width]`` masks of the left and right halves (row-major)."""
    if map_width % 2:
        raise ValueError(f"an attention map of odd width {map_width} has no left/right halves")
    columns = torch.arange(map_width).repeat(map_height)
    left = columns < map_width // 2
    return left, ~left


def column_mass_by_half(
    probs: torch.Tensor, map_height: int, map_width: int, token_position: int
) -> torch.Tensor:
    """Mass of one token's attention column on each half: ``[2]`` = (left, right).

    Args:
        probs: attention probabilities ``[B * heads, Nq, Nk]`` (rows sum to 1),
            ``Nq = map_height * map_width``.
        token_position: the token's index ``j`` in ``0..Nk-1``.
    """
    if probs.shape[1] != map_height * map_width:
        raise ValueError(
            f"probs has {probs.shape[1]} query positions, expected {map_height}x{map_width}"
        )
    column = probs[:, :, token_position].float().sum(dim=0)  # [Nq]
    left, right = half_masks(map_height, map_width)
    left, right = left.to(column.device), right.to(column.device)
    return torch.stack([column[left].sum(), column[right].sum()])


def word_selectivity(
    probs: torch.Tensor,
    map_height: int,
    map_width: int,
    left_position: int = LEFT_WORD_POSITION,
    right_position: int = RIGHT_WORD_POSITION,
) -> dict[str, float]:
    """Selectivity of the left and right digit words, and their mean.

    Args:
        probs: ``[B * heads, Nq, Nk]`` attention probabilities, ``Nq = map_height * map_width``.
        left_position, right_position: token indices of the words naming the left and
            right digits.
    Returns:
        ``{"left": share of the left word's mass on the left half, "right": same for the
        right word on the right half, "mean": their average}``.
    """
    left_mass = column_mass_by_half(probs, map_height, map_width, left_position)
    right_mass = column_mass_by_half(probs, map_height, map_width, right_position)
    left_share = float(left_mass[0] / left_mass.sum().clamp_min(1e-12))
    right_share = float(right_mass[1] / right_mass.sum().clamp_min(1e-12))
    return {"left": left_share, "right": right_share, "mean": 0.5 * (left_share + right_share)}


def own_half_share(
    probs: torch.Tensor,
    map_height: int,
    map_width: int,
    left_position: int = LEFT_WORD_POSITION,
    right_position: int = RIGHT_WORD_POSITION,
) -> torch.Tensor:
    """Differentiable selectivity of both digit words together (a 0-d tensor; the training loss's term).

    Args:
        probs: ``[..., Nq, Nk]`` attention probabilities (any leading dims: batch, heads),
            ``Nq = map_height * map_width``.
    Returns:
        (left word's mass on the left half + right word's mass on the right half) / both words' mass.
    """
    left, right = (mask.to(probs.device) for mask in half_masks(map_height, map_width))
    left_column = probs[..., left_position].reshape(-1, probs.shape[-2]).sum(dim=0)  # [Nq]
    right_column = probs[..., right_position].reshape(-1, probs.shape[-2]).sum(dim=0)
    own = left_column[left].sum() + right_column[right].sum()
    return own / (left_column.sum() + right_column.sum()).clamp_min(1e-8)


@dataclass
class SelectivityAccumulator:
    """Sums the two digit words' attention mass per key (e.g. (block, noise bucket)).

    ``add`` takes the same arguments as :func:`word_selectivity`. ``table`` gives
    ``{key: selectivity}`` with selectivity = own-half mass / total mass of both words;
    ``word_share_table`` gives ``{key: mass of both words / mass of all tokens}``, which
    says whether a block attends to the digit words at all (a block that avoids them can
    score a high selectivity on a tiny mass).
    """

    left_position: int = LEFT_WORD_POSITION
    right_position: int = RIGHT_WORD_POSITION
    own: dict = field(default_factory=dict)
    total: dict = field(default_factory=dict)
    everything: dict = field(default_factory=dict)

    def add(self, key, probs: torch.Tensor, map_height: int, map_width: int) -> None:
        """Accumulate one attention call ``probs [B * heads, Nq, Nk]`` under ``key``."""
        left_mass = column_mass_by_half(probs, map_height, map_width, self.left_position)
        right_mass = column_mass_by_half(probs, map_height, map_width, self.right_position)
        own = float(left_mass[0] + right_mass[1])
        total = float(left_mass.sum() + right_mass.sum())
        self.own[key] = self.own.get(key, 0.0) + own
        self.total[key] = self.total.get(key, 0.0) + total
        self.everything[key] = self.everything.get(key, 0.0) + float(probs.float().sum())

    def table(self) -> dict:
        """``{key: own-half mass / total mass of the two digit words}`` for every key seen."""
        return {key: self.own[key] / max(self.total[key], 1e-12) for key in self.own}

    def word_share_table(self) -> dict:
        """``{key: mass on the two digit words / mass on all tokens}`` for every key seen."""
        return {key: self.total[key] / max(self.everything[key], 1e-12) for key in self.total}
