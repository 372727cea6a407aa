"""Reading and writing the test-bed model files (safetensors with metadata and a content hash).

Two files ship with the pack, in the same layout:

* ``models/testbed_digits.safetensors`` (format ``invedit-testbed-digits``): the SD1.x-layout UNet;
  it also holds the held-out digits (``heldout.*`` tensors, see :mod:`.data`);
* ``models/testbed_flow.safetensors`` (format ``invedit-testbed-flow``): the Flux transformer.

File layout:

* tensors: the diffusion model's state dict under ComfyUI's checkpoint key names
  (``diffusion_model.input_blocks.0.0.weight`` ..., ``diffusion_model.double_blocks.0...``) and
  the text encoder's ``text.token_embedding [V, 64]`` and ``text.position_embedding [8, 64]``;
* metadata: every value is a JSON document (see :data:`METADATA_KEYS`), plus
  ``content_sha256``, the hash of the tensors (:func:`content_hash`), checked on load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch

from .text import PooledPromptEmbedding, PromptEmbedding

UNET_PREFIX = "diffusion_model."
FORMAT_NAME = "invedit-testbed-digits"
FLOW_FORMAT_NAME = "invedit-testbed-flow"
FORMAT_VERSION = 1
HASH_KEY = "content_sha256"
METADATA_KEYS = (
    "format",  # {"name": FORMAT_NAME or FLOW_FORMAT_NAME, "version": FORMAT_VERSION}
    "unet_config",  # ComfyUI's unet_config: kwargs of the diffusion model (without dtype/device/operations)
    "model",  # prediction type, schedule / model sampling, latent format
    "text",  # vocabulary (id order), pad token, template, token length, digit word slots, pooling
    "image",  # canvas shape [C, H, W], value range, layout
    "data_split",  # seed, rule, held-out fraction, held-out indices
    "training",  # settings and timings of the training run
    "evaluation",  # numbers measured on the trained model
)

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL_PATH = MODELS_DIR / "testbed_digits.safetensors"
FLOW_MODEL_PATH = MODELS_DIR / "testbed_flow.safetensors"


class IntegrityError(ValueError):
    """The file's tensors do not match its recorded content hash, or metadata is missing."""


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 (hex) of the tensors in a canonical order.

    For every key in sorted (Python string) order the hash is fed: the key as UTF-8, a NUL
    byte, the dtype name (e.g. ``float16``), a NUL byte, the shape as comma-separated
    integers, a NUL byte, then the tensor's raw little-endian bytes in C order.
    """
    digest = hashlib.sha256()
    for key in sorted(tensors):
        tensor = tensors[key].detach().cpu().contiguous()
        dtype_name = str(tensor.dtype).removeprefix("torch.")
        shape = ",".join(str(size) for size in tensor.shape)
        digest.update(f"{key}\0{dtype_name}\0{shape}\0".encode("utf-8"))
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class TestbedFile:
    """A loaded model file: all tensors and the decoded metadata."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]

    def unet_state_dict(self, keep_prefix: bool = False) -> dict[str, torch.Tensor]:
        """The UNet's tensors, keyed as in ``UNetModel.state_dict()`` unless ``keep_prefix``."""
        return {
            (key if keep_prefix else key[len(UNET_PREFIX):]): value
            for key, value in self.tensors.items()
            if key.startswith(UNET_PREFIX)
        }

    def text_encoder(self) -> PromptEmbedding:
        """The prompt embedding module (float32); a :class:`PooledPromptEmbedding` when the
        file's ``text`` metadata names a ``pooling`` (the flow model's)."""
        pooled = self.metadata["text"].get("pooling") == PooledPromptEmbedding.pooling
        return (PooledPromptEmbedding if pooled else PromptEmbedding).from_tensors(self.tensors)

    @property
    def unet_config(self) -> dict[str, Any]:
        """The diffusion model's keyword arguments (add ``dtype``, ``device``, ``operations``)."""
        return dict(self.metadata["unet_config"])


def save_testbed(
    path: Union[str, Path], tensors: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> str:
    """Write ``tensors`` and JSON-encoded ``metadata`` (plus the content hash); return the hash."""
    from safetensors.torch import save_file

    missing = [key for key in METADATA_KEYS if key not in metadata]
    if missing:
        raise IntegrityError(f"metadata lacks {missing}; expected keys {METADATA_KEYS}")
    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    digest = content_hash(tensors)
    encoded = {key: json.dumps(value, sort_keys=True) for key, value in metadata.items()}
    encoded[HASH_KEY] = json.dumps(digest)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=encoded)
    return digest


def load_testbed(path: Union[str, Path] = DEFAULT_MODEL_PATH, verify: bool = True) -> TestbedFile:
    """Read a model file onto the CPU; with ``verify`` check the content hash.

    Raises:
        FileNotFoundError: no file at ``path``.
        IntegrityError: the hash or a metadata key is missing, or the tensors do not match.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no test-bed model at {path}; the pack ships models/testbed_digits.safetensors and "
            "models/testbed_flow.safetensors: restore them from git (scripts/train_testbed.py and "
            "scripts/train_flow_testbed.py rebuild them)"
        )
    with safe_open(str(path), framework="pt", device="cpu") as handle:
        raw_metadata = handle.metadata() or {}
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    metadata = {key: json.loads(value) for key, value in raw_metadata.items()}
    missing = [key for key in (*METADATA_KEYS, HASH_KEY) if key not in metadata]
    if missing:
        raise IntegrityError(f"{path} is not a test-bed model file: metadata lacks {missing}")
    if verify:
        actual = content_hash(tensors)
        if actual != metadata[HASH_KEY]:
            raise IntegrityError(
                f"{path} is corrupt: content sha256 {actual} != recorded {metadata[HASH_KEY]}; "
                "restore it from git (or rerun its training script)"
            )
    return TestbedFile(tensors=tensors, metadata=metadata)
