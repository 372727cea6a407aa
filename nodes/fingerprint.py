"""Cheap identities of a MODEL: what an INVERSION records and a saved inversion is checked against."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

from .model_info import model_sampling, prediction_name

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
    """Hex digest of a MODEL's class, network configuration, prediction type and noise schedule."""
    base = model.model
    sampling = model_sampling(model)
    architecture = hashlib.sha256(json.dumps(
        [type(base).__name__, getattr(base.model_config, "unet_config", {}), prediction_name(model)],
        sort_keys=True, default=str).encode())
    architecture.update(sampling.sigmas.detach().to("cpu", torch.float32).numpy().tobytes())
    return architecture.hexdigest()


def model_fingerprint(model) -> dict[str, str]:
    """Identity of a MODEL, cheap to compute: what a saved inversion is checked against.

    Returns ``{"architecture", "weights", "patches"}`` hex digests: the model class, its network
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

