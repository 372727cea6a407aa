"""Saving an INVERSION (:class:`InversionRecord`) as a safetensors file, and loading it back.

Invert once, edit many times: everything a record holds is written, bit for bit (every tensor
keeps its dtype and bytes; numbers, strings and containers keep their types), together with a
SHA-256 of the tensors so that a damaged file is refused instead of silently loading changed
values.

File layout (a plain safetensors file):

* tensors: ``trajectory.sigmas`` ``[N+1]``, ``trajectory.latents`` ``[N+1, B, C, H, W]`` (``[N+1, B, C,
  1, H, W]`` for Qwen-Image),
  ``sampling_sigmas`` ``[N+1]``, ``unconditioning.step_contexts`` ``[N, B, L, D]`` and
  ``unconditioning.step_pooled`` ``[N, B, P]`` (when present) and the tensors found inside the CONDITIONINGs, settings and report, named
  ``<owner>.<n>`` (``positive.0``, ``negative.1``, ...) in the order they are met;
* one metadata entry, :data:`METADATA_KEY`, holding a JSON document with the format name and
  version, the tensors' digest and the record's structure, in which a tensor is written
  ``{"__tensor__": name}``, a tuple ``{"__tuple__": [...]}`` and a dict that JSON cannot hold
  as it is (non-string keys, or a key that looks like one of these tags)
  ``{"__dict__": [[key, value], ...]}``. A single entry keeps the file's bytes deterministic
  (safetensors writes several metadata entries in a random order).

Only values of these kinds can be saved: tensors, None, booleans, integers, floats, strings and
lists, tuples and dicts of them. A CONDITIONING that carries objects (ControlNet, hooks, GLIGEN)
is refused with :class:`InversionNotSaveableError`, naming the key. Reading a file that is not a
complete InvEdit inversion file of a known version raises :class:`InversionFileError`.

This module is pure torch + safetensors: no ComfyUI imports.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import asdict, fields
from typing import Any, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .ddim import InversionConfig, InversionTrajectory
from .easyinv import EasyInvConfig
from .record import InversionRecord, Unconditioning, tensor_sha256
from .warm_start import WarmStartConfig

FORMAT_NAME = "invedit.inversion"
FORMAT_VERSION = 2
"""The newest format: version 2 adds the recorded DDPM noises. A record without them is still written as
version 1, which older InvEdit reads; one with them is version 2, which older InvEdit refuses as newer
(rather than sampling it as a DDIM inversion)."""
PLAIN_FORMAT_VERSION = 1
READABLE_VERSIONS = (PLAIN_FORMAT_VERSION, FORMAT_VERSION)
METADATA_KEY = "invedit_inversion"
FILE_SUFFIX = ".invedit.safetensors"
"""Every saved inversion file name ends with this; :func:`inversion_file_path` adds it."""

TENSOR_TAG = "__tensor__"
TUPLE_TAG = "__tuple__"
DICT_TAG = "__dict__"
_TAGS = (TENSOR_TAG, TUPLE_TAG, DICT_TAG)

TRAJECTORY_SIGMAS = "trajectory.sigmas"
TRAJECTORY_LATENTS = "trajectory.latents"
SAMPLING_SIGMAS = "sampling_sigmas"
STEP_CONTEXTS = "unconditioning.step_contexts"
STEP_POOLED = "unconditioning.step_pooled"
DDPM_NOISES = "ddpm_noises"

TRAJECTORY_DIMS = (5, 6)
"""``[N+1, B, C, H, W]``, or ``[N+1, B, C, 1, H, W]`` for models with 5-D latents (Qwen-Image)."""

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class InversionFileError(ValueError):
    """A file that cannot be read as an InvEdit inversion (corrupt, truncated, other format or version)."""


class InversionNotSaveableError(ValueError):
    """A record holding a value that a file cannot store (e.g. a ControlNet object in a CONDITIONING)."""


class InversionPathError(ValueError):
    """A file name that is empty, absolute, or would leave the folder it must stay in."""


# ---------------------------------------------------------------------------------------------
# Values <-> JSON with tensors set aside.


class _TensorStore:
    """Collects the tensors of one record under unique names while its structure is encoded."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}

    def add(self, name: str, tensor: torch.Tensor) -> str:
        """Store a CPU, contiguous, unshared copy of ``tensor`` (dtype and bytes unchanged)."""
        if name in self.tensors:
            raise ValueError(f"tensor name {name!r} used twice")  # a bug here, never the user's
        self.tensors[name] = tensor.detach().to("cpu", copy=True).contiguous()
        return name

    def add_numbered(self, owner: str, tensor: torch.Tensor) -> str:
        """Store ``tensor`` as ``<owner>.<n>``, n counting the tensors of ``owner`` from 0."""
        number = self._counts.get(owner, 0)
        self._counts[owner] = number + 1
        return self.add(f"{owner}.{number}", tensor)


def _path_text(root: str, path: tuple) -> str:
    return root + "".join(f"[{step!r}]" for step in path)


def _not_saveable(root: str, path: tuple, value: Any) -> InversionNotSaveableError:
    where = _path_text(root, path)
    if root in ("positive", "negative", "unconditioning.conditioning"):
        key = next((step for step in reversed(path) if isinstance(step, str)), None)
        named = f"its key {key!r}" if key is not None else where
        return InversionNotSaveableError(
            f"The inversion's {root} CONDITIONING cannot be saved: {named} ({where}) holds a "
            f"{type(value).__name__} object, and only tensors, numbers, strings, booleans, None and "
            "lists/tuples/dicts of them can be written to a file. Save an inversion made from a "
            "conditioning without it (apply ControlNet, hooks or GLIGEN after loading the inversion)."
        )
    return InversionNotSaveableError(
        f"{where} holds a {type(value).__name__} object, which cannot be written to an inversion file: "
        "only tensors, numbers, strings, booleans, None and lists/tuples/dicts of them can."
    )


def _encode(value: Any, store: _TensorStore, root: str, path: tuple = ()) -> Any:
    """JSON-able form of ``value``; its tensors go to ``store`` (named after ``root``)."""
    if isinstance(value, torch.Tensor):
        return {TENSOR_TAG: store.add_numbered(root, value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(item, store, root, path + (index,)) for index, item in enumerate(value)]
    if isinstance(value, tuple):
        return {TUPLE_TAG: [_encode(item, store, root, path + (index,)) for index, item in enumerate(value)]}
    if isinstance(value, dict):
        plain = all(isinstance(key, str) for key in value) and not (len(value) == 1 and next(iter(value)) in _TAGS)
        if plain:
            return {key: _encode(item, store, root, path + (key,)) for key, item in value.items()}
        return {DICT_TAG: [[_encode(key, store, root, path + ("<key>",)), _encode(item, store, root, path + (key,))]
                           for key, item in value.items()]}
    raise _not_saveable(root, path, value)


def _decode(node: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    """Inverse of :func:`_encode`."""
    if isinstance(node, list):
        return [_decode(item, tensors, where) for item in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (tag, content), = node.items()
        if tag == TENSOR_TAG:
            return _tensor(tensors, content, where)
        if tag == TUPLE_TAG:
            return tuple(_decode(item, tensors, where) for item in _expect(content, list, where))
        if tag == DICT_TAG:
            pairs = _expect(content, list, where)
            if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
                raise _corrupt(f"a dict in {where} is not a list of [key, value] pairs")
            return {_hashable(_decode(key, tensors, where), where): _decode(item, tensors, where)
                    for key, item in pairs}
    return {key: _decode(item, tensors, where) for key, item in node.items()}


def _hashable(key: Any, where: str) -> Any:
    try:
        hash(key)
    except TypeError:
        raise _corrupt(f"a dict key in {where} is a {type(key).__name__}") from None
    return key


# ---------------------------------------------------------------------------------------------
# Record <-> (tensors, metadata).


def _dataclass_from_json(cls: type, data: Any, where: str, **nested: Any):
    """``cls(**data)`` with ``nested`` replacing some fields; a damaged-file error for bad fields."""
    data = dict(_expect(data, dict, where))
    unknown = sorted(set(data) - {field.name for field in fields(cls)})
    if unknown:
        raise _corrupt(f"{where} has unknown fields {unknown}")
    try:
        return cls(**{**data, **nested})
    except (TypeError, ValueError) as error:
        raise _corrupt(f"{where} is invalid: {error}") from error


def _config_from_json(data: Any) -> InversionConfig:
    """The trajectory's InversionConfig, with its EasyInv and warm-start settings."""
    where = "trajectory.config"
    data = _expect(data, dict, where)
    easyinv, warm_start = data.get("easyinv"), data.get("warm_start")
    return _dataclass_from_json(
        InversionConfig, data, where,
        easyinv=None if easyinv is None else _dataclass_from_json(EasyInvConfig, easyinv, where + ".easyinv"),
        warm_start=None if warm_start is None else _dataclass_from_json(WarmStartConfig, warm_start,
                                                                         where + ".warm_start"),
    )


def _tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(f"{name}|{tensor_sha256(tensors[name])}|".encode())
    return digest.hexdigest()


def record_to_file_parts(record: InversionRecord) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Split a record into the tensors and the metadata of a safetensors file.

    Returns ``(tensors, metadata)``: tensors are CPU, contiguous copies (dtype and bytes
    unchanged): ``trajectory.sigmas`` ``[N+1]``, ``trajectory.latents`` ``[N+1, B, C, H, W]``,
    ``sampling_sigmas`` ``[N+1]``, ``unconditioning.step_contexts`` ``[N, B, L, D]`` and
    ``unconditioning.step_pooled`` ``[N, B, P]`` if any, and
    those found in the conditionings, settings and report. ``metadata`` has one entry,
    :data:`METADATA_KEY`, a JSON document. Raises :class:`InversionNotSaveableError` for a value
    that cannot be stored (the message names where it is).
    """
    store = _TensorStore()
    trajectory = record.trajectory
    store.add(TRAJECTORY_SIGMAS, trajectory.sigmas)
    store.add(TRAJECTORY_LATENTS, trajectory.latents)
    store.add(SAMPLING_SIGMAS, record.sampling_sigmas)
    unconditioning = None
    if record.unconditioning is not None:
        uncond = record.unconditioning
        unconditioning = {
            "method": uncond.method,
            "conditioning": _encode(uncond.conditioning, store, "unconditioning.conditioning"),
            "step_contexts": None if uncond.step_contexts is None else store.add(STEP_CONTEXTS, uncond.step_contexts),
            "report": _encode(uncond.report, store, "unconditioning.report"),
        }
        if uncond.step_pooled is not None:  # files without pooled vectors keep their earlier bytes
            unconditioning["step_pooled"] = store.add(STEP_POOLED, uncond.step_pooled)
    structure = {
        "trajectory": {"model_calls": trajectory.model_calls,
                       "config": _encode(asdict(trajectory.config), store, "trajectory.config")},
        "settings": _encode(record.settings, store, "settings"),
        "positive": _encode(record.positive, store, "positive"),
        "negative": _encode(record.negative, store, "negative"),
        "unconditioning": unconditioning,
        "pin_source": record.pin_source,
        "ddpm_noises": None if record.ddpm_noises is None else store.add(DDPM_NOISES, record.ddpm_noises),
    }
    document = {
        "format": FORMAT_NAME,
        "format_version": PLAIN_FORMAT_VERSION if record.ddpm_noises is None else FORMAT_VERSION,
        "tensors_sha256": _tensors_digest(store.tensors),
        "record": structure,
    }
    return store.tensors, {METADATA_KEY: json.dumps(document)}


def _corrupt(problem: str) -> InversionFileError:
    return InversionFileError(
        f"The inversion file is damaged or was not written by InvEdit: {problem}. Save the inversion again."
    )


def _expect(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _corrupt(f"{where} should be of type {kind.__name__}, found {type(value).__name__}")
    return value


def _tensor(tensors: dict[str, torch.Tensor], name: Any, where: str) -> torch.Tensor:
    if not isinstance(name, str) or name not in tensors:
        raise _corrupt(f"the tensor {name!r} of {where} is missing")
    return tensors[name]


def _read_document(metadata: Optional[dict[str, str]]) -> dict[str, Any]:
    """The JSON document of an inversion file, after checking its format and version."""
    text = (metadata or {}).get(METADATA_KEY)
    if text is None:
        raise InversionFileError(
            "This safetensors file is not an InvEdit inversion (it has no InvEdit metadata): pick a saved "
            f"inversion (its name ends in {FILE_SUFFIX})."
        )
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, TypeError) as error:
        raise _corrupt(f"its description is not valid JSON ({error})") from error
    _expect(document, dict, "the description")
    if document.get("format") != FORMAT_NAME:
        raise InversionFileError(
            f"This file holds {document.get('format')!r}, not an InvEdit inversion ({FORMAT_NAME!r})."
        )
    version = document.get("format_version")
    if version not in READABLE_VERSIONS or isinstance(version, bool):
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION
        raise InversionFileError(
            f"This inversion file has format version {version!r}; this InvEdit reads versions "
            f"{' and '.join(map(str, READABLE_VERSIONS))}. "
            + ("It was saved by a newer InvEdit: update InvEdit to load it." if newer
               else "Invert the image again and save it with this InvEdit.")
        )
    return document


def record_from_file_parts(tensors: dict[str, torch.Tensor], metadata: Optional[dict[str, str]]) -> InversionRecord:
    """Rebuild the record that :func:`record_to_file_parts` split (same tensors, bit for bit).

    Raises :class:`InversionFileError` when the metadata is not an InvEdit inversion of a known
    version, a tensor is missing, or the tensors do not match the digest written with them.
    """
    document = _read_document(metadata)
    expected_digest = document.get("tensors_sha256")
    if _tensors_digest(tensors) != expected_digest:
        raise _corrupt("its tensors do not match the checksum saved with them")
    structure = _expect(document.get("record"), dict, "record")
    trajectory_data = _expect(structure.get("trajectory"), dict, "trajectory")
    latents = _tensor(tensors, TRAJECTORY_LATENTS, "trajectory")
    sigmas = _tensor(tensors, TRAJECTORY_SIGMAS, "trajectory")
    sampling_sigmas = _tensor(tensors, SAMPLING_SIGMAS, "record")
    if latents.ndim not in TRAJECTORY_DIMS or sigmas.ndim != 1 or sigmas.numel() != latents.shape[0] or sampling_sigmas.ndim != 1:
        raise _corrupt(f"the trajectory shapes do not fit (latents {tuple(latents.shape)}, sigmas "
                       f"{tuple(sigmas.shape)}, sampling sigmas {tuple(sampling_sigmas.shape)})")
    trajectory = InversionTrajectory(
        sigmas=sigmas,
        latents=latents,
        model_calls=_expect(trajectory_data.get("model_calls"), int, "trajectory.model_calls"),
        config=_config_from_json(_decode(trajectory_data.get("config"), tensors, "trajectory.config")),
    )
    unconditioning = None
    uncond_data = structure.get("unconditioning")
    if uncond_data is not None:
        uncond_data = _expect(uncond_data, dict, "unconditioning")
        contexts_name, pooled_name = uncond_data.get("step_contexts"), uncond_data.get("step_pooled")
        try:
            unconditioning = Unconditioning(
                method=_expect(uncond_data.get("method"), str, "unconditioning.method"),
                conditioning=_decode(uncond_data.get("conditioning"), tensors, "unconditioning.conditioning"),
                step_contexts=None if contexts_name is None else _tensor(tensors, contexts_name, "unconditioning"),
                report=_expect(_decode(uncond_data.get("report", {}), tensors, "unconditioning.report"), dict,
                               "unconditioning.report"),
                step_pooled=None if pooled_name is None else _tensor(tensors, pooled_name, "unconditioning"),
            )
        except InversionFileError:
            raise
        except ValueError as error:
            raise _corrupt(f"unconditioning is invalid: {error}") from error
    return InversionRecord(
        trajectory=trajectory,
        sampling_sigmas=sampling_sigmas,
        ddpm_noises=_ddpm_noises(tensors, structure.get("ddpm_noises"), latents),
        settings=_expect(_decode(structure.get("settings", {}), tensors, "settings"), dict, "settings"),
        positive=_decode(structure.get("positive"), tensors, "positive"),
        negative=_decode(structure.get("negative"), tensors, "negative"),
        unconditioning=unconditioning,
        pin_source=_expect(structure.get("pin_source", False), bool, "pin_source"),
    )


def _ddpm_noises(tensors: dict[str, torch.Tensor], name: Any, latents: torch.Tensor) -> Optional[torch.Tensor]:
    """The recorded DDPM noises ``[N, B, C, ...]`` of a file (None when it has none), shape-checked."""
    if name is None:
        return None
    noises = _tensor(tensors, name, "ddpm_noises")
    if tuple(noises.shape) != (latents.shape[0] - 1, *latents.shape[1:]):
        raise _corrupt(f"the recorded DDPM noises {tuple(noises.shape)} do not fit the trajectory "
                       f"{tuple(latents.shape)}")
    return noises


# ---------------------------------------------------------------------------------------------
# Files.


def write_file_parts(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write the parts from :func:`record_to_file_parts` to ``path``, replacing any file there.

    The file is written next to its destination under a temporary name and then renamed, so a
    crash never leaves a half-written inversion behind. The folder must exist.
    """
    path = os.fspath(path)
    # A fresh name in the same folder (so the rename is atomic), created by save_file with the
    # usual permissions (mkstemp would make it private to this user).
    partial = os.path.join(os.path.dirname(os.path.abspath(path)), f".partial-{uuid.uuid4().hex}.safetensors")
    try:
        save_file(tensors, partial, metadata=metadata)
        os.replace(partial, path)
    except BaseException:
        if os.path.exists(partial):
            os.remove(partial)
        raise


def save_record(path: str | os.PathLike, record: InversionRecord) -> None:
    """Write ``record`` to ``path`` as a safetensors file (see :func:`write_file_parts`)."""
    write_file_parts(path, *record_to_file_parts(record))


def read_file_metadata(path: str | os.PathLike) -> Optional[dict[str, str]]:
    """The safetensors metadata of ``path``, or None when it is not a readable safetensors file."""
    try:
        with safe_open(os.fspath(path), framework="pt", device="cpu") as handle:
            return handle.metadata()
    except (SafetensorError, OSError, RuntimeError, ValueError):
        return None


def file_holds_parts(path: str | os.PathLike, metadata: dict[str, str]) -> bool:
    """True when ``path`` is an intact inversion file with this metadata, i.e. it holds the same record.

    The metadata carries the record's structure and a digest of all its tensors; the tensors on
    disk are read and checked against it too, so a damaged file never counts as the same.
    """
    if read_file_metadata(path) != metadata:
        return False
    try:
        load_record(path)
    except (InversionFileError, OSError):
        return False
    return True


def load_record(path: str | os.PathLike) -> InversionRecord:
    """Read a record written by :func:`save_record`; its tensors are on the CPU.

    The tensors are ordinary tensors (not inference tensors) also when called under
    ``torch.inference_mode()``, as ComfyUI runs nodes. Raises FileNotFoundError for a missing
    file and :class:`InversionFileError` for one that is truncated, damaged, of another format
    or of an unknown version.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No inversion file at {path}.")
    try:
        with torch.inference_mode(False), safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as error:
        raise InversionFileError(
            f"{os.path.basename(path)} is not a readable safetensors file (truncated or damaged: {error}). "
            "Save the inversion again."
        ) from error
    try:
        return record_from_file_parts(tensors, metadata)
    except InversionFileError as error:
        raise InversionFileError(f"{os.path.basename(path)}: {error}") from error


# ---------------------------------------------------------------------------------------------
# File names that stay inside a folder.


def inversion_file_path(folder: str | os.PathLike, name: str) -> str:
    """The path of the inversion file ``name`` inside ``folder``; refuses names that would leave it.

    ``name`` is relative to ``folder`` and may name subfolders (``invedit/cat``; ``\\`` counts as
    ``/``); :data:`FILE_SUFFIX` is added unless it is already there. Absolute names, drive
    letters, ``..`` and symbolic links that lead out of ``folder`` raise
    :class:`InversionPathError`. Returns the real (symlink-free) absolute path.
    """
    if not isinstance(name, str):
        raise InversionPathError(f"The file name must be text, got {type(name).__name__}.")
    text = name.strip().replace("\\", "/")
    if not text:
        raise InversionPathError("The file name is empty: type a name such as invedit/my_image.")
    if "\0" in text:
        raise InversionPathError("The file name contains a NUL character: remove it.")
    if text.startswith("/") or _WINDOWS_DRIVE.match(text):
        raise InversionPathError(
            f"The file name {name!r} is absolute; inversions are saved in and loaded from ComfyUI's output "
            "folder only: give a name relative to it, such as invedit/my_image."
        )
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise InversionPathError(
            f"The file name {name!r} contains '..'; names may not leave ComfyUI's output folder: give a name "
            "inside it, such as invedit/my_image."
        )
    if not parts or text.endswith("/"):
        raise InversionPathError(f"The file name {name!r} names a folder: add a file name, such as invedit/my_image.")
    if not parts[-1].endswith(FILE_SUFFIX):
        parts[-1] += FILE_SUFFIX
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, path]) != root:
        raise InversionPathError(
            f"The file name {name!r} leads out of ComfyUI's output folder through a symbolic link "
            f"(it resolves to {path}): pick a name whose folders lie inside the output folder."
        )
    if os.path.isdir(path):
        raise InversionPathError(f"{name!r} is a folder, not an inversion file: add a file name.")
    return path


def saved_inversion_names(folder: str | os.PathLike, limit: int = 20) -> list[str]:
    """Names (relative to ``folder``, without :data:`FILE_SUFFIX`) of saved inversions in it, sorted."""
    root = os.path.realpath(folder)
    names = []
    for current, _, files in os.walk(root):
        for file in files:
            if file.endswith(FILE_SUFFIX):
                relative = os.path.relpath(os.path.join(current, file), root).replace(os.sep, "/")
                names.append(relative[: -len(FILE_SUFFIX)])
    return sorted(names)[:limit]
