"""Saving and loading an INVERSION record as safetensors: bit-for-bit round trips, refusals (no ComfyUI)."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from invedit.inversion import EasyInvConfig, InversionConfig, InversionTrajectory, WarmStartConfig
from invedit.inversion import storage
from invedit.inversion.record import InversionRecord, Unconditioning
from invedit.inversion.storage import (
    FILE_SUFFIX,
    InversionFileError,
    InversionNotSaveableError,
    InversionPathError,
    inversion_file_path,
    load_record,
    record_from_file_parts,
    record_to_file_parts,
    save_record,
)

STEPS = 6
BATCH, CHANNELS, HEIGHT, WIDTH = 2, 4, 8, 8
TOKENS, CONTEXT_DIM, POOLED_DIM = 5, 16, 12


def bits(tensor: torch.Tensor) -> bytes:
    """The tensor's raw bytes (NaN payloads and -0.0 included)."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_identical(loaded, original, where: str = "record") -> None:
    """Same types, same values; tensors with the same dtype, shape and bytes."""
    assert type(loaded) is type(original), f"{where}: {type(loaded).__name__} != {type(original).__name__}"
    if isinstance(original, torch.Tensor):
        assert loaded.dtype == original.dtype and loaded.shape == original.shape, where
        assert bits(loaded) == bits(original), f"{where}: the bytes differ"
    elif isinstance(original, (list, tuple)):
        assert len(loaded) == len(original), where
        for index, (a, b) in enumerate(zip(loaded, original)):
            assert_identical(a, b, f"{where}[{index}]")
    elif isinstance(original, dict):
        assert list(loaded) == list(original), f"{where}: keys {list(loaded)} != {list(original)}"
        for key in original:
            assert_identical(loaded[key], original[key], f"{where}[{key!r}]")
    elif dataclasses.is_dataclass(original):
        for field in dataclasses.fields(original):
            assert_identical(getattr(loaded, field.name), getattr(original, field.name), f"{where}.{field.name}")
    elif isinstance(original, float) and original != original:
        assert loaded != loaded, where
    else:
        assert loaded == original, f"{where}: {loaded!r} != {original!r}"


def sdxl_like_conditioning(generator: torch.Generator, dtype: torch.dtype = torch.float32) -> list:
    """A CONDITIONING as CLIPTextEncodeSDXL gives it, plus an area tuple and a None value."""
    return [[
        torch.randn(1, TOKENS, CONTEXT_DIM, generator=generator).to(dtype),
        {
            "pooled_output": torch.randn(1, POOLED_DIM, generator=generator).to(torch.float16),
            "width": 1024, "height": 1024, "crop_w": 0, "crop_h": 0, "target_width": 1024, "target_height": 1024,
            "area": (64, 64, 0, 8),
            "strength": 0.75,
            "set_area_to_bounds": False,
            "mask": None,
        },
    ]]


def make_record(latent_dtype: torch.dtype = torch.float32, with_unconditioning: bool = True) -> InversionRecord:
    """A record with every field set: EasyInv and warm start, null-text step contexts, SDXL extras."""
    generator = torch.Generator().manual_seed(11)
    sigmas = torch.linspace(0.0, 14.6, STEPS + 1)
    latents = torch.randn(STEPS + 1, BATCH, CHANNELS, HEIGHT, WIDTH, generator=generator).to(latent_dtype)
    config = InversionConfig(
        timestep_rule="simple", prediction_type="v", v_conversion="state", sigma_floor=0.029167532920837402,
        easyinv=EasyInvConfig(eta=0.5, start=0.05, length=0.2, variant="output"),
        warm_start=WarmStartConfig(steps=2, fraction=0.0, seed=2**40 + 3),
    )
    unconditioning = None
    if with_unconditioning:
        unconditioning = Unconditioning(
            method="null-text",
            conditioning=sdxl_like_conditioning(generator, torch.bfloat16),
            step_contexts=torch.randn(STEPS, 1, TOKENS, CONTEXT_DIM, generator=generator),
            report={"losses": [0.5, 0.25, float("nan")], "gradient_steps": 60, "seconds": 1.5, "early_stop": None},
        )
    return InversionRecord(
        trajectory=InversionTrajectory(sigmas=sigmas, latents=latents, model_calls=STEPS - 2, config=config),
        sampling_sigmas=sigmas.flip(0).clone(),
        settings={
            "steps": STEPS, "scheduler": "ddim_uniform", "inversion_cfg": 1.0, "clean_level": "zero",
            "easyinv": dataclasses.asdict(config.easyinv), "warm_start": dataclasses.asdict(config.warm_start),
            "source_latent_sha256": "ab" * 32,
            "model_fingerprint": {"architecture": "1" * 64, "weights": "2" * 64, "patches": "3" * 64},
        },
        positive=sdxl_like_conditioning(generator),
        negative=sdxl_like_conditioning(generator),
        unconditioning=unconditioning,
        pin_source=True,
    )


@pytest.mark.parametrize("latent_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_file_round_trip_is_bit_for_bit(tmp_path, latent_dtype):
    record = make_record(latent_dtype)
    path = tmp_path / f"cat{FILE_SUFFIX}"
    save_record(path, record)
    loaded = load_record(path)
    assert_identical(loaded, record)
    assert loaded.trajectory.latents.dtype == latent_dtype
    assert loaded.positive[0][1]["pooled_output"].dtype == torch.float16
    assert loaded.unconditioning.conditioning[0][0].dtype == torch.bfloat16
    assert loaded.positive[0][1]["area"] == (64, 64, 0, 8)  # a tuple stays a tuple
    assert type(loaded.positive[0][1]["width"]) is int and loaded.positive[0][1]["mask"] is None


def test_per_step_pooled_vectors_round_trip_and_are_absent_from_files_without_them(tmp_path):
    """Null-text with a pooled vector (SD3.5, Flux, SDXL) stores ``step_pooled [N, B, P]``; a record without
    one writes no such entry (its file keeps the bytes it had before the field existed)."""
    record = make_record()
    pooled = torch.randn(STEPS, BATCH, 6, generator=torch.Generator().manual_seed(3))
    with_pooled = record.with_changes(unconditioning=dataclasses.replace(record.unconditioning, step_pooled=pooled))
    save_record(tmp_path / "pooled.safetensors", with_pooled)
    loaded = load_record(tmp_path / "pooled.safetensors")
    assert torch.equal(loaded.unconditioning.step_pooled, pooled)
    assert_identical(loaded, with_pooled)
    tensors, metadata = record_to_file_parts(record)
    assert not any("step_pooled" in name for name in tensors) and "step_pooled" not in metadata[storage.METADATA_KEY]
    assert any("step_pooled" in name for name in record_to_file_parts(with_pooled)[0])  # control


def test_saving_is_deterministic_and_a_loaded_record_saves_to_the_same_bytes(tmp_path):
    record = make_record()
    save_record(tmp_path / "a.safetensors", record)
    save_record(tmp_path / "b.safetensors", make_record())
    save_record(tmp_path / "c.safetensors", load_record(tmp_path / "a.safetensors"))
    first = (tmp_path / "a.safetensors").read_bytes()
    assert first == (tmp_path / "b.safetensors").read_bytes() == (tmp_path / "c.safetensors").read_bytes()
    assert not [name for name in os.listdir(tmp_path) if name.startswith(".partial-")]


def test_parts_round_trip_without_a_file_and_keep_nan_and_negative_zero_bits():
    record = make_record(with_unconditioning=False)
    special = torch.tensor([float("nan"), -0.0, float("inf"), 0.0, -float("inf")])
    record = record.with_changes(settings={**record.settings, "special": special, 3: "int key",
                                           "tag-like": {"__tensor__": "not a tensor"}})
    tensors, metadata = record_to_file_parts(record)
    assert set(metadata) == {storage.METADATA_KEY}
    assert {"trajectory.sigmas", "trajectory.latents", "sampling_sigmas", "settings.0"} <= set(tensors)
    assert all(not tensor.is_inference() and tensor.is_contiguous() for tensor in tensors.values())
    loaded = record_from_file_parts(tensors, metadata)
    assert_identical(loaded, record)
    assert loaded.unconditioning is None
    assert bits(loaded.settings["special"]) == bits(special)
    assert loaded.settings["tag-like"] == {"__tensor__": "not a tensor"}


def test_shared_and_non_contiguous_tensors_are_saved(tmp_path):
    record = make_record()
    context = torch.randn(1, CONTEXT_DIM, TOKENS).transpose(1, 2)  # non-contiguous view
    record = record.with_changes(positive=[[context, {}]], negative=[[context, {}]])  # same tensor twice
    save_record(tmp_path / "x.safetensors", record)
    loaded = load_record(tmp_path / "x.safetensors")
    assert torch.equal(loaded.positive[0][0], context) and torch.equal(loaded.negative[0][0], context)


def test_loading_under_inference_mode_gives_ordinary_cpu_tensors(tmp_path):
    save_record(tmp_path / "x.safetensors", make_record())
    with torch.inference_mode():
        loaded = load_record(tmp_path / "x.safetensors")
    assert not loaded.trajectory.latents.is_inference()
    assert loaded.trajectory.latents.device.type == "cpu"
    assert_identical(loaded, make_record())


def test_objects_in_a_conditioning_are_refused_naming_the_key():
    class ControlNet:  # stands in for comfy.controlnet.ControlNet
        pass

    record = make_record()
    positive = [[record.positive[0][0], {**record.positive[0][1], "control": ControlNet()}]]
    with pytest.raises(InversionNotSaveableError, match=r"positive CONDITIONING.*'control'.*ControlNet.*after loading"):
        record_to_file_parts(record.with_changes(positive=positive))
    gligen = [[record.positive[0][0], {"gligen": ("position", ControlNet(), [])}]]
    with pytest.raises(InversionNotSaveableError, match=r"negative CONDITIONING.*'gligen'"):
        record_to_file_parts(record.with_changes(negative=gligen))
    with pytest.raises(InversionNotSaveableError, match=r"settings\['callback'\].*function"):
        record_to_file_parts(record.with_changes(settings={"callback": print}))
    assert issubclass(InversionNotSaveableError, ValueError)


# --- damaged and foreign files --------------------------------------------------------------


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / f"cat{FILE_SUFFIX}"
    save_record(path, make_record())
    return path


@pytest.mark.parametrize("keep_bytes", [0, 7, 100, -1])
def test_truncated_files_are_refused(saved, keep_bytes):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep_bytes] if keep_bytes >= 0 else data[:-1])
    with pytest.raises(InversionFileError, match="truncated or damaged"):
        load_record(saved)


def test_a_changed_tensor_byte_is_refused_by_the_checksum(saved):
    data = bytearray(saved.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's data
    saved.write_bytes(bytes(data))
    with pytest.raises(InversionFileError, match="checksum"):
        load_record(saved)


def test_a_missing_tensor_is_refused():
    tensors, metadata = record_to_file_parts(make_record())
    del tensors["trajectory.latents"]
    with pytest.raises(InversionFileError, match="checksum"):
        record_from_file_parts(tensors, metadata)
    # Even with a digest that agrees, a tensor the structure refers to must be there.
    document = json.loads(metadata[storage.METADATA_KEY])
    document["tensors_sha256"] = storage._tensors_digest(tensors)
    with pytest.raises(InversionFileError, match="'trajectory.latents'.*missing"):
        record_from_file_parts(tensors, {storage.METADATA_KEY: json.dumps(document)})


def rewrite_document(path, change) -> None:
    """Re-save ``path`` with its JSON document changed by ``change(document)``."""
    tensors, metadata = record_to_file_parts(load_record(path))
    document = json.loads(metadata[storage.METADATA_KEY])
    change(document)
    save_file(tensors, str(path), metadata={storage.METADATA_KEY: json.dumps(document)})


def test_a_newer_format_version_is_refused(saved):
    rewrite_document(saved, lambda document: document.update(format_version=3))
    with pytest.raises(InversionFileError, match="format version 3.*reads versions 1 and 2.*newer InvEdit"):
        load_record(saved)


@pytest.mark.parametrize("version", [0, "1", None])
def test_unknown_format_versions_are_refused(saved, version):
    rewrite_document(saved, lambda document: document.update(format_version=version))
    with pytest.raises(InversionFileError, match="format version"):
        load_record(saved)


def test_another_format_and_plain_safetensors_are_refused(saved, tmp_path):
    rewrite_document(saved, lambda document: document.update(format="someone.else"))
    with pytest.raises(InversionFileError, match="not an InvEdit inversion"):
        load_record(saved)
    plain = tmp_path / "model.safetensors"
    save_file({"weight": torch.ones(3)}, str(plain))
    with pytest.raises(InversionFileError, match="not an InvEdit inversion"):
        load_record(plain)


@pytest.mark.parametrize("change, problem", [
    (lambda document: document["record"]["trajectory"].update(model_calls="four"), "model_calls"),
    (lambda document: document["record"]["trajectory"]["config"].update(timestep_rule="odd"), "timestep_rule"),
    (lambda document: document["record"]["trajectory"]["config"].update(extra=1), r"unknown fields \['extra'\]"),
    (lambda document: document["record"]["unconditioning"].update(method="other"), "method"),
    (lambda document: document["record"].update(settings=[1, 2]), "settings"),
])
def test_damaged_structure_is_refused(saved, change, problem):
    rewrite_document(saved, change)
    with pytest.raises(InversionFileError, match=f"damaged.*{problem}"):
        load_record(saved)


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_record(tmp_path / "nothing.safetensors")


# --- file names -----------------------------------------------------------------------------


def test_names_stay_inside_the_folder_and_get_the_suffix(tmp_path):
    root = os.path.realpath(tmp_path)
    expected = os.path.join(root, "invedit", "cat" + FILE_SUFFIX)
    for name in ("invedit/cat", "invedit\\cat", " invedit/cat ", "invedit/./cat", "invedit//cat",
                 "invedit/cat" + FILE_SUFFIX):
        assert inversion_file_path(tmp_path, name) == expected
    assert inversion_file_path(tmp_path, "cat") == os.path.join(root, "cat" + FILE_SUFFIX)


@pytest.mark.parametrize("name", ["../../x", "..", "a/../../x", "a/../b", "..\\x", "/tmp/x", "\\\\server\\x",
                                  "C:/x", "c:x", "", "   ", "folder/", "a\0b"])
def test_names_that_leave_the_folder_or_name_nothing_are_refused(tmp_path, name):
    with pytest.raises(InversionPathError):
        inversion_file_path(tmp_path / "output", name)


def test_symbolic_links_out_of_the_folder_are_refused(tmp_path):
    output, outside = tmp_path / "output", tmp_path / "outside"
    output.mkdir()
    outside.mkdir()
    (output / "escape").symlink_to(outside, target_is_directory=True)
    (output / f"file{FILE_SUFFIX}").symlink_to(outside / f"file{FILE_SUFFIX}")
    (output / "inside").symlink_to(output / "real", target_is_directory=True)
    with pytest.raises(InversionPathError, match="symbolic link"):
        inversion_file_path(output, "escape/cat")
    with pytest.raises(InversionPathError, match="symbolic link"):
        inversion_file_path(output, "file")
    assert inversion_file_path(output, "inside/cat") == os.path.join(os.path.realpath(output), "real",
                                                                     "cat" + FILE_SUFFIX)


def test_saved_inversion_names_lists_only_inversion_files(tmp_path):
    (tmp_path / "b").mkdir()
    save_record(tmp_path / f"z{FILE_SUFFIX}", make_record())
    save_record(tmp_path / "b" / f"a{FILE_SUFFIX}", make_record())
    (tmp_path / "image.png").write_bytes(b"png")
    assert storage.saved_inversion_names(tmp_path) == ["b/a", "z"]


def test_file_holds_parts_only_for_an_intact_copy_of_the_same_record(saved):
    _, metadata = record_to_file_parts(make_record())
    assert storage.file_holds_parts(saved, metadata)
    _, other_metadata = record_to_file_parts(make_record().with_changes(pin_source=False))
    assert not storage.file_holds_parts(saved, other_metadata)
    data = bytearray(saved.read_bytes())
    data[-1] ^= 0x40
    saved.write_bytes(bytes(data))
    assert storage.read_file_metadata(saved) == metadata  # the header is intact, the data is not
    assert not storage.file_holds_parts(saved, metadata)
    assert storage.read_file_metadata(saved.with_name("missing.safetensors")) is None


def test_a_file_saved_before_the_solvers_loads_with_the_euler_solver(saved):
    """Files written before ``solver`` / ``fixed_point_iterations`` existed have neither: they load as Euler."""

    def drop_solver_fields(document):
        config = document["record"]["trajectory"]["config"]
        del config["solver"], config["fixed_point_iterations"]

    rewrite_document(saved, drop_solver_fields)
    config = load_record(saved).trajectory.config
    assert (config.solver, config.fixed_point_iterations) == ("euler", InversionConfig().fixed_point_iterations)
    assert load_record(saved).replay_solver == "euler"


def test_flow_records_with_solvers_and_five_d_latents_round_trip(tmp_path):
    """A Qwen-Image inversion: rectified flow, FireFlow, trajectory [N+1, B, C, 1, H, W]."""
    record = make_record(with_unconditioning=False)
    latents = record.trajectory.latents.unsqueeze(3)
    config = InversionConfig(process="rectified-flow", prediction_type="velocity", sigma_floor=1e-4,
                             solver="fixed-point", fixed_point_iterations=3)
    record = record.with_changes(trajectory=InversionTrajectory(record.trajectory.sigmas, latents, 18, config),
                                 settings={**record.settings, "process": "rectified-flow", "solver": "fixed-point"})
    path = tmp_path / f"qwen{FILE_SUFFIX}"
    save_record(path, record)
    loaded = load_record(path)
    assert_identical(loaded, record)
    assert loaded.trajectory.latents.ndim == 6 and loaded.trajectory.config.forward_process.name == "rectified-flow"
    with pytest.raises(InversionFileError, match="trajectory shapes"):
        record_from_file_parts(*record_to_file_parts(record.with_changes(
            trajectory=dataclasses.replace(record.trajectory, latents=latents[0]))))


def ddpm_record() -> InversionRecord:
    """A record of an edit-friendly DDPM inversion: recorded noises ``[N, B, C, H, W]`` beside the states."""
    record = make_record(with_unconditioning=False).with_changes(pin_source=False)
    noises = torch.randn(STEPS, BATCH, CHANNELS, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(5))
    return record.with_changes(ddpm_noises=noises)


def test_recorded_ddpm_noises_round_trip_as_format_version_2(tmp_path):
    record = ddpm_record()
    path = tmp_path / f"ddpm{FILE_SUFFIX}"
    save_record(path, record)
    assert_identical(load_record(path), record)
    document = json.loads(storage.read_file_metadata(path)[storage.METADATA_KEY])
    assert document["format_version"] == 2
    plain = tmp_path / f"plain{FILE_SUFFIX}"
    save_record(plain, make_record())
    assert json.loads(storage.read_file_metadata(plain)[storage.METADATA_KEY])["format_version"] == 1
    # Selecting images keeps the noises' rows with the trajectory's.
    selected = record.select_images([1, 0])
    assert torch.equal(selected.ddpm_noises[:, 0], record.ddpm_noises[:, 1])


def test_ddpm_noises_that_do_not_fit_the_trajectory_are_refused():
    record = ddpm_record()
    tensors, metadata = storage.record_to_file_parts(record.with_changes(ddpm_noises=record.ddpm_noises[1:]))
    with pytest.raises(InversionFileError, match="recorded DDPM noises .* do not fit the trajectory"):
        storage.record_from_file_parts(tensors, metadata)
