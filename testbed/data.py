"""Two-digit canvases built from scikit-learn's bundled handwritten digits.

``sklearn.datasets.load_digits`` ships 1797 grey 8x8 digits (values 0..16) inside the
package: nothing is downloaded. A canvas puts two of them side by side: ``[1, 8, 16]``,
left digit in columns 0..7, right digit in columns 8..15, values in [-1, 1] (-1 = blank).
The test-bed models work on canvases directly (no VAE): the canvas is the latent.

The digits are split once by a seeded permutation into a training part (~80 %) and a
held-out part (~20 %) that the models never saw; :func:`split_indices` rebuilds the split.

scikit-learn is needed only to train and to test. The held-out digits (their dataset
indices, raw pixel values and labels) also ship inside ``models/testbed_digits.safetensors``
(:data:`HELDOUT_KEYS`), and :func:`heldout_digits` / :func:`heldout_canvases` read them from
there, so the nodes run in a ComfyUI without scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass
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

HELDOUT_INDICES_KEY = "heldout.indices"
"""Shipped tensor: ``[N] int64`` dataset indices of the held-out digits, ascending."""
HELDOUT_PIXELS_KEY = "heldout.pixels"
"""Shipped tensor: ``[N, 8, 8] uint8`` raw pixel values 0..16 of those digits."""
HELDOUT_LABELS_KEY = "heldout.labels"
"""Shipped tensor: ``[N] int64`` their labels."""
HELDOUT_KEYS = (HELDOUT_INDICES_KEY, HELDOUT_PIXELS_KEY, HELDOUT_LABELS_KEY)


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def digit_count() -> int:
    """Number of digits in the data set (1797)."""
    return len(_digits()[1])


def to_signed(pixels: torch.Tensor) -> torch.Tensor:
    """Raw pixel values 0..16 -> float32 in [-1, 1] (``v / 8 - 1``)."""
    return pixels.to(torch.float32) / (DIGIT_MAX_VALUE / 2.0) - 1.0


def load_digits_signed() -> tuple[torch.Tensor, torch.Tensor]:
    """All digits as ``images [N, 8, 8]`` float32 in [-1, 1] and ``labels [N]`` int64 (needs scikit-learn)."""
    images, labels = _digits()
    return to_signed(torch.from_numpy(images)), torch.from_numpy(labels)


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


def side_by_side(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Canvases ``[B, 1, 8, 16]`` from the left and right digits ``[B, 8, 8]``."""
    return torch.cat([left, right], dim=-1).unsqueeze(1)


def make_canvases(left_indices: Sequence[int], right_indices: Sequence[int]) -> torch.Tensor:
    """Canvases ``[B, 1, 8, 16]`` in [-1, 1] from dataset indices of the left and right digits."""
    images, _ = load_digits_signed()
    left = images[torch.as_tensor(np.asarray(left_indices), dtype=torch.long)]
    right = images[torch.as_tensor(np.asarray(right_indices), dtype=torch.long)]
    return side_by_side(left, right)


def labels_of(indices: Sequence[int]) -> torch.Tensor:
    """Digit labels ``[B]`` of dataset indices."""
    _, labels = load_digits_signed()
    return labels[torch.as_tensor(np.asarray(indices), dtype=torch.long)]


def prompts_for_pairs(pairs: torch.Tensor) -> list[str]:
    """Template prompts for ``pairs [B, 2]`` of dataset indices (left, right)."""
    left_labels, right_labels = labels_of(pairs[:, 0]), labels_of(pairs[:, 1])
    return [prompt_for(int(a), int(b)) for a, b in zip(left_labels, right_labels)]


def random_positions(pool_size: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, 2]`` positions in a pool of ``pool_size`` digits, drawn uniformly with replacement."""
    return torch.randint(pool_size, (count, 2), generator=generator)


def random_pairs(pool: np.ndarray, count: int, generator: torch.Generator) -> torch.Tensor:
    """``[count, 2]`` dataset indices, each digit drawn uniformly from ``pool`` (with replacement)."""
    return torch.as_tensor(pool, dtype=torch.long)[random_positions(len(pool), count, generator)]


@dataclass(frozen=True)
class HeldOutDigits:
    """The held-out split: ``indices [N]`` (ascending dataset indices), ``images [N, 8, 8]`` in [-1, 1], ``labels [N]``."""

    indices: torch.Tensor
    images: torch.Tensor
    labels: torch.Tensor


def heldout_tensors() -> dict[str, torch.Tensor]:
    """The held-out digits as the tensors shipped in the digits file (:data:`HELDOUT_KEYS`; needs scikit-learn)."""
    images, labels = _digits()
    _, heldout = split_indices()
    return {
        HELDOUT_INDICES_KEY: torch.from_numpy(heldout.astype(np.int64)),
        HELDOUT_PIXELS_KEY: torch.from_numpy(images[heldout]).to(torch.uint8),
        HELDOUT_LABELS_KEY: torch.from_numpy(labels[heldout]),
    }


@lru_cache(maxsize=1)
def heldout_digits() -> HeldOutDigits:
    """The held-out digits, read from the shipped digits file (no scikit-learn needed).

    Falls back to scikit-learn when the file holds none (a model being retrained from scratch).
    """
    from .weights import DEFAULT_MODEL_PATH, load_testbed

    try:
        tensors = load_testbed(DEFAULT_MODEL_PATH).tensors
    except FileNotFoundError:
        tensors = {}
    if not all(key in tensors for key in HELDOUT_KEYS):
        try:
            tensors = heldout_tensors()
        except ImportError as error:
            raise ImportError(
                f"{DEFAULT_MODEL_PATH} holds no held-out digits and scikit-learn is not installed: restore "
                "the file from git"
            ) from error
    return HeldOutDigits(tensors[HELDOUT_INDICES_KEY].long(), to_signed(tensors[HELDOUT_PIXELS_KEY]),
                         tensors[HELDOUT_LABELS_KEY].long())


def heldout_canvases(count: int, seed: int = 0) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """Held-out canvases ``[count, 1, 8, 16]``, their prompts and their ``pairs [count, 2]`` of dataset indices.

    The pairs are fixed by ``seed``: each digit is drawn uniformly (with replacement) from the
    held-out split, the same draw as ``random_pairs(split_indices()[1], count, seed)``.
    """
    digits = heldout_digits()
    positions = random_positions(len(digits.indices), count, torch.Generator().manual_seed(seed))
    canvases = side_by_side(digits.images[positions[:, 0]], digits.images[positions[:, 1]])
    labels = digits.labels[positions]
    prompts = [prompt_for(int(left), int(right)) for left, right in labels]
    return canvases, prompts, digits.indices[positions]


def canvas_to_image(canvas: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` in [-1, 1] -> ComfyUI IMAGE ``[B, H, W, 3]`` in [0, 1] (grey, clamped)."""
    grey = ((canvas.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    return grey.movedim(1, -1).expand(-1, -1, -1, 3).contiguous()


def image_to_canvas(image: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE ``[B, H, W, C]`` in [0, 1] -> ``[B, 1, H, W]`` in [-1, 1] (channel mean)."""
    grey = image.float()[..., :3].mean(dim=-1, keepdim=True)
    return (grey * 2.0 - 1.0).movedim(-1, 1).contiguous()
