"""Higher-accuracy inversion steps: where the slope of one step between two levels comes from.

Every solver moves a state from ``sigma_from`` to ``sigma_to`` with the one Euler step of
:mod:`.steps`, ``x_to = x_from + (sigma_to - sigma_from) * slope``; they differ only in which slope
they use and how many model calls it costs. The slope of a state ``x`` at level ``sigma`` is read
from ComfyUI's clean estimate, ``(x - x0) / sigma`` (eps for DDPM-family UNets, the velocity for
rectified flow), so every solver serves both families unchanged.

* ``"euler"`` (DDIM inversion; the rectified-flow Euler inversion): one model call per step, at
  the next level (the reference rule) or at the current one (the simple rule); see :mod:`.ddim`.
* ``"fireflow"`` (Deng et al., "FireFlow: Fast Inversion of Rectified Flow for Image Semantic
  Editing", ICML 2025; official code HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-for-Image-
  Semantic-Editing, ``denoise_fireflow``): the midpoint step, its half step taken with the midpoint
  velocity of the previous step instead of a fresh call::

      x_mid = x + (sigma_to - sigma_from) / 2 * v_carried     (v_carried: a fresh call on the first step)
      v_mid = v(x_mid, (sigma_from + sigma_to) / 2)
      x_to  = x + (sigma_to - sigma_from) * v_mid;  v_carried = v_mid

  Second order at the cost of one call per step: ``N + 1`` calls for ``N`` steps. The same walk
  runs down the schedule to sample, which is how an inversion made with it is reconstructed.
* ``"fixed-point"``: the implicit inversion step, solved by fixed-point iteration. A deterministic
  sampler steps ``x_to -> x_from`` with the slope at ``x_to``; inversion is exact when ``x_to``
  solves ``x_to = x_from + (sigma_to - sigma_from) * slope(x_to, sigma_to)``. Starting from the
  reference rule's query point (the current latent seen at ``sigma_to``), each iteration is one model
  call; ``k`` iterations cost ``k N`` calls and ``k = 1`` is the Euler reference rule exactly. The
  iteration is plain (undamped, no averaging): the "fixed-point" baseline of the EasyInv paper
  (ICML 2025) averages the last two estimates of each step, and ReNoise (Garibi et al., ECCV
  2024) averages the estimates of later iterations and adds noise regularisation; both start from
  the same point and iterate the same map. Its inversion is reconstructed by the plain Euler /
  DDIM sampler (stock ``euler`` / ``ddim``), which it inverts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .steps import euler_step

SOLVER_EULER = "euler"
SOLVER_FIREFLOW = "fireflow"
SOLVER_FIXED_POINT = "fixed-point"
SOLVERS = (SOLVER_EULER, SOLVER_FIREFLOW, SOLVER_FIXED_POINT)

DEFAULT_FIXED_POINT_ITERATIONS = 2
"""Model calls per step of the fixed-point solver by default (1 would be the Euler reference rule)."""

SlopeAt = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``slope_at(x [B, C, ...], sigma) -> (slope, x0)``: the slope of the state ``x`` at its level ``sigma``
and the clean estimate it came from (one model call)."""


@dataclass(frozen=True)
class StepSlope:
    """The slope one solver step moves with.

    Attributes:
        slope: ``[B, C, ...]`` the slope of the step ``sigma_from -> sigma_to``.
        x0_pred: ``[B, C, ...]`` the clean estimate of the last model call (for previews).
        carried: FireFlow's midpoint velocity, reused by the next step (None for the other solvers).
    """

    slope: torch.Tensor
    x0_pred: torch.Tensor
    carried: Optional[torch.Tensor] = None


def fireflow_slope(slope_at: SlopeAt, x: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor,
                   carried: Optional[torch.Tensor]) -> StepSlope:
    """FireFlow's midpoint slope of one step, up or down (module docstring); 1 call, 2 on the first step.

    Args:
        slope_at: the model's slope at a state and level.
        x: ``[B, C, ...]`` the state at ``sigma_from``.
        sigma_from, sigma_to: the step's levels, in either order.
        carried: the previous step's midpoint velocity, or None on the first step.
    """
    start = slope_at(x, sigma_from)[0] if carried is None else carried
    sigma_mid = sigma_from + (sigma_to - sigma_from) / 2
    x_mid = euler_step(x, start, sigma_from, sigma_mid)
    slope_mid, x0_mid = slope_at(x_mid, sigma_mid)
    return StepSlope(slope_mid, x0_mid, carried=slope_mid)


def fixed_point_slope(slope_at: SlopeAt, x: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor,
                      first_guess: torch.Tensor, iterations: int) -> StepSlope:
    """The slope of the implicit inversion step after ``iterations`` fixed-point iterations (one call each).

    Iterates ``x_to <- x + (sigma_to - sigma_from) * slope(x_to, sigma_to)`` from ``first_guess``
    (a state at ``sigma_to``) and returns the last slope evaluated, with which the step lands on the
    last iterate.
    """
    if iterations < 1:
        raise ValueError(f"The fixed-point solver needs at least 1 iteration, got {iterations}.")
    guess = first_guess
    for _ in range(iterations):
        slope, x0_pred = slope_at(guess, sigma_to)
        guess = euler_step(x, slope, sigma_from, sigma_to)
    return StepSlope(slope, x0_pred)


def replay_solver(solver: str) -> str:
    """The sampling solver that reconstructs an inversion made with ``solver``.

    FireFlow samples with FireFlow; the fixed-point solver inverts the Euler / DDIM step, so Euler
    reconstructs it (as it does Euler inversion).
    """
    check_solver(solver)
    return SOLVER_FIREFLOW if solver == SOLVER_FIREFLOW else SOLVER_EULER


def model_calls(solver: str, steps: int, fixed_point_iterations: int = DEFAULT_FIXED_POINT_ITERATIONS) -> int:
    """Model calls (per guidance branch) that ``solver`` makes for ``steps`` inversion steps: N, N + 1 or k N."""
    check_solver(solver)
    if steps <= 0:
        return 0
    if solver == SOLVER_FIREFLOW:
        return steps + 1
    if solver == SOLVER_FIXED_POINT:
        return fixed_point_iterations * steps
    return steps


def check_solver(solver: str) -> None:
    """``ValueError`` for an unknown solver name."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}.")
