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


class GaussianFlowDenoiser:
    """Exact posterior mean for data ``x0 ~ N(mean, var * I)`` under rectified flow ``x = (1 - s) x0 + s * eps``.

    ``E[x0 | x] = mean + (1 - s) var / ((1 - s)^2 var + s^2) * (x - (1 - s) mean)``. The flow ODE maps
    ``x0`` to ``(1 - s) mean + sqrt((1 - s)^2 var + s^2) * (x0 - mean) / sqrt(var)`` exactly
    (:meth:`exact_state`). Counts its calls and records the levels it was asked at.
    """

    def __init__(self, mean: float, var: float):
        self.mean, self.var, self.calls, self.levels = mean, var, 0, []

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.levels.append(float(sigma.reshape(-1)[0]))
        s = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        gain = (1 - s) * self.var / ((1 - s) ** 2 * self.var + s * s)
        return self.mean + gain * (x - (1 - s) * self.mean)

    def velocity(self, x: torch.Tensor, sigma: float) -> torch.Tensor:
        """``v = (x - E[x0 | x]) / s``, what a flow network outputs (``s > 0``)."""
        s = torch.tensor([sigma], dtype=x.dtype).expand(x.shape[0])
        return (x - self.__call__(x, s)) / sigma

    def exact_state(self, x0: torch.Tensor, sigma: float) -> torch.Tensor:
        """Where the flow ODE carries the clean ``x0`` at level ``sigma``."""
        spread = ((1 - sigma) ** 2 * self.var + sigma * sigma) ** 0.5 / self.var ** 0.5
        return (1 - sigma) * self.mean + spread * (x0 - self.mean)


def flow_levels(n_steps: int, shift: float = 3.0, dtype: torch.dtype = torch.float64, clean: float = 0.0) -> torch.Tensor:
    """Ascending levels ``shift t / (1 + (shift - 1) t)`` for ``t = linspace(1, 1/1000, N)`` (SD3's shift 3), ``clean`` first."""
    t = torch.linspace(1.0, 1.0 / 1000, n_steps, dtype=dtype)
    sigmas = shift * t / (1 + (shift - 1) * t)
    return torch.cat([torch.tensor([clean], dtype=dtype), sigmas.flip(0)])
