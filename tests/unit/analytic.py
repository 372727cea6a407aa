"""Analytic test beds for the pure-torch tier: SD1.x's discrete schedule and closed-form denoisers."""

from __future__ import annotations

import torch

TRAIN_STEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012


def sd_sigmas(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``sigma_t = sqrt((1 - abar_t) / abar_t)`` of SD1.x's scaled-linear schedule, t = 0..999."""
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, TRAIN_STEPS, dtype=torch.float64) ** 2
    abar = torch.cumprod(1.0 - betas, dim=0)
    return ((1.0 - abar) / abar).sqrt().to(dtype)


def ddim_levels(n_steps: int, dtype: torch.dtype = torch.float64, clean: float = 0.0) -> torch.Tensor:
    """Ascending levels of ComfyUI's ddim_uniform schedule (t = 1, 1 + 1000//N, ...) below a clean level."""
    table = sd_sigmas(dtype)
    timesteps = list(range(1, TRAIN_STEPS, TRAIN_STEPS // n_steps))
    return torch.cat([torch.tensor([clean], dtype=dtype), table[timesteps]])


class GaussianDenoiser:
    """Exact posterior mean for data ``x0 ~ N(mean, var * I)`` under ``x = x0 + sigma * eps``.

    ``E[x0 | x] = mean + var / (var + sigma^2) * (x - mean)``. Counts its calls.
    """

    def __init__(self, mean: float, var: float):
        self.mean, self.var, self.calls = mean, var, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return self.mean + self.var / (self.var + sigma * sigma) * (x - self.mean)


class ConstantEpsDenoiser:
    """A denoiser whose noise estimate is a fixed tensor: ``x0 = x - sigma * eps``."""

    def __init__(self, eps: torch.Tensor):
        self.eps, self.calls = eps, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x - sigma.reshape(-1, *([1] * (x.ndim - 1))) * self.eps


