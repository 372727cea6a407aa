"""Fixtures for the pure-torch tier."""

from __future__ import annotations

import pytest
import torch
from analytic import GaussianDenoiser, GaussianFlowDenoiser

DATA_MEAN, DATA_VAR = 0.3, 0.5


def gaussian_samples() -> torch.Tensor:
    """2 samples of 4x8x8 from N(DATA_MEAN, DATA_VAR), float64, seed 0."""
    generator = torch.Generator().manual_seed(0)
    return DATA_MEAN + DATA_VAR ** 0.5 * torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)


@pytest.fixture
def gaussian_data():
    """``(denoiser, x_clean)``: 2 samples of 4x8x8 drawn from the denoiser's own data law."""
    return GaussianDenoiser(DATA_MEAN, DATA_VAR), gaussian_samples()


@pytest.fixture
def gaussian_flow_data():
    """``(denoiser, x_clean)``: the same samples under rectified flow (the flow denoiser's data law)."""
    return GaussianFlowDenoiser(DATA_MEAN, DATA_VAR), gaussian_samples()
