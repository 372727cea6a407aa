"""Two-digit canvases built from scikit-learn's bundled handwritten digits.

``sklearn.datasets.load_digits`` ships 1797 grey 8x8 digits (values 0..16) inside the
package: nothing is downloaded. A canvas puts two of them side by side: ``[1, 8, 16]``,
left digit in columns 0..7, right digit in columns 8..15, values in [-1, 1] (-1 = blank).
The test-bed model works on canvases directly (no VAE): the canvas is the latent.

The digits are split once by a seeded permutation into a training part (~80 %) and a
held-out part (~20 %) that the model never saw; :func:`split_indices` rebuilds the split.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from .vocabulary import prompt_for

DIGIT_SIZE = 8
CANVAS_HEIGHT = DIGIT_SIZE
CANVAS_WIDTH = 2 * DIGIT_SIZE
CANVAS_CHANNELS = 1
CANVAS_SHAPE = (CANVAS_CHANNELS, CANVAS_HEIGHT, CANVAS_WIDTH)
"""``[C, H, W]`` of one canvas."""

DIGIT_MAX_VALUE = 16.0
"""Largest raw pixel value in ``load_digits``."""

SPLIT_SEED = 1797
HELDOUT_FRACTION = 0.2


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def digit_count() -> int:
    """Number of digits in the data set (1797)."""
    return len(_digits()[1])


def load_digits_signed() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as ``images [N, 8, 8]`` float32 in [-1, 1] and ``labels [N]`` int64."""
    images, labels = _digits()
    return torch.from_numpy(images / (DIGIT_MAX_VALUE / 2.0) - 1.0), torch.from_numpy(labels)


def split_indices(
    seed: int = SPLIT_SEED, heldout_fraction: float = HELDOUT_FRACTION
) -> tuple[np.ndarray, np.ndarray]:
    """``(train_indices, heldout_indices)``: sorted int64 arrays partitioning 0..N-1.

    Rule: ``perm = numpy.random.default_rng(seed).permutation(N)``; the first
    ``round(heldout_fraction * N)`` entries of ``perm`` are held out, the rest train.
    """
    count = digit_count()
    permutation = np.random.default_rng(seed).permutation(count)
    heldout_count = int(round(heldout_fraction * count))
    return np.sort(permutation[heldout_count:]), np.sort(permutation[:heldout_count])


def make_canvases(left_indices: Sequence[int], right_indices: Sequence[int]) -> torch.Tensor:
    """Canvases ``[B, 1, 8, 16]`` in [-1, 1] from dataset indices of the left and right digits."""
    images, _ = load_digits_signed()
    left = images[torch.as_tensor(np.asarray(left_indices), dtype=torch.long)]
    right = images[torch.as_tensor(np.asarray(right_indices), dtype=torch.long)]
    return torch.cat([left, right], dim=-1).unsqueeze(1)


def labels_of(indices: Sequence[int]) -> torch.Tensor:
    """Digit labels ``[B]`` of dataset indices."""
    _, labels = load_digits_signed()
    return labels[torch.as_tensor(np.asarray(indices), dtype=torch.long)]


def prompts_for_pairs(pairs: torch.Tensor) -> list[str]:
    """Template prompts for ``pairs [B, 2]`` of dataset indices (left, right)."""
    left_labels, right_labels = labels_of(pairs[:, 0]), labels_of(pairs[:, 1])
    return [prompt_for(int(a), int(b)) for a, b in zip(left_labels, right_labels)]


def random_pairs(pool: np.ndarray, count: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, 2]`` dataset indices, each digit drawn uniformly from ``pool`` (with replacement)."""
    pool_tensor = torch.as_tensor(pool, dtype=torch.long)
    picks = torch.randint(len(pool_tensor), (count, 2), generator=generator)
    return pool_tensor[picks]


def heldout_pairs(count: int, seed: int = 0) -> torch.Tensor:
    """``[count, 2]`` (left, right) dataset indices of held-out digits, fixed by ``seed``."""
    _, heldout = split_indices()
    return random_pairs(heldout, count, torch.Generator().manual_seed(seed))


def heldout_canvases(count: int, seed: int = 0) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Held-out canvases ``[count, 1, 8, 16]``, their prompts and their ``pairs [count, 2]``."""
    pairs = heldout_pairs(count, seed)
    return make_canvases(pairs[:, 0], pairs[:, 1]), prompts_for_pairs(pairs), pairs


def canvas_to_image(canvas: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` in [-1, 1] -> ComfyUI IMAGE ``[B, H, W, 3]`` in [0, 1] (grey, clamped)."""
    grey = ((canvas.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    return grey.movedim(1, -1).expand(-1, -1, -1, 3).contiguous()


def image_to_canvas(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` in [0, 1] -> ``[B, 1, H, W]`` in [-1, 1] (channel mean)."""
    grey = image.float()[..., :3].mean(dim=-1, keepdim=True)
    return (grey * 2.0 - 1.0).movedim(-1, 1).contiguous()
