"""Dynamic loss scaling for gradients through float16 computation, against float64 gradients written here."""

from __future__ import annotations

import pytest
import torch

from invedit.inversion.loss_scaling import (
    INITIAL_LOSS_SCALE,
    DynamicLossScale,
    NonFiniteGradientError,
    loss_gradients,
)

SIZE = 1000
SMALL_GAIN = 1e-3  # h = x * 1e-3 in float16: the backward pass carries 2 h / N * 1e-3, about 2e-9
LARGE_GAIN = 100.0  # h = x * 100 in float16: d sum(h^2) / dh = 2 h, times 2^16, overflows float16
FLOAT16_RELATIVE = 2e-3  # float16 keeps 11 significant bits


def leaf(seed: int = 0) -> torch.Tensor:
    return torch.rand(SIZE, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).add_(0.5) \
        .requires_grad_(True)


def small_loss(x: torch.Tensor) -> torch.Tensor:
    """A float32 loss of a float16 computation whose gradient underflows float16 unscaled."""
    h = x.half() * SMALL_GAIN
    return h.float().pow(2).mean()


def small_loss_gradient(x: torch.Tensor) -> torch.Tensor:
    """d/dx mean((x g)^2) = 2 x g^2 / N, in float64."""
    return 2 * x.detach().double() * SMALL_GAIN ** 2 / SIZE


def relative(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result.double() - reference).abs().max() / reference.abs().max())


def test_scaling_recovers_gradients_that_underflow_in_float16():
    x = leaf()
    (unscaled,) = loss_gradients(small_loss(x), [x])
    assert float(unscaled.abs().max()) == 0.0  # the negative control: plain float16 backward loses them all
    scale = DynamicLossScale()
    (scaled,) = loss_gradients(small_loss(x), [x], scale)
    assert relative(scaled, small_loss_gradient(x)) < FLOAT16_RELATIVE
    assert scale.overflows == 0 and scale.scale == INITIAL_LOSS_SCALE


def test_an_overflowing_scale_is_halved_and_the_pass_redone():
    x = leaf(1)
    scale = DynamicLossScale()
    h = x.half() * LARGE_GAIN
    (gradient,) = scale.gradients(h.float().pow(2).sum(), [x])
    reference = 2 * x.detach().double() * LARGE_GAIN ** 2
    assert relative(gradient, reference) < FLOAT16_RELATIVE
    assert scale.overflows > 0 and scale.scale < INITIAL_LOSS_SCALE
    # The scale that worked is the largest power of two below float16's range for these gradients.
    largest = float(2 * x.detach().max() * LARGE_GAIN)
    assert largest * scale.scale * LARGE_GAIN < torch.finfo(torch.float16).max < 2 * largest * scale.scale * LARGE_GAIN


def test_the_scale_grows_after_clean_passes():
    x = leaf()
    scale = DynamicLossScale(growth_interval=3)
    for _ in range(3):
        loss_gradients(small_loss(x), [x], scale)
    assert scale.scale == 2 * INITIAL_LOSS_SCALE and scale.clean_passes == 0


def test_a_forward_pass_that_overflows_is_an_error_not_a_nan_step():
    x = leaf()
    loss = (x.half() * 1e5).float().pow(2).sum()  # inf in the forward pass: no scale helps
    with pytest.raises(NonFiniteGradientError, match="overflows in float16"):
        DynamicLossScale().gradients(loss, [x])
