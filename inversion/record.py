"""The INVERSION value passed between InvEdit nodes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .ddim import InversionTrajectory


@dataclass
class InversionRecord:
    """An inverted image: everything a later node needs to reconstruct or edit it.

    Attributes:
        trajectory: the inversion, in the model's own latent units (after
            ``latent_format.process_in``); ``trajectory.latents`` is ``[N+1, B, C, H, W]``.
        sampling_sigmas: ``[N+1]`` descending schedule that replays the inversion exactly
            (the inversion's levels, reversed).
        settings: plain, JSON-able description of how the inversion was made (steps,
            scheduler, guidance, timestep rule, EasyInv, warm start, prediction type).
        positive: the CONDITIONING the inversion used (opaque to the library).
        negative: the negative CONDITIONING the inversion used.
    """

    trajectory: InversionTrajectory
    sampling_sigmas: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)
    positive: Any = None
    negative: Any = None
