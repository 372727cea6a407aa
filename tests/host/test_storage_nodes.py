"""InvEdit Save / Load Inversion inside ComfyUI: bit-for-bit round trips and refusals, on tiny real models."""

from __future__ import annotations

import os

import pytest
import torch

from invedit.inversion.storage import FILE_SUFFIX
from invedit.nodes.options import option_defaults

STEPS = 10
OPTIONS = option_defaults()
SETTINGS = dict(OPTIONS, steps=STEPS, inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero")
EDIT_CFG = 2.5  # reconstruct at another guidance than the inversion's, so the negative prompt matters too


@pytest.fixture
def output_dir(tmp_path):
    """A private ComfyUI output folder for one test (restored afterwards)."""
    import folder_paths

    previous = folder_paths.get_output_directory()
    folder = tmp_path / "output"
    folder.mkdir()
    folder_paths.set_output_directory(str(folder))
    yield folder
    folder_paths.set_output_directory(previous)


def source_nodes(graph, arch: str):
    """Tiny model, source and negative prompts, source latent; returns (model, positive, negative, latent)."""
    model = graph.node("InvEditTestTinyModel", arch=arch, seed=0)
    positive = graph.node("InvEditTestConditioning", arch=arch, seed=1, tokens=8)
    negative = graph.node("InvEditTestConditioning", arch=arch, seed=2, tokens=8)
    latent = graph.node("InvEditTestLatent", arch=arch, seed=3, batch=1, height=16, width=16)
    return model, positive, negative, latent


def assert_same_conditioning(loaded, original) -> None:
    assert len(loaded) == len(original)
    for (loaded_context, loaded_extras), (context, extras) in zip(loaded, original):
        assert loaded_context.dtype == context.dtype and torch.equal(loaded_context, context)
        assert list(loaded_extras) == list(extras)
        for key, value in extras.items():
            if isinstance(value, torch.Tensor):
                assert loaded_extras[key].dtype == value.dtype and torch.equal(loaded_extras[key], value), key
            else:
                assert type(loaded_extras[key]) is type(value) and loaded_extras[key] == value, key


def assert_same_record(loaded, original) -> None:
    """Every field of two INVERSION records equal, tensors bit for bit with the same dtype."""
    for name in ("latents", "sigmas"):
        a, b = getattr(loaded.trajectory, name), getattr(original.trajectory, name)
        assert a.dtype == b.dtype and torch.equal(a, b.to(a.device)), name
    assert loaded.trajectory.model_calls == original.trajectory.model_calls
    assert loaded.trajectory.config == original.trajectory.config
    assert torch.equal(loaded.sampling_sigmas, original.sampling_sigmas)
    assert loaded.settings == original.settings
    assert_same_conditioning(loaded.positive, original.positive)
    assert_same_conditioning(loaded.negative, original.negative)
    assert loaded.unconditioning == original.unconditioning and loaded.pin_source == original.pin_source


def capture_inversion_outputs(graph, model, positive, negative, node) -> None:
    """Capture a node's (noise, inversion, sigmas) outputs and a Reconstruct of its inversion."""
    for index, key in enumerate(("noise", "inversion", "sigmas")):
        graph.capture(key, node.out(index))
    graph.capture("reconstructed", graph.node("InvEditReconstruct", model=model, positive=positive,
                                              negative=negative, inversion=node.out(1), cfg=EDIT_CFG))


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_save_then_load_in_another_run_is_bit_for_bit(graph, run_graph, output_dir, arch):
    model, positive, negative, latent = source_nodes(graph, arch)
    inversion = graph.node("InvEditDDIMInversion", model=model, positive=positive, negative=negative, latent=latent,
                           **SETTINGS)
    save = graph.node("InvEditSaveInversion", inversion=inversion.out(1), file_name="invedit/cat", overwrite=False)
    graph.capture("passed", save.out(0))
    capture_inversion_outputs(graph, model, positive, negative, inversion)
    first = run_graph(graph)
    saved_file = output_dir / "invedit" / f"cat{FILE_SUFFIX}"
    assert saved_file.is_file() and saved_file.stat().st_size > first["inversion"].trajectory.latents.numel() * 4
    assert first["passed"] is first["inversion"]
    assert "invedit/cat" in first.ui[save.node_id]["text"][0]

    # "Edit many times": a second graph that only loads.
    from comfy_graph import Graph

    later = Graph()
    model, positive, negative, latent = source_nodes(later, arch)
    load = later.node("InvEditLoadInversion", model=model, file_name="invedit/cat", latent=latent)
    capture_inversion_outputs(later, model, positive, negative, load)
    second = run_graph(later)
    assert_same_record(second["inversion"], first["inversion"])
    assert torch.equal(second["noise"]["samples"], first["noise"]["samples"])
    assert torch.equal(second["sigmas"], first["sigmas"])
    assert torch.equal(second["reconstructed"]["samples"], first["reconstructed"]["samples"])
    if arch == "sdxl":
        assert second["inversion"].positive[0][1]["width"] == 1024
        assert second["inversion"].positive[0][1]["pooled_output"].shape == (1, 1280)


# --- direct calls ---------------------------------------------------------------------------


def invert(pack_nodes, model, conditioning, latent) -> tuple:
    """(noise LATENT, INVERSION, SIGMAS) of InvEdit DDIM Inversion, run as ComfyUI runs it."""
    with torch.inference_mode():
        return pack_nodes["InvEditDDIMInversion"].execute(model=model, positive=conditioning, negative=conditioning,
                                                          latent=latent, **SETTINGS).result


def save(pack_nodes, inversion, file_name: str, overwrite: bool = False):
    with torch.inference_mode():
        return pack_nodes["InvEditSaveInversion"].execute(inversion=inversion, file_name=file_name, overwrite=overwrite)


def load(pack_nodes, model, file_name: str, latent=None) -> tuple:
    with torch.inference_mode():
        return pack_nodes["InvEditLoadInversion"].execute(model=model, file_name=file_name, latent=latent).result


@pytest.fixture
def saved_cat(pack_nodes, tiny_model, tiny_conditioning, tiny_latent, output_dir):
    """An sd15 inversion of latent seed 3 saved as 'cat'; returns (model, latent, noise, inversion)."""
    model, latent = tiny_model("sd15"), tiny_latent("sd15", 3)
    noise, inversion, _ = invert(pack_nodes, model, tiny_conditioning("sd15", 1), latent)
    save(pack_nodes, inversion, "cat")
    return model, latent, noise, inversion


def test_direct_load_under_inference_mode_equals_the_inversion(pack_nodes, saved_cat, output_dir):
    model, latent, noise, inversion = saved_cat
    assert (output_dir / f"cat{FILE_SUFFIX}").is_file()
    loaded_noise, loaded, sigmas = load(pack_nodes, model, "cat", latent)
    assert_same_record(loaded, inversion)
    assert torch.equal(loaded_noise["samples"], noise["samples"])
    assert torch.equal(sigmas, inversion.sampling_sigmas)
    # The same file by its full name, and with Windows separators in a subfolder name.
    assert torch.equal(load(pack_nodes, model, f"cat{FILE_SUFFIX}")[0]["samples"], noise["samples"])


def test_subfolders_inside_the_output_folder_are_allowed(pack_nodes, saved_cat, output_dir):
    model, _, noise, inversion = saved_cat
    save(pack_nodes, inversion, "a/b/cat")
    assert (output_dir / "a" / "b" / f"cat{FILE_SUFFIX}").is_file()
    assert torch.equal(load(pack_nodes, model, "a\\b\\cat")[0]["samples"], noise["samples"])


@pytest.mark.parametrize("name", ["../../x", "../x", "a/../../x", "..", "/tmp/invedit-escape/x", "C:\\x", ""])
def test_names_that_leave_the_output_folder_are_refused(pack_nodes, saved_cat, output_dir, tmp_path, name):
    model, _, _, inversion = saved_cat
    with pytest.raises(ValueError, match="output folder|empty") as refused:
        save(pack_nodes, inversion, name)
    assert type(refused.value).__name__ == "InvEditInputError"
    with pytest.raises(ValueError, match="output folder|empty"):
        load(pack_nodes, model, name)
    written = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob(f"*{FILE_SUFFIX}"))
    assert written == [f"output/cat{FILE_SUFFIX}"]
    assert not os.path.exists(f"/tmp/invedit-escape/x{FILE_SUFFIX}")


def test_symbolic_links_out_of_the_output_folder_are_refused(pack_nodes, saved_cat, output_dir, tmp_path):
    model, _, _, inversion = saved_cat
    outside = tmp_path / "outside"
    outside.mkdir()
    (output_dir / "shared").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="symbolic link"):
        save(pack_nodes, inversion, "shared/cat")
    with pytest.raises(ValueError, match="symbolic link"):
        load(pack_nodes, model, "shared/cat")
    assert list(outside.iterdir()) == []


def test_another_model_is_refused_saying_what_differs(pack_nodes, saved_cat, tiny_model):
    model, latent, _, _ = saved_cat
    with pytest.raises(ValueError, match="another model: the weights differ") as refused:
        load(pack_nodes, tiny_model("sd15", seed=1), "cat")
    assert "architecture" not in str(refused.value) and "patches differ" not in str(refused.value)
    with pytest.raises(ValueError, match="another model: the architecture differs.*prediction type"):
        load(pack_nodes, tiny_model("sd15_v"), "cat")
    patched = model.clone()
    key = "diffusion_model.out.2.bias"
    patched.add_patches({key: ("diff", (torch.full_like(model.model.state_dict()[key], 0.01),))}, 0.8)
    with pytest.raises(ValueError, match="the LoRA / weight patches differ"):
        load(pack_nodes, patched, "cat")
    assert torch.equal(load(pack_nodes, model.clone(), "cat", latent)[1].trajectory.noise,
                       saved_cat[3].trajectory.noise)


def test_another_latent_is_refused_saying_how_it_differs(pack_nodes, saved_cat, tiny_latent):
    model = saved_cat[0]
    with pytest.raises(ValueError, match="not the one 'cat' was inverted from: same size, other values"):
        load(pack_nodes, model, "cat", tiny_latent("sd15", 4))
    with pytest.raises(ValueError, match="it is 1x4x32x16, the inversion's source was 1x4x16x16"):
        load(pack_nodes, model, "cat", tiny_latent("sd15", 3, height=32))
    with pytest.raises(ValueError, match="no 'samples' tensor"):
        load(pack_nodes, model, "cat", {"image": torch.zeros(1)})


def test_overwrite_policy(pack_nodes, saved_cat, tiny_conditioning, tiny_latent, output_dir):
    model, _, noise, inversion = saved_cat
    again = save(pack_nodes, inversion, "cat")  # the same inversion: fine, the file is left as it is
    assert "unchanged" in again.ui.as_dict()["text"][0]
    other_noise, other, _ = invert(pack_nodes, model, tiny_conditioning("sd15", 1), tiny_latent("sd15", 5))
    with pytest.raises(ValueError, match="already saved as 'cat'.*overwrite"):
        save(pack_nodes, other, "cat")
    assert torch.equal(load(pack_nodes, model, "cat")[0]["samples"], noise["samples"])
    save(pack_nodes, other, "cat", overwrite=True)
    assert torch.equal(load(pack_nodes, model, "cat")[0]["samples"], other_noise["samples"])
    assert not torch.equal(other_noise["samples"], noise["samples"])
    assert sorted(os.listdir(output_dir)) == [f"cat{FILE_SUFFIX}"]  # no temporary files left


def test_saving_again_repairs_a_damaged_file(pack_nodes, saved_cat, output_dir):
    model, _, noise, inversion = saved_cat
    path = output_dir / f"cat{FILE_SUFFIX}"
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0x40  # a tensor byte: the metadata still matches the inversion
    path.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match="checksum"):
        load(pack_nodes, model, "cat")
    result = save(pack_nodes, inversion, "cat")  # no overwrite needed: it is the same inversion
    assert result.ui.as_dict()["text"][0].startswith("Saved as cat")
    assert torch.equal(load(pack_nodes, model, "cat")[0]["samples"], noise["samples"])


def test_load_runs_again_when_the_file_changes(pack_nodes, saved_cat, output_dir):
    loader = pack_nodes["InvEditLoadInversion"]
    before = loader.fingerprint_inputs(file_name="cat")
    assert loader.fingerprint_inputs(file_name="cat") == before
    os.utime(output_dir / f"cat{FILE_SUFFIX}", ns=(1, 1))
    assert loader.fingerprint_inputs(file_name="cat") != before
    missing = loader.fingerprint_inputs(file_name="nothing")
    assert missing != missing  # NaN: always runs, so the "not found" error shows


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not inversion"])
def test_a_damaged_file_gives_a_clear_error(pack_nodes, saved_cat, output_dir, damage):
    from safetensors.torch import save_file

    path = output_dir / f"bad{FILE_SUFFIX}"
    if damage == "garbage":
        path.write_bytes(b"this is not a safetensors file at all")
    elif damage == "truncated":
        path.write_bytes((output_dir / f"cat{FILE_SUFFIX}").read_bytes()[:-100])
    else:
        save_file({"weight": torch.ones(2)}, str(path))
    expected = ("not an InvEdit inversion" if damage == "not inversion"
                else "truncated or damaged.*Save the inversion again")
    with pytest.raises(ValueError, match=expected) as refused:
        load(pack_nodes, saved_cat[0], "bad")
    assert type(refused.value).__name__ == "InvEditInputError"


def test_a_missing_file_lists_the_saved_ones(pack_nodes, saved_cat):
    with pytest.raises(ValueError, match="No inversion is saved as 'dog'.*Saved inversions: cat"):
        load(pack_nodes, saved_cat[0], "dog")


def test_a_conditioning_with_a_controlnet_object_is_refused(pack_nodes, saved_cat, output_dir):
    class ControlNet:  # what ControlNetApply puts under "control"
        pass

    inversion = saved_cat[3]
    context, extras = inversion.positive[0]
    controlled = inversion.with_changes(positive=[[context, {**extras, "control": ControlNet()}]])
    with pytest.raises(ValueError, match="positive CONDITIONING.*'control'.*ControlNet.*after loading"):
        save(pack_nodes, controlled, "controlled")
    assert not (output_dir / f"controlled{FILE_SUFFIX}").exists()
