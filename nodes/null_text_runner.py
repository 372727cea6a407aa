"""Null-text optimisation inside ComfyUI: gradients through the MODEL's own forward pass.

The optimisation itself is the library's (:func:`..inversion.null_text.optimise_null_text`); this
module runs it as a :class:`.sampling.PackSampler` inside ComfyUI's guider, so model loading,
conditioning and patches are ComfyUI's, and routes gradients through the model under ComfyUI's
inference mode.
"""

from __future__ import annotations

from typing import Callable

import torch

import comfy.model_management
import comfy.samplers

from ..inversion.null_text import NullTextConfig, NullTextResult, optimise_null_text
from ..inversion.record import InversionRecord
from .checks import check_finite
from .conditioning import uncond_context_wrapper, with_context
from .errors import InvEditInputError
from .sampling import PackSampler, SamplerRun, inversion_noise_latent, plain_guider, sample_with_guider


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


def null_text_loop(run: SamplerRun, *, record: InversionRecord, initial_context: torch.Tensor, config: NullTextConfig,
                   progress: Callable[[dict], None], result_sink: list) -> torch.Tensor:
    """Pack loop: null-text optimisation along ``record``'s schedule, from the noise ``run.latent``.

    Runs inside CFGGuider.sample of a :func:`gradient_ready_clone` with the source prompt as
    positive and the unconditional template as negative; appends the :class:`NullTextResult` to
    ``result_sink`` and returns the reconstruction it reached.
    """
    guider, x = run.guider, run.latent
    base_model, options = guider.inner_model, run.extra_args.get("model_options", {})
    positive, negative = guider.conds.get("positive"), guider.conds.get("negative")
    previous_wrapper = options.get("model_function_wrapper")

    def cond(x_in, sigma):
        return comfy.samplers.calc_cond_batch(base_model, [positive], x_in, sigma, options)[0]

    def uncond(x_in, sigma, context):
        wrapped = dict(options)
        wrapped["model_function_wrapper"] = uncond_context_wrapper(lambda _: context, previous_wrapper)
        return comfy.samplers.calc_cond_batch(base_model, [None, negative], x_in, sigma, wrapped)[1]

    def on_progress(info: dict) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        progress(info)

    with torch.inference_mode(False), torch.enable_grad():
        result = optimise_null_text(cond, uncond, run.sigmas.clone(), record.step_targets().to(x.device).clone(),
                                    x.clone(), initial_context.to(x.device).clone(), config, on_progress,
                                    run.process)
    result_sink.append(result)
    return check_finite(result.final_state.clone(), "Null-text optimisation")


def run_null_text(model, record: InversionRecord, template, initial_context: torch.Tensor,
                  config: NullTextConfig, progress: Callable[[dict], None]) -> NullTextResult:
    """Optimise ``record``'s per-step unconditional contexts on a gradient-ready clone of ``model``."""
    noise_raw = inversion_noise_latent(model, record)
    clone = gradient_ready_clone(model)
    sink: list = []
    guider = plain_guider(clone, record.positive, with_context(template, initial_context[:1]), config.guidance)
    sampler = PackSampler(null_text_loop, "Null-text optimisation", "Null-text optimisation",
                          {"record": record, "initial_context": initial_context, "config": config,
                           "progress": progress, "result_sink": sink})
    try:
        sample_with_guider(guider, noise_raw, sampler, record.sampling_sigmas, preview=False)
    except RuntimeError as error:
        if "inference tensor" in str(error).lower():
            raise InvEditInputError(
                "This model has tensors ComfyUI's weight wrappers do not reach, so null-text inversion cannot "
                "take gradients through it. Use negative-prompt or direct inversion with this model."
            ) from error
        raise
    return sink[0]
