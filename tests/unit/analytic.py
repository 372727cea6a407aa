"""Analytic test beds for the pure-torch tier: SD1.x's discrete schedule and closed-form denoisers."""

from __future__ import annotations

import math

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




class StateDependentEpsDenoiser:
    """A denoiser whose noise estimate depends on the state and the level, in closed form.

    On the DDPM scale ``z = x / sqrt(1 + sigma^2)`` (what a UNet sees) the estimate is
    ``eps(z, sigma) = tanh(GAIN * z) + SHIFT * sin(sigma)``, so two different states, or one state
    at two levels, get different estimates: it tells "query the model, then mix" from "mix, then
    query" and the right query level from a neighbouring one. ``x0 = x - sigma * eps``. Counts its calls.
    """

    GAIN = 1.5
    SHIFT = 0.3

    def __init__(self):
        self.calls = 0

    @classmethod
    def eps(cls, z: float | torch.Tensor, sigma: float | torch.Tensor):
        """The closed-form noise estimate at DDPM-scale state ``z`` and level ``sigma``."""
        if isinstance(z, torch.Tensor):
            return torch.tanh(cls.GAIN * z) + cls.SHIFT * torch.sin(torch.as_tensor(sigma, dtype=z.dtype))
        return math.tanh(cls.GAIN * z) + cls.SHIFT * math.sin(sigma)

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return x - sigma * self.eps(x / (1.0 + sigma * sigma).sqrt(), sigma)
