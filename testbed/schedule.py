"""The SD1.x discrete noise schedule the test-bed model was trained with (pure torch).

Same numbers as ComfyUI's ``ModelSamplingDiscrete`` with its defaults ("linear" beta
schedule in ComfyUI's naming, i.e. scaled-linear: ``betas = linspace(sqrt(0.00085),
sqrt(0.012), 1000) ** 2``). DDPM scale: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``;
k-diffusion scale: ``x = x0 + sigma_t eps`` with ``sigma_t = sqrt((1 - abar_t) / abar_t)``.
"""

from __future__ import annotations

import torch

LINEAR_START = 0.00085
LINEAR_END = 0.012
NUM_TIMESTEPS = 1000
SCHEDULE_NAME = "scaled_linear"


def alphas_cumprod(
    linear_start: float = LINEAR_START, linear_end: float = LINEAR_END, timesteps: int = NUM_TIMESTEPS
) -> torch.Tensor:
    """``abar [timesteps]`` float64, index = integer timestep t."""
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigmas(**schedule) -> torch.Tensor:
    """``sigma_t [timesteps]`` float32, ascending, exactly as ComfyUI stores them."""
    abar = alphas_cumprod(**schedule)
    return (((1.0 - abar) / abar) ** 0.5).float()


def ddim_uniform_timesteps(steps: int, timesteps: int = NUM_TIMESTEPS) -> torch.Tensor:
    """Descending integer timesteps of ComfyUI's ``ddim_uniform`` scheduler (50 -> 981, 961, ..., 1).

    ComfyUI appends sigma 0 after the last one; see :func:`ddim_uniform_sigmas`.
    """
    stride = timesteps // steps
    return torch.arange(1, timesteps, stride).flip(0)


def ddim_uniform_sigmas(steps: int) -> torch.Tensor:
    """Descending sigmas of ComfyUI's ``ddim_uniform`` scheduler, ending in 0: ``[steps + 1]``."""
    table = sigmas()
    return torch.cat([table[ddim_uniform_timesteps(steps)], table.new_zeros(1)])
