"""FlowEdit: inversion-free editing of a real image with a rectified-flow model.

Kulikov et al., "FlowEdit: Inversion-Free Text-Based Editing Using Pre-Trained Flow Models",
ICCV 2025 (official code fallenshock/FlowEdit, ``FlowEditSD3`` / ``FlowEditFLUX``). With
``x_t = (1 - t) x0 + t eps`` and the velocity ``v = eps - x0`` (ComfyUI: ``(x - x0_pred) / t``),
the edit is an ODE in the *clean* image space that starts at the source latent ``x_src``:

    for the steps i with N - i <= n_max (the first N - n_max levels are skipped):
        if N - i > n_min:
            V = mean over k < n_avg of [ v(zt_tar, t_i, c_tar) - v(zt_src, t_i, c_src) ]
                with zt_src = (1 - t_i) x_src + t_i eps_ik   (a fresh eps per step and per draw)
                     zt_tar = z_edit + zt_src - x_src
            z_edit += (t_{i+1} - t_i) V
        else (the last n_min steps: plain sampling, "SDEdit-style"):
            at the first such step, x = z_edit + (1 - t_i) x_src + t_i eps - x_src (one fresh eps)
            x += (t_{i+1} - t_i) v(x, t_i, c_tar)

The result is ``z_edit`` when ``n_min`` is 0, else ``x``. Each velocity is the guided one: the
source branch with the source CFG (or distilled guidance), the target branch with the target's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .masks import keep_outside
from .process import RECTIFIED_FLOW, DiffusionProcess
from .steps import euler_step, ode_slope

PairDenoise = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``(z_src [B, ...], z_tar [B, ...], sigma [B]) -> (x0_src, x0_tar)``: the source-prompt clean
estimate at ``z_src`` and the target-prompt one at ``z_tar``, each with its own guidance."""

TargetDenoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x [B, ...], sigma [B]) -> x0``: the target-prompt guided clean estimate (plain sampling)."""

StepCallback = Callable[[dict], None]

PRESET_SD3 = "SD3 (paper)"
PRESET_FLUX = "Flux (paper)"
PRESET_DIGITS = "Digits test-bed"
PRESET_CUSTOM = "custom"


@dataclass(frozen=True)
class FlowEditSettings:
    """How far and how often FlowEdit edits.

    Attributes:
        n_max: number of final steps that edit (the first ``N - n_max`` levels are skipped); the
            paper's "n_max" (larger: stronger edits, less of the source kept).
        n_min: number of final steps that sample plainly with the target prompt instead (0 in
            every preset of the paper).
        n_avg: noise draws averaged per step (1 in the paper's presets).
    """

    n_max: int
    n_min: int = 0
    n_avg: int = 1

    def check(self, steps: int) -> None:
        """Raise ValueError when the settings do not fit a schedule of ``steps`` steps."""
        if self.n_avg < 1:
            raise ValueError(f"n_avg must be at least 1, got {self.n_avg}.")
        if not 0 <= self.n_min < self.n_max:
            raise ValueError(f"n_min must be at least 0 and below n_max; got n_min {self.n_min}, n_max {self.n_max}.")
        if self.n_max > steps:
            raise ValueError(f"n_max ({self.n_max}) cannot exceed the schedule's {steps} steps.")


@dataclass(frozen=True)
class FlowEditPreset:
    """A named set of FlowEdit defaults (the paper's for SD3 and Flux, and the flow test-bed's).

    Attributes:
        steps: sampling steps the preset was made for (the SIGMAS must have that many).
        settings: n_max / n_min / n_avg.
        source_cfg, target_cfg: real classifier-free guidance of each branch (1: none).
        source_guidance, target_guidance: distilled guidance written into each branch's
            conditioning (Flux dev), or None to leave the conditioning as it is.
    """

    steps: int
    settings: FlowEditSettings
    source_cfg: float
    target_cfg: float
    source_guidance: Optional[float] = None
    target_guidance: Optional[float] = None


PRESETS: dict[str, FlowEditPreset] = {
    # FlowEditSD3 in the official code's run script: T_steps 50, n_max 33, CFG 3.5 / 13.5.
    PRESET_SD3: FlowEditPreset(50, FlowEditSettings(n_max=33), 3.5, 13.5),
    # FlowEditFLUX: T_steps 28, n_max 24, (distilled) guidance 1.5 / 5.5, no real CFG.
    PRESET_FLUX: FlowEditPreset(28, FlowEditSettings(n_max=24), 1.0, 1.0, 1.5, 5.5),
    # The flow test-bed (benchmarks/flowedit_testbed.py, 16 swaps of seed 11): every n_max from 12 swaps all 16
    # digits at CFG 2 / 2 with the other digit's error 0.009-0.013; n_max 20 leaves a margin. A higher target
    # CFG only adds error (2 / 4: 0.12; 2 / 6: 0.20).
    PRESET_DIGITS: FlowEditPreset(28, FlowEditSettings(n_max=20), 2.0, 2.0),
}


def check_flow_process(process: DiffusionProcess) -> None:
    """Raise ValueError unless ``process`` is rectified flow (FlowEdit's coupling needs it)."""
    if process.name != RECTIFIED_FLOW.name:
        raise ValueError(
            f"FlowEdit needs a rectified-flow model (x = (1 - t) x0 + t eps); this one is {process.family}."
        )


def edit_starts_at(steps: int, settings: FlowEditSettings) -> int:
    """Index of the first step FlowEdit takes (the official loop skips ``steps - i > n_max``)."""
    return steps - settings.n_max


def velocity_difference(denoise_pair: PairDenoise, z_edit: torch.Tensor, x_src: torch.Tensor,
                        noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``v(zt_tar, c_tar) - v(zt_src, c_src)`` at coupled states for one noise draw (shapes as ``x_src``)."""
    z_src = RECTIFIED_FLOW.diffuse(x_src, noise, sigma)
    z_tar = z_edit + z_src - x_src
    sigma_batch = sigma.expand(x_src.shape[0])
    x0_src, x0_tar = denoise_pair(z_src, z_tar, sigma_batch)
    return ode_slope(z_tar, x0_tar, sigma) - ode_slope(z_src, x0_src, sigma)


def flowedit(denoise_pair: PairDenoise, denoise_target: TargetDenoise, sigmas: torch.Tensor, x_src: torch.Tensor,
             settings: FlowEditSettings, draw_noise: Callable[[], torch.Tensor],
             on_step: Optional[StepCallback] = None, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Edit ``x_src`` by FlowEdit (module docstring) along the descending ``sigmas``.

    Args:
        denoise_pair: source and target guided denoisers (:data:`PairDenoise`).
        denoise_target: the target guided denoiser alone (the n_min phase).
        sigmas: ``[N+1]`` descending flow times, ``sigmas[0]`` at most 1, ``sigmas[-1]`` usually 0.
        x_src: ``[B, C, ...]`` the source latent (model units).
        settings: n_max, n_min, n_avg (checked against ``N``).
        draw_noise: returns a fresh ``[B, C, ...]`` standard normal draw, called once per step and
            average (and once when the n_min phase starts), in the official code's order.
        on_step: called after each step with ``{"i", "x", "denoised", "sigma"}`` (progress, previews).
        mask: optional ``[B or 1, 1, ...]`` feathered mask; outside it the source is kept (the
            edit state is a clean latent, so ``z_edit`` is blended with ``x_src`` after each step;
            in the n_min phase with the source noised by the phase's own draw).

    Returns:
        ``[B, C, ...]`` the edited latent.
    """
    steps = sigmas.numel() - 1
    settings.check(steps)
    z_edit = x_src.clone()
    x_plain: Optional[torch.Tensor] = None
    plain_noise: Optional[torch.Tensor] = None
    for i in range(edit_starts_at(steps, settings), steps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        if steps - i > settings.n_min:
            delta = sum(velocity_difference(denoise_pair, z_edit, x_src, draw_noise(), sigma)
                        for _ in range(settings.n_avg)) / settings.n_avg
            z_edit = euler_step(z_edit, delta, sigma, sigma_next)
            if mask is not None:  # outside the mask: the source itself
                z_edit = keep_outside(x_src, z_edit, mask)
            current = z_edit
        else:
            if x_plain is None:
                plain_noise = draw_noise()
                x_plain = z_edit + RECTIFIED_FLOW.diffuse(x_src, plain_noise, sigma) - x_src
            x0_tar = denoise_target(x_plain, sigma.expand(x_src.shape[0]))
            x_plain = euler_step(x_plain, ode_slope(x_plain, x0_tar, sigma), sigma, sigma_next)
            if mask is not None:  # outside the mask: the source on the same noise
                x_plain = keep_outside(RECTIFIED_FLOW.diffuse(x_src, plain_noise, sigma_next), x_plain, mask)
            current = x_plain
        if on_step is not None:
            on_step({"i": i, "x": current, "denoised": current, "sigma": sigma})
    return z_edit if x_plain is None else x_plain


def model_calls(steps: int, settings: FlowEditSettings) -> int:
    """Guided denoiser evaluations of one edit: 2 per draw in the editing steps, 1 per plain step."""
    settings.check(steps)
    return 2 * settings.n_avg * (settings.n_max - settings.n_min) + settings.n_min
