"""Tiny real ComfyUI models of the true architectures, built in process with seeded weights.

Each model is a real ``comfy.model_base.BaseModel`` (an ``SDXL`` for ``sdxl``) holding a real
``UNetModel`` of the same layout as the big one, only narrow and shallow, wrapped in a
``comfy.model_patcher.ModelPatcher`` with CPU load and offload devices. ComfyUI's own latent
format, discrete noise schedule and parameterisation (eps or v) are used, so sampling, conditioning
(``encode_adm`` for SDXL), attention patches and wrappers behave exactly as with a checkpoint.

comfy ops skip weight initialisation, so every parameter is set here from a seeded generator
(:func:`_init_parameters`). What the weights must give the tests: a denoiser whose DDIM inversion
round-trips at all (so a bound can be set), whose noise estimate changes along the inversion path
and with the timestep (so a wrong timestep rule or a shifted schedule fails that bound). Measured
alternatives that cannot do both (max |error| / std of the latent, 50 steps, when this was written):

- random weights alone, output scaled to a noise-sized eps: 50-step DDIM inversion misses its source
  by 13-20 latent standard deviations for any timestep rule (the map is chaotic), and at a small
  output (std 0.05) the simple and the reference rule miss by the same 0.18-0.24;
- the earlier "normalised input + 5 % random" eps models: the same eps at every state of a DDIM
  path, so the simple rule round-tripped exactly as well as the reference rule (0.026 both).

So eps models are shaped (:func:`_shape_eps_model`) as the noise estimate of a denoiser that takes
the input for noise, whose gain depends on the timestep, plus a random part:
- each latent channel is passed (+z and -z, so ``SiLU(n) - SiLU(-n) = n`` undoes the output
  SiLU) through the real layers (conv_in, the last output block's skip connection, the output
  GroupNorm/SiLU/conv) to the output;
- in the output GroupNorm (two channels per group: the UNets are 64 channels wide) each copy shares
  its group with a channel that the last output block's res block computes from the previous
  features and the time embedding, so the normalisation, hence the eps gain, changes with the
  timestep (the time embedding is amplified: :data:`TIME_EMBED_GAIN`);
- random parts of :data:`EPS_RANDOM_SHARE` of the passed-on latent are added by every layer (res
  blocks, self and cross attention, at every level), so eps also depends on the prompt.
v models: the best v prediction for unit-variance Gaussian data (zero) plus a random part of
standard deviation 0.1; the v parameterisation already makes their eps depend on the timestep.
The measured round trips, with the wrong rule beside them, are at :data:`ROUND_TRIP_BOUND`.
Models are built under ``torch.inference_mode()``, as ComfyUI's loader nodes build theirs inside
the executor: their weights are inference tensors, so code that needs gradients must cope.

This module imports ComfyUI: import it only after the host conftest has configured ComfyUI.
"""

from __future__ import annotations

import enum
import hashlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

import comfy.latent_formats
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.supported_models

ARCHS = ("sd15", "sd15_v", "sdxl")

# Sizes of the tiny networks. The layout (which levels have attention, how deep) follows the
# real models: SD1.x has attention on every level, SDXL none on its first level and deeper
# transformers further down.
SD15_CONTEXT_DIM = 64
SDXL_CONTEXT_DIM = 2048  # real SDXL width: conditioning shapes match CLIPTextEncode's
SDXL_POOLED_DIM = 1280  # pooled CLIP-G output; with 6 x 256 size embeddings gives adm 2816
SDXL_ADM_CHANNELS = 2816
LATENT_CHANNELS = 4
TINY_MODEL_CHANNELS = 64
"""Width of the tiny models' first level: two channels per GroupNorm group (ComfyUI's UNet has 32
groups), so the time embedding's per-channel shifts are not normalised away (see the module docstring)."""

SD15_UNET_CONFIG = {
    "image_size": 32,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "model_channels": 32,
    "channel_mult": [1, 2],
    "num_res_blocks": [1, 1],
    "transformer_depth": [1, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1],
    "context_dim": SD15_CONTEXT_DIM,
    "use_linear_in_transformer": False,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_checkpoint": False,
    "adm_in_channels": None,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}

_SDXL_UNET = {
    "image_size": 32,
    "in_channels": LATENT_CHANNELS,
    "out_channels": LATENT_CHANNELS,
    "model_channels": 32,
    "channel_mult": [1, 2, 2],
    "num_res_blocks": [1, 1, 1],
    "transformer_depth": [0, 1, 2],
    "transformer_depth_middle": 2,
    "transformer_depth_output": [0, 0, 1, 1, 2, 2],
    "context_dim": SDXL_CONTEXT_DIM,
    "use_linear_in_transformer": True,
    "use_spatial_transformer": True,
    "legacy": False,
    "use_checkpoint": False,
    "num_classes": "sequential",
    "adm_in_channels": SDXL_ADM_CHANNELS,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


class TinySD15(comfy.supported_models.SD15):
    """SD1.x model config with a tiny UNet (64 channels wide, 2 heads per attention layer)."""

    unet_config = {**SD15_UNET_CONFIG, "model_channels": TINY_MODEL_CHANNELS}
    unet_extra_config = {"num_heads": 2, "num_head_channels": -1}


class TinySDXL(comfy.supported_models.SDXL):
    """SDXL model config with a tiny UNet (64 channels wide, 16 channels per head, as SDXL's 64 scaled down)."""

    unet_config = {**_SDXL_UNET, "model_channels": TINY_MODEL_CHANNELS}
    unet_extra_config = {"num_heads": -1, "num_head_channels": 16}


def context_dim(arch: str) -> int:
    """Width of the cross-attention context (text embedding) the tiny model of ``arch`` takes."""
    _check_arch(arch)
    return SDXL_CONTEXT_DIM if arch == "sdxl" else SD15_CONTEXT_DIM


def latent_format(arch: str) -> comfy.latent_formats.LatentFormat:
    """ComfyUI latent format (scale factor, channels) of ``arch``."""
    _check_arch(arch)
    return comfy.latent_formats.SDXL() if arch == "sdxl" else comfy.latent_formats.SD15()


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny model arch {arch!r}; use one of {ARCHS}")


def _init_parameters(module: torch.nn.Module, seed: int) -> None:
    """Set every parameter from a generator seeded with ``seed``, in a fixed (named) order.

    Matrices and kernels: normal with std 1/sqrt(fan_in), so activations stay O(1).
    Scales of normalisation layers (GroupNorm, LayerNorm): 1 + small noise. Biases and everything
    else 1-D: small noise.
    """
    generator = torch.Generator().manual_seed(seed)
    norms = {name for name, layer in module.named_modules()
             if isinstance(layer, (torch.nn.GroupNorm, torch.nn.LayerNorm))}
    with torch.no_grad():
        for name, param in sorted(module.named_parameters(), key=lambda item: item[0]):
            noise = torch.randn(param.shape, generator=generator, dtype=torch.float32)
            owner, _, kind = name.rpartition(".")
            if param.dim() >= 2:
                fan_in = param[0].numel()
                value = noise / math.sqrt(fan_in)
            elif kind == "weight" and owner in norms:
                value = 1.0 + 0.1 * noise
            else:
                value = 0.02 * noise
            param.copy_(value.to(param.dtype))


def _example_inputs(arch: str, seed: int) -> dict:
    """A typical UNet input (scaled latent, mid timestep, random context) for calibration."""
    generator = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, LATENT_CHANNELS, 16, 16, generator=generator)
    context = torch.randn(1, 8, context_dim(arch), generator=generator)
    inputs = {"x": x, "timesteps": torch.tensor([500.0]), "context": context}
    if arch == "sdxl":
        inputs["y"] = torch.randn(1, SDXL_ADM_CHANNELS, generator=generator)
    return inputs


# Shaping of the eps models (module docstring): the random parts' size relative to the passed-on
# latent, the size of the time-dependent channel that shares each copy's output GroupNorm group,
# and the gain on the time embedding. Measured round trips in tests/host/test_inversion_nodes.py.
EPS_RANDOM_SHARE = 0.1
TIME_PARTNER_SHARE = 0.5
TIME_EMBED_GAIN = 16.0
# Output std of a v model.
V_OUTPUT_STD = 0.1

ROUND_TRIP_STEPS = 50
ROUND_TRIP_BOUND = {"sd15": 0.2, "sd15_v": 0.1, "sdxl": 0.25}
"""Max |error| / std of the latent of a 50-step DDIM inversion and its replay at guidance 1 (reference
rule): regression bands set from measurement on these models. Measured on the 16x16 test latent,
reference rule / simple rule / replay with the schedule shifted one step (the negative controls, which
must fail the bound): sd15 0.092 / 0.44 / 6.5, sd15_v 0.018 / 0.22 / 0.50, sdxl 0.13 / 0.46 / 7.5; odd
13x11 latents sd15 0.080 / 0.43, sdxl 0.13 / 0.48; an SD1.x-scaled latent into sdxl 0.14 / 0.65. On
the smallest latents (2x2 sd15, 4x5 sdxl) the rules come close (0.13 / 0.16, 0.11 / 0.15): there the
shifted schedule is the control. The earlier eps models gave the same eps along the whole path and
0.026 for both rules."""


@dataclass(frozen=True)
class _PassThrough:
    """Where the latent travels through an eps model: channel ``plus[k]`` carries +latent_k,
    ``minus[k]`` carries -latent_k, and ``partners[j]`` is the other channel of the GroupNorm group
    of ``copies[j]`` (groups are consecutive channel pairs)."""

    plus: tuple[int, ...] = tuple(2 * k for k in range(LATENT_CHANNELS))
    minus: tuple[int, ...] = tuple(2 * (k + LATENT_CHANNELS) for k in range(LATENT_CHANNELS))

    @property
    def copies(self) -> list[int]:
        return [*self.plus, *self.minus]

    @property
    def partners(self) -> list[int]:
        return [channel + 1 for channel in self.copies]


def _scale_rows(layers: list[torch.nn.Module], rows: list[int], factor: torch.Tensor) -> None:
    """Multiply the output rows ``rows`` (weight and bias) of each layer by ``factor``."""
    for layer in layers:
        layer.weight[rows] *= factor
        layer.bias[rows] *= factor


def _shape_eps_model(unet: torch.nn.Module, arch: str, seed: int) -> None:
    """Turn the random UNet into "input taken for noise, time-dependent gain, random part" (module docstring)."""
    inputs = _example_inputs(arch, seed)
    route = _PassThrough()
    copies, partners = route.copies, route.partners
    time_linear = unet.time_embed[-1]
    time_linear.weight.mul_(TIME_EMBED_GAIN)
    time_linear.bias.mul_(TIME_EMBED_GAIN)
    last_block = unet.output_blocks[-1]
    res_block = last_block[0]
    # 1. conv_in: the copies are +latent_k and -latent_k (centre tap only).
    conv_in = unet.input_blocks[0][0]
    conv_in.weight[copies] = 0.0
    conv_in.bias[copies] = 0.0
    for k in range(LATENT_CHANNELS):
        conv_in.weight[route.plus[k], k, 1, 1] = 1.0
        conv_in.weight[route.minus[k], k, 1, 1] = -1.0
    # 2. The last output block's 1x1 skip connection passes the copies on (conv_in's output is the
    #    last chunk of that block's concatenated input) and nothing into their partners, which thus
    #    carry only what the res block (time embedding included) and the transformer add.
    skip = res_block.skip_connection
    skip.weight[copies + partners] = 0.0
    skip.bias[copies + partners] = 0.0
    first_from_conv_in = skip.weight.shape[1] - unet.model_channels
    for channel in copies:
        skip.weight[channel, first_from_conv_in + channel, 0, 0] = 1.0
    # 3. What the res block body and the transformer add is scaled: EPS_RANDOM_SHARE of the copies
    #    on the copies, TIME_PARTNER_SHARE of them on the partners.
    residual_layers = [res_block.out_layers[-1]] + [layer.proj_out for layer in list(last_block)[1:]]
    seen = {}
    hooks = [
        conv_in.register_forward_hook(lambda module, args, out: seen.__setitem__("latent", out)),
        list(last_block)[-1].register_forward_hook(lambda module, args, out: seen.__setitem__("block", out)),
    ]
    for _ in range(2):  # the transformer sees the res block's output: a second pass settles it
        unet(**inputs)
        identity = seen["latent"][:, copies]
        residual = seen["block"][:, copies] - identity
        _scale_rows(residual_layers, copies, EPS_RANDOM_SHARE * identity.std() / residual.std())
        _scale_rows(residual_layers, partners, TIME_PARTNER_SHARE * identity.std() / seen["block"][:, partners].std())
    for hook in hooks:
        hook.remove()
    # 4. Output: GroupNorm, then out = n_k = SiLU(n_k) - SiLU(-n_k), plus the other channels'
    #    random contribution at EPS_RANDOM_SHARE of it.
    norm, out_conv = unet.out[0], unet.out[-1]
    norm.weight[copies] = 1.0
    norm.bias[copies] = 0.0
    random_weight = out_conv.weight.clone()
    random_weight[:, copies] = 0.0
    random_bias = out_conv.bias.clone()
    identity_weight = torch.zeros_like(out_conv.weight)
    for k in range(LATENT_CHANNELS):
        identity_weight[k, route.plus[k], 1, 1] = 1.0
        identity_weight[k, route.minus[k], 1, 1] = -1.0
    out_conv.weight.copy_(identity_weight)
    out_conv.bias.zero_()
    identity_out = unet(**inputs)
    out_conv.weight.copy_(random_weight)
    out_conv.bias.copy_(random_bias)
    random_out = unet(**inputs)
    scale = EPS_RANDOM_SHARE * identity_out.std() / random_out.std()
    out_conv.weight.copy_(identity_weight + scale * random_weight)
    out_conv.bias.copy_(scale * random_bias)


def _shape_v_model(unet: torch.nn.Module, arch: str, seed: int) -> None:
    """Scale the random UNet's output to std :data:`V_OUTPUT_STD` (module docstring)."""
    out_conv = unet.out[-1]
    scale = V_OUTPUT_STD / unet(**_example_inputs(arch, seed)).std()
    out_conv.weight.mul_(scale)
    out_conv.bias.mul_(scale)


def build_tiny_model(arch: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """Build a fresh tiny model of ``arch`` ('sd15', 'sd15_v' or 'sdxl') with weights from ``seed``.

    Returns a ``ModelPatcher`` (ComfyUI's MODEL) with CPU load and offload devices, float32.
    """
    _check_arch(arch)
    with torch.inference_mode():
        return _build(arch, seed)


def _build(arch: str, seed: int) -> comfy.model_patcher.ModelPatcher:
    config_class = TinySDXL if arch == "sdxl" else TinySD15
    model_config = config_class(config_class.unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    device = torch.device("cpu")
    if arch == "sdxl":
        model = comfy.model_base.SDXL(model_config, model_type=comfy.model_base.ModelType.EPS, device=device)
    else:
        model_type = comfy.model_base.ModelType.V_PREDICTION if arch == "sd15_v" else comfy.model_base.ModelType.EPS
        model = comfy.model_base.BaseModel(model_config, model_type=model_type, device=device)
    _init_parameters(model.diffusion_model, seed)
    shape = _shape_v_model if arch == "sd15_v" else _shape_eps_model
    shape(model.diffusion_model, arch, seed)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)


def tiny_conditioning(arch: str, seed: int = 0, tokens: int = 8) -> list:
    """Seeded random CONDITIONING for ``arch``: ``[[context [1, tokens, dim], extras]]``.

    For SDXL the extras carry a ``pooled_output`` [1, 1280] and the size fields that
    CLIPTextEncodeSDXL gives (width/height, crops, target size; 1024 px).
    """
    _check_arch(arch)
    generator = torch.Generator().manual_seed(seed)
    context = torch.randn(1, tokens, context_dim(arch), generator=generator)
    extras: dict = {}
    if arch == "sdxl":
        extras = {
            "pooled_output": torch.randn(1, SDXL_POOLED_DIM, generator=generator),
            "width": 1024,
            "height": 1024,
            "crop_w": 0,
            "crop_h": 0,
            "target_width": 1024,
            "target_height": 1024,
        }
    return [[context, extras]]


def tiny_latent(arch: str, seed: int = 0, batch: int = 1, height: int = 16, width: int = 16) -> dict:
    """Seeded smooth random LATENT ``{"samples": [batch, 4, height, width]}`` in raw VAE units.

    A blurred unit-variance normal field divided by the arch's latent scale factor, so the
    statistics resemble a real VAE latent (std about 1/0.18215 for SD1.x, 1/0.13025 for SDXL).
    """
    _check_arch(arch)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(batch, LATENT_CHANNELS, height, width, generator=generator)
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :]) / 16.0
    kernel = kernel.expand(LATENT_CHANNELS, 1, 3, 3)
    smooth = torch.nn.functional.conv2d(
        torch.nn.functional.pad(noise, (1, 1, 1, 1), mode="replicate"), kernel, groups=LATENT_CHANNELS
    )
    smooth = (smooth - smooth.mean()) / smooth.std().clamp_min(1e-6)
    return {"samples": smooth / latent_format(arch).scale_factor}


# ---------------------------------------------------------------------------------------------
# Shared models and a check that nobody changes them.


def _freeze(value: Any) -> Any:
    """A comparable picture of a nested options structure: containers by content, tensors by
    shape, dtype and a hash of their bytes, other objects (functions, patch objects) by identity."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((repr(key), _freeze(item)) for key, item in value.items())))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(item) for item in value))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(repr(item) for item in value)))
    if isinstance(value, torch.Tensor):
        data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        return ("tensor", tuple(value.shape), str(value.dtype), hashlib.sha256(data).hexdigest())
    if value is None or isinstance(value, (str, int, bool, enum.Enum)):
        return value
    if isinstance(value, float):
        return repr(value)
    return ("object", type(value).__qualname__, id(value))


# ModelPatcher attributes that hold patches and options: a node must never change these on the
# MODEL it receives (it clones first).
PATCHER_STATE_ATTRIBUTES = (
    "model_options",
    "patches",
    "patches_uuid",
    "object_patches",
    "weight_wrapper_patches",
    "attachments",
    "additional_models",
    "callbacks",
    "wrappers",
    "injections",
    "hook_patches",
)


@dataclass
class ModelSnapshot:
    """The patch state, the model objects and a copy of the weights of a MODEL at one moment.

    ``snap = ModelSnapshot.take(model)`` ... ``snap.assert_unchanged(model)``.
    """

    state: dict
    weights: dict

    @classmethod
    def take(cls, patcher: comfy.model_patcher.ModelPatcher) -> "ModelSnapshot":
        return cls(_patcher_state(patcher), _weights(patcher))

    def differences(self, patcher: comfy.model_patcher.ModelPatcher) -> list[str]:
        """What changed since the snapshot. Unloads all models first, so weight patches that a
        (cloned) patcher applied in place while loaded are undone before the weights are compared."""
        comfy.model_management.unload_all_models()
        state = _patcher_state(patcher)
        changed = [name for name in self.state if state.get(name) != self.state[name]]
        weights = _weights(patcher)
        if weights.keys() != self.weights.keys():
            changed.append("weights (parameter names)")
        else:
            changed += [f"weight {name}" for name in weights if not torch.equal(weights[name], self.weights[name])]
        return changed

    def assert_unchanged(self, patcher: comfy.model_patcher.ModelPatcher) -> None:
        changed = self.differences(patcher)
        assert not changed, f"the MODEL was changed: {', '.join(changed)}"


def _patcher_state(patcher: comfy.model_patcher.ModelPatcher) -> dict:
    state = {name: _freeze(getattr(patcher, name, None)) for name in PATCHER_STATE_ATTRIBUTES}
    state["model"] = id(patcher.model)
    state["diffusion_model"] = id(patcher.model.diffusion_model)
    state["model_sampling"] = id(patcher.model.model_sampling)
    return state


def _weights(patcher: comfy.model_patcher.ModelPatcher) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {name: tensor.detach().clone() for name, tensor in patcher.model.state_dict().items()}


class SnapshotCache:
    """Models built once per test session by ``build(name, seed)``, each kept with a snapshot taken
    when it was built, so a test that changed a shared model is caught and the model rebuilt."""

    def __init__(self, build: Callable[[str, int], comfy.model_patcher.ModelPatcher]) -> None:
        self.build = build
        self.entries: dict[tuple[str, int], tuple[comfy.model_patcher.ModelPatcher, ModelSnapshot]] = {}

    def get(self, name: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
        """The shared model ``name`` of ``seed`` (clone it before patching)."""
        key = (name, int(seed))
        if key not in self.entries:
            patcher = self.build(name, seed)
            self.entries[key] = (patcher, ModelSnapshot.take(patcher))
        return self.entries[key][0]

    def evict_changed(self) -> list[str]:
        """Drop every cached model that changed since it was built; say what changed in each."""
        report = []
        for key, (patcher, snapshot) in list(self.entries.items()):
            changed = snapshot.differences(patcher)
            if changed:
                del self.entries[key]
                report.append(f"{key}: {', '.join(changed)}")
        return report


_CACHE = SnapshotCache(lambda arch, seed: build_tiny_model(arch, seed))


def cached_tiny_model(arch: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """The shared tiny model of ``arch`` and ``seed`` (built once per test session)."""
    return _CACHE.get(arch, seed)


def evict_changed_cached_models() -> list[str]:
    """Drop every cached model that changed since it was built; say what changed in each."""
    return _CACHE.evict_changed()
