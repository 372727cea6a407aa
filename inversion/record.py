"""The INVERSION value passed between InvEdit nodes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Any, Optional, Sequence

import torch

from .ddim import InversionTrajectory
from .solvers import SOLVER_EULER, replay_solver

METHOD_NULL_TEXT = "null-text"
METHOD_NEGATIVE_PROMPT = "negative-prompt"
UNCONDITIONING_METHODS = (METHOD_NULL_TEXT, METHOD_NEGATIVE_PROMPT)


@dataclass
class Unconditioning:
    """What the unconditional branch of classifier-free guidance sees when an inversion is sampled back.

    Null-text inversion (Mokady et al., CVPR 2023) optimises one unconditional context per
    sampling step; negative-prompt inversion (Miyake et al., arXiv 2305.16807) uses the source
    prompt's (optionally blended with the empty prompt's) at every step.

    Attributes:
        method: ``"null-text"`` or ``"negative-prompt"``.
        conditioning: the unconditional CONDITIONING used as a template (opaque to the library;
            it carries what is not optimised, e.g. SDXL's pooled output and size conditioning).
        step_contexts: ``[N, B, L, D]`` float32 cross-attention context per sampling step, paired
            with ``InversionRecord.sampling_sigmas[:N]`` (step ``i`` queries the model at
            ``sampling_sigmas[i]``); ``B`` is 1 (shared by every row) or the inversion's batch.
            None means the template's own context at every step.
        report: JSON-able figures of how it was made (losses, gradient steps, seconds).
        step_pooled: ``[N, B, P]`` float32 pooled prompt vector per sampling step, paired like
            ``step_contexts``, for models that read one (SDXL, SD3.5, Flux, the flow test-bed: the
            head of the model's ``y``); None means the template's own pooled vector at every step.
    """

    method: str
    conditioning: Any
    step_contexts: Optional[torch.Tensor] = None
    report: dict[str, Any] = field(default_factory=dict)
    step_pooled: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        if self.method not in UNCONDITIONING_METHODS:
            raise ValueError(f"method must be one of {UNCONDITIONING_METHODS}, got {self.method!r}.")


@dataclass
class InversionRecord:
    """An inverted image: everything a later node needs to reconstruct or edit it.

    Attributes:
        trajectory: the inversion, in the model's own latent units (after
            ``latent_format.process_in``); ``trajectory.latents`` is ``[N+1, B, C, H, W]``.
        sampling_sigmas: ``[N+1]`` descending schedule that replays the inversion exactly
            (the inversion's levels, reversed).
        settings: plain, JSON-able description of how the inversion was made (steps,
            scheduler, guidance, timestep rule, EasyInv, warm start, prediction type, hashes of
            the source latent and of the model identity).
        positive: the CONDITIONING the inversion used (opaque to the library).
        negative: the negative CONDITIONING the inversion used.
        unconditioning: null-text or negative-prompt unconditional branch, or None (plain DDIM:
            the sampler's own negative prompt is used).
        pin_source: direct inversion (Ju et al., "PnP Inversion", arXiv 2310.01506): while
            sampling, source rows are put back on the recorded trajectory after every step.
        ddpm_noises: edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024;
            :mod:`.ddpm_noise`): ``[N, B, C, H, W]`` the recorded noise of each sampling step
            (step ``i`` goes ``sampling_sigmas[i] -> sampling_sigmas[i+1]``; the last one holds that
            step's residual). The trajectory then holds the independently drawn states
            (``latents[N - i]`` at ``sampling_sigmas[i]``), not a DDIM path: sample it with the DDPM
            edit sampler, not with DDIM. None for every other inversion.
    """

    trajectory: InversionTrajectory
    sampling_sigmas: torch.Tensor
    settings: dict[str, Any] = field(default_factory=dict)
    positive: Any = None
    negative: Any = None
    unconditioning: Optional[Unconditioning] = None
    pin_source: bool = False
    ddpm_noises: Optional[torch.Tensor] = None

    @property
    def is_ddpm_noise_space(self) -> bool:
        """Whether this is an edit-friendly DDPM inversion (sampled with its recorded noises)."""
        return self.ddpm_noises is not None

    def sampling_states(self) -> torch.Tensor:
        """``[N+1, B, C, H, W]``: the recorded state at each sampling level, ``[i]`` at ``sampling_sigmas[i]``."""
        return self.trajectory.latents.flip(0)

    @property
    def steps(self) -> int:
        """Number of sampling steps ``N``."""
        return self.sampling_sigmas.numel() - 1

    @property
    def replay_solver(self) -> str:
        """The sampling solver that reconstructs this inversion (:func:`.solvers.replay_solver`).

        Euler when the record carries per-step null-text contexts: they are paired with the model
        calls of Euler steps, at the sampling sigmas.
        """
        uncond = self.unconditioning
        if uncond is not None and uncond.step_contexts is not None:
            return SOLVER_EULER
        return replay_solver(self.trajectory.config.solver)

    def step_targets(self) -> torch.Tensor:
        """``[N, B, C, H, W]``: the recorded state each sampling step must land on.

        Sampling step ``i`` goes from ``sampling_sigmas[i]`` to ``sampling_sigmas[i+1]``; its
        target is ``trajectory.latents[N-1-i]``.
        """
        return self.trajectory.latents[:-1].flip(0)

    def with_changes(self, **changes: Any) -> "InversionRecord":
        """A new record with some fields replaced (records are never modified in place)."""
        return replace(self, **changes)

    def select_images(self, indices: Sequence[int]) -> "InversionRecord":
        """A new record holding only the batch rows ``indices`` (repeats allowed), in that order.

        The trajectory ``[N+1, B, C, H, W]``, recorded DDPM noises ``[N, B, C, H, W]`` and
        per-image null-text contexts ``[N, B, L, D]`` (and pooled vectors ``[N, B, P]``) are indexed
        on their batch axis; contexts shared by every row (``B`` = 1) are kept.
        ``positive`` / ``negative`` are opaque here: give the selected rows' prompts with
        :meth:`with_changes`. ``settings`` keep describing the batch the rows came from.
        """
        rows = list(indices)
        trajectory = replace(self.trajectory, latents=self.trajectory.latents[:, rows])
        uncond = self.unconditioning
        if uncond is not None and uncond.step_contexts is not None and uncond.step_contexts.shape[1] > 1:
            uncond = replace(uncond, step_contexts=uncond.step_contexts[:, rows])
        if uncond is not None and uncond.step_pooled is not None and uncond.step_pooled.shape[1] > 1:
            uncond = replace(uncond, step_pooled=uncond.step_pooled[:, rows])
        noises = None if self.ddpm_noises is None else self.ddpm_noises[:, rows]
        return replace(self, trajectory=trajectory, unconditioning=uncond, ddpm_noises=noises)


def tensor_sha256(tensor: torch.Tensor) -> str:
    """Hex SHA-256 of a tensor's dtype, shape and bytes (identical tensors, identical hash)."""
    data = tensor.detach().to("cpu").contiguous()
    digest = hashlib.sha256(f"{data.dtype}|{tuple(data.shape)}|".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()
