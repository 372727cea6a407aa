"""The INVERSION's guider: samples an inverted image with its own unconditional branch, step by step.

Per-step unconditional contexts (null-text inversion) reach the model through a model function
wrapper on a cloned MODEL: on every model call it finds the sampling step from the call's own
sigma (never by counting calls) and puts that step's context into the unconditional rows.
"""

from __future__ import annotations

import torch

import comfy.samplers

from ..inversion.null_text import REFERENCE_GUIDANCE
from ..inversion.record import InversionRecord
from .checks import check_conditioning, check_deterministic_sampler, check_finite, check_inversion_model
from .conditioning import ContextForCall, negative_for, uncond_context_wrapper
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
    """

    def __init__(self, model, record: InversionRecord, positive, negative=None, cfg: float = REFERENCE_GUIDANCE):
        check_inversion_model(model, record)
        if negative is None and record.unconditioning is None and cfg == 1.0:
            negative = positive  # never evaluated: at cfg 1 ComfyUI skips the unconditional branch
        negative = negative_for(record, negative)
        check_conditioning(model, positive, "positive")
        if cfg != 1.0:
            check_conditioning(model, negative, "negative")
        super().__init__(sampling_model(model, record))
        self.record = record
        self.set_conds(positive, negative)
        self.set_cfg(cfg)

    def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        if not getattr(sampler, USES_RECORDED_NOISES, False):
            check_not_recorded_noises(self.record, "This InvEdit guider with a stock sampler")
        check_deterministic_sampler(sampler, "This InvEdit guider")
        check_schedule(sigmas, self.record)
        return check_finite(super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs), "Sampling")
