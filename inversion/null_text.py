"""Null-text inversion: one optimised unconditional context per sampling step.

Mokady et al., "Null-text Inversion for Editing Real Images using Guided Diffusion Models"
(CVPR 2023), Algorithm 1. A DDIM inversion made at guidance 1 gives the states
``z*_N .. z*_0``; sampling them back at guidance ``w`` drifts away from them (the guidance
gap). For every sampling step ``i`` the unconditional context ``null_i`` is optimised so that
the guided DDIM step from the current state lands on the recorded state:

    eps_c   = eps(z_i, t_i, source prompt)                       once, no gradient
    repeat up to K times:
        eps = eps(z_i, t_i, null) + w * (eps_c - eps(z_i, t_i, null))
        loss = mse(ddim_step(eps, z_i), z*_{i+1})                on the DDPM scale
        Adam step on null with lr_i = lr * (1 - decay * i); stop once loss < tol + i * growth
    null_i = null;  z_{i+1} = ddim_step(guided eps with null_i, z_i)

``null`` is warm-started from the previous step (from the empty prompt at step 0). States
are those of the model family's forward process (:mod:`.process`); the loss is taken on the
model scale, for UNets the DDPM scale ``x / sqrt(1 + sigma^2)`` like the reference, so its
early-stop bounds carry over (for rectified flow, the state itself).

Two stopping rules:

* ``"after step"`` (the reference): evaluate the loss, take the Adam step, then stop if the
  loss evaluated before that step was below the bound; a final forward pass with the stored
  context makes the step.
* ``"before step"``: evaluate the loss and stop *before* stepping once it is below the bound,
  and keep the best context evaluated (the one after the last Adam step is evaluated too), so
  its forward pass also makes the step. No gradient step is spent on a context that already
  lands on the trajectory, and a step never lands worse than its warm start (a fresh Adam's
  first moves are about ``lr`` per coordinate whatever the gradient, and can overshoot).

The optimisation works in float32 whatever the context's dtype.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .levels import as_ascending_levels
from .process import DDPM, DiffusionProcess
from .steps import denoising_step

CondDenoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x [B,C,H,W], sigma [B]) -> x0 [B,C,H,W]`` with the source prompt (no gradient needed)."""

UncondDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x [B,C,H,W], sigma [B], context [B or 1, L, D]) -> x0 [B,C,H,W]``, differentiable in context."""

ProgressCallback = Callable[[dict], None]
"""Called after every loss evaluation with keys step, inner, loss, threshold, gradient_steps."""

STOP_AFTER_STEP = "after step"
STOP_BEFORE_STEP = "before step"
STOP_CHECKS = (STOP_AFTER_STEP, STOP_BEFORE_STEP)

REFERENCE_GUIDANCE = 7.5
REFERENCE_INNER_STEPS = 10
REFERENCE_LEARNING_RATE = 1e-2
REFERENCE_LEARNING_RATE_DECAY = 1e-2
REFERENCE_EARLY_STOP = 1e-5
REFERENCE_EARLY_STOP_GROWTH = 2e-5


@dataclass(frozen=True)
class NullTextConfig:
    """Settings of the per-step optimisation (defaults: the reference implementation).

    Attributes:
        guidance: classifier-free guidance scale the contexts are optimised for.
        inner_steps: most Adam steps per sampling step.
        learning_rate: Adam learning rate at step 0.
        learning_rate_decay: step ``i`` uses ``learning_rate * (1 - learning_rate_decay * i)``
            (clamped at 0: a step with learning rate 0 keeps the previous context).
        early_stop: loss bound at step 0.
        early_stop_growth: the bound grows by this much per step (later steps matter less).
        stop_check: ``"after step"`` (reference) or ``"before step"`` (see the module docstring).
    """

    guidance: float = REFERENCE_GUIDANCE
    inner_steps: int = REFERENCE_INNER_STEPS
    learning_rate: float = REFERENCE_LEARNING_RATE
    learning_rate_decay: float = REFERENCE_LEARNING_RATE_DECAY
    early_stop: float = REFERENCE_EARLY_STOP
    early_stop_growth: float = REFERENCE_EARLY_STOP_GROWTH
    stop_check: str = STOP_AFTER_STEP

    def __post_init__(self) -> None:
        if self.stop_check not in STOP_CHECKS:
            raise ValueError(f"stop_check must be one of {STOP_CHECKS}, got {self.stop_check!r}.")
        if self.inner_steps < 0:
            raise ValueError(f"inner_steps must be >= 0, got {self.inner_steps}.")
        if self.learning_rate < 0 or self.early_stop < 0 or self.early_stop_growth < 0:
            raise ValueError("learning_rate, early_stop and early_stop_growth must be >= 0.")

    def step_learning_rate(self, step: int) -> float:
        """Adam learning rate of sampling step ``step``."""
        return self.learning_rate * max(0.0, 1.0 - self.learning_rate_decay * step)

    def step_threshold(self, step: int) -> float:
        """Early-stop loss bound of sampling step ``step``."""
        return self.early_stop + step * self.early_stop_growth


@dataclass
class NullTextResult:
    """What the optimisation produced.

    Attributes:
        step_contexts: ``[N, B, L, D]`` float32 unconditional context of each sampling step.
        losses: ``[N]`` the last loss evaluated in each step (the value tested against the bound).
        landing_losses: ``[N]`` loss of the step actually taken with the stored context.
        gradient_steps: ``[N]`` Adam steps taken in each step.
        cond_evaluations, uncond_evaluations: denoiser calls made (each call is one batch).
        seconds: wall time of the whole optimisation.
        final_state: ``[B, C, H, W]`` the state reached after the last step.
    """

    step_contexts: torch.Tensor
    losses: list[float] = field(default_factory=list)
    landing_losses: list[float] = field(default_factory=list)
    gradient_steps: list[int] = field(default_factory=list)
    cond_evaluations: int = 0
    uncond_evaluations: int = 0
    seconds: float = 0.0
    final_state: Optional[torch.Tensor] = None

    @property
    def total_gradient_steps(self) -> int:
        """Adam steps over all sampling steps (the reference's cost driver)."""
        return sum(self.gradient_steps)

    def report(self) -> dict:
        """JSON-able summary for the INVERSION record and the node's report."""
        return {
            "losses": [float(v) for v in self.losses],
            "landing_losses": [float(v) for v in self.landing_losses],
            "gradient_steps": [int(v) for v in self.gradient_steps],
            "total_gradient_steps": self.total_gradient_steps,
            "cond_evaluations": self.cond_evaluations,
            "uncond_evaluations": self.uncond_evaluations,
            "seconds": float(self.seconds),
        }


def guided_step(x: torch.Tensor, x0_uncond: torch.Tensor, x0_cond: torch.Tensor, guidance: float,
                sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One classifier-free-guided deterministic step ``sigma -> sigma_next`` (``[B,C,...]``).

    Guidance is combined as ComfyUI's CFG does (``uncond + (cond - uncond) * w``) and the
    step is taken exactly as :func:`.ddim.replay` takes it.
    """
    x0_guided = x0_uncond + (x0_cond - x0_uncond) * guidance
    return denoising_step(x, x0_guided, sigma, sigma_next)


def landing_loss(x_next: torch.Tensor, target: torch.Tensor, sigma_next: torch.Tensor,
                 process: DiffusionProcess = DDPM) -> torch.Tensor:
    """Mean squared error between two states at ``sigma_next``, on the model scale, in float32."""
    diff = process.to_model_scale(x_next.float() - target.float(), sigma_next.float())
    return diff.pow(2).mean()


def _optimise_step(uncond: UncondDenoiser, x: torch.Tensor, x0_cond: torch.Tensor, context: torch.Tensor,
                   target: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor, step: int,
                   config: NullTextConfig, result: NullTextResult, callback: Optional[ProgressCallback],
                   process: DiffusionProcess) -> tuple[torch.Tensor, Optional[torch.Tensor], float]:
    """Adam on the context of one sampling step.

    Returns ``(context, x_next or None, last loss)``. With ``"before step"``, ``x_next`` is the
    step taken with the returned context, which is the best one evaluated (the last context
    after the final Adam step is evaluated too); with ``"after step"`` it is None and the
    returned context is the one after the last Adam step, as in the reference.
    """
    sigma_batch = sigma * x.new_ones([x.shape[0]])
    threshold = config.step_threshold(step)
    learning_rate = config.step_learning_rate(step)
    keep_best = config.stop_check == STOP_BEFORE_STEP
    context = context.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([context], lr=learning_rate)
    last_loss, steps_taken = float("nan"), 0
    best: Optional[tuple[float, torch.Tensor, torch.Tensor]] = None
    inner_steps = config.inner_steps if learning_rate > 0 else 0
    for inner in range(inner_steps):
        x0_uncond = uncond(x, sigma_batch, context)
        result.uncond_evaluations += 1
        x_next = guided_step(x, x0_uncond, x0_cond, config.guidance, sigma, sigma_next)
        loss = landing_loss(x_next, target, sigma_next, process)
        last_loss = float(loss.detach())
        below = last_loss < threshold
        if callback is not None:
            callback({"step": step, "inner": inner, "loss": last_loss, "threshold": threshold,
                      "gradient_steps": result.total_gradient_steps + steps_taken})
        if keep_best and (best is None or last_loss < best[0]):
            best = (last_loss, context.detach().clone(), x_next.detach())
        if below and keep_best:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps_taken += 1
        if below:
            break
    result.gradient_steps.append(steps_taken)
    if best is None:
        return context.detach(), None, last_loss
    if best[0] >= threshold and steps_taken > 0:
        with torch.no_grad():
            x0_uncond = uncond(x, sigma_batch, context)
        result.uncond_evaluations += 1
        x_next = guided_step(x, x0_uncond, x0_cond, config.guidance, sigma, sigma_next)
        final_loss = float(landing_loss(x_next, target, sigma_next, process))
        if final_loss < best[0]:
            best = (final_loss, context.detach().clone(), x_next.detach())
    return best[1], best[2], last_loss


def optimise_null_text(cond: CondDenoiser, uncond: UncondDenoiser, sigmas: torch.Tensor, targets: torch.Tensor,
                       x_noise: torch.Tensor, initial_context: torch.Tensor,
                       config: NullTextConfig = NullTextConfig(),
                       callback: Optional[ProgressCallback] = None,
                       process: DiffusionProcess = DDPM) -> NullTextResult:
    """Optimise one unconditional context per sampling step (null-text inversion).

    Args:
        cond: the denoiser with the source prompt, ``(x, sigma) -> x0``.
        uncond: the denoiser with a given unconditional context, differentiable in it.
        sigmas: ``[N+1]`` the sampling schedule (either order; walked from high to low).
        targets: ``[N, B, C, H, W]`` the state each sampling step must land on
            (``InversionRecord.step_targets()``).
        x_noise: ``[B, C, H, W]`` the inverted noise at the highest level.
        initial_context: ``[B or 1, L, D]`` the context step 0 starts from (the empty prompt's
            in the reference).
        config: optimisation settings.
        callback: progress (also the place to raise for an interrupt).
        process: the model family's forward process (the scale the loss is measured on).

    Returns:
        :class:`NullTextResult` with ``step_contexts [N, B or 1, L, D]`` in float32.
    """
    levels = as_ascending_levels(sigmas).flip(0).to(device=x_noise.device)
    n_steps = levels.numel() - 1
    if targets.shape[0] != n_steps or targets.shape[1:] != x_noise.shape:
        raise ValueError(
            f"targets must be [{n_steps}, {', '.join(map(str, x_noise.shape))}] for this schedule and noise, "
            f"got {list(targets.shape)}."
        )
    started = time.perf_counter()
    result = NullTextResult(step_contexts=torch.empty(0))
    context = initial_context.detach().float()
    contexts: list[torch.Tensor] = []
    x = x_noise.detach()
    for step in range(n_steps):
        sigma, sigma_next = levels[step], levels[step + 1]
        target = targets[step].to(x)
        with torch.no_grad():
            x0_cond = cond(x, sigma * x.new_ones([x.shape[0]])).detach()
        result.cond_evaluations += 1
        context, x_next, last_loss = _optimise_step(uncond, x, x0_cond, context, target, sigma, sigma_next,
                                                    step, config, result, callback, process)
        if x_next is None:
            with torch.no_grad():
                x0_uncond = uncond(x, sigma * x.new_ones([x.shape[0]]), context)
            result.uncond_evaluations += 1
            x_next = guided_step(x, x0_uncond, x0_cond, config.guidance, sigma, sigma_next)
        contexts.append(context)
        result.losses.append(last_loss)
        result.landing_losses.append(float(landing_loss(x_next, target, sigma_next, process)))
        x = x_next.detach()
    result.step_contexts = torch.stack(contexts) if contexts else torch.empty(0)
    result.final_state = x
    result.seconds = time.perf_counter() - started
    return result
