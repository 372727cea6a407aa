"""Gradients of a float32 loss through a model that computes in float16: dynamic loss scaling.

Micikevicius et al., "Mixed Precision Training" (ICLR 2018), section 3.2. The backward pass of a
float16 network carries gradients in float16, whose smallest normal value is about 6e-5: the
gradients of a small loss (null-text's landing loss is 1e-5 .. 1e-2, averaged over thousands of
latent values) underflow to zero. Multiplying the loss by a scale ``S`` lifts them into range;
the gradients are divided by ``S`` afterwards, in float32. A scale that is too large overflows
(inf / NaN gradients): then ``S`` is halved and the same backward pass is run again, so no step
is skipped and no image of a batch waits for another. After ``growth_interval`` clean passes in a
row ``S`` doubles again. ``S`` is always a power of two, so scaling and unscaling are exact.

bfloat16 has float32's exponent range and needs no scaling; neither does float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

INITIAL_LOSS_SCALE = 2.0 ** 16
MAX_LOSS_SCALE = 2.0 ** 24
MIN_LOSS_SCALE = 2.0 ** -24
LOSS_SCALE_FACTOR = 2.0
LOSS_SCALE_GROWTH_INTERVAL = 100


class NonFiniteGradientError(ValueError):
    """The gradient is inf or NaN at every loss scale down to :data:`MIN_LOSS_SCALE`."""


@dataclass
class DynamicLossScale:
    """The running loss scale of one optimisation (explicit per-run state; make a new one per run).

    Attributes:
        scale: the current scale ``S`` (a power of two).
        growth_interval: clean backward passes in a row after which ``S`` doubles.
        clean_passes: clean passes since the last change of ``S``.
        overflows: backward passes redone with a smaller scale so far.
    """

    scale: float = INITIAL_LOSS_SCALE
    growth_interval: int = LOSS_SCALE_GROWTH_INTERVAL
    clean_passes: int = 0
    overflows: int = 0

    def gradients(self, loss: torch.Tensor, leaves: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``d loss / d leaf`` for each leaf, computed as ``d (S loss) / d leaf / S``.

        The graph is kept until the pass is clean (``retain_graph``); the caller frees it by
        dropping ``loss``. Raises :class:`NonFiniteGradientError` when no scale gives finite
        gradients (the model overflows in float16 whatever the loss's size).
        """
        while True:
            scaled = torch.autograd.grad(loss * self.scale, leaves, retain_graph=True)
            if all(bool(torch.isfinite(gradient).all()) for gradient in scaled):
                break
            self._shrink()
        gradients = [gradient / self.scale for gradient in scaled]
        self._count_clean_pass()
        return gradients

    def _shrink(self) -> None:
        self.overflows += 1
        self.clean_passes = 0
        self.scale /= LOSS_SCALE_FACTOR
        if self.scale < MIN_LOSS_SCALE:
            raise NonFiniteGradientError(
                f"The gradient through the model is inf or NaN even with the loss scaled by {MIN_LOSS_SCALE:g}: "
                "the model overflows in float16 on this input."
            )

    def _count_clean_pass(self) -> None:
        self.clean_passes += 1
        if self.clean_passes >= self.growth_interval and self.scale * LOSS_SCALE_FACTOR <= MAX_LOSS_SCALE:
            self.scale *= LOSS_SCALE_FACTOR
            self.clean_passes = 0


def loss_gradients(loss: torch.Tensor, leaves: Sequence[torch.Tensor],
                   loss_scale: Optional[DynamicLossScale] = None) -> list[torch.Tensor]:
    """``d loss / d leaf`` for each leaf: plain autograd, or through ``loss_scale`` (float16 models)."""
    if loss_scale is None:
        return list(torch.autograd.grad(loss, leaves))
    return loss_scale.gradients(loss, leaves)
