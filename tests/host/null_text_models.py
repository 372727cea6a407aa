"""Models for the null-text tests and benchmark (benchmarks/null_text_cost.py).

* :func:`model_in`: a tiny or SD1.5-layout UNet with its weights stored and computed in a given
  dtype (float16, bfloat16), or as normal (non-inference) tensors for a plain-torch loop.
* :func:`weight_copying_clone`: the gradient mechanism issue 18 replaced (every weight through a
  copying weight wrapper, computed in float32), as a reference and a negative control.
* Flux-shaped models of seeded random weights: ComfyUI's own ``comfy.ldm.flux`` at reduced depth.
  A real ``comfy.model_base.Flux`` (rectified flow, 16-channel latents, T5-width text context,
pooled CLIP vector, distilled guidance input) built from ``comfy.supported_models.Flux`` with a
smaller ``unet_config``: :data:`FLUX_SHAPED` keeps Flux's full width (3072, 24 heads) with one
double-stream and one single-stream block (546M parameters) for benchmarks; :data:`TINY_FLUX` is
narrow enough for tests. comfy ops skip weight initialisation and ``RMSNorm.scale`` is
``torch.empty``, so every parameter is set here from a seeded generator.

This module imports ComfyUI: import it only after ComfyUI has been booted.
"""

from __future__ import annotations

import torch

import comfy.model_base
import comfy.model_patcher
import comfy.supported_models
from tiny_models import _init_parameters, build_tiny_model

FLUX_CONTEXT_DIM = 4096  # T5-XXL
FLUX_POOLED_DIM = 768  # CLIP-L pooled output
FLUX_LATENT_CHANNELS = 16
FLUX_GUIDANCE = 3.5  # ComfyUI's FluxGuidance default
NORM_SCALE_NOISE = 0.1

_FLUX_COMMON = {
    "image_model": "flux", "in_channels": FLUX_LATENT_CHANNELS, "out_channels": FLUX_LATENT_CHANNELS,
    "patch_size": 2, "vec_in_dim": FLUX_POOLED_DIM, "context_in_dim": FLUX_CONTEXT_DIM, "mlp_ratio": 4.0,
    "theta": 10000, "qkv_bias": True, "guidance_embed": False,
}
"""Flux's layout without the guidance embedding: a Flux with real classifier-free guidance (as the flow test-bed,
Chroma's blocks), since null-text refuses guidance-distilled models (they have no unconditional branch)."""
FLUX_SHAPED = {**_FLUX_COMMON, "hidden_size": 3072, "num_heads": 24, "axes_dim": [16, 56, 56], "depth": 1,
               "depth_single_blocks": 1}
"""Flux-dev's width and heads, 1 double + 1 single block (of 19 + 38): about 536M parameters (Flux dev's 546M
less its 10M-parameter guidance embedding)."""

TINY_FLUX = {**_FLUX_COMMON, "hidden_size": 64, "num_heads": 2, "axes_dim": [8, 12, 12], "depth": 1,
             "depth_single_blocks": 1}
"""A narrow Flux for tests (head width 32 = 8 + 12 + 12 rotary dimensions)."""


def build_flux(unet_config: dict, dtype: torch.dtype = torch.float32, seed: int = 0,
               inference: bool = True) -> comfy.model_patcher.ModelPatcher:
    """A Flux-architecture MODEL with seeded weights stored and computed in ``dtype``, on the CPU.

    With ``inference`` (as ComfyUI's loaders build them) the weights are inference tensors;
    without it they are normal tensors that do not require gradients (a plain-torch model).
    """
    return _seeded_model(comfy.supported_models.Flux(dict(unet_config)), comfy.model_base.Flux, dtype, seed,
                         inference, _norm_scales_near_one)


def _norm_scales_near_one(network: torch.nn.Module, seed: int) -> None:
    """RMSNorm scales (``torch.empty`` in comfy ops) around 1, as trained ones are."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(network.named_parameters(), key=lambda item: item[0]):
            if name.endswith(".scale"):
                parameter.copy_(1.0 + NORM_SCALE_NOISE * torch.randn(parameter.shape, generator=generator))


def _seeded_model(model_config, model_class, dtype: torch.dtype, seed: int, inference: bool,
                  shape_weights=None) -> comfy.model_patcher.ModelPatcher:
    """``model_class(model_config)`` in ``dtype`` on the CPU, every parameter seeded, frozen, as a MODEL."""
    model_config.set_inference_dtype(dtype, None)
    cpu = torch.device("cpu")
    with torch.inference_mode(inference):
        model = model_class(model_config, device=cpu)
        _init_parameters(model.diffusion_model, seed)
        if shape_weights is not None:
            shape_weights(model.diffusion_model, seed)
    model.eval()
    model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def flux_conditioning(tokens: int, seed: int = 0) -> list:
    """Seeded CONDITIONING as Flux's text encoder gives it: T5 context, pooled CLIP, guidance."""
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, tokens, FLUX_CONTEXT_DIM, generator=generator)
    pooled = torch.randn(1, FLUX_POOLED_DIM, generator=generator)
    return [[context, {"pooled_output": pooled, "guidance": FLUX_GUIDANCE}]]


def flux_latent(side: int, seed: int = 0) -> dict:
    """Seeded LATENT ``{"samples": [1, 16, side, side]}`` in raw VAE units."""
    generator = torch.Generator().manual_seed(seed)
    return {"samples": torch.randn(1, FLUX_LATENT_CHANNELS, side, side, generator=generator)}


def sd15_layout(unet_config: dict, dtype: torch.dtype = torch.float32, seed: int = 0,
                inference: bool = True) -> comfy.model_patcher.ModelPatcher:
    """An SD1.x MODEL (ComfyUI's SD15 config, eps) of ``unet_config`` with seeded weights in ``dtype``, on the CPU.

    ``inference`` as in :func:`build_flux`.
    """
    return _seeded_model(comfy.supported_models.SD15(dict(unet_config)), comfy.model_base.BaseModel, dtype, seed,
                         inference)


def model_in(dtype: torch.dtype, source=None, inference: bool = True) -> comfy.model_patcher.ModelPatcher:
    """The tiny SD1.x model (or ``source``, a MODEL of the same layout) with its weights in ``dtype``.

    Stored and computed in ``dtype``. Without ``inference`` the weights are normal tensors that
    do not require gradients.
    """
    source = source or build_tiny_model("sd15", 0)
    config = type(source.model.model_config)(dict(source.model.model_config.unet_config))
    config.set_inference_dtype(dtype, None)
    cpu = torch.device("cpu")
    with torch.inference_mode(inference):
        model = comfy.model_base.BaseModel(config, model_type=source.model.model_type, device=cpu)
        model.diffusion_model.load_state_dict(source.model.diffusion_model.state_dict())
    model.eval()
    model.requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


def _weight_copy(weight: torch.Tensor) -> torch.Tensor:
    return weight.detach().clone() if weight.is_inference() else weight.detach()


def weight_copying_clone(model) -> comfy.model_patcher.ModelPatcher:
    """The mechanism issue 18 replaced: every weight and bias through a weight wrapper that copies
    it (autograd may save a copy), computed in float32. ComfyUI then copies every weight on every
    forward pass and autograd keeps the copies until the backward pass."""
    clone = model.clone()
    for name, module in clone.model.named_modules():
        if hasattr(module, "weight_function"):
            for attribute in ("weight", "bias"):
                if getattr(module, attribute, None) is not None:
                    clone.add_weight_wrapper(f"{name}.{attribute}", _weight_copy)
    clone.set_model_compute_dtype(torch.float32)
    return clone
