"""EasyInv latent aggregation (Zhang et al., "EasyInv: Toward Fast and Better DDIM
Inversion", ICML 2025; official code potato-kitty/EasyInv).

Inside an early window of the inversion the latent is pulled towards the previous one,

    z <- eta * z + (1 - eta) * z_prev

on the model scale, the latent as the model sees it: the DDPM scale ``z = x / sqrt(1 + sigma^2)``
for UNets (as the official code mixes DDPM latents), the state ``x = (1 - sigma) x0 + sigma eps``
itself for rectified flow, whose model input it is (:mod:`.process`). Mixing there keeps the
mixed latent a plausible model input of its level: both mixed latents are on the same scale.
It damps the error that the inversion accumulates. No extra model calls are made.

Two variants exist in the official repository and both are offered:

* ``"input"`` (the SD1.4 evaluation code): the model is queried on the un-aggregated
  latent; the aggregated latent is what the DDIM step then moves, and it becomes
  ``z_prev`` for the next step.
* ``"output"`` (the short example): the step output is aggregated with the step input,
  so the next model query already sees the aggregated latent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATE_INPUT = "input"
AGGREGATE_OUTPUT = "output"
VARIANTS = (AGGREGATE_INPUT, AGGREGATE_OUTPUT)


@dataclass(frozen=True)
class EasyInvConfig:
    """Settings of EasyInv aggregation.

    Attributes:
        eta: weight of the current latent (1 disables aggregation).
        start: window start as a fraction of the inversion steps.
        length: window length as a fraction of the inversion steps.
        variant: ``"input"`` or ``"output"`` (see the module docstring).
    """

    eta: float
    start: float
    length: float
    variant: str = AGGREGATE_INPUT

    def __post_init__(self) -> None:
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"EasyInv eta must lie in [0, 1], got {self.eta}.")
        if not 0.0 <= self.start <= 1.0 or not 0.0 <= self.length <= 1.0:
            raise ValueError(
                f"EasyInv start and length are fractions of the steps in [0, 1]; got "
                f"start={self.start}, length={self.length}."
            )
        if self.variant not in VARIANTS:
            raise ValueError(f"EasyInv variant must be one of {VARIANTS}, got {self.variant!r}.")


# Recommended presets of the official code: SD1.4 (eta 0.5, window 0.05 + 0.2) and
# SDXL (eta 0.8, window 0.85 + 0.1).
PRESETS: dict[str, EasyInvConfig] = {
    "SD1.x": EasyInvConfig(eta=0.5, start=0.05, length=0.2),
    "SDXL": EasyInvConfig(eta=0.8, start=0.85, length=0.1),
}


def in_window(step: int, n_steps: int, config: EasyInvConfig) -> bool:
    """Whether inversion step ``step`` (0-based) of ``n_steps`` aggregates.

    The official rule is ``start*N < i < (start+length)*N`` and ``i > 0`` (strict on both
    ends): for SD1.x with N = 50 that is steps 3..12.
    """
    return step > 0 and config.start * n_steps < step < (config.start + config.length) * n_steps


def aggregate(z: torch.Tensor, z_prev: torch.Tensor, eta: float) -> torch.Tensor:
    """Return ``eta * z + (1 - eta) * z_prev`` (both on the DDPM scale, same shape)."""
    return eta * z + (1.0 - eta) * z_prev
