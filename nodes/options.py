"""Widgets shared by the inversion node and the inversion SAMPLER, and their unpacking."""

from __future__ import annotations

from dataclasses import replace

from comfy_api.latest import io

from ..inversion import (
    EASYINV_PRESETS,
    PREDICTION_V,
    RULE_REFERENCE,
    RULE_SIMPLE,
    V_CONVERSION_QUERY,
    V_CONVERSION_STATE,
    EasyInvConfig,
    InversionConfig,
    WarmStartConfig,
)
from ..inversion.easyinv import VARIANTS as EASYINV_VARIANTS
from ..inversion.solvers import DEFAULT_FIXED_POINT_ITERATIONS, SOLVER_EULER, SOLVERS
from .errors import InvEditInputError
from .model_info import diffusion_process, lowest_sigma, prediction_name

EASYINV_OFF = "off"
EASYINV_CUSTOM = "custom"
EASYINV_CHOICES = [EASYINV_OFF, *EASYINV_PRESETS, EASYINV_CUSTOM]
SEED_MAX = 0xFFFFFFFFFFFFFFFF
MAX_FIXED_POINT_ITERATIONS = 20
RULE_REFERENCE_DIFFUSERS_V = "reference (diffusers v)"
# Widget choice -> (timestep rule, v-prediction conversion) of the library.
RULE_CHOICES = {
    RULE_REFERENCE: (RULE_REFERENCE, V_CONVERSION_QUERY),
    RULE_SIMPLE: (RULE_SIMPLE, V_CONVERSION_QUERY),
    RULE_REFERENCE_DIFFUSERS_V: (RULE_REFERENCE, V_CONVERSION_STATE),
}


def inversion_option_inputs() -> list:
    """Inputs for timestep rule, EasyInv, forward warm start and solver (same on every inversion node).

    New inputs go at the end, so that workflow files saved before them keep their widget order.
    """
    default_custom = EASYINV_PRESETS["SD1.x"]
    return [
        io.Combo.Input(
            "timestep_rule", options=list(RULE_CHOICES), default=RULE_REFERENCE,
            tooltip="euler solver: where the model is asked. reference: the model sees the current latent at the "
                    "next, higher timestep (Prompt-to-Prompt, null-text, diffusers DDIMInverseScheduler; lower error). "
                    "simple: the model is queried at the current timestep (what FlipSigmas + euler does). "
                    "reference (diffusers v): for v-prediction models, convert v to eps at the current "
                    "level exactly as diffusers does (same as reference for eps models; the default "
                    "reference reconstructs v models about 10x more tightly).",
        ),
        io.Combo.Input(
            "easyinv", options=EASYINV_CHOICES, default=EASYINV_OFF,
            tooltip="EasyInv latent aggregation (ICML 2025): z = eta*z + (1-eta)*z_prev inside an early "
                    "window of the inversion, no extra model calls. Presets: SD1.x eta 0.5, window 0.05+0.2; "
                    "SDXL eta 0.8, window 0.85+0.1. 'custom' uses the three values below.",
        ),
        io.Float.Input("easyinv_eta", default=default_custom.eta, min=0.0, max=1.0, step=0.01,
                       tooltip="custom EasyInv: weight of the current latent (1 = no aggregation)."),
        io.Float.Input("easyinv_start", default=default_custom.start, min=0.0, max=1.0, step=0.01,
                       tooltip="custom EasyInv: window start, as a fraction of the steps."),
        io.Float.Input("easyinv_length", default=default_custom.length, min=0.0, max=1.0, step=0.01,
                       tooltip="custom EasyInv: window length, as a fraction of the steps."),
        io.Combo.Input(
            "easyinv_variant", options=list(EASYINV_VARIANTS), default=EASYINV_VARIANTS[0],
            tooltip="input: aggregate the latent each step moves from, model queried before mixing "
                    "(official SD1.4 code). output: aggregate each step's result, so the next model call "
                    "sees the mixed latent (official short example).",
        ),
        io.Int.Input(
            "warm_start_steps", default=0, min=0, max=1000,
            tooltip="Forward-diffusion warm start ('There and Back Again'): replace the first k inversion "
                    "steps by forward diffusion with its own seed. Decorrelates the latent and makes edits "
                    "stochastic. The paper uses 2 of 50. 0 = off.",
        ),
        io.Float.Input(
            "warm_start_fraction", default=0.0, min=0.0, max=0.5, step=0.01,
            tooltip="Alternative to warm_start_steps: the fraction of steps to replace (0.04 = 2 of 50). "
                    "Set this or warm_start_steps, not both (both non-zero stops with an error).",
        ),
        io.Int.Input("warm_start_seed", default=0, min=0, max=SEED_MAX, control_after_generate=False,
                     tooltip="Seed of the warm start's forward noise; different seeds give different "
                             "inversions (and edits) of the same image."),
        # Optional: prompts written before these inputs existed (API format) still validate.
        io.Combo.Input(
            "solver", options=list(SOLVERS), default=SOLVER_EULER, optional=True,
            tooltip="How each inversion step is taken. euler: one model call per step (N calls; the timestep_rule "
                    "applies), reconstructed by stock euler / ddim. fireflow: FireFlow's midpoint step reusing the "
                    "previous midpoint velocity (ICML 2025), second order for N + 1 calls; reconstruct with InvEdit "
                    "Reconstruct or Replay Sampler (solver fireflow). fixed-point: solves the implicit step that "
                    "stock euler / ddim inverts exactly, k calls per step (k N calls).",
        ),
        io.Int.Input(
            "fixed_point_iterations", default=DEFAULT_FIXED_POINT_ITERATIONS, min=1, max=MAX_FIXED_POINT_ITERATIONS,
            optional=True,
            tooltip="fixed-point solver only: k, the model calls (iterations) per step; 1 is plain Euler with the "
                    "reference rule, each more one correction.",
        ),
    ]


def option_defaults() -> dict:
    """The default value of every shared inversion option, by input name (for scripts and tests)."""
    return {widget.id: widget.default for widget in inversion_option_inputs()}


def easyinv_config(easyinv: str, eta: float, start: float, length: float, variant: str) -> EasyInvConfig | None:
    """EasyInv settings from the widgets (None when off)."""
    if easyinv == EASYINV_OFF:
        return None
    if easyinv == EASYINV_CUSTOM:
        return EasyInvConfig(eta=eta, start=start, length=length, variant=variant)
    if easyinv not in EASYINV_PRESETS:
        raise InvEditInputError(f"Unknown EasyInv choice {easyinv!r}; pick one of {EASYINV_CHOICES}.")
    return replace(EASYINV_PRESETS[easyinv], variant=variant)


def warm_start_config(steps: int, fraction: float, seed: int) -> WarmStartConfig | None:
    """Warm-start settings from the widgets (None when off)."""
    if steps == 0 and fraction == 0.0:
        return None
    return WarmStartConfig(steps=steps, fraction=fraction, seed=seed)


def inversion_config(model, timestep_rule: str, easyinv: str, easyinv_eta: float,
                     easyinv_start: float, easyinv_length: float, easyinv_variant: str,
                     warm_start_steps: int, warm_start_fraction: float, warm_start_seed: int,
                     solver: str = SOLVER_EULER,
                     fixed_point_iterations: int = DEFAULT_FIXED_POINT_ITERATIONS) -> InversionConfig:
    """The library's :class:`InversionConfig` from the shared widgets and the model."""
    if timestep_rule not in RULE_CHOICES:
        raise InvEditInputError(f"Unknown timestep_rule {timestep_rule!r}; pick one of {list(RULE_CHOICES)}.")
    rule, v_conversion = RULE_CHOICES[timestep_rule]
    process = diffusion_process(model)
    prediction = prediction_name(model)
    try:
        return InversionConfig(
            timestep_rule=rule,
            # diffusers' v conversion exists for v-prediction UNets and the Euler solver only; elsewhere it
            # is the reference rule.
            v_conversion=v_conversion if prediction == PREDICTION_V and solver == SOLVER_EULER else V_CONVERSION_QUERY,
            prediction_type=prediction,
            sigma_floor=lowest_sigma(model),
            process=process.name,
            easyinv=easyinv_config(easyinv, easyinv_eta, easyinv_start, easyinv_length, easyinv_variant),
            warm_start=warm_start_config(warm_start_steps, warm_start_fraction, warm_start_seed),
            solver=solver,
            fixed_point_iterations=fixed_point_iterations,
        )
    except InvEditInputError:
        raise
    except ValueError as error:
        raise InvEditInputError(str(error)) from error
