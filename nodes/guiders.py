"""The INVERSION's guider: samples an inverted image with its own unconditional branch, step by step.

Per-step unconditional contexts (null-text inversion) reach the model through a model function
wrapper on a cloned MODEL: on every model call it finds the sampling step from the call's own
sigma (never by counting calls) and puts that step's context into the unconditional rows.

A masked edit (:mod:`..inversion.masks`) keeps every row on the INVERSION's recorded trajectory
outside the mask: after each step the state is steered there through the guider's clean estimate
(:func:`..inversion.steps.denoised_landing_on`), exact for one-call-per-step samplers.
"""

from __future__ import annotations

from typing import Optional

import torch

import comfy.samplers

from ..inversion.masks import keep_outside
from ..inversion.null_text import REFERENCE_GUIDANCE
from ..inversion.record import InversionRecord
from ..inversion.steps import denoised_landing_on, denoising_step
from .checks import check_conditioning, check_deterministic_sampler, check_finite, check_inversion_model
from .conditioning import ContextForCall, negative_for, uncond_context_wrapper
from .errors import InvEditInputError
from .sampling import USES_RECORDED_NOISES, check_not_recorded_noises
from .schedules import check_schedule, step_for_sigma


def step_context_lookup(step_contexts: torch.Tensor, sampling_sigmas: torch.Tensor) -> ContextForCall:
    """``timestep -> step_contexts[i]`` with ``i`` paired by sigma (contexts ``[N, B, L, D]`` or pooled ``[N, B, P]``)."""

    def context_for(timestep: torch.Tensor) -> torch.Tensor:
        return step_contexts[step_for_sigma(timestep, sampling_sigmas)]

    return context_for


def sampling_model(model, record: InversionRecord):
    """A clone of ``model`` that feeds ``record``'s per-step unconditional contexts and pooled vectors (or
    ``model`` itself)."""
    uncond = record.unconditioning
    if uncond is None or uncond.step_contexts is None:
        return model
    clone = model.clone()
    previous = clone.model_options.get("model_function_wrapper")
    pooled_for = None
    if uncond.step_pooled is not None:
        pooled_for = step_context_lookup(uncond.step_pooled, record.sampling_sigmas)
    clone.set_model_unet_function_wrapper(
        uncond_context_wrapper(step_context_lookup(uncond.step_contexts, record.sampling_sigmas), previous,
                               pooled_for))
    return clone


class InversionGuider(comfy.samplers.CFGGuider):
    """CFG guider that samples an INVERSION with its unconditioning, step by step.

    Null-text contexts are paired with the sampler's steps by sigma; sampling with another
    schedule, a sampler that adds noise at every step, a model of another architecture or a
    prompt from another text encoder fails with a message that says what to change, and so
    does a result with NaN (float16 overflow) instead of a black image.

    Args:
        model, record, positive, negative, cfg: the MODEL, the INVERSION, the prompts, the guidance.
        mask: ``[1 or R, 1, H, W]`` latent-size feathered mask (:func:`.masks.edit_mask`), or None:
            outside it every row stays on the recorded trajectory (``record.step_targets()``).
    """

    def __init__(self, model, record: InversionRecord, positive, negative=None, cfg: float = REFERENCE_GUIDANCE,
                 mask: Optional[torch.Tensor] = None):
        check_inversion_model(model, record)
        if negative is None and record.unconditioning is None and cfg == 1.0:
            negative = positive  # never evaluated: at cfg 1 ComfyUI skips the unconditional branch
        negative = negative_for(record, negative)
        check_conditioning(model, positive, "positive")
        if cfg != 1.0:
            check_conditioning(model, negative, "negative")
        super().__init__(sampling_model(model, record))
        self.record = record
        self.mask = mask
        self.steering_sigmas = record.sampling_sigmas.detach().to("cpu", torch.float64)
        self.set_conds(positive, negative)
        self.set_cfg(cfg)

    def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        if not getattr(sampler, USES_RECORDED_NOISES, False):
            check_not_recorded_noises(self.record, "This InvEdit guider with a stock sampler")
        check_deterministic_sampler(sampler, "This InvEdit guider")
        check_schedule(sigmas, self.record)
        self.check_mask_rows(latent_image.shape[0])
        return check_finite(super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs), "Sampling")

    def check_mask_rows(self, rows: int) -> None:
        """Refuse a mask batch or a recorded trajectory that does not match the ``rows`` sampled."""
        if self.mask is None:
            return
        images = self.record.trajectory.noise.shape[0]
        if self.mask.shape[0] not in (1, rows) or images not in (1, rows):
            raise InvEditInputError(
                f"The masked edit samples {rows} latent row(s) but the inversion holds {images} image(s) and "
                f"{self.mask.shape[0]} mask(s): sample the inversion's own noise latent, with one mask for all "
                "rows or one per row.")

    @property
    def steers(self) -> bool:
        """Whether :meth:`state_after_step` ever changes the state after a step."""
        return self.mask is not None

    def state_after_step(self, step: int, x_next: torch.Tensor) -> torch.Tensor:
        """``[R, C, H, W]`` the state sampling step ``step`` must land on: the recorded one outside the mask."""
        return keep_outside(self.record.step_targets()[step].to(x_next), x_next, self.mask)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        denoised = super().predict_noise(x, timestep, model_options, seed)
        if not self.steers:
            return denoised
        step = step_for_sigma(timestep, self.steering_sigmas)
        sigma, sigma_next = self.steering_sigmas[step], self.steering_sigmas[step + 1]
        x_next = denoising_step(x, denoised, sigma.to(x), sigma_next.to(x))
        wanted = self.state_after_step(step, x_next)
        return denoised_landing_on(x, denoised, float(sigma), float(sigma_next), x_next, wanted)
