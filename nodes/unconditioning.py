"""ComfyUI glue for the unconditional branch of an INVERSION (null-text, negative-prompt, direct).

Per-step unconditional contexts reach the model through a UNet function wrapper on a cloned
MODEL: on every model call it finds the sampling step from the call's own sigma (never by
counting calls) and puts that step's context into the unconditional rows named by
``cond_or_uncond``. Gradients for null-text optimisation flow through ComfyUI's own
``calc_cond_batch`` on a clone whose weights are routed through weight wrappers, the way
ComfyUI's training node makes inference-mode weights usable in backward.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

import comfy.samplers
import comfy.utils

from ..inversion.null_text import NullTextConfig, NullTextResult, optimise_null_text, substitute_uncond_context
from ..inversion.record import InversionRecord
from . import host
from .host import InvEditInputError

SIGMA_MATCH_RTOL = 1e-4
"""Relative tolerance when pairing a model call's sigma with an inversion's sampling sigma."""


# --------------------------------------------------------------------------------------------
# CONDITIONING values


def single_entry(conditioning, what: str) -> tuple[torch.Tensor, dict]:
    """The ``(context [1, L, D], options)`` of a one-entry CONDITIONING, or a clear error."""
    if not isinstance(conditioning, list) or len(conditioning) != 1:
        count = len(conditioning) if isinstance(conditioning, list) else "no"
        raise InvEditInputError(
            f"The {what} must be a single prompt (one CLIPTextEncode output) but it has {count} entries: "
            "connect the text encoder directly, without Conditioning Combine / Concat / area nodes."
        )
    context, options = conditioning[0][0], conditioning[0][1]
    if not isinstance(context, torch.Tensor) or context.ndim != 3:
        raise InvEditInputError(f"The {what} does not hold a [batch, tokens, width] text context.")
    return context, options


def with_context(conditioning, context: torch.Tensor) -> list:
    """A new one-entry CONDITIONING with ``context`` and the same options (pooled output, sizes)."""
    _, options = single_entry(conditioning, "unconditional prompt")
    return [[context, dict(options)]]


def negative_for(record: InversionRecord, fallback) -> Any:
    """The unconditional CONDITIONING to sample ``record`` with (its own, else ``fallback``)."""
    uncond = record.unconditioning
    if uncond is None:
        if fallback is None:
            raise InvEditInputError(
                "This inversion has no null-text or negative-prompt unconditioning: connect a negative prompt."
            )
        return fallback
    if uncond.step_contexts is None:
        return uncond.conditioning
    return with_context(uncond.conditioning, uncond.step_contexts[0][:1])


# --------------------------------------------------------------------------------------------
# Sigma pairing and the context wrapper


def step_for_sigma(sigma: torch.Tensor, sampling_sigmas: torch.Tensor) -> int:
    """Index ``i`` with ``sampling_sigmas[i] == sigma`` (the step that queries the model there)."""
    value = float(sigma.reshape(-1)[0])
    queried = sampling_sigmas[:-1].double()
    matches = torch.nonzero(torch.isclose(queried, queried.new_tensor(value), rtol=SIGMA_MATCH_RTOL, atol=0.0))
    if matches.numel() == 0:
        levels = ", ".join(f"{float(s):.4g}" for s in queried[:4])
        raise InvEditInputError(
            f"The sampler asked the model for sigma {value:.6g}, which is not one of this inversion's "
            f"{queried.numel()} sampling sigmas ({levels}, ...). Sample with the inversion's own SIGMAS output "
            "(same steps and scheduler) and a deterministic sampler that only visits those levels "
            "(ddim, euler, InvEdit Replay Sampler)."
        )
    return int(matches[0, 0])


def check_schedule(sigmas: torch.Tensor, record: InversionRecord) -> None:
    """Refuse a schedule whose levels (all but the last) are not the inversion's sampling sigmas."""
    for sigma in sigmas[:-1].cpu():
        step_for_sigma(sigma, record.sampling_sigmas)


ContextForCall = Callable[[torch.Tensor], torch.Tensor]
"""``timestep [rows] -> context [B or 1, L, D]`` for the unconditional rows of a model call."""


def uncond_context_wrapper(context_for: ContextForCall, previous: Optional[Callable] = None) -> Callable:
    """A ``model_function_wrapper`` that puts ``context_for(sigma)`` into the unconditional rows.

    ``previous`` is the wrapper the model already had; it is called with the new context.
    """

    def wrapper(apply_model, args: dict):
        cond_or_uncond = args["cond_or_uncond"]
        c = args["c"]
        if 1 in cond_or_uncond:
            c = dict(c)
            c["c_crossattn"] = substitute_uncond_context(c["c_crossattn"], cond_or_uncond,
                                                         context_for(args["timestep"]))
        if previous is not None:
            return previous(apply_model, {**args, "c": c})
        return apply_model(args["input"], args["timestep"], **c)

    return wrapper


def step_context_lookup(step_contexts: torch.Tensor, sampling_sigmas: torch.Tensor) -> ContextForCall:
    """``timestep -> step_contexts[i]`` with ``i`` paired by sigma."""

    def context_for(timestep: torch.Tensor) -> torch.Tensor:
        return step_contexts[step_for_sigma(timestep, sampling_sigmas)]

    return context_for


def sampling_model(model, record: InversionRecord):
    """A clone of ``model`` that feeds ``record``'s per-step unconditional contexts (or ``model`` itself)."""
    uncond = record.unconditioning
    if uncond is None or uncond.step_contexts is None:
        return model
    clone = model.clone()
    previous = clone.model_options.get("model_function_wrapper")
    clone.set_model_unet_function_wrapper(
        uncond_context_wrapper(step_context_lookup(uncond.step_contexts, record.sampling_sigmas), previous))
    return clone


class InversionGuider(comfy.samplers.CFGGuider):
    """CFG guider that samples an INVERSION with its unconditioning, step by step.

    Null-text contexts are paired with the sampler's steps by sigma; sampling with another
    schedule, a sampler that adds noise at every step, a model of another architecture or a
    prompt from another text encoder fails with a message that says what to change, and so
    does a result with NaN (float16 overflow) instead of a black image.
    """

    def __init__(self, model, record: InversionRecord, positive, negative=None, cfg: float = 7.5):
        host.check_inversion_model(model, record)
        negative = negative_for(record, negative)
        host.check_conditioning(model, positive, "positive")
        if cfg != 1.0:
            host.check_conditioning(model, negative, "negative")
        super().__init__(sampling_model(model, record))
        self.record = record
        self.set_conds(positive, negative)
        self.set_cfg(cfg)

    def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        host.check_deterministic_sampler(sampler, "This InvEdit guider")
        check_schedule(sigmas, self.record)
        return host.check_finite(super().sample(noise, latent_image, sampler, sigmas, *args, **kwargs), "Sampling")


# --------------------------------------------------------------------------------------------
# Null-text optimisation inside ComfyUI


def _backward_safe(weight: torch.Tensor) -> torch.Tensor:
    """Weight wrapper: a weight that autograd may save (inference tensors cannot be) and never trains."""
    return weight.detach().clone() if weight.is_inference() else weight.detach()


def gradient_ready_clone(model):
    """A clone whose forward pass can be differentiated under ComfyUI's inference mode, in float32.

    Every weight and bias goes through a weight wrapper (as ``comfy_extras/nodes_train.py``
    routes its adapters), so the caller's MODEL and its tensors are never touched; the
    compute dtype is float32 so the optimisation does not run in float16.
    """
    clone = model.clone()
    for name, module in clone.model.named_modules():
        if not hasattr(module, "weight_function"):
            continue
        for attribute in ("weight", "bias"):
            if getattr(module, attribute, None) is not None:
                clone.add_weight_wrapper(f"{name}.{attribute}", _backward_safe)
    clone.set_model_compute_dtype(torch.float32)
    return clone


def sample_null_text(model_k, x, sigmas, extra_args=None, callback=None, disable=None, *,
                     record: InversionRecord, initial_context: torch.Tensor, config: NullTextConfig,
                     progress: Callable[[dict], None], result_sink: list):
    """KSAMPLER function: null-text optimisation along ``record``'s schedule, from the noise ``x``.

    Runs inside CFGGuider.sample of a :func:`gradient_ready_clone` with the source prompt as
    positive and the unconditional template as negative; appends the
    :class:`NullTextResult` to ``result_sink`` and returns the reconstruction it reached.
    """
    extra_args = {} if extra_args is None else extra_args
    host.check_deterministic_start(model_k, extra_args, "Null-text optimisation")
    guider = model_k.inner_model
    base_model, options = guider.inner_model, extra_args.get("model_options", {})
    positive, negative = guider.conds.get("positive"), guider.conds.get("negative")
    previous_wrapper = options.get("model_function_wrapper")

    def cond(x_in, sigma):
        return comfy.samplers.calc_cond_batch(base_model, [positive], x_in, sigma, options)[0]

    def uncond(x_in, sigma, context):
        wrapped = dict(options)
        wrapped["model_function_wrapper"] = uncond_context_wrapper(lambda _: context, previous_wrapper)
        return comfy.samplers.calc_cond_batch(base_model, [None, negative], x_in, sigma, wrapped)[1]

    with torch.inference_mode(False), torch.enable_grad():
        result = optimise_null_text(cond, uncond, sigmas.clone(), record.step_targets().to(x.device).clone(),
                                    x.clone(), initial_context.to(x.device).clone(), config,
                                    host.step_callback(progress))
    result_sink.append(result)
    return host.check_finite(result.final_state.clone(), "Null-text optimisation")


def run_null_text(model, record: InversionRecord, template, initial_context: torch.Tensor,
                  config: NullTextConfig, progress: Callable[[dict], None]) -> NullTextResult:
    """Optimise ``record``'s per-step unconditional contexts on a gradient-ready clone of ``model``."""
    noise_raw = host.inversion_noise_latent(model, record)
    clone = gradient_ready_clone(model)
    sink: list = []
    try:
        host.run_sampler(clone, record.positive, with_context(template, initial_context[:1]), config.guidance,
                         noise_raw, sample_null_text, record.sampling_sigmas,
                         extra_options={"record": record, "initial_context": initial_context, "config": config,
                                        "progress": progress, "result_sink": sink},
                         preview=False)
    except RuntimeError as error:
        if "inference tensor" in str(error).lower():
            raise InvEditInputError(
                "This model has tensors ComfyUI's weight wrappers do not reach, so null-text inversion cannot "
                "take gradients through it. Use negative-prompt or direct inversion with this model."
            ) from error
        raise
    return sink[0]
