"""Checks of the values a node receives: each refuses bad input with a message that says what to change."""

from __future__ import annotations

import torch

import comfy.samplers

from .errors import InvEditInputError
from .fingerprint import architecture_fingerprint
from .model_info import (
    LATENT_PIXEL_RATIO,
    context_width,
    diffusion_process,
    is_flow_model,
    latent_channels,
    latent_has_frames,
    smallest_latent_side,
)

IMAGE_LATENT_DIMS = 4
"""``[B, C, H, W]``: the latent of an image for SD1.x / SDXL / SD3 / Flux / Chroma."""
FRAMED_LATENT_DIMS = 5
"""``[B, C, T, H, W]``: the latent format of Qwen-Image (Wan 2.1's VAE); an image is one frame, T = 1."""
FRAME_AXIS = 2


def check_latent_shape(model, shape: torch.Size) -> None:
    """Refuse a ``[B, C, H, W]`` latent of another latent format, or too small for the UNet."""
    channels = latent_channels(model)
    if shape[1] != channels:
        raise InvEditInputError(
            f"The latent has {shape[1]} channels but this model expects {channels}: "
            "encode the image with this model's own VAE (a latent from another model family "
            "cannot be inverted)."
        )
    shrink, smallest = smallest_latent_side(model)
    height, width = int(shape[-2]), int(shape[-1])
    if min(height, width) < smallest:
        pixels = smallest * LATENT_PIXEL_RATIO
        raise InvEditInputError(
            f"The latent is {height}x{width}, too small for this model: its UNet shrinks the latent {shrink}x, "
            f"so it needs at least {smallest}x{smallest} latent pixels ({pixels}x{pixels} image pixels with an "
            "8x VAE). Upscale the image (Upscale Image) before VAE Encode."
        )


def image_latent_samples(model, samples) -> torch.Tensor:
    """An image latent in the layout ``model`` takes: ``[B, C, H, W]``, or ``[B, C, 1, H, W]`` for 5-D formats.

    A 4-D latent for a model with 5-D latents gets its frame axis (ComfyUI's samplers do the same to an
    empty latent); 5-D latents are refused for 4-D models, and several frames (a video) everywhere.
    """
    framed = latent_has_frames(model)
    if not isinstance(samples, torch.Tensor) or samples.ndim not in (IMAGE_LATENT_DIMS, FRAMED_LATENT_DIMS):
        raise InvEditInputError(
            "The LATENT must hold a 4-D 'samples' tensor [batch, channels, height, width] ([batch, channels, 1, height, "
            "width] for Qwen-Image): connect a VAE Encode output (video latents are not supported)."
        )
    if samples.ndim == FRAMED_LATENT_DIMS and not framed:
        raise InvEditInputError(
            "The LATENT must hold a 4-D 'samples' tensor [batch, channels, height, width] for this model, but it is 5-D "
            "(video latents are not supported): connect the VAE Encode output of an image, encoded with this model's "
            "own VAE."
        )
    if samples.ndim == FRAMED_LATENT_DIMS and samples.shape[FRAME_AXIS] != 1:
        raise InvEditInputError(
            f"The LATENT holds {samples.shape[FRAME_AXIS]} frames [batch, channels, frames, height, width]; InvEdit "
            "inverts images, one frame each (video latents are not supported): connect the VAE Encode output of one "
            "image."
        )
    if framed and samples.ndim == IMAGE_LATENT_DIMS:
        return samples.unsqueeze(FRAME_AXIS)
    return samples


def check_latent(model, latent: dict) -> torch.Tensor:
    """Return ``latent["samples"]`` (in the layout the model takes) after checking it fits ``model``; never modifies it."""
    samples = image_latent_samples(model, latent.get("samples"))
    check_latent_shape(model, samples.shape)
    if latent.get("noise_mask") is not None:
        raise InvEditInputError(
            "The LATENT carries a noise mask (from Set Latent Noise Mask / inpainting). Inversion "
            "works on the whole latent: remove the mask before inverting."
        )
    if not bool(torch.isfinite(samples).all()):
        raise InvEditInputError("The latent contains NaN or infinite values: check the VAE Encode input.")
    return samples


def check_inversion_family(model, record) -> None:
    """Refuse sampling (or loading) an INVERSION with a model of the other family (UNet vs rectified flow)."""
    recorded = record.trajectory.config.forward_process
    current = diffusion_process(model)
    if recorded.name != current.name:  # by name: a record may come from another import of the pack
        raise InvEditInputError(
            f"This inversion was made with a {recorded.family}, but this model is a {current.family}: their "
            "noises mean different things and cannot be sampled across. Sample it with the model the image was "
            "inverted with, or invert the image again with this model."
        )


def check_inversion_fits(model, noise: torch.Tensor) -> None:
    """Refuse an INVERSION made with a model of another latent family."""
    channels = latent_channels(model)
    if noise.shape[1] != channels:
        raise InvEditInputError(
            f"This inversion holds {noise.shape[1]}-channel latents but the model expects {channels}: "
            "reconstruct with the model the image was inverted with."
        )


def check_inversion_model(model, record) -> None:
    """Refuse sampling an INVERSION with a model of another latent family or architecture.

    The architecture is compared with the fingerprint the inversion recorded (when it has one):
    another family, UNet configuration, prediction type or noise schedule is refused; other
    weights of the same architecture (a fine-tune, a LoRA) are not.
    """
    check_inversion_family(model, record)
    check_inversion_fits(model, record.trajectory.noise)
    recorded = (record.settings or {}).get("model_fingerprint")
    if isinstance(recorded, dict) and recorded.get("architecture") not in (None, architecture_fingerprint(model)):
        raise InvEditInputError(
            "This inversion was made with a model of another architecture (another model family, UNet "
            "configuration, prediction type or noise schedule, e.g. an SD1.x inversion on an SDXL model). "
            "Sample it with the model the image was inverted with, or invert the image again with this model."
        )


def check_unet_attention(model, what: str) -> None:
    """Refuse a rectified-flow model where InvEdit edits UNet cross-attention (Prompt-to-Prompt)."""
    if is_flow_model(model):
        raise InvEditInputError(
            f"InvEdit's {what} edits the cross-attention layers of UNets (SD1.x, SD2.x, SDXL); this is a rectified-"
            "flow model (joint attention of text and image), which it does not edit. Reconstruct or edit it by "
            "prompt with InvEdit Reconstruct or InvEdit Inversion Guider, or use a UNet model."
        )


def check_conditioning(model, conditioning, what: str) -> None:
    """Refuse an empty CONDITIONING, or one whose text context has another width than the model takes."""
    if not isinstance(conditioning, list) or not conditioning:
        raise InvEditInputError(
            f"The {what} CONDITIONING is empty (no prompt in it): connect a CLIP Text Encode output "
            "(an empty text is fine)."
        )
    width = context_width(model)
    for entry in conditioning:
        context = entry[0] if isinstance(entry, (list, tuple)) and entry else None
        if width is not None and isinstance(context, torch.Tensor) and context.ndim == 3 and context.shape[-1] != width:
            raise InvEditInputError(
                f"The {what} prompt was encoded by a text encoder of another model family (context width "
                f"{context.shape[-1]}; this model takes {width}): encode it with the CLIP of this model's "
                "checkpoint."
            )



DETERMINISTIC_SAMPLER_FUNCTIONS = frozenset({
    "sample_euler", "sample_euler_cfg_pp", "sample_heun", "sample_heunpp2", "sample_dpm_2", "sample_lms",
    "dpm_fast_function", "dpm_adaptive_function", "sample_dpmpp_2m", "sample_dpmpp_2m_cfg_pp", "sample_ipndm",
    "sample_ipndm_v", "sample_deis", "sample_res_multistep", "sample_res_multistep_cfg_pp",
    "sample_gradient_estimation", "sample_gradient_estimation_cfg_pp", "sample_unipc", "sample_unipc_bh2",
})
"""ComfyUI sampler functions that add no noise (with their default ``s_churn`` of 0): ddim, euler, heun,
dpm_2, lms, dpm_fast, dpm_adaptive, dpmpp_2m, ipndm, deis, res_multistep, gradient_estimation, uni_pc
and their cfg_pp variants. Every other sampler is refused unless its noise is switched off."""

NOISE_OPTIONS = ("eta", "s_noise")
"""Sampler options that, at 0, switch off the fresh noise of an ancestral or SDE sampler."""

CHURN_OPTION = "s_churn"
"""The option with which euler / heun / dpm_2 add noise (deterministic at its default 0)."""


def sampler_is_deterministic(sampler) -> bool:
    """Whether a SAMPLER is known to add no fresh noise (an allow-list: unknown samplers are not)."""
    if getattr(sampler, "deterministic", False):
        return True
    name = getattr(getattr(sampler, "sampler_function", None), "__name__", "")
    options = getattr(sampler, "extra_options", None) or {}
    if name in DETERMINISTIC_SAMPLER_FUNCTIONS:
        return options.get(CHURN_OPTION, 0.0) == 0
    return any(options.get(option) == 0 for option in NOISE_OPTIONS)


def sampler_name(sampler) -> str:
    """A SAMPLER's name as a user knows it (``euler_ancestral`` for ``sample_euler_ancestral``)."""
    function = getattr(sampler, "sampler_function", None)
    return _user_name(getattr(function, "__name__", type(sampler).__name__))


def _user_name(function_name: str) -> str:
    """KSamplerSelect's name for a sampler function (``dpm_fast`` for ``dpm_fast_function``)."""
    return function_name.removeprefix("sample_").removesuffix("_function")


DDIM_SAMPLER = "ddim"


def deterministic_sampler_names() -> list[str]:
    """KSamplerSelect's names of the stock samplers on the allow-list: ddim first, then in ComfyUI's order."""
    names = [name for name in comfy.samplers.SAMPLER_NAMES if sampler_is_deterministic(comfy.samplers.sampler_object(name))]
    return sorted(names, key=lambda name: name != DDIM_SAMPLER)


def check_deterministic_sampler(sampler, what: str) -> None:
    """Refuse a SAMPLER that is not known to be deterministic (fail closed: a new sampler is refused too)."""
    if sampler_is_deterministic(sampler):
        return
    raise InvEditInputError(
        f"{what} replays an inversion deterministically, but the sampler {sampler_name(sampler)!r} adds fresh random "
        "noise at every step (or is not known to InvEdit as deterministic), so the result would leave the inverted "
        f"path. Pick a deterministic sampler in KSamplerSelect ({', '.join(deterministic_sampler_names())}), an "
        "ancestral or SDE sampler with eta 0, or InvEdit Replay Sampler."
    )


def check_no_added_noise(noise: torch.Tensor, denoise_mask, what: str) -> None:
    """Refuse added noise or an inpainting mask for one of the pack's deterministic samplers."""
    if noise is not None and bool(torch.count_nonzero(noise) > 0):
        raise InvEditInputError(
            f"{what} is deterministic and must start from the latent as it is: set add_noise to "
            "disable, or connect a Disable Noise node to SamplerCustomAdvanced's noise input."
        )
    if denoise_mask is not None:
        raise InvEditInputError(
            f"{what} cannot use a latent noise mask; remove Set Latent Noise Mask from the graph."
        )


def check_finite(result: torch.Tensor, what: str) -> torch.Tensor:
    """Refuse a NaN/inf result instead of passing on a black image."""
    if not bool(torch.isfinite(result).all()):
        raise InvEditInputError(
            f"{what} produced NaN or infinite values. This usually means the model overflows in "
            "float16: run it in float32 (start ComfyUI with --force-fp32 or --fp32-unet) or bfloat16 "
            "(--bf16-unet), or check the model and prompt."
        )
    return result
