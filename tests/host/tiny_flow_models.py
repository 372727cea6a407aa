"""Tiny real ComfyUI rectified-flow models (Flux, SD3.5 MMDiT-X, Qwen-Image, Chroma), built in process.

Each model is ComfyUI's own model class (``comfy.model_base.Flux`` / ``SD3`` / ``QwenImage`` /
``Chroma`` holding ``comfy.ldm``'s transformer of that family) from ComfyUI's own model config
(``comfy.supported_models.Flux`` / ``FluxSchnell`` / ``SD3`` / ``QwenImage`` / ``Chroma``) with a
narrow, shallow network, wrapped in a ``ModelPatcher`` with CPU devices. So the latent format
(Qwen-Image: 5-D ``[B, 16, 1, H, W]``), the model sampling (CONST with ModelSamplingFlux or the
shifted discrete flow schedule), the conditioning each model reads (the text context at the real
width, pooled ``y`` for Flux and SD3, Flux dev's distilled ``guidance``) and ComfyUI's sampling are
exactly the big models'.

comfy ops skip weight initialisation (and RMSNorm scales and MMDiT's ``pos_embed`` start as
``torch.empty``), so every parameter and that buffer are set here from a seeded generator, in a fixed
order. Random weights give a rough velocity field; its output is scaled to :data:`VELOCITY_STD`
(measured on an example input), a smooth field whose Euler inversion round-trips at guidance 1
to a few hundredths of the latent's std at 28 steps (the tests' bounds are measured, each with a
negative control that fails it).

Import only after the host conftest has booted ComfyUI.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

import comfy.model_patcher
import comfy.supported_models
from tiny_models import SnapshotCache

FLUX_DEV = "flux_dev"
FLUX_SCHNELL = "flux_schnell"
SD35 = "sd35"
QWEN_IMAGE = "qwen_image"
CHROMA = "chroma"
FAMILIES = (FLUX_DEV, FLUX_SCHNELL, SD35, QWEN_IMAGE, CHROMA)

LATENT_CHANNELS = 16
T5_WIDTH = 4096  # Flux, SD3 and Chroma read T5-XXL contexts (SD3's CLIP-L/G are padded to this width)
QWEN_TEXT_WIDTH = 3584  # Qwen2.5-VL 7B hidden size
FLUX_POOLED_WIDTH = 768  # CLIP-L pooled output
SD3_POOLED_WIDTH = 2048  # CLIP-L + CLIP-G pooled outputs
TINY_HIDDEN = 64
TINY_HEADS = 2
TINY_ROPE_AXES = [8, 12, 12]  # sums to the head width 32, as Flux's [16, 56, 56] sums to 128
MMDIT_DEPTH = 2  # MMDiT's width is 64 * depth with depth heads: 128 wide, 2 heads of 64
MMDIT_POS_EMBED_SIDE = 16  # patches per side the position table covers (latents up to 32x32)

VELOCITY_STD = 0.5
"""Standard deviation of the raw network output (the velocity) on the calibration input."""

_FLUX_NETWORK = {
    "image_model": "flux", "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS,
    "vec_in_dim": FLUX_POOLED_WIDTH, "context_in_dim": T5_WIDTH, "hidden_size": TINY_HIDDEN, "mlp_ratio": 4.0,
    "num_heads": TINY_HEADS, "depth": 1, "depth_single_blocks": 1, "axes_dim": TINY_ROPE_AXES, "theta": 10000,
    "patch_size": 2, "qkv_bias": True,
}


class TinyFluxDev(comfy.supported_models.Flux):
    """Flux dev's config (guidance embedding, ModelSamplingFlux) with a 1 + 1 block, 64-wide network."""

    unet_config = {**_FLUX_NETWORK, "guidance_embed": True}


class TinyFluxSchnell(comfy.supported_models.FluxSchnell):
    """Flux schnell's config (no guidance embedding, discrete flow schedule, shift 1) with the same tiny network."""

    unet_config = {**_FLUX_NETWORK, "guidance_embed": False}


class TinySD35(comfy.supported_models.SD3):
    """SD3.5 Medium's layout (MMDiT-X: an extra image self-attention in the first block, RMS q/k norm)."""

    unet_config = {
        "in_channels": LATENT_CHANNELS, "out_channels": LATENT_CHANNELS, "patch_size": 2, "depth": MMDIT_DEPTH,
        "input_size": None, "adm_in_channels": SD3_POOLED_WIDTH,
        "context_embedder_config": {"target": "torch.nn.Linear",
                                    "params": {"in_features": T5_WIDTH, "out_features": 64 * MMDIT_DEPTH}},
        "num_patches": MMDIT_POS_EMBED_SIDE ** 2, "pos_embed_max_size": MMDIT_POS_EMBED_SIDE, "qk_norm": "rms",
        "pos_embed_scaling_factor": None, "x_block_self_attn_layers": [0],
    }


class TinyQwenImage(comfy.supported_models.QwenImage):
    """Qwen-Image's config (Wan 2.1 latents, 5-D) with one 64-wide transformer block."""

    unet_config = {
        "image_model": "qwen_image", "in_channels": LATENT_CHANNELS * 4, "out_channels": LATENT_CHANNELS,
        "num_layers": 1, "attention_head_dim": TINY_HIDDEN // TINY_HEADS, "num_attention_heads": TINY_HEADS,
        "joint_attention_dim": QWEN_TEXT_WIDTH, "axes_dims_rope": TINY_ROPE_AXES,
    }


class TinyChroma(comfy.supported_models.Chroma):
    """Chroma's config (no pooled vector, a modulation approximator, real CFG) with a 1 + 1 block network."""

    unet_config = {
        "image_model": "chroma", "in_channels": LATENT_CHANNELS * 4, "out_channels": LATENT_CHANNELS * 4,
        "context_in_dim": T5_WIDTH, "hidden_size": TINY_HIDDEN, "mlp_ratio": 4.0, "num_heads": TINY_HEADS, "depth": 1,
        "depth_single_blocks": 1, "axes_dim": TINY_ROPE_AXES, "theta": 10000, "patch_size": 2, "qkv_bias": True,
        "in_dim": 64, "out_dim": TINY_HIDDEN, "hidden_dim": 2 * TINY_HIDDEN, "n_layers": 2,
    }


@dataclass(frozen=True)
class FamilySpec:
    """How to build and feed one tiny family."""

    config: type
    context_width: int
    pooled_width: int | None  # None: the family reads no pooled vector (its conditioning says None)
    output_layer: Callable[[torch.nn.Module], torch.nn.Module]  # the network's last linear layer


SPECS = {
    FLUX_DEV: FamilySpec(TinyFluxDev, T5_WIDTH, FLUX_POOLED_WIDTH, lambda net: net.final_layer.linear),
    FLUX_SCHNELL: FamilySpec(TinyFluxSchnell, T5_WIDTH, FLUX_POOLED_WIDTH, lambda net: net.final_layer.linear),
    SD35: FamilySpec(TinySD35, T5_WIDTH, SD3_POOLED_WIDTH, lambda net: net.final_layer.linear),
    QWEN_IMAGE: FamilySpec(TinyQwenImage, QWEN_TEXT_WIDTH, None, lambda net: net.proj_out),
    CHROMA: FamilySpec(TinyChroma, T5_WIDTH, None, lambda net: net.final_layer.linear),
}


def _spec(family: str) -> FamilySpec:
    if family not in SPECS:
        raise ValueError(f"unknown tiny flow family {family!r}; use one of {FAMILIES}")
    return SPECS[family]


def model_config(family: str, dtype: torch.dtype = torch.float32, manual_cast_dtype: torch.dtype | None = None):
    """ComfyUI's model config of ``family`` (tiny network), set to run in ``dtype``."""
    spec = _spec(family)
    config = spec.config(spec.config.unet_config)
    config.set_inference_dtype(dtype, manual_cast_dtype)
    return config


def init_parameters(network: torch.nn.Module, seed: int) -> None:
    """Set every parameter (and MMDiT's ``pos_embed`` buffer) from a generator seeded with ``seed``.

    Matrices: normal with std 1/sqrt(fan_in); norm scales (``norm``/``scale`` in the name): 1 + small
    noise; biases and other vectors: small noise; position table: small noise.
    """
    generator = torch.Generator().manual_seed(seed)
    tensors = dict(network.named_parameters())
    tensors.update({name: buffer for name, buffer in network.named_buffers() if name.endswith("pos_embed")})
    with torch.no_grad():
        for name, tensor in sorted(tensors.items()):
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float32)
            if name.endswith("pos_embed"):
                value = 0.02 * noise
            elif tensor.dim() >= 2:
                value = noise / math.sqrt(tensor[0].numel())
            elif "norm" in name and (name.endswith("weight") or name.endswith("scale")):
                value = 1.0 + 0.1 * noise
            else:
                value = 0.02 * noise
            tensor.copy_(value.to(tensor.dtype))


def _calibration_output(model, family: str, seed: int) -> torch.Tensor:
    """The raw network output on an example state, prompt and mid level."""
    generator = torch.Generator().manual_seed(seed + 1)
    x = model.latent_format.process_in(tiny_flow_latent(family, seed + 1)["samples"])
    noise = torch.randn(x.shape, generator=generator)
    sigma = torch.tensor([0.5])
    x_t = model.model_sampling.noise_scaling(sigma, noise, x)
    context, options = tiny_flow_conditioning(family, seed + 2)[0]
    kwargs = {"context": context}
    if options.get("pooled_output") is not None:
        kwargs["y"] = options["pooled_output"]
    if family in (FLUX_DEV, CHROMA):
        kwargs["guidance"] = torch.tensor([1.0])
    return model.diffusion_model(x_t, model.model_sampling.timestep(sigma).float(), **kwargs)


def build_tiny_flow_model(family: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A fresh tiny model of ``family`` with weights from ``seed``: ComfyUI's MODEL, float32, on the CPU."""
    with torch.inference_mode():
        model = model_config(family).get_model({}, device=torch.device("cpu"))
        init_parameters(model.diffusion_model, seed)
        output_layer = _spec(family).output_layer(model.diffusion_model)
        scale = VELOCITY_STD / _calibration_output(model, family, seed).std()
        output_layer.weight.mul_(scale)
        output_layer.bias.mul_(scale)
        model.eval()
    device = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


_CACHE = SnapshotCache(lambda family, seed: build_tiny_flow_model(family, seed))


def cached_tiny_flow_model(family: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """The shared tiny model of ``family`` and ``seed`` (built once per session; clone before patching)."""
    return _CACHE.get(family, seed)


def evict_changed_cached_models() -> list[str]:
    """Drop every cached flow model that changed since it was built; say what changed in each."""
    return _CACHE.evict_changed()


def tiny_flow_conditioning(family: str, seed: int = 0, tokens: int = 8) -> list:
    """Seeded random CONDITIONING as the family's text encoder gives it: ``[[context [1, tokens, width], options]]``.

    Options carry the pooled vector (Flux: CLIP-L 768, SD3: CLIP-L + G 2048) or ``pooled_output: None`` for the
    T5-only / Qwen encoders; Flux dev's distilled guidance is left to FluxGuidance (the model's default is 3.5).
    """
    spec = _spec(family)
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, tokens, spec.context_width, generator=generator)
    pooled = None if spec.pooled_width is None else torch.randn(1, spec.pooled_width, generator=generator)
    return [[context, {"pooled_output": pooled}]]


def tiny_flow_latent(family: str, seed: int = 0, batch: int = 1, height: int = 16, width: int = 16) -> dict:
    """Seeded smooth random LATENT in raw VAE units: unit std in the model's units, ``[B, 16, H, W]``
    (``[B, 16, 1, H, W]`` for Qwen-Image, as its VAE encodes an image)."""
    config = model_config(family)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, LATENT_CHANNELS, height, width, generator=generator)
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = ((kernel[:, None] * kernel[None, :]) / 16.0).expand(LATENT_CHANNELS, 1, 3, 3)
    smooth = torch.nn.functional.conv2d(torch.nn.functional.pad(noise, (1, 1, 1, 1), mode="replicate"), kernel,
                                        groups=LATENT_CHANNELS)
    smooth = (smooth - smooth.mean()) / smooth.std().clamp_min(1e-6)
    if config.latent_format.latent_dimensions == 3:
        smooth = smooth.unsqueeze(2)
    return {"samples": config.latent_format.process_out(smooth)}


# ---------------------------------------------------------------------------------------------
# Test-only graph nodes (V1 style, ids starting with InvEditTest), registered by the test modules
# that use them (:func:`register_test_nodes`).

FAMILY_INPUT = (list(FAMILIES), {"default": FLUX_DEV})
SEED_INPUT = ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})
TEST_CATEGORY = "InvEdit/testing"


class InvEditTestTinyFlowModel:
    """MODEL: a tiny flow model (cached per family and seed, shared by every graph)."""

    CATEGORY = TEST_CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": FAMILY_INPUT, "seed": SEED_INPUT}}

    def build(self, family, seed):
        return (cached_tiny_flow_model(family, seed),)


class InvEditTestFlowConditioning:
    """CONDITIONING: a seeded random prompt as the family's text encoder gives it."""

    CATEGORY = TEST_CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": FAMILY_INPUT, "seed": SEED_INPUT,
                             "tokens": ("INT", {"default": 8, "min": 1, "max": 512})}}

    def build(self, family, seed, tokens):
        return (tiny_flow_conditioning(family, seed, tokens),)


class InvEditTestFlowLatent:
    """LATENT: a seeded smooth random latent of the family's format, sizes in latent pixels."""

    CATEGORY = TEST_CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 16, "min": 1, "max": 64}
        return {"required": {"family": FAMILY_INPUT, "seed": SEED_INPUT,
                             "batch": ("INT", {"default": 1, "min": 1, "max": 16}),
                             "height": ("INT", size), "width": ("INT", size)}}

    def build(self, family, seed, batch, height, width):
        return (tiny_flow_latent(family, seed, batch, height, width),)


TEST_NODES = {cls.__name__: cls for cls in (InvEditTestTinyFlowModel, InvEditTestFlowConditioning, InvEditTestFlowLatent)}


def register_test_nodes(nodes_module) -> None:
    """Add the flow test nodes to ComfyUI's node mappings (idempotent)."""
    for node_id, cls in TEST_NODES.items():
        nodes_module.NODE_CLASS_MAPPINGS[node_id] = cls
        nodes_module.NODE_DISPLAY_NAME_MAPPINGS[node_id] = node_id
