"""Every shipped photo workflow (the ``*_photo`` examples of scripts/workflow_specs.py, in workflows/
under their card titles) runs headless through ComfyUI's real loaders.

The workflows load ``workflow_specs.SD15_CHECKPOINT`` with CheckpointLoaderSimple and a photo with
LoadImage; the ``photo_inputs`` fixture (conftest) puts an SD1.5 checkpoint of random weights
(random_checkpoints.py: the real architecture and key layout, 2.1 GB, built once and cached) and a
128x128 picture (a 16x16 latent; SD1.5 takes 64x64 and up) under those names. Each workflow file is
converted to the prompt the frontend queues (workflow_format.api_prompt) and only made cheap:
every ``steps`` widget is set to :data:`TEST_STEPS` and null-text's ``inner_steps`` to
:data:`TEST_INNER_STEPS`; the loader, CLIP, VAE and InvEdit nodes are the workflow's own.
Test-only capture nodes (and, for the numbers below, a few extra nodes beside the workflow's) read
values out.

The workflows run one after another in one PromptExecutor, as ComfyUI's server runs a queue: a
node whose inputs did not change (the checkpoint loader, a shared inversion) runs once and its
outputs are reused, so a node that changed a shared model would show up in a later workflow, and
the determinism test reruns a workflow in a fresh executor and compares the bytes.

Checked for every workflow: it validates and completes; every image it shows or saves is finite, in
[0, 1] and (when decoded) of the photo's size; every output node produced output and every SaveImage file
exists; the loader's model is ComfyUI's SD15. And where a workflow contains them:
- Reconstruct at cfg 1 of a DDIM inversion is bit for bit the stock KSamplerAdvanced ``ddim`` run
  from the inversion's noise (the README's claim, now through the real SD1.5 networks);
- direct inversion reconstructs the encoded latent exactly (up to the latent format's scaling and
  back, bit for bit), so the decoded reconstruction is the VAE round trip (PSNR above 60 dB);
- negative-prompt inversion at cfg 7.5 equals the DDIM reconstruction at cfg 1 (its unconditional
  branch is the source prompt, so guidance cancels) to float rounding;
- null-text inversion's report holds no NaN, and Save Inversion wrote a file that loads back as the
  same inversion.
"""

from __future__ import annotations

import gc
import json
import math
import time
from pathlib import Path

import folder_paths
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import comfy.model_detection
import comfy.model_management
import comfy.supported_models
import build_workflows
import random_checkpoints
import workflow_specs
from comfy_graph import CAPTURE_NODE, GraphResult, new_executor, run_prompt
from invedit.inversion import storage
from workflow_format import api_prompt, node_definitions

PHOTO_WORKFLOWS = sorted(name for name in workflow_specs.EXAMPLES if name.endswith("_photo"))
TEST_STEPS = 3
TEST_INNER_STEPS = 2
TEST_SKIP = 1  # the DDPM edit's skip, below the cheap step count
CHEAP_WIDGETS = {"steps": TEST_STEPS, "inner_steps": TEST_INNER_STEPS, "skip": TEST_SKIP}
DETERMINISM_WORKFLOW = "ddim_inversion_photo"
IMAGE_OUTPUT_NODES = ("PreviewImage", "SaveImage")
# Negative-prompt inversion at any cfg against DDIM at cfg 1: the same model calls, batched
# differently (cond and uncond in one batch), so equal to float32 rounding through the UNet.
NEGATIVE_PROMPT_LATENT_TOLERANCE = 1e-4
# Direct inversion against the VAE round trip: the latents differ by the latent scaling's rounding.
DIRECT_INVERSION_MIN_PSNR_DB = 60.0
# Seconds each workflow's run took in this session, and its tensors and numbers (for the
# determinism test; no model is kept).
RUNTIMES: dict[str, float] = {}
RESULTS: dict[str, dict] = {}


@pytest.fixture(scope="module")
def definitions(pack_loaded) -> dict:
    return node_definitions()


@pytest.fixture(scope="module")
def queue():
    """One PromptExecutor for the module's workflows (ComfyUI's server keeps one); its cache,
    the loaded checkpoint included, is dropped at the end."""
    executor = new_executor()
    yield executor
    print("\nphoto workflow run times: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in RUNTIMES.items()))
    executor.reset()
    gc.collect()
    comfy.model_management.soft_empty_cache()


def load_workflow(name: str) -> dict:
    return json.loads(build_workflows.workflow_file(name).read_text(encoding="utf-8"))


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def nodes_of(prompt: dict, class_type: str) -> list[str]:
    return [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]


def source_node(prompt: dict, node_id: str, input_name: str) -> str | None:
    """Id of the node that feeds ``input_name`` of ``node_id`` (None for a widget value)."""
    value = prompt[node_id]["inputs"].get(input_name)
    return value[0] if _is_link(value) else None


def make_cheap(prompt: dict) -> list[tuple[str, str, object]]:
    """Set the step widgets of ``prompt`` to the test's values, in place; what changed."""
    changed = []
    for node_id, node in prompt.items():
        for name, value in CHEAP_WIDGETS.items():
            if name in node["inputs"] and not _is_link(node["inputs"][name]):
                changed.append((node_id, name, node["inputs"][name]))
                node["inputs"][name] = value
    return changed


class Probe:
    """Adds nodes to a prompt: captures of existing outputs, and extra nodes beside the workflow's."""

    def __init__(self, prompt: dict) -> None:
        self.prompt = prompt
        self.next_id = max(int(node_id) for node_id in prompt) + 1

    def add(self, class_type: str, **inputs) -> str:
        node_id = str(self.next_id)
        self.next_id += 1
        self.prompt[node_id] = {"class_type": class_type, "inputs": inputs}
        return node_id

    def capture(self, key: str, link: list) -> None:
        self.add(CAPTURE_NODE, key=key, value=link)


def instrument(prompt: dict) -> None:
    """Capture what the checks read; add the reference branches they compare with."""
    probe = Probe(prompt)
    for node_id in nodes_of(prompt, "CheckpointLoaderSimple"):
        probe.capture(f"model:{node_id}", [node_id, 0])
    for class_type in IMAGE_OUTPUT_NODES:
        for node_id in nodes_of(prompt, class_type):
            probe.capture(f"image:{node_id}", prompt[node_id]["inputs"]["images"])
    for node_id in nodes_of(prompt, "InvEditReconstructionError"):
        probe.capture(f"psnr:{node_id}", [node_id, 2])
        probe.capture(f"error_reference:{node_id}", prompt[node_id]["inputs"]["reference"])
        probe.capture(f"error_result:{node_id}", prompt[node_id]["inputs"]["result"])
    for node_id in nodes_of(prompt, "InvEditNullTextInversion"):
        probe.capture(f"null_text_report:{node_id}", [node_id, 2])
    for node_id in nodes_of(prompt, "InvEditSaveInversion"):
        probe.capture(f"saved_inversion:{node_id}", [node_id, 0])

    for node_id in nodes_of(prompt, "InvEditReconstruct"):
        inputs = prompt[node_id]["inputs"]
        method_id = source_node(prompt, node_id, "inversion")
        method = prompt[method_id]
        if method["class_type"] == "InvEditDDIMInversion" and inputs["cfg"] == 1.0:
            # The stock sampler from the inversion's noise, as the README tells users to run it.
            replay = probe.add(
                "KSamplerAdvanced", model=inputs["model"], add_noise="disable", noise_seed=0, steps=TEST_STEPS,
                cfg=1.0, sampler_name="ddim", scheduler=method["inputs"]["scheduler"], positive=inputs["positive"],
                negative=method["inputs"]["negative"], latent_image=[method_id, 0], start_at_step=0,
                end_at_step=10000, return_with_leftover_noise="disable")
            probe.capture(f"ddim_reconstruct:{node_id}", [node_id, 0])
            probe.capture(f"ddim_stock_replay:{node_id}", [replay, 0])
        elif method["class_type"] == "InvEditDirectInversion":
            ddim_id = source_node(prompt, method_id, "inversion")
            probe.capture(f"direct_reconstruct:{node_id}", [node_id, 0])
            probe.capture(f"direct_source:{node_id}", prompt[ddim_id]["inputs"]["latent"])
        elif (method["class_type"] == "InvEditNegativePromptInversion"
              and method["inputs"].get("empty_prompt_weight", 0.0) == 0.0):
            ddim_id = source_node(prompt, method_id, "inversion")
            at_cfg_1 = probe.add("InvEditReconstruct", model=inputs["model"], positive=inputs["positive"],
                                 negative=prompt[ddim_id]["inputs"]["negative"], inversion=[ddim_id, 1], cfg=1.0)
            probe.capture(f"negative_prompt_reconstruct:{node_id}", [node_id, 0])
            probe.capture(f"negative_prompt_ddim_cfg1:{node_id}", [at_cfg_1, 0])


def run_workflow(name: str, definitions: dict, executor, label: str = "") -> tuple[dict, GraphResult]:
    """The workflow's prompt (made cheap, instrumented) and its run's result; its run time goes
    into RUNTIMES under ``name + label``."""
    prompt = api_prompt(load_workflow(name), definitions)
    changed = make_cheap(prompt)
    assert any(widget == "steps" for _, widget, _ in changed), f"{name}: no steps widget to make cheap"
    instrument(prompt)
    started = time.perf_counter()
    result = run_prompt(prompt, executor)
    RUNTIMES[name + label] = time.perf_counter() - started
    return prompt, result


def _keyed(result: GraphResult, kind: str) -> dict[str, object]:
    return {key.split(":", 1)[1]: value for key, value in result.items() if key.split(":", 1)[0] == kind}


def check_images(prompt: dict, result: GraphResult, size: int) -> None:
    images = _keyed(result, "image")
    assert sorted(images) == sorted(n for kind in IMAGE_OUTPUT_NODES for n in nodes_of(prompt, kind))
    for node_id, image in images.items():
        where = f"node {node_id} ({prompt[node_id]['class_type']})"
        assert image.dtype == torch.float32 and image.ndim == 4 and image.shape[-1] == 3, where
        assert bool(image.isfinite().all()), f"{where}: non-finite pixels"
        assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0, f"{where}: pixels outside [0, 1]"
        if prompt[source_node(prompt, node_id, "images")]["class_type"] == "VAEDecode":
            assert tuple(image.shape[1:3]) == (size, size), where


def check_outputs(prompt: dict, result: GraphResult, definitions: dict) -> None:
    """Every output node of the workflow produced UI output; every saved image is on disk."""
    output_nodes = [node_id for node_id, node in prompt.items()
                    if node["class_type"] != CAPTURE_NODE and definitions[node["class_type"]]["output_node"]]
    assert output_nodes
    missing = [node_id for node_id in output_nodes if not result.ui.get(node_id)]
    assert not missing, f"output nodes without output: {[(n, prompt[n]['class_type']) for n in missing]}"
    for node_id in nodes_of(prompt, "SaveImage"):
        for saved in result.ui[node_id]["images"]:
            path = Path(folder_paths.get_output_directory()) / saved["subfolder"] / saved["filename"]
            assert path.is_file() and path.stat().st_size > 0, path


def check_model(result: GraphResult) -> None:
    for node_id, model in _keyed(result, "model").items():
        assert type(model.model.model_config) is comfy.supported_models.SD15, node_id


def check_numbers(prompt: dict, result: GraphResult) -> None:
    """The method-specific numbers (module docstring)."""
    for node_id, latent in _keyed(result, "ddim_reconstruct").items():
        stock = result[f"ddim_stock_replay:{node_id}"]["samples"]
        assert torch.equal(latent["samples"], stock), "Reconstruct at cfg 1 differs from the stock ddim sampler"
    for node_id, latent in _keyed(result, "direct_reconstruct").items():
        # Pinned to the trajectory, which is kept in the model's units: the encoded latent comes
        # back through the latent format's scaling and its inverse, exactly.
        base = next(iter(_keyed(result, "model").values())).model
        source = result[f"direct_source:{node_id}"]["samples"]
        assert torch.equal(latent["samples"], base.process_latent_out(base.process_latent_in(source)))
    for node_id, latent in _keyed(result, "negative_prompt_reconstruct").items():
        at_cfg_1 = result[f"negative_prompt_ddim_cfg1:{node_id}"]["samples"]
        scale = float(at_cfg_1.abs().max())
        gap = float((latent["samples"] - at_cfg_1).abs().max())
        assert gap <= NEGATIVE_PROMPT_LATENT_TOLERANCE * max(scale, 1.0), (gap, scale)
    for node_id, psnr in _keyed(result, "psnr").items():
        assert not math.isnan(psnr), node_id
        result_id = source_node(prompt, node_id, "result")
        decoded_from = source_node(prompt, result_id, "samples") if result_id else None
        if decoded_from and f"direct_reconstruct:{decoded_from}" in result:
            assert psnr > DIRECT_INVERSION_MIN_PSNR_DB, psnr
    for node_id, report in _keyed(result, "null_text_report").items():
        assert "nan" not in report.lower(), report
    for node_id, record in _keyed(result, "saved_inversion").items():
        path = storage.inversion_file_path(folder_paths.get_output_directory(), prompt[node_id]["inputs"]["file_name"])
        loaded = storage.load_record(path)
        assert loaded.steps == TEST_STEPS == record.steps
        assert torch.equal(loaded.sampling_sigmas, record.sampling_sigmas.cpu())
        assert torch.equal(loaded.trajectory.latents, record.trajectory.latents.cpu())
        assert loaded.settings == record.settings
        assert (loaded.unconditioning is None) == (record.unconditioning is None)


def test_photo_workflows_found():
    assert {"ddim_inversion_photo", "null_text_photo", "negative_prompt_photo", "direct_inversion_photo"} \
        <= set(PHOTO_WORKFLOWS)
    missing = [name for name in PHOTO_WORKFLOWS if not build_workflows.workflow_file(name).is_file()]
    assert not missing, "run: python scripts/build_workflows.py"


def test_random_checkpoint_is_sd15_for_comfyui(photo_inputs):
    """Keys, shapes and dtypes as this code builds them; ComfyUI's detection says SD15 with the
    SD1.5 unet config; the three key groups of the original LDM layout are all there."""
    path = photo_inputs.checkpoint.path
    assert random_checkpoints.stale_reason(path) is None
    manifest, _ = random_checkpoints.file_manifest(path)
    shapes = {key: torch.empty(shape, dtype=torch.float16, device="meta") for key, (shape, _) in manifest.items()}
    prefix = comfy.model_detection.unet_prefix_from_state_dict(shapes)
    assert prefix == random_checkpoints.UNET_PREFIX
    config = comfy.model_detection.model_config_from_unet(shapes, prefix)
    assert type(config) is comfy.supported_models.SD15
    expected = random_checkpoints.sd15_unet_config(None)
    assert {key: config.unet_config.get(key) for key in expected if key != "dtype"} == \
        {key: value for key, value in expected.items() if key != "dtype"}
    groups = {group: [key for key in manifest if key.startswith(group)] for group in (
        random_checkpoints.UNET_PREFIX, random_checkpoints.VAE_PREFIX, random_checkpoints.TEXT_ENCODER_PREFIX)}
    assert sum(map(len, groups.values())) == len(manifest)
    # The tensor counts of the SD1.5 release checkpoints (the text encoder's without position_ids).
    assert [len(keys) for keys in groups.values()] == [686, 248, 196]
    token_embedding = random_checkpoints.TEXT_ENCODER_PREFIX + "embeddings.token_embedding.weight"
    assert manifest[token_embedding] == ((49408, 768), "F16")
    with safe_open(str(path), framework="pt") as handle:
        for key in ("model.diffusion_model.out.2.weight", "first_stage_model.decoder.conv_out.weight"):
            assert bool(handle.get_tensor(key).isfinite().all())


def test_stale_random_checkpoint_is_found(tmp_path, photo_inputs):
    """A file that is not what random_checkpoints writes today is rebuilt: checked from its header."""
    _, metadata = random_checkpoints.file_manifest(photo_inputs.checkpoint.path)
    path = tmp_path / "stale.safetensors"
    assert random_checkpoints.stale_reason(path) == "missing"
    path.write_bytes(photo_inputs.checkpoint.path.read_bytes()[:4096])
    assert random_checkpoints.stale_reason(path).startswith("unreadable")
    small = {"model.diffusion_model.out.2.bias": torch.zeros(4, dtype=torch.float16)}
    save_file(small, str(path), metadata={**metadata, "invedit_recipe": "0"})
    assert random_checkpoints.stale_reason(path).startswith("recipe")
    save_file(small, str(path), metadata=metadata)
    assert random_checkpoints.stale_reason(path).startswith("layout differs: 1129 keys missing")


@pytest.mark.parametrize("name", PHOTO_WORKFLOWS)
def test_photo_workflow_runs_with_real_loaders(name, photo_inputs, definitions, queue):
    prompt, result = run_workflow(name, definitions, queue)
    RESULTS[name] = outputs_to_compare(result)
    check_model(result)
    check_images(prompt, result, photo_inputs.image_size)
    check_outputs(prompt, result, definitions)
    check_numbers(prompt, result)


def outputs_to_compare(result: GraphResult) -> dict:
    """The captured tensors (latents by their samples) and numbers of a run; no models."""
    found = {}
    for key, value in result.items():
        if isinstance(value, dict) and "samples" in value:
            value = value["samples"]
        if isinstance(value, (torch.Tensor, float)):
            found[key] = value
    return found


def test_photo_workflow_is_deterministic(photo_inputs, definitions, queue):
    """The same workflow run again in a fresh executor (checkpoint loaded again) gives the same bytes."""
    first = RESULTS.get(DETERMINISM_WORKFLOW)
    queue.reset()  # drop the module's cached outputs (and so its model) before loading another
    gc.collect()
    if first is None:
        first = outputs_to_compare(run_workflow(DETERMINISM_WORKFLOW, definitions, new_executor())[1])
    second = outputs_to_compare(run_workflow(DETERMINISM_WORKFLOW, definitions, new_executor(), " (again)")[1])
    assert any(isinstance(value, torch.Tensor) for value in first.values())
    assert sorted(first) == sorted(second)
    for key, value in first.items():
        other = second[key]
        if isinstance(value, float):
            assert value == other or (math.isnan(value) and math.isnan(other)), key
        else:
            assert value.dtype == other.dtype and value.shape == other.shape, key
            assert value.numpy().tobytes() == other.numpy().tobytes(), f"{key} differs between two runs"
