"""The one deterministic step every sampler and inversion of the pack takes.

With ComfyUI's denoiser (``x0`` out, for every parameterisation), ``(x - x0) / sigma`` is the
derivative of the probability-flow ODE in sigma: the noise estimate eps for DDPM-family models
(Karras et al. 2022, eq. 5 with ``s(t) = 1``), the velocity ``v = eps - x0`` for rectified flow.
One Euler step in sigma is therefore the deterministic DDIM step (Song et al., ICLR 2021, eq. 12
with eta 0) for UNets and the rectified-flow Euler step for flow models, in either direction.
The arithmetic is written exactly as k-diffusion's ``sample_euler`` writes it, so a replay is bit
for bit ComfyUI's ``euler`` / ``ddim``.
"""

from __future__ import annotations

import torch

SigmaLike = torch.Tensor | float


def ode_slope(x: torch.Tensor, x0_pred: torch.Tensor, sigma: SigmaLike) -> torch.Tensor:
    """``(x - x0) / sigma``: eps (DDPM family) or the velocity (rectified flow); shapes as ``x``."""
    return (x - x0_pred) / sigma


def euler_step(x: torch.Tensor, slope: torch.Tensor, sigma_from: SigmaLike, sigma_to: SigmaLike) -> torch.Tensor:
    """``x + slope * (sigma_to - sigma_from)``: one step between two levels, up or down."""
    return x + slope * (sigma_to - sigma_from)


def denoising_step(x: torch.Tensor, x0_pred: torch.Tensor, sigma: SigmaLike, sigma_next: SigmaLike) -> torch.Tensor:
    """The Euler step ``sigma -> sigma_next`` from ``x`` with the clean estimate ``x0_pred`` (``[B, ...]``)."""
    return euler_step(x, ode_slope(x, x0_pred, sigma), sigma, sigma_next)


def denoised_landing_on(x: torch.Tensor, x0_pred: torch.Tensor, sigma_from: float, sigma_to: float,
                        x_next: torch.Tensor, x_wanted: torch.Tensor) -> torch.Tensor:
    """The clean estimate that makes the step from ``x`` land on ``x_wanted`` instead of ``x_next``.

    An Euler step is ``x_next = a x + (1 - a) x0`` with ``a = sigma_to / sigma_from``, so the
    state after the step is steered to ``x_wanted`` (a source row put back on its recorded
    trajectory, a LocalBlend, a mask) by giving the sampler ``x0' = x0 + (x_wanted - x_next) / (1 - a)``.
    Elements where ``x_wanted`` equals ``x_next`` keep ``x0`` bit for bit. Exact for samplers that
    make one such step per model call (ddim, euler, the pack's replay), up to rounding.

    Args:
        x: ``[B, ...]`` state at ``sigma_from``.
        x0_pred: ``[B, ...]`` the model's (guided) clean estimate at ``x``.
        sigma_from, sigma_to: the step's levels (``sigma_to < sigma_from``).
        x_next: the state the plain step reaches (:func:`denoising_step`).
        x_wanted: the state the step must reach.

    Returns:
        ``[B, ...]`` the clean estimate to hand to the sampler.
    """
    if not sigma_to < sigma_from:
        raise ValueError(f"A step must go down in sigma to be steered; got {sigma_from} -> {sigma_to}.")
    return x0_pred + (x_wanted - x_next) / (1.0 - sigma_to / sigma_from)
