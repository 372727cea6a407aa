"""A small diffusers ``UNet2DConditionModel`` and the same network as a ComfyUI ``BaseModel``.

Used by the diffusers oracle test: both libraries run the SAME weights, so any difference
in an inversion trajectory comes from the schedulers, not from the networks.

The layout is SD1.x's, narrowed: 2 resolution levels (32, 64 channels), one resnet per level,
a cross-attention transformer of depth 1 after every resnet (down, middle and up, as SD1.x's
attention levels), 2 heads per attention layer, a 64-wide text context, convolutional
``proj_in``/``proj_out`` (SD1.x's ``use_linear_projection=False``).

ComfyUI's model detection recognises only known checkpoint configs, so its ``unet_config``
is written out here to match, and keys are mapped with ``comfy.utils.unet_to_diffusers``.

This module imports ComfyUI lazily (inside functions): configure ComfyUI (``args.cpu``)
before calling :func:`build_comfy_model`.
"""

from __future__ import annotations

import importlib.machinery
import math
import sys
import types

import torch

import tiny_models

LATENT_CHANNELS = 4
CONTEXT_DIM = 64
HEADS = 2
BLOCK_OUT_CHANNELS = (32, 64)

# diffusers side. ``attention_head_dim`` is, for UNet2DConditionModel, the NUMBER of heads
# (a historical misnomer kept by diffusers; SD1.x has 8): 2 heads of 16 / 32 channels.
DIFFUSERS_UNET_KWARGS = dict(
    sample_size=16,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=BLOCK_OUT_CHANNELS,
    layers_per_block=1,
    cross_attention_dim=CONTEXT_DIM,
    attention_head_dim=HEADS,
    norm_num_groups=32,
    use_linear_projection=False,
    flip_sin_to_cos=True,
    freq_shift=0,
)

# ComfyUI side: the same network as an LDM ``UNetModel`` config (SD1.x style).
COMFY_UNET_CONFIG = dict(
    tiny_models.SD15_UNET_CONFIG,
    image_size=16,
    model_channels=BLOCK_OUT_CHANNELS[0],
    channel_mult=[c // BLOCK_OUT_CHANNELS[0] for c in BLOCK_OUT_CHANNELS],
    context_dim=CONTEXT_DIM,
)
COMFY_UNET_EXTRA_CONFIG = {"num_heads": HEADS, "num_head_channels": -1}


def diffusers_unet_class():
    """``diffusers.UNet2DConditionModel``, importable even beside a broken torchaudio.

    diffusers imports transformers, which imports torchaudio at module level whenever the
    package is installed. A torchaudio built for another CUDA version than torch raises on
    import (seen with ComfyUI's requirements over a newer torch); the UNet needs no audio, so
    the broken package is hidden behind an empty module while diffusers loads, then unhidden.
    """
    try:
        import torchaudio  # noqa: F401
    except Exception:  # noqa: BLE001 - any failure of the audio package is irrelevant here
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = stub
        try:
            from diffusers import UNet2DConditionModel
        finally:
            del sys.modules["torchaudio"]
        return UNet2DConditionModel
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel


def build_diffusers_unet(seed: int = 0):
    """A seeded diffusers ``UNet2DConditionModel`` (float32, eval) with O(1), input-dependent output.

    Every parameter is drawn from a generator seeded with ``seed`` in name order: matrices and
    kernels normal with std 1/sqrt(fan_in), norm scales 1 + 0.1 N, other vectors 0.02 N. The
    output convolution is then rescaled so the raw output has std close to 1.
    """
    unet = diffusers_unet_class()(**DIFFUSERS_UNET_KWARGS)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(unet.named_parameters(), key=lambda item: item[0]):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            if param.dim() >= 2:
                value = noise / math.sqrt(param[0].numel())
            elif "norm" in name and name.endswith("weight"):
                value = 1.0 + 0.1 * noise
            else:
                value = 0.02 * noise
            param.copy_(value)
        probe = torch.Generator().manual_seed(seed + 1)
        sample = torch.randn(2, LATENT_CHANNELS, 16, 16, generator=probe)
        context = torch.randn(2, 8, CONTEXT_DIM, generator=probe)
        out = unet(sample, torch.tensor([100, 700]), encoder_hidden_states=context).sample
        scale = out.std().clamp_min(1e-6)
        unet.conv_out.weight.div_(scale)
        unet.conv_out.bias.div_(scale)
    return unet.eval()


def comfy_state_dict(diffusers_state_dict: dict) -> dict:
    """Map a diffusers UNet state dict onto ComfyUI ``UNetModel`` keys (no prefix).

    Raises ``KeyError`` naming any diffusers key the map does not cover, so a layout mismatch
    cannot pass silently.
    """
    import comfy.utils

    key_map = comfy.utils.unet_to_diffusers(COMFY_UNET_CONFIG)
    unmapped = sorted(k for k in diffusers_state_dict if k not in key_map)
    if unmapped:
        raise KeyError(f"diffusers keys with no ComfyUI counterpart: {unmapped}")
    return {key_map[k]: v for k, v in diffusers_state_dict.items()}


def build_comfy_model(diffusers_unet, v_prediction: bool):
    """The diffusers UNet's weights in a ComfyUI ``BaseModel`` (SD1.x config, float32, CPU).

    ``v_prediction`` selects ``ModelType.V_PREDICTION`` (else ``EPS``); ComfyUI's discrete
    SD1.x noise schedule is used either way. Weights are loaded with ``strict=True``.
    """
    import comfy.model_base
    import comfy.supported_models

    class OracleSD15(comfy.supported_models.SD15):
        unet_config = dict(COMFY_UNET_CONFIG)
        unet_extra_config = dict(COMFY_UNET_EXTRA_CONFIG)

    model_config = OracleSD15(OracleSD15.unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    model_type = comfy.model_base.ModelType.V_PREDICTION if v_prediction else comfy.model_base.ModelType.EPS
    model = comfy.model_base.BaseModel(model_config, model_type=model_type, device=torch.device("cpu"))
    state_dict = comfy_state_dict(diffusers_unet.state_dict())
    model.diffusion_model.load_state_dict(state_dict, strict=True)
    return model.eval()
