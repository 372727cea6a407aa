"""Noise levels in ComfyUI's sigma parameterisation and conversions to the DDPM scale.

A variance-preserving (VP) diffusion state at level ``t`` is usually written
``z_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps`` (DDPM / DDIM papers). ComfyUI and
k-diffusion use the variance-exploding form ``x = x0 + sigma * eps`` with
``sigma_t = sqrt((1 - abar_t) / abar_t)``. The two describe the same state:

    x = z * sqrt(1 + sigma^2)        abar = 1 / (1 + sigma^2)

Every function here works on tensors of any shape and keeps the caller's dtype.
"""

from __future__ import annotations

import torch


def vp_scale(sigma: torch.Tensor | float) -> torch.Tensor | float:
    """Return ``sqrt(1 + sigma^2)``, the factor with ``x = z * vp_scale(sigma)``."""
    if isinstance(sigma, torch.Tensor):
        return torch.sqrt(1.0 + sigma * sigma)
    return (1.0 + sigma * sigma) ** 0.5


def alpha_bar(sigma: torch.Tensor | float) -> torch.Tensor | float:
    """Return the cumulative signal fraction ``abar = 1 / (1 + sigma^2)`` of a level."""
    return 1.0 / (1.0 + sigma * sigma)


def to_ddpm_scale(x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Map a state ``x = x0 + sigma*eps`` to the DDPM scale ``z = sqrt(abar) x0 + sqrt(1-abar) eps``."""
    return x / vp_scale(sigma)


def from_ddpm_scale(z: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """Inverse of :func:`to_ddpm_scale`."""
    return z * vp_scale(sigma)


def as_ascending_levels(sigmas: torch.Tensor) -> torch.Tensor:
    """Return a 1-D sigma schedule in ascending order (inversion runs from clean to noisy).

    ComfyUI's SIGMAS are descending and end in 0; core ``FlipSigmas`` output is ascending.
    Both are accepted. Raises ``ValueError`` for anything that is not monotone.
    """
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(
            f"Expected a 1-D schedule of at least 2 sigmas, got shape {tuple(sigmas.shape)}: "
            "connect a scheduler (e.g. BasicScheduler with ddim_uniform) with steps >= 1."
        )
    steps = sigmas[1:] - sigmas[:-1]
    if bool((steps < 0).all()):
        return sigmas.flip(0)
    if bool((steps > 0).all()):
        return sigmas
    raise ValueError(
        "The sigma schedule is not strictly monotone (repeated or out-of-order levels); "
        "use a standard scheduler such as ddim_uniform."
    )
