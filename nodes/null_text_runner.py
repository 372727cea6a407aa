"""Null-text optimisation inside ComfyUI: gradients through the MODEL's own forward pass.

The optimisation itself is the library's (:func:`..inversion.null_text.optimise_null_text`); this
module runs it as a :class:`.sampling.PackSampler` inside ComfyUI's guider, so model loading,
conditioning and patches are ComfyUI's, and takes gradients through the loaded model with
:func:`.gradients.gradient_ready` (no copy of the weights, the model's own compute dtype).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

import comfy.model_management
import comfy.samplers

from ..inversion.loss_scaling import DynamicLossScale, NonFiniteGradientError
from ..inversion.null_text import NonFiniteLossError, NullTextConfig, NullTextResult, optimise_null_text
from ..inversion.record import InversionRecord
from .checks import check_finite
from .conditioning import uncond_context_wrapper, with_context
from .errors import InvEditInputError
from .gradients import compute_dtype, run_with_gradients
from .sampling import PackSampler, SamplerRun, inversion_noise_latent, plain_guider, sample_with_guider

PRECISION_ADVICE = ("run the model in bfloat16 (start ComfyUI with --bf16-unet, on a GPU that has it) or float32 "
                    "(--force-fp32 or --fp32-unet)")


def loss_scale_for(model_patcher) -> Optional[DynamicLossScale]:
    """Dynamic loss scaling for a model that computes in float16; None for bfloat16 and float32."""
    return DynamicLossScale() if compute_dtype(model_patcher) == torch.float16 else None


def null_text_loop(run: SamplerRun, *, record: InversionRecord, initial_context: torch.Tensor, config: NullTextConfig,
                   progress: Callable[[dict], None], result_sink: list) -> torch.Tensor:
    """Pack loop: null-text optimisation along ``record``'s schedule, from the noise ``run.latent``.

    Runs inside CFGGuider.sample with the source prompt as positive and the unconditional
    template as negative; appends the :class:`NullTextResult` to ``result_sink`` and returns the
    reconstruction it reached.
    """
    guider, x = run.guider, run.latent
    base_model, options = guider.inner_model, run.extra_args.get("model_options", {})
    positive, negative = guider.conds.get("positive"), guider.conds.get("negative")
    previous_wrapper = options.get("model_function_wrapper")

    def cond(x_in, sigma):
        comfy.model_management.throw_exception_if_processing_interrupted()
        return comfy.samplers.calc_cond_batch(base_model, [positive], x_in, sigma, options)[0]

    def uncond(x_in, sigma, context):
        comfy.model_management.throw_exception_if_processing_interrupted()  # Cancel stops before the next forward
        wrapped = dict(options)
        wrapped["model_function_wrapper"] = uncond_context_wrapper(lambda _: context, previous_wrapper)
        return comfy.samplers.calc_cond_batch(base_model, [None, negative], x_in, sigma, wrapped)[1]

    def on_progress(info: dict) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        progress(info)

    def optimise() -> NullTextResult:
        return optimise_null_text(cond, uncond, run.sigmas.clone(), record.step_targets().to(x.device).clone(),
                                  x.clone(), initial_context.to(x.device).clone(), config, on_progress, run.process,
                                  loss_scale_for(guider.model_patcher))

    result = run_with_gradients(guider.model_patcher, optimise)
    result_sink.append(result)
    return check_finite(result.final_state.clone(), "Null-text optimisation")


def check_no_hooks(conditioning, what: str) -> None:
    """Refuse a CONDITIONING with ComfyUI hooks: they re-patch the weights during sampling, which the
    gradient-ready weights of :mod:`.gradients` must not meet."""
    if any(isinstance(entry, (list, tuple)) and len(entry) > 1 and entry[1].get("hooks") is not None
           for entry in conditioning or []):
        raise InvEditInputError(
            f"The {what} carries hooks (a scheduled LoRA or hook keyframes), which null-text inversion does not "
            "support: apply the LoRA to the MODEL (Load LoRA) instead."
        )


def run_null_text(model, record: InversionRecord, template, initial_context: torch.Tensor,
                  config: NullTextConfig, progress: Callable[[dict], None]) -> NullTextResult:
    """Optimise ``record``'s per-step unconditional contexts (``initial_context [B or 1, L, D]``) on ``model``.

    ``model`` is not changed: gradients are taken through it as loaded (see :mod:`.gradients`).
    """
    check_no_hooks(record.positive, "inversion's source prompt")
    check_no_hooks(template, "negative (empty) prompt")
    noise_raw = inversion_noise_latent(model, record)
    sink: list = []
    guider = plain_guider(model, record.positive, with_context(template, initial_context[:1]), config.guidance)
    sampler = PackSampler(null_text_loop, "Null-text optimisation", "Null-text optimisation",
                          {"record": record, "initial_context": initial_context, "config": config,
                           "progress": progress, "result_sink": sink})
    try:
        sample_with_guider(guider, noise_raw, sampler, record.sampling_sigmas, preview=False)
    except (NonFiniteLossError, NonFiniteGradientError) as error:
        raise InvEditInputError(f"Null-text optimisation: {error} This usually means the model overflows in "
                                f"float16: {PRECISION_ADVICE}.") from error
    except RuntimeError as error:
        if "inference tensor" in str(error).lower():
            raise InvEditInputError(
                "This model holds weights InvEdit cannot take gradients through (a tensor type of another custom "
                "node, such as quantised weights), so null-text inversion cannot run on it. Load the model in a "
                "plain dtype, or use negative-prompt or direct inversion with this model."
            ) from error
        raise
    return sink[0]
