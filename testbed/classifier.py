"""A pixel classifier of single 8x8 digits, fitted on the training split only.

Used to check that a generated or edited canvas shows the digits its prompt names:
each half of a ``[B, 1, 8, 16]`` canvas is classified on its own. Logistic regression on
the 64 signed pixel values; about 96 % accurate on the held-out digits.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .data import DIGIT_SIZE, load_digits_signed, split_indices

CLASSIFIER_C = 1.0
CLASSIFIER_MAX_ITER = 5000


class DigitClassifier:
    """Classifies 8x8 digits and the two halves of canvases (inputs in [-1, 1])."""

    def __init__(self, model) -> None:
        self._model = model

    @classmethod
    def fit_training_split(cls) -> "DigitClassifier":
        """Fit on the training split's digits (never the held-out ones)."""
        from sklearn.linear_model import LogisticRegression

        images, labels = load_digits_signed()
        train, _ = split_indices()
        model = LogisticRegression(C=CLASSIFIER_C, max_iter=CLASSIFIER_MAX_ITER)
        model.fit(images[train].reshape(len(train), -1).numpy(), labels[train].numpy())
        return cls(model)

    def predict_digits(self, digits: torch.Tensor) -> torch.Tensor:
        """``digits [B, 8, 8]`` or ``[B, 1, 8, 8]`` -> labels ``[B]`` int64."""
        flat = digits.detach().float().cpu().clamp(-1.0, 1.0).reshape(digits.shape[0], -1)
        if flat.shape[1] != DIGIT_SIZE * DIGIT_SIZE:
            raise ValueError(f"expected 8x8 digits, got shape {tuple(digits.shape)}")
        return torch.from_numpy(self._model.predict(flat.numpy()).astype(np.int64))

    def predict_canvases(self, canvases: torch.Tensor) -> torch.Tensor:
        """``canvases [B, 1, 8, 16]`` -> ``[B, 2]`` labels of the (left, right) digit."""
        if canvases.ndim != 4 or canvases.shape[-1] != 2 * DIGIT_SIZE:
            raise ValueError(f"expected canvases [B, 1, 8, 16], got {tuple(canvases.shape)}")
        left = self.predict_digits(canvases[..., :DIGIT_SIZE])
        right = self.predict_digits(canvases[..., DIGIT_SIZE:])
        return torch.stack([left, right], dim=1)

    def heldout_accuracy(self) -> float:
        """Accuracy on the held-out single digits."""
        images, labels = load_digits_signed()
        _, heldout = split_indices()
        return float((self.predict_digits(images[heldout]) == labels[heldout]).float().mean())


@lru_cache(maxsize=1)
def training_split_classifier() -> DigitClassifier:
    """The fitted classifier, built once per process (about a second)."""
    return DigitClassifier.fit_training_split()
