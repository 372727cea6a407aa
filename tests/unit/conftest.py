"""Fixtures for the pure-torch tier."""

from __future__ import annotations

import pytest
import torch
from analytic import GaussianDenoiser


@pytest.fixture
def gaussian_data():
    """``(denoiser, x_clean)``: 2 samples of 4x8x8 drawn from the denoiser's own data law."""
    mean, var = 0.3, 0.5
    generator = torch.Generator().manual_seed(0)
    x_clean = mean + var ** 0.5 * torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    return GaussianDenoiser(mean, var), x_clean


@pytest.fixture
def gaussian_flow_data():
    """``(denoiser, x_clean)``: 2 samples of 4x8x8 from the flow denoiser's data law (rectified flow)."""
    from analytic import GaussianFlowDenoiser

    mean, var = 0.3, 0.5
    generator = torch.Generator().manual_seed(0)
    x_clean = mean + var ** 0.5 * torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    return GaussianFlowDenoiser(mean, var), x_clean
