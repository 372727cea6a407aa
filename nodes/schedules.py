"""Sigma schedules: ComfyUI's own, and pairing a model call's sigma with an inversion's sampling step."""

from __future__ import annotations

import torch

import comfy.samplers

from .errors import InvEditInputError
from .model_info import default_scheduler, model_sampling

SCHEDULER_AUTO = "auto"
"""The pack's choice for the model's family (:func:`.model_info.default_scheduler`)."""

SIGMA_MATCH_RTOL = 1e-4
"""Relative tolerance when pairing a model call's sigma with an inversion's sampling sigma."""

DDIM_UNIFORM = "ddim_uniform"
DDIM_TRAINING_STEPS = 1000
"""The discrete schedule ddim_uniform spaces its timesteps over (``1000 // steps`` apart)."""


def resolve_scheduler(model, scheduler: str) -> str:
    """``scheduler``, or the model family's reference scheduler for :data:`SCHEDULER_AUTO`."""
    return default_scheduler(model) if scheduler == SCHEDULER_AUTO else scheduler


def schedule(model, scheduler: str, steps: int) -> torch.Tensor:
    """ComfyUI's own descending sigmas for ``scheduler`` and ``steps`` (as KSampler makes them)."""
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise InvEditInputError(f"Unknown scheduler {scheduler!r}; pick one of {comfy.samplers.SCHEDULER_NAMES}.")
    sigmas = comfy.samplers.calculate_sigmas(model_sampling(model), scheduler, steps)
    return sigmas.cpu().float()


def steps_made_note(scheduler: str, requested: int, made: int) -> str | None:
    """What to tell the user when ``scheduler`` made ``made`` steps for ``steps = requested`` (None if equal).

    ComfyUI's ``ddim_uniform`` spaces timesteps ``1000 // steps`` apart from timestep 1: most numbers
    that do not divide 1000 give more steps (31 for 30, 8 for 7), and every number above 500 gives 999.
    """
    if made == requested:
        return None
    note = (f"ComfyUI's {scheduler} scheduler gives {made} steps for steps = {requested}: the inversion made "
            f"{made} steps and records steps {made} (steps_requested {requested}). A sampler with the same steps "
            f"and scheduler makes the same {made}, so the reconstruction is unaffected.")
    if scheduler == DDIM_UNIFORM and requested > DDIM_TRAINING_STEPS // 2:
        note += f" It takes at most {made} steps (one per timestep); pick another scheduler for more."
    elif scheduler == DDIM_UNIFORM:
        note += (f" For exactly {requested} steps, pick a number of steps that divides {DDIM_TRAINING_STEPS} "
                 "(10, 20, 25, 40, 50, 100) or another scheduler.")
    return note


def step_for_sigma(sigma: torch.Tensor, sampling_sigmas: torch.Tensor) -> int:
    """Index ``i`` with ``sampling_sigmas[i] == sigma`` (the step that queries the model there)."""
    value = float(sigma.reshape(-1)[0])
    queried = sampling_sigmas[:-1].double()
    matches = torch.nonzero(torch.isclose(queried, queried.new_tensor(value), rtol=SIGMA_MATCH_RTOL, atol=0.0))
    if matches.numel() == 0:
        levels = ", ".join(f"{float(s):.4g}" for s in queried[:4])
        raise InvEditInputError(
            f"The sampler asked the model for sigma {value:.6g}, which is not one of this inversion's "
            f"{queried.numel()} sampling sigmas ({levels}, ...). Sample with the inversion's own SIGMAS output "
            "(same steps and scheduler) and a deterministic sampler that only visits those levels "
            "(ddim, euler, InvEdit Replay Sampler with solver euler; FireFlow's calls between the levels cannot "
            "carry a mask or a Prompt-to-Prompt edit)."
        )
    return int(matches[0, 0])


def check_schedule(sigmas: torch.Tensor, record) -> None:
    """Refuse a schedule whose levels (all but the last) are not the inversion's sampling sigmas."""
    for sigma in sigmas[:-1].cpu():
        step_for_sigma(sigma, record.sampling_sigmas)
