"""Nodes: save an INVERSION to ComfyUI's output folder and load it back (invert once, edit many times)."""

from __future__ import annotations

import logging
import os
from typing import Optional

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..inversion import storage
from ..inversion.record import InversionRecord, tensor_sha256
from .checks import check_inversion_family, check_inversion_fits, image_latent_samples
from .errors import InvEditInputError
from .fingerprint import model_fingerprint
from .sockets import CATEGORY_INVERSION, Inversion

DEFAULT_FILE_NAME = "invedit/inversion"
LISTED_FILES = 10
"""How many saved inversions a "not found" error lists."""

FILE_NAME_TOOLTIP = (
    "Name inside ComfyUI's output folder; subfolders with '/' are fine, '..' and absolute paths are "
    f"not. '{storage.FILE_SUFFIX}' is added: invedit/cat is saved as output/invedit/cat{storage.FILE_SUFFIX}."
)

# What each part of model_fingerprint stands for, as told to the user when it differs.
FINGERPRINT_PARTS = {
    "architecture": "the architecture differs (another model family, UNet configuration, prediction type "
                    "or noise schedule)",
    "weights": "the weights differ (another checkpoint or merge, the same checkpoint loaded in another "
               "precision, or LoRAs on other layers)",
    "patches": "the LoRA / weight patches differ (another LoRA or strength, or a LoRA added or removed)",
}


def _output_path(file_name: str) -> str:
    """The inversion file ``file_name`` names inside ComfyUI's output folder (escapes refused)."""
    try:
        return storage.inversion_file_path(folder_paths.get_output_directory(), file_name)
    except storage.InversionPathError as error:
        raise InvEditInputError(str(error)) from error


def _shown_name(path: str) -> str:
    """``path`` relative to the output folder, as the user types it (without the suffix)."""
    relative = os.path.relpath(path, os.path.realpath(folder_paths.get_output_directory())).replace(os.sep, "/")
    return relative[: -len(storage.FILE_SUFFIX)] if relative.endswith(storage.FILE_SUFFIX) else relative


class SaveInversion(io.ComfyNode):
    """Write an INVERSION to a safetensors file in ComfyUI's output folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditSaveInversion",
            display_name="InvEdit Save Inversion",
            category=CATEGORY_INVERSION,
            description=(
                "Saves an inversion (noise, trajectory, schedule, prompts, null-text embeddings, settings, and "
                "hashes of the source latent and of the model) as a safetensors file in ComfyUI's output folder. "
                "Load it with InvEdit Load Inversion to edit the image again without inverting it again."
            ),
            inputs=[
                Inversion.Input("inversion", tooltip="The inversion to save (InvEdit DDIM Inversion or a later node)."),
                io.String.Input("file_name", default=DEFAULT_FILE_NAME, tooltip=FILE_NAME_TOOLTIP),
                io.Boolean.Input("overwrite", default=False,
                                 tooltip="Replace a different inversion already saved under this name. Off: such a "
                                         "name is refused (saving the same inversion again is always fine)."),
            ],
            outputs=[Inversion.Output(display_name="inversion", tooltip="The same inversion, passed through.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, inversion: InversionRecord, file_name: str, overwrite: bool) -> io.NodeOutput:
        if not isinstance(inversion, InversionRecord):
            raise InvEditInputError("The inversion input is not an InvEdit INVERSION: connect an inversion node.")
        path = _output_path(file_name)
        try:
            tensors, metadata = storage.record_to_file_parts(inversion)
        except storage.InversionNotSaveableError as error:
            raise InvEditInputError(str(error)) from error
        name = _shown_name(path)
        exists = os.path.exists(path)
        same_inversion = exists and storage.read_file_metadata(path) == metadata  # perhaps damaged since
        if same_inversion and storage.file_holds_parts(path, metadata):
            message = f"Already saved, unchanged: {name} ({name}{storage.FILE_SUFFIX} in the output folder)."
        elif exists and not same_inversion and not overwrite:
            raise InvEditInputError(
                f"Another inversion is already saved as {name!r}: choose another file_name, or turn on "
                "overwrite to replace it."
            )
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            storage.write_file_parts(path, tensors, metadata)
            message = (f"Saved as {name} ({name}{storage.FILE_SUFFIX} in the output folder, "
                       f"{os.path.getsize(path) / 2**20:.1f} MiB).")
        logging.info("InvEdit Save Inversion: %s", message)
        return io.NodeOutput(inversion, ui=ui.PreviewText(message))


def _model_difference(saved: dict, current: dict) -> Optional[str]:
    """What differs between two ``model_fingerprint`` values, in words (None: the same model)."""
    differing = [part for part in sorted(set(saved) | set(current)) if saved.get(part) != current.get(part)]
    if not differing:
        return None
    return "; ".join(FINGERPRINT_PARTS.get(part, f"the model's {part} differs") for part in differing)


def _check_model(model, record: InversionRecord, name: str) -> None:
    """Refuse an inversion made with another model, saying what differs (first: another family)."""
    check_inversion_family(model, record)
    check_inversion_fits(model, record.trajectory.noise)
    saved = record.settings.get("model_fingerprint")
    if not isinstance(saved, dict):
        logging.warning("InvEdit Load Inversion: %s records no model fingerprint; the model is not checked.", name)
        return
    difference = _model_difference(saved, model_fingerprint(model))
    if difference is not None:
        raise InvEditInputError(
            f"The inversion {name!r} was made with another model: {difference}. Connect the model the image was "
            "inverted with (same checkpoint, LoRAs and strengths), or invert the image again with this model."
        )


def _as_model_latent(model, latent: dict) -> dict:
    """``latent`` with its samples in the layout the inversion hashed (a frame axis for Qwen-Image)."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        return latent
    return {**latent, "samples": image_latent_samples(model, samples)}


def _check_source_latent(latent: dict, record: InversionRecord, name: str) -> None:
    """Refuse a LATENT that is not the one the inversion was made from, saying how it differs."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        raise InvEditInputError("The latent input holds no 'samples' tensor: connect a VAE Encode output.")
    saved = record.settings.get("source_latent_sha256")
    if saved is None:
        logging.warning("InvEdit Load Inversion: %s records no source-latent hash; the latent is not checked.", name)
        return
    if tensor_sha256(samples) == saved:
        return
    source_shape = tuple(record.trajectory.latents.shape[1:])
    if tuple(samples.shape) != source_shape:
        how = (f"it is {'x'.join(map(str, samples.shape))}, the inversion's source was "
               f"{'x'.join(map(str, source_shape))} (batch x channels x height x width)")
    else:
        how = ("same size, other values: another image, or the same image resized, cropped, or encoded with another "
               "VAE or precision")
    raise InvEditInputError(
        f"The latent is not the one {name!r} was inverted from: {how}. Connect the source image's latent, or leave "
        "the latent input unconnected to skip this check."
    )


class LoadInversion(io.ComfyNode):
    """Read an INVERSION saved by InvEdit Save Inversion, after checking it fits the model (and image)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditLoadInversion",
            display_name="InvEdit Load Inversion",
            category=CATEGORY_INVERSION,
            description=(
                "Loads an inversion saved by InvEdit Save Inversion from ComfyUI's output folder, after checking "
                "that the model (and, when connected, the latent) is the one it was made with; the error says what "
                "differs. The outputs are those of InvEdit DDIM Inversion, bit for bit."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model to edit with: it must be the one the image was inverted "
                                                "with (architecture, weights and LoRAs are checked)."),
                io.String.Input("file_name", default=DEFAULT_FILE_NAME,
                                tooltip="The name it was saved under, inside ComfyUI's output folder (e.g. "
                                        f"invedit/cat for output/invedit/cat{storage.FILE_SUFFIX})."),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional: the source image's latent. When connected, it must be exactly the "
                                        "latent that was inverted."),
            ],
            outputs=[
                io.Latent.Output(display_name="noise", tooltip="The inverted noise (feed with add_noise disabled)."),
                Inversion.Output(display_name="inversion", tooltip="Trajectory, schedule, prompts and settings, for "
                                                                    "InvEdit Reconstruct and the editing nodes."),
                io.Sigmas.Output(display_name="sigmas", tooltip="The schedule that replays this inversion exactly "
                                                                "(for SamplerCustomAdvanced)."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, file_name: Optional[str] = None, **_) -> object:
        """Run again when the file changes on disk (saved again under the same name)."""
        try:
            stat = os.stat(_output_path(file_name))
        except (OSError, ValueError):
            return float("nan")
        return f"{file_name}|{stat.st_mtime_ns}|{stat.st_size}"

    @classmethod
    def execute(cls, model, file_name: str, latent: Optional[dict] = None) -> io.NodeOutput:
        path = _output_path(file_name)
        name = _shown_name(path)
        try:
            record = storage.load_record(path)
        except FileNotFoundError:
            saved = storage.saved_inversion_names(folder_paths.get_output_directory(), LISTED_FILES)
            listing = (f"Saved inversions: {', '.join(saved)}." if saved
                       else "The output folder holds no saved inversions: save one with InvEdit Save Inversion first.")
            raise InvEditInputError(f"No inversion is saved as {name!r} (looked for {path}). {listing}") from None
        except storage.InversionFileError as error:
            raise InvEditInputError(f"{error} Inversions are written by InvEdit Save Inversion.") from error
        _check_model(model, record, name)
        if latent is not None:
            _check_source_latent(_as_model_latent(model, latent), record, name)
        noise = model.model.process_latent_out(record.trajectory.noise.to(torch.float32))
        noise = noise.to(comfy.model_management.intermediate_device())
        return io.NodeOutput({"samples": noise}, record, record.sampling_sigmas.clone())


NODES = [SaveInversion, LoadInversion]
