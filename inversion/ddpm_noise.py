"""Edit-friendly DDPM noise space: record the per-step noises that make DDPM sampling return an image.

Huberman-Spiegelglas, Kulikov and Michaeli, "An Edit Friendly DDPM Noise Space: Inversion and
Manipulations", CVPR 2024 (official code inbarhub/DDPM_inversion, ``inversion_forward_process``). In the
DDPM form ``z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``:

1. draw every noisy state *independently*: ``z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps_t`` (eq. 6);
2. for each step ``t -> s`` (``s`` the next lower level), with the model's guided noise estimate at
   ``z_t``: ``mu = sqrt(abar_s) x0_pred + sqrt(1 - abar_s - var) eps_pred`` with the DDPM posterior
   variance ``var = (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)`` (DDIM eq. 12/16 at eta 1),
   and the recorded noise ``w_t = (z_s - mu) / sqrt(var)`` (eq. 5); ``z_s`` is then recomputed as
   ``mu + sqrt(var) w_t`` so that sampling reproduces it to rounding (the official "correction");
3. sampling ``z_s = mu(z_t) + sqrt(var) w_t`` with the recorded ``w`` returns the image; with another
   prompt (and CFG), from step ``skip`` on, it edits it (Sec. 4).

ComfyUI's form for these models is ``x = z / sqrt(abar) = x0 + sigma eps`` with
``sigma^2 = (1 - abar) / abar``. Dividing step 2 by ``sqrt(abar_s)`` gives a rule in sigmas alone:
``mu = x0_pred + sigma_down eps_pred`` and noise scale ``sigma_up`` with
``sigma_up = sigma_s sqrt(sigma_t^2 - sigma_s^2) / sigma_t`` and ``sigma_down = sigma_s^2 / sigma_t`` -
k-diffusion's ancestral step at eta 1, i.e. DDPM. The schedule's ``abar`` is therefore carried by the
sigmas (ComfyUI builds them from ``alphas_cumprod``); tests/host/test_ddpm_inversion.py checks the
recorded noises against step 2 written with ``alphas_cumprod`` and the network's raw eps.

The final step lands on sigma 0, where the posterior variance is 0 and no noise can correct it: the
record keeps that step's residual ``x0 - x0_pred`` instead, with scale 1 (the official code lands on
``abar_0`` instead and zeroes that last noise, so its reconstruction is off by it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .masks import keep_outside
from .process import DDPM, DiffusionProcess
from .steps import euler_step, ode_slope

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x [B, ...], sigma [B]) -> x0``: a guided denoiser."""
StepCallback = Callable[[dict], None]
FINAL_STEP_SCALE = 1.0
"""Scale of the last step's recorded term (its residual, in latent units): the posterior variance there is 0."""


@dataclass
class DDPMNoises:
    """An image's edit-friendly noise space along a descending schedule.

    Attributes:
        states: ``[N+1, B, C, ...]`` the independently drawn (then corrected) states: ``states[i]`` at
            ``sigmas[i]``, ``states[N]`` the image (to rounding). Model units, ``x = x0 + sigma eps``.
        noises: ``[N, B, C, ...]`` the recorded noise of each step (the last step's is its residual).
        model_calls: guided denoiser evaluations made.
    """

    states: torch.Tensor
    noises: torch.Tensor
    model_calls: int


def check_ddpm_process(process: DiffusionProcess) -> None:
    """Raise ValueError unless ``process`` is the DDPM family (the posterior step is its own)."""
    if process.name != DDPM.name:
        raise ValueError(
            "Edit-friendly DDPM inversion records the noises of DDPM sampling, which UNet models (SD1.x, SD2.x, "
            f"SDXL) use; this model is {process.family}. For flow models use FlowEdit."
        )


def posterior_levels(sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sigma_down, sigma_up)`` of the DDPM posterior step ``sigma_from -> sigma_to`` (module docstring)."""
    sigma_up = sigma_to * (sigma_from**2 - sigma_to**2).clamp_min(0.0).sqrt() / sigma_from
    return sigma_to**2 / sigma_from, sigma_up


def posterior_mean(x: torch.Tensor, x0_pred: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """``x0_pred + sigma_down * eps_pred``: the noise-free part of the DDPM step from ``x`` (shapes as ``x``)."""
    sigma_down, _ = posterior_levels(sigma_from, sigma_to)
    return euler_step(x, ode_slope(x, x0_pred, sigma_from), sigma_from, sigma_down)


def noise_scale(sigma_from: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """What the recorded noise of the step is multiplied by: ``sigma_up``, or 1 on the last step (to sigma 0)."""
    if float(sigma_to) == 0.0:
        return sigma_to.new_tensor(FINAL_STEP_SCALE)
    return posterior_levels(sigma_from, sigma_to)[1]


def independent_states(x0: torch.Tensor, sigmas: torch.Tensor, draw_noise: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``[N+1, B, ...]``: ``x0 + sigmas[i] * eps_i`` with a fresh ``eps_i`` per level (eq. 6); ``x0`` at sigma 0.

    ``draw_noise`` is called once per level with ``sigmas[i] > 0``, from the top level down.
    """
    states = [DDPM.diffuse(x0, draw_noise(), sigma) if float(sigma) > 0.0 else x0.clone() for sigma in sigmas]
    return torch.stack(states)


def check_schedule(sigmas: torch.Tensor) -> None:
    """Raise ValueError unless ``sigmas`` descend strictly and end at 0."""
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise ValueError(f"The schedule needs at least one step; got sigmas of shape {tuple(sigmas.shape)}.")
    if not bool((sigmas[1:] < sigmas[:-1]).all()) or float(sigmas[-1]) != 0.0:
        raise ValueError("Edit-friendly DDPM inversion needs a schedule that descends to 0 (a full denoise).")


def extract_noises(denoise: Denoise, sigmas: torch.Tensor, states: torch.Tensor,
                   on_step: Optional[StepCallback] = None) -> DDPMNoises:
    """Record the noise of every step so that DDPM sampling from ``states[0]`` passes through ``states``.

    Args:
        denoise: the guided denoiser (source prompt and CFG; sampling must use the same to reconstruct).
        sigmas: ``[N+1]`` descending to 0.
        states: ``[N+1, B, ...]`` from :func:`independent_states`; not modified.
        on_step: called after each step with ``{"i", "x", "denoised", "sigma"}``.

    Returns:
        the corrected states, the ``[N, B, ...]`` noises and the model calls (``N``).
    """
    check_schedule(sigmas)
    states = states.clone()
    noises = torch.empty_like(states[1:])
    for i in range(sigmas.numel() - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0_pred = denoise(states[i], sigma.expand(states.shape[1]))
        mean = posterior_mean(states[i], x0_pred, sigma, sigma_next)
        scale = noise_scale(sigma, sigma_next)
        noises[i] = (states[i + 1] - mean) / scale
        states[i + 1] = mean + scale * noises[i]
        if on_step is not None:
            on_step({"i": i, "x": states[i + 1], "denoised": x0_pred, "sigma": sigma})
    return DDPMNoises(states, noises, sigmas.numel() - 1)


def sample_with_noises(denoise: Denoise, sigmas: torch.Tensor, noises: torch.Tensor, start: torch.Tensor,
                       start_step: int = 0, on_step: Optional[StepCallback] = None,
                       mask: Optional[torch.Tensor] = None, kept_states: Optional[torch.Tensor] = None) -> torch.Tensor:
    """DDPM sampling from ``start`` at ``sigmas[start_step]`` with the recorded ``noises`` (Sec. 4 edits).

    Args:
        denoise: the guided denoiser (another prompt or CFG edits; the inversion's reconstructs).
        sigmas: ``[N+1]`` the inversion's schedule.
        noises: ``[N, B, ...]`` the recorded noises.
        start: ``[B, ...]`` the state at ``sigmas[start_step]`` (the recorded one: ``states[start_step]``).
        start_step: the paper's skip: steps before it are not taken.
        on_step: called after each step with ``{"i", "x", "denoised", "sigma"}``.
        mask: optional ``[B or 1, 1, ...]``; outside it each step lands on ``kept_states[i + 1]``.
        kept_states: ``[N+1, B, ...]`` the recorded states (needed with ``mask``).

    Returns:
        ``[B, ...]`` the sampled latent.
    """
    check_schedule(sigmas)
    steps = sigmas.numel() - 1
    if noises.shape[0] != steps or not 0 <= start_step < steps:
        raise ValueError(f"{noises.shape[0]} recorded noises and start step {start_step} do not fit {steps} steps.")
    if mask is not None and kept_states is None:
        raise ValueError("A mask needs the recorded states to keep outside it.")
    x = start
    for i in range(start_step, steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0_pred = denoise(x, sigma.expand(x.shape[0]))
        x = posterior_mean(x, x0_pred, sigma, sigma_next) + noise_scale(sigma, sigma_next) * noises[i]
        if mask is not None:
            x = keep_outside(kept_states[i + 1], x, mask)
        if on_step is not None:
            on_step({"i": i, "x": x, "denoised": x0_pred, "sigma": sigma})
    return x
