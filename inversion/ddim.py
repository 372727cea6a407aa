"""Deterministic DDIM / rectified-flow Euler inversion and its exact replay, over any x0-denoiser.

Song et al., "Denoising Diffusion Implicit Models" (ICLR 2021), eq. 12 with eta = 0, run
backwards (Dhariwal & Nichol 2021; Mokady et al., "Null-text Inversion", CVPR 2023); for
rectified-flow models the same walk is the Euler inversion of the flow ODE (Liu et al. 2023).

Conventions (ComfyUI / k-diffusion): the denoiser maps ``(x [B,C,...], sigma [B])`` to its clean
estimate ``x0`` (with guidance already applied, if any). What a state at level ``sigma`` is
depends on the model family (:mod:`.process`: ``x = x0 + sigma * eps`` for DDPM-family UNets,
``x = (1 - sigma) x0 + sigma * eps`` for rectified flow); in both, one deterministic step between
two levels is one Euler step in sigma with the slope ``(x - x0) / sigma`` (:mod:`.steps`), in
either direction:

    x_to = x_from + (sigma_to - sigma_from) * slope

Inversion walks an ascending schedule ``sigmas[0] < ... < sigmas[N]``. The clean latent is
read as the model-scale state at the lowest level (``sigmas[0]``, often 0), exactly as
diffusers' DDIMInverseScheduler reads it at ``initial_alpha_cumprod``.

Two rules decide where the slope of step ``sigma_from -> sigma_to`` comes from:

* ``"reference"`` (Prompt-to-Prompt, null-text inversion, diffusers
  DDIMInverseScheduler): the model sees the current latent, as it sees it at ``sigma_from``, at
  the NEXT, higher level ``sigma_to`` (for flow models: the state itself at ``sigma_to``).
* ``"simple"`` (core ComfyUI FlipSigmas + euler; the official RF-Solver / FireFlow inversion
  loops): the model is queried at the current level ``sigma_from`` (at the model's lowest level
  when ``sigma_from`` is 0).

For v-prediction UNets queried at another level than the state's, two conversions of the
prediction to eps exist:

* ``"query"`` (default): the eps implied by the model's own clean estimate at the level it was
  queried at, ``(x_query - x0_query) / sigma_query``: consistent with how every sampler reads
  the model, so the round trip is about 10x tighter on our v test model.
* ``"state"``: v converted with the state's level ``sigma_from``, exactly as diffusers'
  DDIMInverseScheduler does (for agreement with that reference; DDPM family only).

For eps-prediction and flow models both are the same.

The timestep rule and the v conversion concern the Euler solver; the higher-accuracy solvers
(:mod:`.solvers`: FireFlow's midpoint step, fixed-point iteration of the implicit step) read each
slope at the state's own level, as the sampler that reconstructs them does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from . import easyinv as easyinv_lib
from . import warm_start as warm_start_lib
from .levels import alpha_bar, as_ascending_levels
from .process import DDPM, DiffusionProcess, process_named
from .solvers import (
    DEFAULT_FIXED_POINT_ITERATIONS,
    SOLVER_EULER,
    SOLVER_FIREFLOW,
    SOLVER_FIXED_POINT,
    SlopeAt,
    StepSlope,
    check_solver,
    fireflow_slope,
    fixed_point_slope,
)
from .steps import denoising_step, euler_step, ode_slope

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``denoiser(x [B,C,...], sigma [B]) -> x0 [B,C,...]`` (4-D latents, or 5-D for Qwen-Image)."""

StepCallback = Callable[[dict], None]
"""Called after every model call with k-diffusion's keys: x, i, sigma, sigma_hat, denoised."""

RULE_REFERENCE = "reference"
RULE_SIMPLE = "simple"
TIMESTEP_RULES = (RULE_REFERENCE, RULE_SIMPLE)

PREDICTION_EPS = "eps"
PREDICTION_V = "v"
PREDICTION_VELOCITY = "velocity"
PREDICTION_TYPES = (PREDICTION_EPS, PREDICTION_V, PREDICTION_VELOCITY)
"""eps and v for DDPM-family UNets, velocity for rectified flow."""

V_CONVERSION_QUERY = "query"
V_CONVERSION_STATE = "state"
V_CONVERSIONS = (V_CONVERSION_QUERY, V_CONVERSION_STATE)


@dataclass(frozen=True)
class InversionConfig:
    """How to invert.

    Attributes:
        timestep_rule: ``"reference"`` or ``"simple"`` (see the module docstring).
        prediction_type: ``"eps"`` or ``"v"`` (DDPM family) or ``"velocity"`` (rectified flow): what
            the model predicts (its x0 output is always used; the type only matters for the v
            conversion, and must fit the process).
        v_conversion: ``"query"`` or ``"state"``: how a v prediction becomes eps when the
            model was queried at another level than the state's (see the module docstring).
        sigma_floor: the model's lowest level (its sigma at timestep 0); needed when the
            simple rule must query the model for a step that starts at sigma 0.
        easyinv: EasyInv aggregation, or None.
        warm_start: forward-diffusion warm start, or None.
        process: name of the model family's forward process (:data:`.process.PROCESSES`):
            ``"ddpm"`` for SD1.x / SD2.x / SDXL, ``"rectified-flow"`` for flow transformers.
        solver: ``"euler"``, ``"fireflow"`` or ``"fixed-point"`` (:mod:`.solvers`): N, N + 1 or
            k N model calls for N steps.
        fixed_point_iterations: ``k``, the model calls per step of the fixed-point solver (k >= 1;
            1 is the Euler reference rule).
    """

    timestep_rule: str = RULE_REFERENCE
    prediction_type: str = PREDICTION_EPS
    v_conversion: str = V_CONVERSION_QUERY
    sigma_floor: Optional[float] = None
    easyinv: Optional[easyinv_lib.EasyInvConfig] = None
    warm_start: Optional[warm_start_lib.WarmStartConfig] = None
    process: str = DDPM.name
    solver: str = SOLVER_EULER
    fixed_point_iterations: int = DEFAULT_FIXED_POINT_ITERATIONS

    def __post_init__(self) -> None:
        if self.timestep_rule not in TIMESTEP_RULES:
            raise ValueError(f"timestep_rule must be one of {TIMESTEP_RULES}, got {self.timestep_rule!r}.")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}."
            )
        if self.v_conversion not in V_CONVERSIONS:
            raise ValueError(f"v_conversion must be one of {V_CONVERSIONS}, got {self.v_conversion!r}.")
        is_flow = process_named(self.process) is not DDPM
        if is_flow != (self.prediction_type == PREDICTION_VELOCITY):
            raise ValueError(
                f"prediction_type {self.prediction_type!r} does not fit the {self.process!r} process: rectified-flow "
                f"models predict {PREDICTION_VELOCITY!r}, DDPM-family models {PREDICTION_EPS!r} or {PREDICTION_V!r}."
            )
        if self.v_conversion == V_CONVERSION_STATE and is_flow:
            raise ValueError(f"v_conversion {V_CONVERSION_STATE!r} applies to DDPM-family v-prediction models only.")
        check_solver(self.solver)
        if isinstance(self.fixed_point_iterations, bool) or not isinstance(self.fixed_point_iterations, int) \
                or self.fixed_point_iterations < 1:
            raise ValueError(f"fixed_point_iterations must be an integer >= 1, got {self.fixed_point_iterations!r}.")
        if self.v_conversion == V_CONVERSION_STATE and self.solver != SOLVER_EULER:
            raise ValueError(
                f"v_conversion {V_CONVERSION_STATE!r} (diffusers' convention) applies to the {SOLVER_EULER!r} solver "
                f"only; the {self.solver!r} solver reads v the way the sampler does."
            )

    @property
    def forward_process(self) -> DiffusionProcess:
        """The rule object of :attr:`process`."""
        return process_named(self.process)


@dataclass
class InversionTrajectory:
    """Result of an inversion.

    Attributes:
        sigmas: ``[N+1]`` ascending levels; ``sigmas[0]`` is the clean level.
        latents: ``[N+1, B, C, ...]``; ``latents[i]`` is the state step ``i`` moved from
            (after any EasyInv aggregation, on the forward-diffusion path for warm-started
            steps) and ``latents[N]`` is the inverted noise, all states of the model family's
            forward process (``x = x0 + sigma*eps`` or ``x = (1-sigma) x0 + sigma*eps``).
        model_calls: number of denoiser evaluations made (each a guided call: with CFG the
            model runs its conditional and unconditional rows in it).
        config: the settings used.
    """

    sigmas: torch.Tensor
    latents: torch.Tensor
    model_calls: int
    config: InversionConfig = field(default_factory=InversionConfig)

    @property
    def noise(self) -> torch.Tensor:
        """The inverted latent at the highest level, ``[B, C, ...]``."""
        return self.latents[-1]


def query_sigma(rule: str, sigma_from: torch.Tensor, sigma_to: torch.Tensor,
                sigma_floor: Optional[float]) -> torch.Tensor:
    """Level at which the model is evaluated for the inversion step ``sigma_from -> sigma_to``."""
    if rule == RULE_REFERENCE:
        return sigma_to
    if float(sigma_from) > 0.0:
        return sigma_from
    if sigma_floor is None:
        raise ValueError(
            "The simple timestep rule needs the model's lowest sigma to query the first "
            "step from sigma 0; pass sigma_floor."
        )
    return sigma_from.new_tensor(sigma_floor)


def predict_slope(denoiser: Denoiser, x: torch.Tensor, sigma_from: torch.Tensor, sigma_query: torch.Tensor,
                  config: InversionConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The ODE slope for a state ``x`` at ``sigma_from``, asking the model at ``sigma_query``.

    The model is shown the state it sees at ``sigma_from`` (same model input) at level
    ``sigma_query``. Returns ``(slope, x0)``, both ``[B, C, ...]``: the slope is eps for
    DDPM-family models and the velocity for rectified flow (:func:`.steps.ode_slope`); ``x0 =
    x - sigma_from * slope`` is the clean estimate this step uses.
    """
    batch = x.shape[0]
    process = config.forward_process
    same_level = bool(sigma_query == sigma_from)
    x_query = x if same_level else process.rescale(x, sigma_from, sigma_query)
    x0_query = denoiser(x_query, sigma_query * x.new_ones([batch]))
    convert_at_state = config.prediction_type == PREDICTION_V and config.v_conversion == V_CONVERSION_STATE
    if not convert_at_state or same_level:
        slope = ode_slope(x_query, x0_query, sigma_query)
    else:
        # v = sqrt(abar_q) eps - sqrt(1 - abar_q) x0 as predicted at the query level;
        # convert it to eps at the state's own level (DDIMInverseScheduler.step).
        z = process.to_model_scale(x, sigma_from)
        abar_query = alpha_bar(sigma_query)
        abar_from = alpha_bar(sigma_from)
        v = (abar_query.sqrt() * z - x0_query) / (1.0 - abar_query).sqrt()
        slope = abar_from.sqrt() * v + (1.0 - abar_from).sqrt() * z
    return slope, x - sigma_from * slope


def slope_at_level(denoiser: Denoiser, process: DiffusionProcess, sigma_floor: Optional[float]) -> SlopeAt:
    """The slope of a state at its own level, as a sampler reads it: ``(x - x0) / sigma``, one model call.

    At sigma 0 the slope cannot be read from a clean estimate (``(x - x0) / 0``), so it is read at
    the model's lowest level ``sigma_floor`` with the same model input, as the simple rule does.
    Returns ``slope_at(x, sigma) -> (slope, x0)`` with ``x0`` the model's clean estimate.
    """

    def slope_at(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma_query = query_sigma(RULE_SIMPLE, sigma, sigma, sigma_floor)
        x_query = x if bool(sigma_query == sigma) else process.rescale(x, sigma, sigma_query)
        x0_pred = denoiser(x_query, sigma_query * x.new_ones([x.shape[0]]))
        return ode_slope(x_query, x0_pred, sigma_query), x0_pred

    return slope_at


def step_slope(denoiser: Denoiser, x: torch.Tensor, sigma_from: torch.Tensor, sigma_to: torch.Tensor,
               config: InversionConfig, carried: Optional[torch.Tensor] = None) -> StepSlope:
    """The slope with which ``config.solver`` moves ``x`` from ``sigma_from`` up to ``sigma_to``.

    ``carried`` is FireFlow's velocity from the previous step (None on the first step).
    """
    if config.solver == SOLVER_FIREFLOW:
        return fireflow_slope(slope_at_level(denoiser, config.forward_process, config.sigma_floor), x, sigma_from,
                              sigma_to, carried)
    if config.solver == SOLVER_FIXED_POINT:
        # The first iterate is the reference rule's query point: the current latent seen at sigma_to.
        first_guess = config.forward_process.rescale(x, sigma_from, sigma_to)
        return fixed_point_slope(slope_at_level(denoiser, config.forward_process, config.sigma_floor), x,
                                 sigma_from, sigma_to, first_guess, config.fixed_point_iterations)
    sigma_query = query_sigma(config.timestep_rule, sigma_from, sigma_to, config.sigma_floor)
    slope, x0_pred = predict_slope(denoiser, x, sigma_from, sigma_query, config)
    return StepSlope(slope, x0_pred)


class CallCounter:
    """A denoiser that counts its calls (what a trajectory's ``model_calls`` reports)."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.denoiser(x, sigma)


def _aggregate_at(process: DiffusionProcess, x: torch.Tensor, sigma: torch.Tensor, x_prev: torch.Tensor,
                  sigma_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """EasyInv mixing on the model scale (the DDPM scale for UNets); the result is a state at ``sigma``."""
    mixed = easyinv_lib.aggregate(process.to_model_scale(x, sigma), process.to_model_scale(x_prev, sigma_prev), eta)
    return process.from_model_scale(mixed, sigma)


def _warm_start_path(process: DiffusionProcess, x_clean: torch.Tensor, levels: torch.Tensor, x_start: torch.Tensor,
                     replaced_steps: int, seed: int) -> list[torch.Tensor]:
    """States at levels ``0..k`` when the first ``k`` steps are replaced by forward diffusion."""
    noise = warm_start_lib.forward_noise(x_clean.shape, seed, x_clean.dtype, x_clean.device)
    return [x_start] + [process.diffuse(x_clean, noise, levels[j])
                        for j in range(1, replaced_steps + 1)]


def invert(denoiser: Denoiser, sigmas: torch.Tensor, x_clean: torch.Tensor,
           config: InversionConfig = InversionConfig(),
           callback: Optional[StepCallback] = None) -> InversionTrajectory:
    """DDIM-invert (UNets) or Euler-invert (rectified flow) a clean latent along a sigma schedule.

    Args:
        denoiser: ``(x [B,C,...], sigma [B]) -> x0 [B,C,...]``, guidance applied inside.
        sigmas: 1-D schedule, ascending or descending (ComfyUI SIGMAS); ``N + 1`` levels.
        x_clean: ``[B, C, ...]`` clean latent in the model's own (scaled) units.
        config: solver, timestep rule, prediction type, forward process, EasyInv and warm-start settings.
        callback: called after each step (progress, previews, interruption).

    Returns:
        The :class:`InversionTrajectory`; its ``noise`` regenerates ``x_clean`` under
        :func:`replay` with the same schedule, denoiser and the solver's replay solver. With ``k``
        warm-started steps the Euler solver makes ``N - k`` model calls, FireFlow ``N - k + 1`` and
        the fixed-point solver ``iterations * (N - k)``; EasyInv adds none. The trajectory counts them.

    EasyInv's input variant moves the aggregated latent with the slope the solver found for the
    un-aggregated one (the official code's order for DDIM, kept for every solver).
    """
    levels = as_ascending_levels(sigmas).to(device=x_clean.device)
    n_steps = levels.numel() - 1
    warm = config.warm_start
    first_step = warm.replaced_steps(n_steps) if warm is not None else 0
    agg = config.easyinv
    process = config.forward_process
    counted = CallCounter(denoiser)
    x = process.from_model_scale(x_clean, levels[0])
    latents: list[torch.Tensor] = []
    x_prev, sigma_prev = None, None
    if first_step > 0:
        path = _warm_start_path(process, x_clean, levels, x, first_step, warm.seed)
        latents, x = path[:-1], path[-1]
        x_prev, sigma_prev = path[-2], levels[first_step - 1]

    carried = None
    for i in range(first_step, n_steps):
        sigma_from, sigma_to = levels[i], levels[i + 1]
        step = step_slope(counted, x, sigma_from, sigma_to, config, carried)
        carried = step.carried
        aggregating = agg is not None and easyinv_lib.in_window(i, n_steps, agg)
        if aggregating and agg.variant == easyinv_lib.AGGREGATE_INPUT and x_prev is not None:
            x = _aggregate_at(process, x, sigma_from, x_prev, sigma_prev, agg.eta)
        latents.append(x)
        x_next = euler_step(x, step.slope, sigma_from, sigma_to)
        if aggregating and agg.variant == easyinv_lib.AGGREGATE_OUTPUT:
            x_next = _aggregate_at(process, x_next, sigma_to, x, sigma_from, agg.eta)
        x_prev, sigma_prev = x, sigma_from
        if callback is not None:
            callback({"x": x_next, "i": i, "sigma": sigma_to, "sigma_hat": sigma_to, "denoised": step.x0_pred})
        x = x_next

    latents.append(x)
    return InversionTrajectory(sigmas=levels, latents=torch.stack(latents), model_calls=counted.calls, config=config)


@dataclass(frozen=True)
class SourcePin:
    """Direct inversion: source rows are put back on the recorded trajectory after every step.

    Ju et al., "PnP Inversion: Boosting Diffusion-based Editing with 3 Lines of Code"
    (arXiv 2310.01506): after the guided step of the source branch, the difference
    ``d_i = z*_{i+1} - z_{i+1}`` is added back, which puts the source rows exactly on the
    recorded state; edited rows are not corrected. Here the recorded state is assigned
    directly (the same value without the rounding of ``z + (z* - z)``).

    Attributes:
        targets: ``[N, S, C, ...]`` recorded state after each sampling step
            (``InversionRecord.step_targets()``).
        rows: the ``S`` batch rows that are source rows.
    """

    targets: torch.Tensor
    rows: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.rows) != self.targets.shape[1]:
            raise ValueError(f"{len(self.rows)} source rows but the targets hold {self.targets.shape[1]}.")

    def apply(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """The state after sampling step ``step`` with the source rows on the trajectory."""
        pinned = x.clone()
        pinned[list(self.rows)] = self.targets[step].to(x)
        return pinned


def replay(denoiser: Denoiser, sigmas: torch.Tensor, x_noise: torch.Tensor,
           callback: Optional[StepCallback] = None, pin: Optional[SourcePin] = None,
           process: DiffusionProcess = DDPM, solver: str = SOLVER_EULER) -> torch.Tensor:
    """Deterministic sampling (DDIM eta 0 / flow Euler, or FireFlow) down a schedule: the reconstruction of :func:`invert`.

    Args:
        denoiser: ``(x [B,C,...], sigma [B]) -> x0 [B,C,...]``.
        sigmas: 1-D schedule, ascending or descending; it is walked from high to low.
        x_noise: ``[B, C, ...]`` state at the highest level.
        callback: called at each step with the state it starts from and the (last) clean estimate.
        pin: direct inversion of some rows (its targets must follow this schedule).
        process: the model family's forward process (for the scale of the returned latent).
        solver: ``"euler"`` (one call per step) or ``"fireflow"`` (N + 1 calls; the sampler of a
            FireFlow inversion, :func:`.solvers.replay_solver`).

    Returns:
        ``[B, C, ...]``: the model-scale latent at the lowest level, i.e. the clean latent
        when the schedule ends at 0. Each Euler step is computed exactly as ComfyUI's euler
        sampler computes it, so a schedule ending at 0 reproduces stock ``ddim`` / ``euler`` bit for bit.
    """
    if solver not in (SOLVER_EULER, SOLVER_FIREFLOW):
        raise ValueError(f"replay samples with {SOLVER_EULER!r} or {SOLVER_FIREFLOW!r}, got {solver!r}.")
    levels = as_ascending_levels(sigmas).flip(0).to(device=x_noise.device)
    x = x_noise
    unit = x.new_ones([x.shape[0]])
    slope_at = slope_at_level(denoiser, process, sigma_floor=None)  # sampling never reads a slope at sigma 0
    carried = None
    for i in range(levels.numel() - 1):
        sigma, sigma_next = levels[i], levels[i + 1]
        if solver == SOLVER_FIREFLOW:
            step = fireflow_slope(slope_at, x, sigma, sigma_next, carried)
            carried, x0_pred = step.carried, step.x0_pred
            x_next = euler_step(x, step.slope, sigma, sigma_next)
        else:
            x0_pred = denoiser(x, sigma * unit)
            x_next = denoising_step(x, x0_pred, sigma, sigma_next)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": x0_pred})
        x = x_next
        if pin is not None:
            x = pin.apply(i, x)
    return process.to_model_scale(x, levels[-1])
