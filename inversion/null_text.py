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

Batches: every image is optimised on its own, as the reference optimises one image at a time.
Each has its own loss (the mean over its own latent), its own Adam state, its own stop and its
own best context; one batched model call evaluates the images still optimising, and an image
that stopped is neither evaluated nor moved again, so its result is the one it gets alone.

Precision: the contexts and Adam's state are float32 whatever the model computes in; the
denoiser may compute in float16 or bfloat16 (the context is cast on its way in and the gradient
comes back in float32), the loss is float32. A float16 model needs dynamic loss scaling
(:mod:`.loss_scaling`) so that its small gradients do not underflow.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .levels import as_ascending_levels
from .loss_scaling import DynamicLossScale, loss_gradients
from .process import DDPM, DiffusionProcess
from .steps import denoising_step

CondDenoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x [B,C,H,W], sigma [B]) -> x0 [B,C,H,W]`` with the source prompt (no gradient needed)."""

UncondDenoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x [R,C,H,W], sigma [R], context [R, L, D]) -> x0 [R,C,H,W]``, differentiable in context.

``R`` is the number of images still optimising (any subset of the batch, in batch order)."""

ProgressCallback = Callable[[dict], None]
"""Called after every batched loss evaluation, before its Adam steps, with keys step, inner,
loss (mean over the images evaluated), image_losses, images (their batch indices), threshold and
gradient_steps (batched Adam iterations so far)."""

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

    Every image of a batch is optimised on its own (see the module docstring); the per-step
    lists summarise the batch and the ``image_*`` lists hold each image's own figures.

    Attributes:
        step_contexts: ``[N, B, L, D]`` float32 unconditional context of each sampling step and image.
        losses: ``[N]`` mean over the images of the last loss each evaluated in the step (the
            value it tested against the bound).
        landing_losses: ``[N]`` mean over the images of the loss of the step actually taken with
            the stored context (the batch's mean squared error).
        gradient_steps: ``[N]`` batched Adam iterations of each step (the most any image took).
        image_losses, image_landing_losses: ``[N][B]`` the same losses per image.
        image_gradient_steps: ``[N][B]`` Adam steps each image took.
        cond_evaluations, uncond_evaluations: denoiser calls made (each call is one batch).
        seconds: wall time of the whole optimisation.
        final_state: ``[B, C, H, W]`` the state reached after the last step.
        loss_scale: the final dynamic loss scale (None: no loss scaling).
        loss_scale_overflows: backward passes redone with a smaller loss scale.
        step_pooled: ``[N, B, P]`` pooled vector of each step and image when it was optimised with the
            context (see :class:`PooledLayout`; the caller unpacks), else None.
    """

    step_contexts: torch.Tensor
    losses: list[float] = field(default_factory=list)
    landing_losses: list[float] = field(default_factory=list)
    gradient_steps: list[int] = field(default_factory=list)
    image_losses: list[list[float]] = field(default_factory=list)
    image_landing_losses: list[list[float]] = field(default_factory=list)
    image_gradient_steps: list[list[int]] = field(default_factory=list)
    cond_evaluations: int = 0
    uncond_evaluations: int = 0
    seconds: float = 0.0
    final_state: Optional[torch.Tensor] = None
    loss_scale: Optional[float] = None
    loss_scale_overflows: int = 0
    step_pooled: Optional[torch.Tensor] = None

    @property
    def total_gradient_steps(self) -> int:
        """Batched Adam iterations over all sampling steps (the reference's cost driver)."""
        return sum(self.gradient_steps)

    def add_step(self, last_losses: list[float], landing_losses: list[float], steps_taken: list[int]) -> None:
        """Record the figures of one sampling step, one value per image."""
        self.image_losses.append(last_losses)
        self.image_landing_losses.append(landing_losses)
        self.image_gradient_steps.append(steps_taken)
        self.losses.append(sum(last_losses) / len(last_losses))
        self.landing_losses.append(sum(landing_losses) / len(landing_losses))
        self.gradient_steps.append(max(steps_taken))

    def report(self) -> dict:
        """JSON-able summary for the INVERSION record and the node's report."""
        return {
            "losses": [float(v) for v in self.losses],
            "landing_losses": [float(v) for v in self.landing_losses],
            "gradient_steps": [int(v) for v in self.gradient_steps],
            "total_gradient_steps": self.total_gradient_steps,
            "image_losses": [[float(v) for v in row] for row in self.image_losses],
            "image_landing_losses": [[float(v) for v in row] for row in self.image_landing_losses],
            "image_gradient_steps": [[int(v) for v in row] for row in self.image_gradient_steps],
            "cond_evaluations": self.cond_evaluations,
            "uncond_evaluations": self.uncond_evaluations,
            "seconds": float(self.seconds),
            "loss_scale": self.loss_scale,
            "loss_scale_overflows": self.loss_scale_overflows,
        }


class NonFiniteLossError(ValueError):
    """The landing loss is inf or NaN: the model's forward pass overflowed."""


def guided_step(x: torch.Tensor, x0_uncond: torch.Tensor, x0_cond: torch.Tensor, guidance: float,
                sigma: torch.Tensor, sigma_next: torch.Tensor) -> torch.Tensor:
    """One classifier-free-guided deterministic step ``sigma -> sigma_next`` (``[B,C,...]``).

    Guidance is combined as ComfyUI's CFG does (``uncond + (cond - uncond) * w``) and the
    step is taken exactly as :func:`.ddim.replay` takes it.
    """
    x0_guided = x0_uncond + (x0_cond - x0_uncond) * guidance
    return denoising_step(x, x0_guided, sigma, sigma_next)


def image_landing_losses(x_next: torch.Tensor, target: torch.Tensor, sigma_next: torch.Tensor,
                         process: DiffusionProcess = DDPM) -> torch.Tensor:
    """``[B]`` mean squared error of each image's state against its target at ``sigma_next``.

    Measured on the model scale, in float32 (``x_next``, ``target``: ``[B, C, ...]``).
    """
    diff = process.to_model_scale(x_next.float() - target.float(), sigma_next.float())
    return diff.pow(2).flatten(1).mean(1)


@dataclass
class _ImageSearch:
    """One image's optimisation in one sampling step: its own context, Adam state and stop.

    Attributes:
        context: ``[1, L, D]`` float32 leaf being optimised.
        optimizer: Adam over ``context`` alone (its moments never see another image).
        steps_taken: Adam steps taken.
        last_loss: the last loss evaluated.
        best: ``(loss, context [1, L, D], x_next [1, ...])`` of the best context evaluated
            (kept for ``"before step"`` only).
        done: stopped; it is evaluated and moved no more.
    """

    context: torch.Tensor
    optimizer: torch.optim.Adam
    steps_taken: int = 0
    last_loss: float = float("nan")
    best: Optional[tuple[float, torch.Tensor, torch.Tensor]] = None
    done: bool = False

    @classmethod
    def start(cls, context: torch.Tensor, learning_rate: float) -> "_ImageSearch":
        """A search from ``context [1, L, D]`` (a float32 copy becomes the leaf)."""
        leaf = context.detach().float().clone().requires_grad_(True)
        return cls(leaf, torch.optim.Adam([leaf], lr=learning_rate))

    def consider(self, loss: float, context: torch.Tensor, x_next: torch.Tensor) -> None:
        """Keep ``(loss, context, x_next)`` if it is the best evaluated so far."""
        if self.best is None or loss < self.best[0]:
            self.best = (loss, context.detach().clone(), x_next.detach())

    def adam_step(self, gradient: torch.Tensor) -> None:
        """One Adam step of this image's context along ``gradient``."""
        self.context.grad = gradient
        self.optimizer.step()
        self.context.grad = None
        self.steps_taken += 1


@dataclass(frozen=True)
class _StepProblem:
    """What every evaluation of one sampling step shares (all ``[B, ...]`` over the whole batch)."""

    uncond: UncondDenoiser
    x: torch.Tensor
    x0_cond: torch.Tensor
    target: torch.Tensor
    sigma: torch.Tensor
    sigma_next: torch.Tensor
    step: int
    config: NullTextConfig
    process: DiffusionProcess

    def landing(self, rows: list[int], context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_next [R, ...], losses [R])`` of images ``rows`` with contexts ``[R, L, D]`` (one batched call)."""
        index = torch.tensor(rows, device=self.x.device)
        x = self.x.index_select(0, index)
        x0_uncond = self.uncond(x, self.sigma * x.new_ones([len(rows)]), context)
        x_next = guided_step(x, x0_uncond, self.x0_cond.index_select(0, index), self.config.guidance,
                             self.sigma, self.sigma_next)
        losses = image_landing_losses(x_next, self.target.index_select(0, index), self.sigma_next, self.process)
        return x_next, losses


def _check_finite(losses: list[float], step: int) -> None:
    """Raise :class:`NonFiniteLossError` unless every image's loss is finite."""
    if not all(math.isfinite(value) for value in losses):
        raise NonFiniteLossError(
            f"The null-text loss of sampling step {step} is {losses}: the model's output is not finite."
        )


def _search_iteration(problem: _StepProblem, searches: list[_ImageSearch], inner: int,
                      result: NullTextResult, callback: Optional[ProgressCallback],
                      loss_scale: Optional[DynamicLossScale]) -> None:
    """One batched evaluation of the images still searching, then an Adam step for each that goes on.

    Runs in its own frame so the autograd graph is freed when it returns.
    """
    config, threshold = problem.config, problem.config.step_threshold(problem.step)
    keep_best = config.stop_check == STOP_BEFORE_STEP
    active = [image for image, search in enumerate(searches) if not search.done]
    context = torch.cat([searches[image].context for image in active])
    x_next, losses = problem.landing(active, context)
    result.uncond_evaluations += 1
    values = [float(value) for value in losses.detach().cpu()]
    _check_finite(values, problem.step)
    if callback is not None:
        callback({"step": problem.step, "inner": inner, "loss": sum(values) / len(values), "image_losses": values,
                  "images": active, "threshold": threshold,
                  "gradient_steps": result.total_gradient_steps + max(s.steps_taken for s in searches)})
    stepping = []
    for row, image in enumerate(active):
        search = searches[image]
        search.last_loss = values[row]
        below = values[row] < threshold
        if keep_best:
            search.consider(values[row], context[row:row + 1], x_next[row:row + 1])
        search.done = below
        if not (below and keep_best):
            stepping.append(row)
    if not stepping:
        return
    gradients = loss_gradients(losses[stepping].sum(), [searches[active[row]].context for row in stepping], loss_scale)
    for row, gradient in zip(stepping, gradients):
        searches[active[row]].adam_step(gradient)


def _keep_better_last_contexts(problem: _StepProblem, searches: list[_ImageSearch],
                               result: NullTextResult) -> None:
    """``"before step"``: evaluate the context after each image's final Adam step, keep it if better."""
    threshold = problem.config.step_threshold(problem.step)
    pending = [image for image, search in enumerate(searches)
               if search.best is not None and search.best[0] >= threshold and search.steps_taken > 0]
    if not pending:
        return
    context = torch.cat([searches[image].context.detach() for image in pending])
    with torch.no_grad():
        x_next, losses = problem.landing(pending, context)
    result.uncond_evaluations += 1
    for row, image in enumerate(pending):
        searches[image].consider(float(losses[row]), context[row:row + 1], x_next[row:row + 1])


def _optimise_step(problem: _StepProblem, contexts: torch.Tensor, result: NullTextResult,
                   callback: Optional[ProgressCallback], loss_scale: Optional[DynamicLossScale]
                   ) -> tuple[torch.Tensor, Optional[torch.Tensor], list[float], list[int]]:
    """Adam on each image's context for one sampling step.

    Args:
        contexts: ``[B, L, D]`` the contexts the step starts from (the previous step's).

    Returns:
        ``(contexts [B, L, D], x_next [B, ...] or None, last loss per image, Adam steps per image)``.
        With ``"before step"``, ``x_next`` is the step taken with each image's returned context,
        the best it evaluated (its context after the final Adam step is evaluated too); with
        ``"after step"`` (or nothing evaluated) it is None and the contexts are those after each
        image's last Adam step, as in the reference.
    """
    config = problem.config
    learning_rate = config.step_learning_rate(problem.step)
    searches = [_ImageSearch.start(contexts[image:image + 1], learning_rate) for image in range(contexts.shape[0])]
    inner_steps = config.inner_steps if learning_rate > 0 else 0
    for inner in range(inner_steps):
        if all(search.done for search in searches):
            break
        _search_iteration(problem, searches, inner, result, callback, loss_scale)
    last_losses = [search.last_loss for search in searches]
    steps_taken = [search.steps_taken for search in searches]
    if config.stop_check != STOP_BEFORE_STEP or inner_steps == 0:
        return torch.cat([search.context.detach() for search in searches]), None, last_losses, steps_taken
    _keep_better_last_contexts(problem, searches, result)
    best_contexts = torch.cat([search.best[1] for search in searches])
    best_states = torch.cat([search.best[2] for search in searches])
    return best_contexts, best_states, last_losses, steps_taken


@dataclass(frozen=True)
class PooledLayout:
    """A token context and a pooled prompt vector optimised together as one flat embedding per image.

    Models such as SD3.5, Flux and SDXL read a pooled vector besides the tokens (through their
    ``y``); optimising it with the context gives null-text more to move. Adam works element by
    element, so one Adam over the flat tensor ``[B, 1, L * D + P]`` is exactly one Adam over the two
    tensors at the same learning rate, and :func:`optimise_null_text` needs no change.
    """

    tokens: int
    width: int
    pooled: int

    @classmethod
    def of(cls, context: torch.Tensor, pooled: torch.Tensor) -> "PooledLayout":
        """The layout of ``context [B, L, D]`` with ``pooled [B, P]``."""
        return cls(context.shape[-2], context.shape[-1], pooled.shape[-1])

    def pack(self, context: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        """``[B, 1, L * D + P]`` from ``context [B, L, D]`` and ``pooled [B, P]`` (same ``B``)."""
        return torch.cat([context.flatten(-2), pooled], dim=-1).unsqueeze(-2)

    def unpack(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(context [..., L, D], pooled [..., P])`` from ``packed [..., 1, L * D + P]``."""
        flat = packed.squeeze(-2)
        split = self.tokens * self.width
        return flat[..., :split].unflatten(-1, (self.tokens, self.width)), flat[..., split:]


def per_image_contexts(initial_context: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B, L, D]`` float32: one context row per image (a ``[1, L, D]`` context is repeated)."""
    if initial_context.ndim != 3 or initial_context.shape[0] not in (1, batch):
        raise ValueError(
            f"initial_context must be [1 or {batch}, tokens, width] for a batch of {batch}, "
            f"got {list(initial_context.shape)}."
        )
    return initial_context.detach().float().expand(batch, -1, -1).clone()


def optimise_null_text(cond: CondDenoiser, uncond: UncondDenoiser, sigmas: torch.Tensor, targets: torch.Tensor,
                       x_noise: torch.Tensor, initial_context: torch.Tensor,
                       config: NullTextConfig = NullTextConfig(),
                       callback: Optional[ProgressCallback] = None,
                       process: DiffusionProcess = DDPM,
                       loss_scale: Optional[DynamicLossScale] = None) -> NullTextResult:
    """Optimise one unconditional context per sampling step and image (null-text inversion).

    Args:
        cond: the denoiser with the source prompt, ``(x, sigma) -> x0``, called on the whole batch.
        uncond: the denoiser with a given unconditional context, differentiable in it; called on
            the images still optimising, ``(x [R, ...], sigma [R], context [R, L, D])``.
        sigmas: ``[N+1]`` the sampling schedule (either order; walked from high to low).
        targets: ``[N, B, C, H, W]`` the state each sampling step must land on
            (``InversionRecord.step_targets()``).
        x_noise: ``[B, C, H, W]`` the inverted noise at the highest level.
        initial_context: ``[B or 1, L, D]`` the context step 0 starts from (the empty prompt's
            in the reference; one row per image, or one row for all).
        config: optimisation settings.
        callback: progress (also the place to raise for an interrupt).
        process: the model family's forward process (the scale the loss is measured on).
        loss_scale: dynamic loss scaling for a model that computes in float16 (None: plain
            gradients, for float32 and bfloat16).

    Returns:
        :class:`NullTextResult` with ``step_contexts [N, B, L, D]`` in float32.
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
    contexts = per_image_contexts(initial_context, x_noise.shape[0]).to(x_noise.device)
    step_contexts: list[torch.Tensor] = []
    x = x_noise.detach()
    for step in range(n_steps):
        sigma, sigma_next = levels[step], levels[step + 1]
        target = targets[step].to(x)
        with torch.no_grad():
            x0_cond = cond(x, sigma * x.new_ones([x.shape[0]])).detach()
        result.cond_evaluations += 1
        problem = _StepProblem(uncond, x, x0_cond, target, sigma, sigma_next, step, config, process)
        contexts, x_next, last_losses, steps_taken = _optimise_step(problem, contexts, result, callback, loss_scale)
        if x_next is None:
            with torch.no_grad():
                x_next, _ = problem.landing(list(range(x.shape[0])), contexts)
            result.uncond_evaluations += 1
        landing = [float(value) for value in image_landing_losses(x_next, target, sigma_next, process).cpu()]
        step_contexts.append(contexts)
        result.add_step(last_losses, landing, steps_taken)
        x = x_next.detach()
    result.step_contexts = torch.stack(step_contexts) if step_contexts else torch.empty(0)
    result.final_state = x
    if loss_scale is not None:
        result.loss_scale, result.loss_scale_overflows = loss_scale.scale, loss_scale.overflows
    result.seconds = time.perf_counter() - started
    return result
