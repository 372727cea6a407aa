"""What a MODEL is, read through ComfyUI's public objects: its family, prediction, levels and latent.

The pack's loops never branch on the model family; they take the family's rule
(:mod:`..inversion.process`), which :func:`diffusion_process` picks from the model's own
``model_sampling`` object, exactly as ComfyUI's samplers do.
"""

from __future__ import annotations

import torch

import comfy.ldm.modules.diffusionmodules.openaimodel as comfy_unet
import comfy.model_sampling
import comfy.supported_models

from ..inversion import PREDICTION_EPS, PREDICTION_V, PREDICTION_VELOCITY
from ..inversion.process import DDPM, RECTIFIED_FLOW, DiffusionProcess
from .errors import InvEditInputError

LATENT_PIXEL_RATIO = 8
"""Image pixels per latent pixel of the SD1.x / SD2.x / SDXL VAEs (for messages)."""

def model_sampling(model):
    """The ``model_sampling`` object of a MODEL (ModelPatcher), patches included."""
    return model.get_model_object("model_sampling")


def is_flow_model(model) -> bool:
    """Whether a MODEL samples as rectified flow (ComfyUI's CONST model sampling)."""
    return isinstance(model_sampling(model), comfy.model_sampling.CONST)


def diffusion_process(model) -> DiffusionProcess:
    """The forward-process rule of a MODEL; a clear error for a family the pack cannot invert."""
    if is_flow_model(model):
        return RECTIFIED_FLOW
    prediction_type(model)  # raises for EDM and the other continuous families
    return DDPM


def prediction_type(model) -> str:
    """``"eps"`` or ``"v"`` for a discrete-schedule (DDPM-family) model; a clear error for anything else."""
    sampling = model_sampling(model)
    if not isinstance(sampling, comfy.model_sampling.ModelSamplingDiscrete):
        raise InvEditInputError(
            f"InvEdit inverts models with a discrete DDPM schedule (SD1.x, SD2.x, SDXL) or rectified-flow "
            f"models (SD3, Flux, Chroma, Qwen-Image, HiDream, Lumina 2); this model samples with "
            f"{type(sampling).__name__}, a continuous EDM-style schedule it cannot invert. If you patched the "
            "model with a ModelSampling node, keep eps, v_prediction or a flow setting."
        )
    if isinstance(sampling, comfy.model_sampling.V_PREDICTION):
        return PREDICTION_V
    if isinstance(sampling, comfy.model_sampling.EPS) and not isinstance(
        sampling, (comfy.model_sampling.EDM, comfy.model_sampling.CONST)
    ):
        return PREDICTION_EPS
    raise InvEditInputError(
        f"Unsupported prediction type {type(sampling).__name__}: InvEdit inverts eps- and "
        "v-prediction UNets and rectified-flow models. Remove ModelSampling patches that switch to EDM."
    )


def prediction_name(model) -> str:
    """What the model predicts, for records and fingerprints: ``"eps"``, ``"v"`` or ``"velocity"``."""
    return PREDICTION_VELOCITY if is_flow_model(model) else prediction_type(model)


def has_guidance_embedding(model) -> bool:
    """Whether a MODEL is guidance-distilled: it reads a ``guidance`` value through an embedding (Flux dev,
    Krea, Kontext), instead of (or besides) classifier-free guidance."""
    return bool(getattr(model.model.model_config, "unet_config", {}).get("guidance_embed", False))


DISTILLED_GUIDANCE = "guidance-distilled"
"""A model trained to imitate classifier-free guidance from a guidance value it reads (Flux dev, Krea, Kontext)."""

DISTILLED_TIMESTEPS = "timestep-distilled"
"""A few-step model sampled at cfg 1, trained without an unconditional branch (Flux schnell)."""


def guidance_distillation(model) -> str | None:
    """How a MODEL was distilled away from classifier-free guidance, or None for a model with real CFG.

    ``"guidance-distilled"``: it has a guidance embedding (:func:`has_guidance_embedding`).
    ``"timestep-distilled"``: ComfyUI's Flux schnell config (no guidance embedding, but no trained
    unconditional branch either). Distilled checkpoints that share a real-CFG model's config (SD3.5
    Large Turbo) cannot be told apart here and count as real CFG.
    """
    if has_guidance_embedding(model):
        return DISTILLED_GUIDANCE
    if isinstance(model.model.model_config, comfy.supported_models.FluxSchnell):
        return DISTILLED_TIMESTEPS
    return None


SCHEDULER_DDIM = "ddim_uniform"
SCHEDULER_DISCRETE_FLOW = "normal"
SCHEDULER_FLUX_FLOW = "simple"


def default_scheduler(model) -> str:
    """The ComfyUI scheduler whose sigmas are the reference ones for this model's family.

    DDPM-family UNets: ``ddim_uniform``, the DDIM timesteps (981, 961, ..., 1 for 50 steps). Rectified
    flow with a discrete shifted schedule (SD3 / SD3.5, Flux schnell, HiDream, Lumina 2): ``normal``,
    diffusers' FlowMatchEulerDiscreteScheduler sigmas to float rounding. Flux-type sampling (Flux dev,
    Chroma, Qwen-Image, with ModelSamplingFlux's resolution shift): ``simple``, FluxPipeline's sigmas
    within ComfyUI's 10000-level table (exact when the steps divide 10000).
    """
    if not is_flow_model(model):
        return SCHEDULER_DDIM
    if isinstance(model_sampling(model), comfy.model_sampling.ModelSamplingFlux):
        return SCHEDULER_FLUX_FLOW
    return SCHEDULER_DISCRETE_FLOW


def lowest_sigma(model) -> float:
    """The model's lowest noise level (its sigma at timestep 0)."""
    return float(model_sampling(model).sigma_min)


def latent_channels(model) -> int:
    """Channels of the latents ``model`` works on (4 for SD1.x/SDXL, 16 for SD3 / Flux)."""
    return model.get_model_object("latent_format").latent_channels


def context_width(model) -> int | None:
    """Width of the text context the model reads (its config's name for it differs by family), or None."""
    config = getattr(model.model.model_config, "unet_config", {})
    for key in ("context_dim", "context_in_dim", "joint_attention_dim"):  # UNets; Flux / Chroma; Qwen-Image
        if config.get(key) is not None:
            return int(config[key])
    embedder = config.get("context_embedder_config") or {}  # SD3's MMDiT
    return embedder.get("params", {}).get("in_features")


def latent_has_frames(model) -> bool:
    """Whether ``model``'s latents are 5-D ``[B, C, T, H, W]`` (Qwen-Image's Wan 2.1 format; video models)."""
    return model.get_model_object("latent_format").latent_dimensions == 3


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
