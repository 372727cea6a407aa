"""Stable Diffusion 1.5 checkpoints with random weights, built from ComfyUI's own classes and cached.

The host tests run the shipped ``*_photo`` workflows through ComfyUI's real ``CheckpointLoaderSimple``,
``CLIPTextEncode``, ``VAEEncode`` and ``VAEDecode``. They need a checkpoint file of the real SD1.5
layout, and downloading 2-4 GB of trained weights is not an option, so this module writes one:

- the UNet is ComfyUI's ``BaseModel`` built from ``comfy.supported_models.SD15`` with the SD1.5
  unet config of ComfyUI's model detection, the text encoder ``comfy.sd1_clip.SD1ClipModel``
  (CLIP ViT-L/14), the VAE ``comfy.ldm.models.autoencoder.AutoencoderKL`` with the SD1.x config
  of ``comfy.sd.VAE``;
- the state dict comes from ``BaseModel.state_dict_for_saving``, the function ComfyUI's
  CheckpointSave node uses, so the keys are the original LDM layout (``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.transformer.text_model.*``);
- every weight gets its module's default PyTorch initialisation (comfy ops skip it), seeded:
  uniform in +-1/sqrt(fan_in) for linear and conv layers, N(0, 1) for embeddings, ones and zeros for
  norms. Every block of all three networks is normalised (GroupNorm, LayerNorm), so activations
  stay of order one and every output stays finite (the photo-workflow tests check each image);
- the file is float16 safetensors (2.1 GB) in ``${XDG_CACHE_HOME:-~/.cache}/invedit/checkpoints``,
  written under a temporary name and renamed, and rebuilt when it is missing or when its keys,
  shapes, dtypes or recipe differ from what this code builds (checked from the safetensors header
  against the same networks built on the meta device, without allocating them). A build takes
  about 13 s on one idle CPU thread (45 s on a busy 2-core machine) and peaks at 3.8 GB of memory;
  the weights are the same on every build (the file's header order may differ).

This module imports ComfyUI: import it only after the host conftest has booted ComfyUI.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import comfy.ldm.models.autoencoder
import comfy.model_base
import comfy.sd1_clip
import comfy.supported_models

ARCHITECTURE = "sd15"
RECIPE_VERSION = "1"  # bump when the weights this module writes change
DEFAULT_SEED = 0
STORAGE_DTYPE = torch.float16
SAFETENSORS_DTYPE = "F16"
CHECKPOINT_FILE = "invedit-random-sd15-seed{seed}.safetensors"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."
# The SD1.x VAE of comfy.sd.VAE (its default AutoencoderKL config); latents have 4 channels.
SD15_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}
SD15_VAE_EMBED_DIM = 4
# Seeds of the three networks are offset so each one's weights do not depend on the others.
COMPONENT_SEED_OFFSETS = {"unet": 0, "text_encoder": 1, "vae": 2}
METADATA_KEYS = ("invedit_architecture", "invedit_recipe", "invedit_seed")


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/invedit/checkpoints``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "invedit" / "checkpoints"


def sd15_unet_config(dtype: torch.dtype) -> dict:
    """The full unet config of SD1.5: the ``SD15`` entry of ComfyUI's model detection
    (comfy/model_detection.py ``unet_config_from_diffusers_unet``).
    The tests check that ComfyUI detects the written file as ``supported_models.SD15``."""
    return {
        "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
        "legacy": False, "adm_in_channels": None, "dtype": dtype, "in_channels": 4, "model_channels": 320,
        "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
        "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        "use_temporal_attention": False, "use_temporal_resblock": False,
    }


@dataclass
class Components:
    """The three networks of an SD1.5 checkpoint, as ComfyUI builds them."""

    model: comfy.model_base.BaseModel
    text_encoder: torch.nn.Module
    vae: torch.nn.Module


def build_components() -> Components:
    """SD1.5 UNet (in a BaseModel), CLIP-L text encoder and VAE, weights uninitialised, stored as
    float16 (the VAE as float32: its classes take no dtype). Build on the meta device to get the
    layout only: ``with torch.device("meta"): build_components()``."""
    model_config = comfy.supported_models.SD15(sd15_unet_config(STORAGE_DTYPE))
    model_config.set_inference_dtype(STORAGE_DTYPE, None)
    model = model_config.get_model({})
    text_encoder = comfy.sd1_clip.SD1ClipModel(device=None, dtype=STORAGE_DTYPE)
    vae = comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=dict(SD15_VAE_DDCONFIG), embed_dim=SD15_VAE_EMBED_DIM)
    return Components(model, text_encoder, vae)


def checkpoint_state_dict(components: Components) -> dict[str, torch.Tensor]:
    """The checkpoint's state dict, by ``BaseModel.state_dict_for_saving`` (as CheckpointSave), in float16."""
    state_dict = components.model.state_dict_for_saving(
        components.text_encoder.state_dict(), components.vae.state_dict())
    return {key: value.to(STORAGE_DTYPE).contiguous() for key, value in state_dict.items()}


def _default_reset(module: torch.nn.Module) -> bool:
    """Run the ``reset_parameters`` of the first torch.nn class ``module`` derives from (comfy ops
    override it with a no-op). False when the module has none."""
    for base in type(module).__mro__:
        if base.__module__.startswith("torch.nn.") and "reset_parameters" in vars(base):
            base.reset_parameters(module)
            return True
    return False


def initialise(network: torch.nn.Module, seed: int) -> None:
    """Give every parameter of ``network`` its module's default PyTorch initialisation, seeded.

    Each module is initialised in float32 and stored back in its own dtype. Raises when a
    parameter is left that no module's default initialisation covers.
    """
    covered: set[int] = set()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in network.modules():
            own = list(module.parameters(recurse=False))
            if not own:
                continue
            dtypes = {parameter.dtype for parameter in own}
            module.float()
            if _default_reset(module):
                covered.update(id(parameter) for parameter in module.parameters(recurse=False))
            for dtype in dtypes:
                module.to(dtype)
    left = [name for name, parameter in network.named_parameters() if id(parameter) not in covered]
    # CLIP's logit_scale is a bare parameter (not saved in SD checkpoints); set it to CLIP's value.
    for name, parameter in network.named_parameters():
        if name.endswith("logit_scale"):
            with torch.no_grad():
                parameter.fill_(4.6052)
            left.remove(name)
    if left:
        raise RuntimeError(f"no default initialisation for {left[:5]} ({len(left)} parameters)")


def build_state_dict(seed: int = DEFAULT_SEED) -> dict[str, torch.Tensor]:
    """A full SD1.5 checkpoint state dict with seeded random weights (float16, about 2.1 GB)."""
    components = build_components()
    initialise(components.model.diffusion_model, seed * len(COMPONENT_SEED_OFFSETS) + COMPONENT_SEED_OFFSETS["unet"])
    initialise(components.text_encoder, seed * len(COMPONENT_SEED_OFFSETS) + COMPONENT_SEED_OFFSETS["text_encoder"])
    initialise(components.vae, seed * len(COMPONENT_SEED_OFFSETS) + COMPONENT_SEED_OFFSETS["vae"])
    return checkpoint_state_dict(components)


Manifest = dict[str, tuple[tuple[int, ...], str]]


def expected_manifest() -> Manifest:
    """``{key: (shape, safetensors dtype)}`` of the checkpoint this module writes, from networks
    built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        state_dict = checkpoint_state_dict(build_components())
    return {key: (tuple(value.shape), SAFETENSORS_DTYPE) for key, value in state_dict.items()}


def file_manifest(path: Path) -> tuple[Manifest, dict[str, str]]:
    """Keys, shapes and dtypes of a safetensors file, and its metadata, from its header only."""
    with safe_open(str(path), framework="pt") as handle:
        manifest = {}
        for key in handle.keys():
            tensor_slice = handle.get_slice(key)
            manifest[key] = (tuple(tensor_slice.get_shape()), tensor_slice.get_dtype())
        return manifest, dict(handle.metadata() or {})


def _metadata(seed: int) -> dict[str, str]:
    return {"invedit_architecture": ARCHITECTURE, "invedit_recipe": RECIPE_VERSION, "invedit_seed": str(seed)}


def stale_reason(path: Path, seed: int = DEFAULT_SEED) -> str | None:
    """Why the file at ``path`` is not the checkpoint this module would write; None when it is."""
    if not path.is_file():
        return "missing"
    try:
        manifest, metadata = file_manifest(path)
    except Exception as error:  # a truncated or foreign file: rebuild it
        return f"unreadable ({type(error).__name__}: {error})"
    wanted = _metadata(seed)
    if {key: metadata.get(key) for key in METADATA_KEYS} != wanted:
        return f"recipe {({key: metadata.get(key) for key in METADATA_KEYS})} != {wanted}"
    expected = expected_manifest()
    if manifest != expected:
        missing = sorted(set(expected) - set(manifest))
        extra = sorted(set(manifest) - set(expected))
        changed = sorted(key for key in set(expected) & set(manifest) if expected[key] != manifest[key])
        return f"layout differs: {len(missing)} keys missing, {len(extra)} extra, {len(changed)} changed"
    return None


@dataclass(frozen=True)
class BuiltCheckpoint:
    """A checkpoint file and how it was obtained (``build_seconds`` is 0 when the cache was used)."""

    path: Path
    built: bool
    build_seconds: float
    reason: str | None


def ensure_checkpoint(seed: int = DEFAULT_SEED, directory: Path | None = None) -> BuiltCheckpoint:
    """The cached SD1.5 random checkpoint, built first when missing or stale.

    The build holds a lock file, so parallel test runs build once; it writes ``<name>.<pid>.tmp``
    and renames it into place, so an interrupted build never leaves a file that looks complete.
    """
    directory = cache_dir() if directory is None else directory
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE.format(seed=seed)
    with open(directory / f"{path.name}.lock", "w") as lock, _locked(lock):
        reason = stale_reason(path, seed)
        if reason is None:
            return BuiltCheckpoint(path, False, 0.0, None)
        started = time.perf_counter()
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            save_file(build_state_dict(seed), str(temporary), metadata=_metadata(seed))
            os.replace(temporary, path)
        finally:
            temporary.unlink(missing_ok=True)
        return BuiltCheckpoint(path, True, time.perf_counter() - started, reason)


@contextlib.contextmanager
def _locked(handle):
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
