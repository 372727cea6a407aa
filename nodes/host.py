"""The few places where InvEdit touches ComfyUI internals.

Everything here unpacks a ComfyUI value (MODEL, LATENT, sampler arguments) into plain
tensors and settings for the pure-torch library, or wraps a library function as a
ComfyUI sampler. No maths lives here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Callable, Optional

import torch

import comfy.ldm.modules.diffusionmodules.openaimodel as comfy_unet
import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import comfy.utils
import latent_preview

from ..inversion import PREDICTION_EPS, PREDICTION_V, InversionConfig, SourcePin, invert, replay


class InvEditInputError(ValueError):
    """A user-facing error: the message says what to change in the graph."""


def prediction_type(model) -> str:
    """``"eps"`` or ``"v"`` for a discrete-schedule model; a clear error for anything else.

    ``model`` is a ComfyUI MODEL (ModelPatcher).
    """
    sampling = model.get_model_object("model_sampling")
    if not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete):
        raise InvEditInputError(
            f"InvEdit's DDIM inversion needs a model with a discrete DDPM schedule (SD1.x, SD2.x, "
            f"SDXL); this model samples with {type(sampling).__name__}. Flow-matching models "
            "(SD3, Flux) and continuous EDM models cannot be inverted this way. If you patched "
            "the model with ModelSamplingDiscrete, keep eps or v_prediction."
        )
    if isinstance(sampling, comfy.model_sampling.V_PREDICTION):
        return PREDICTION_V
    if isinstance(sampling, comfy.model_sampling.EPS) and not isinstance(
        sampling, (comfy.model_sampling.EDM, comfy.model_sampling.CONST)
    ):
        return PREDICTION_EPS
    raise InvEditInputError(
        f"Unsupported prediction type {type(sampling).__name__}: InvEdit inverts eps- and "
        "v-prediction models. Remove ModelSampling patches that switch to EDM or flow."
    )


def lowest_sigma(model) -> float:
    """The model's lowest noise level (its sigma at timestep 0)."""
    return float(model.get_model_object("model_sampling").sigma_min)


LATENT_PIXEL_RATIO = 8
"""Image pixels per latent pixel of the SD1.x / SD2.x / SDXL VAEs (for messages)."""

FINGERPRINT_SAMPLE = 64
"""Values read from each end of every weight tensor for the model fingerprint."""


def _tensor_sample(tensor: torch.Tensor) -> bytes:
    """Bytes of the first and last values of a tensor (cheap identity, any device)."""
    flat = tensor.detach().reshape(-1)
    ends = torch.cat([flat[:FINGERPRINT_SAMPLE], flat[-FINGERPRINT_SAMPLE:]]).to("cpu", torch.float32)
    return f"{tensor.dtype}|{tuple(tensor.shape)}|".encode() + ends.numpy().tobytes()


def _patch_tensors(value: Any) -> list[torch.Tensor]:
    """Tensors inside a ModelPatcher weight patch (LoRA adapters, tuples), in a stable order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _patch_tensors(item)]
    weights = getattr(value, "weights", None)
    return _patch_tensors(weights) if weights is not None else []


def architecture_fingerprint(model) -> str:
    """Hex digest of a MODEL's class, UNet configuration, prediction type and noise schedule."""
    base = model.model
    sampling = model.get_model_object("model_sampling")
    architecture = hashlib.sha256(json.dumps(
        [type(base).__name__, getattr(base.model_config, "unet_config", {}), prediction_type(model)],
        sort_keys=True, default=str).encode())
    architecture.update(sampling.sigmas.detach().to("cpu", torch.float32).numpy().tobytes())
    return architecture.hexdigest()


def model_fingerprint(model) -> dict[str, str]:
    """Identity of a MODEL, cheap to compute: what a saved inversion is checked against.

    Returns ``{"architecture", "weights", "patches"}`` hex digests: the model class, its UNet
    config and noise schedule; a sample of every base weight tensor (unpatched: weights a loaded
    patcher changed in place are read from its backup); the weight patches (LoRA) with their
    strengths. Model patches that only change sampling options are not included.
    """
    base = model.model
    weights = hashlib.sha256()
    for key, tensor in sorted(base.state_dict().items()):
        if key in model.backup:  # patched in place while loaded: the original is kept here
            tensor = model.backup[key].weight
        if tensor.numel() > 0:
            weights.update(key.encode() + _tensor_sample(tensor))
    patches = hashlib.sha256()
    for key in sorted(model.patches):
        for entry in model.patches[key]:
            strength_patch, value, strength_model = entry[0], entry[1], entry[2]
            patches.update(f"{key}|{strength_patch}|{strength_model}|".encode())
            for tensor in _patch_tensors(value):
                patches.update(_tensor_sample(tensor))
    return {"architecture": architecture_fingerprint(model), "weights": weights.hexdigest(),
            "patches": patches.hexdigest()}


def latent_channels(model) -> int:
    """Channels of the latents ``model`` works on (4 for SD1.x/SDXL)."""
    return model.get_model_object("latent_format").latent_channels


def smallest_latent_side(model) -> tuple[int, int]:
    """``(shrink, side)``: how much the model's UNet shrinks a latent, and the smallest latent side it takes.

    ``shrink`` is 2 per Downsample of the UNet (1 for models without input blocks); the smallest
    side puts one pixel at the deepest level, or two where a GroupNorm has one channel per group
    (one value per group cannot be normalised).
    """
    unet = model.get_model_object("diffusion_model")
    blocks = getattr(unet, "input_blocks", None)
    if blocks is None:
        return 1, 1
    shrink = 2 ** sum(isinstance(module, comfy_unet.Downsample) for module in blocks.modules())
    single_channel_groups = any(isinstance(module, torch.nn.GroupNorm) and module.num_channels == module.num_groups
                                for module in unet.modules())
    return shrink, shrink * (2 if single_channel_groups else 1)


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


def check_latent(model, latent: dict) -> torch.Tensor:
    """Return ``latent["samples"]`` after checking it fits ``model``; never modifies it."""
    samples = latent.get("samples")
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        raise InvEditInputError(
            "The LATENT must hold a 4-D 'samples' tensor [batch, channels, height, width]: "
            "connect a VAE Encode output (video latents are not supported)."
        )
    check_latent_shape(model, samples.shape)
    if latent.get("noise_mask") is not None:
        raise InvEditInputError(
            "The LATENT carries a noise mask (from Set Latent Noise Mask / inpainting). Inversion "
            "works on the whole latent: remove the mask before inverting."
        )
    if not bool(torch.isfinite(samples).all()):
        raise InvEditInputError("The latent contains NaN or infinite values: check the VAE Encode input.")
    return samples


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
    check_inversion_fits(model, record.trajectory.noise)
    recorded = (record.settings or {}).get("model_fingerprint")
    if isinstance(recorded, dict) and recorded.get("architecture") not in (None, architecture_fingerprint(model)):
        raise InvEditInputError(
            "This inversion was made with a model of another architecture (another model family, UNet "
            "configuration, prediction type or noise schedule, e.g. an SD1.x inversion on an SDXL model). "
            "Sample it with the model the image was inverted with, or invert the image again with this model."
        )


def check_conditioning(model, conditioning, what: str) -> None:
    """Refuse an empty CONDITIONING, or one whose text context has another width than the model takes."""
    if not isinstance(conditioning, list) or not conditioning:
        raise InvEditInputError(
            f"The {what} CONDITIONING is empty (no prompt in it): connect a CLIP Text Encode output "
            "(an empty text is fine)."
        )
    width = getattr(model.model.model_config, "unet_config", {}).get("context_dim")
    for entry in conditioning:
        context = entry[0] if isinstance(entry, (list, tuple)) and entry else None
        if width is not None and isinstance(context, torch.Tensor) and context.ndim == 3 and context.shape[-1] != width:
            raise InvEditInputError(
                f"The {what} prompt was encoded by a text encoder of another model family (context width "
                f"{context.shape[-1]}; this model takes {width}): encode it with the CLIP of this model's "
                "checkpoint."
            )


STOCHASTIC_SAMPLER_MARKERS = ("ancestral", "sde", "ddpm", "lcm", "seeds_", "sa_solver", "restart")
"""Parts of the names of ComfyUI's sampler functions that add fresh noise at every step."""


def check_deterministic_sampler(sampler, what: str) -> None:
    """Refuse a SAMPLER that adds noise at every step (ancestral, SDE, DDPM, LCM) unless its eta or s_noise is 0."""
    name = getattr(getattr(sampler, "sampler_function", None), "__name__", "")
    options = getattr(sampler, "extra_options", None) or {}
    quiet = options.get("eta", 1.0) == 0 or options.get("s_noise", 1.0) == 0
    if any(marker in name for marker in STOCHASTIC_SAMPLER_MARKERS) and not quiet:
        shown = name.removeprefix("sample_")
        raise InvEditInputError(
            f"{what} replays an inversion deterministically, but the sampler {shown!r} adds fresh random noise "
            "at every step, so the result would leave the inverted path. Pick a deterministic sampler in "
            "KSamplerSelect (ddim, euler, dpmpp_2m) or use InvEdit Replay Sampler."
        )


def schedule(model, scheduler: str, steps: int) -> torch.Tensor:
    """ComfyUI's own descending sigmas for ``scheduler`` and ``steps`` (as KSampler makes them)."""
    if scheduler not in comfy.samplers.SCHEDULER_NAMES:
        raise InvEditInputError(f"Unknown scheduler {scheduler!r}; pick one of {comfy.samplers.SCHEDULER_NAMES}.")
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), scheduler, steps)
    return sigmas.cpu().float()


def check_deterministic_start(model_k, extra_args: dict, what: str) -> None:
    """Refuse added noise or an inpainting mask inside a deterministic InvEdit sampler.

    ``model_k`` is the KSamplerX0Inpaint wrapper ComfyUI passes to a KSAMPLER function.
    """
    noise = getattr(model_k, "noise", None)
    if noise is not None and bool(torch.count_nonzero(noise) > 0):
        raise InvEditInputError(
            f"{what} is deterministic and must start from the latent as it is: set add_noise to "
            "disable, or connect a Disable Noise node to SamplerCustomAdvanced's noise input."
        )
    if extra_args.get("denoise_mask") is not None:
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


def step_callback(callback: Optional[Callable[[dict], None]]) -> Callable[[dict], None]:
    """Wrap a k-diffusion style callback so every step also honours ComfyUI's interrupt."""

    def on_step(info: dict) -> None:
        comfy.model_management.throw_exception_if_processing_interrupted()
        if callback is not None:
            callback(info)

    return on_step


def bound_denoiser(model_k, extra_args: dict) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``(x, sigma) -> x0`` from the wrapped guider ComfyUI passes to a KSAMPLER function."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return model_k(x, sigma, **extra_args)

    return denoise


def sample_inversion(model, x, sigmas, extra_args=None, callback=None, disable=None,
                     config: InversionConfig = InversionConfig(), trajectory_sink: Optional[list] = None):
    """KSAMPLER function: DDIM inversion of ``x`` along ``sigmas`` (ascending or descending).

    Returns the inverted noise ``[B,C,H,W]``; when ``trajectory_sink`` is a list, the
    :class:`InversionTrajectory` is appended to it.
    """
    extra_args = {} if extra_args is None else extra_args
    check_deterministic_start(model, extra_args, "The InvEdit inversion sampler")
    trajectory = invert(bound_denoiser(model, extra_args), sigmas, x, config, step_callback(callback))
    check_finite(trajectory.noise, "The inversion")
    if trajectory_sink is not None:
        trajectory_sink.append(trajectory)
    return trajectory.noise


def sample_replay(model, x, sigmas, extra_args=None, callback=None, disable=None, pin: Optional[SourcePin] = None):
    """KSAMPLER function: deterministic DDIM (eta 0) down ``sigmas``, exact inverse of the inversion.

    Ends at the schedule's last level (0, or the model's lowest level when the inversion
    started there) and returns the clean latent. ``pin`` keeps source rows on a recorded
    trajectory (direct inversion).
    """
    extra_args = {} if extra_args is None else extra_args
    check_deterministic_start(model, extra_args, "The InvEdit replay sampler")
    return check_finite(replay(bound_denoiser(model, extra_args), sigmas, x, step_callback(callback), pin),
                        "The replay")


def inversion_noise_latent(model, record) -> torch.Tensor:
    """An INVERSION's noise as raw VAE-latent ``samples`` for ``model`` (its latent family and architecture checked)."""
    check_inversion_model(model, record)
    return model.model.process_latent_out(record.trajectory.noise.clone())


def sample_with_guider(guider: comfy.samplers.CFGGuider, latent: torch.Tensor, sampler_function,
                       sigmas: torch.Tensor, extra_options: Optional[dict[str, Any]] = None,
                       preview: bool = True) -> torch.Tensor:
    """Run a pure sampler function through a ComfyUI guider (conds, patches, latent scaling, progress).

    ``latent`` is in raw VAE-latent units and so is the result; no noise is added. With
    ``preview`` False the caller reports progress itself.
    """
    sampler = comfy.samplers.KSAMPLER(sampler_function, extra_options=extra_options or {})
    steps = sigmas.numel() - 1
    callback = latent_preview.prepare_callback(guider.model_patcher, steps) if preview else None
    return guider.sample(torch.zeros_like(latent), latent, sampler, sigmas, callback=callback,
                         disable_pbar=not (preview and comfy.utils.PROGRESS_BAR_ENABLED), seed=0)


def run_sampler(model, positive, negative, cfg: float, latent: torch.Tensor, sampler_function,
                sigmas: torch.Tensor, extra_options: Optional[dict[str, Any]] = None,
                preview: bool = True) -> torch.Tensor:
    """:func:`sample_with_guider` with ComfyUI's plain CFGGuider over ``model``, the prompts and ``cfg``."""
    check_conditioning(model, positive, "positive")
    if cfg != 1.0:
        check_conditioning(model, negative, "negative")
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return sample_with_guider(guider, latent, sampler_function, sigmas, extra_options, preview)
