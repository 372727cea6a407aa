"""The host harness itself: the right ComfyUI, the pack loads, stock graphs run on tiny models."""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from comfy_graph import GraphExecutionError, GraphValidationError
from tiny_models import ARCHS, ModelSnapshot, context_dim

REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_STEPS = 5
SAMPLE_CFG = 3.0
LATENT_SIZE = 16


def pinned_comfyui_commit() -> str:
    """The commit scripts/env.sh pins (the single place it is written)."""
    text = (REPO_ROOT / "scripts" / "env.sh").read_text()
    match = re.search(r"^INVEDIT_COMFYUI_COMMIT=([0-9a-f]{40})\b", text, re.MULTILINE)
    assert match, "scripts/env.sh does not set INVEDIT_COMFYUI_COMMIT"
    return match.group(1)


def test_comfyui_is_the_pinned_commit(comfy_host):
    head = subprocess.run(
        ["git", "-C", str(comfy_host.comfyui_path), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    if os.environ.get("INVEDIT_ALLOW_OTHER_COMFYUI") == "1":
        pytest.skip(f"INVEDIT_ALLOW_OTHER_COMFYUI=1: running against ComfyUI {head or 'of unknown commit'}")
    assert head == pinned_comfyui_commit(), f"ComfyUI at {comfy_host.comfyui_path} is at {head or 'no git commit'}"


def test_pack_loads_through_comfyui_loader(pack_loaded, pack_nodes):
    assert pack_loaded, "the pack registered no InvEdit* node"
    for node_id, cls in pack_nodes.items():
        assert cls.RELATIVE_PYTHON_MODULE.startswith("custom_nodes."), node_id


def test_test_nodes_are_registered(comfy_host):
    import nodes

    for node_id in ("InvEditTestTinyModel", "InvEditTestConditioning", "InvEditTestLatent", "InvEditTestCapture"):
        assert node_id in nodes.NODE_CLASS_MAPPINGS
    test_nodes = {"InvEditTestTinyModel", "InvEditTestConditioning", "InvEditTestLatent", "InvEditTestCapture"}
    assert not test_nodes & set(comfy_host.pack_node_ids)


def sample_graph(graph, arch: str, seed: int, capture_model: bool = False):
    """Tiny model + random prompts + latent -> KSamplerAdvanced -> captured latent."""
    model = graph.node("InvEditTestTinyModel", arch=arch, seed=0)
    positive = graph.node("InvEditTestConditioning", arch=arch, seed=1, tokens=8)
    negative = graph.node("InvEditTestConditioning", arch=arch, seed=2, tokens=8)
    latent = graph.node("InvEditTestLatent", arch=arch, seed=3, batch=1, height=LATENT_SIZE, width=LATENT_SIZE)
    sampled = graph.node(
        "KSamplerAdvanced",
        model=model,
        add_noise="enable",
        noise_seed=seed,
        steps=SAMPLE_STEPS,
        cfg=SAMPLE_CFG,
        sampler_name="euler",
        scheduler="normal",
        positive=positive,
        negative=negative,
        latent_image=latent,
        start_at_step=0,
        end_at_step=10000,
        return_with_leftover_noise="disable",
    )
    graph.capture("samples", sampled)
    graph.capture("latent_in", latent)
    if capture_model:
        graph.capture("model", model)
    return graph


@pytest.mark.parametrize("arch", ARCHS)
def test_stock_ksampler_graph_runs_and_is_deterministic(arch, run_graph, graph):
    sample_graph(graph, arch, seed=42)
    first = run_graph(graph)
    samples = first["samples"]["samples"]
    assert samples.shape == (1, 4, LATENT_SIZE, LATENT_SIZE)
    assert samples.dtype == torch.float32
    assert torch.isfinite(samples).all()
    assert not torch.equal(samples, first["latent_in"]["samples"])

    second = run_graph(graph)["samples"]["samples"]
    assert torch.equal(samples, second), "same graph and seed gave different samples"

    other_seed = copy.deepcopy(graph.prompt)
    [sampler] = [node for node in other_seed.values() if node["class_type"] == "KSamplerAdvanced"]
    sampler["inputs"]["noise_seed"] = 43
    assert not torch.equal(samples, run_graph(other_seed)["samples"]["samples"]), "the noise seed had no effect"


@pytest.mark.parametrize("arch", ARCHS)
def test_sampling_does_not_mutate_the_model(arch, run_graph, graph, tiny_model):
    model = tiny_model(arch, 0)
    snapshot = ModelSnapshot.take(model)
    result = run_graph(sample_graph(graph, arch, seed=7, capture_model=True))
    assert result["model"] is model, "InvEditTestTinyModel must hand out the shared cached model"
    snapshot.assert_unchanged(model)


# How much a tiny model's noise estimate must move (mean |change| / mean |eps|) when the input changes
# in one patch, when the level moves one DDIM step (timestep 500 -> 520) at the same model input,
# and when the prompt changes. Measured on the tiny models: see the test's docstring.
PATCH = (slice(4, 8), slice(4, 8))
PATCH_BUMP = 1.0
MIN_CHANGE_IN_PATCH = 0.1
MIN_CHANGE_OUTSIDE_PATCH = 1e-3
MIN_CHANGE_PER_LEVEL_STEP = 0.01
MIN_CHANGE_PER_PROMPT = 1e-3
TIMESTEPS = (500.0, 520.0)


def noise_estimate(denoise, z: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """eps of a denoiser ``x0 = denoise(x, sigma)`` for the model input ``z`` (DDPM scale) at ``sigma``.

    Compares noise estimates, not clean estimates: ``x0 = x - sigma * eps`` moves with ``x`` whatever
    the model does, so a changed x0 proves nothing about the model.
    """
    x = z * (1.0 + sigma * sigma).sqrt()
    return (x - denoise(x, sigma)) / sigma


def noise_estimate_changes(denoise_with, z: torch.Tensor, sigmas: torch.Tensor) -> dict[str, float]:
    """Relative changes of the noise estimate: a bump in one patch (inside / outside it), one level step, the prompt.

    ``denoise_with(prompt_seed)`` gives ``denoise(x, sigma) -> x0`` for a prompt.
    """
    denoise = denoise_with(1)
    base = noise_estimate(denoise, z, sigmas[:1])
    scale = float(base.abs().mean())
    bumped = z.clone()
    bumped[(..., *PATCH)] += PATCH_BUMP
    change = noise_estimate(denoise, bumped, sigmas[:1]) - base
    inside = torch.zeros_like(change, dtype=torch.bool)
    inside[(..., *PATCH)] = True
    return {
        "in patch": float(change[inside].abs().mean()) / scale,
        "outside patch": float(change[~inside].abs().mean()) / scale,
        "level step": float((noise_estimate(denoise, z, sigmas[1:]) - base).abs().mean()) / scale,
        "prompt": float((noise_estimate(denoise_with(2), z, sigmas[:1]) - base).abs().mean()) / scale,
    }


def assert_noise_estimate_depends_on_everything(changes: dict[str, float]) -> None:
    assert changes["in patch"] > MIN_CHANGE_IN_PATCH, changes
    assert changes["outside patch"] > MIN_CHANGE_OUTSIDE_PATCH, changes  # convolutions and attention mix positions
    assert changes["level step"] > MIN_CHANGE_PER_LEVEL_STEP, changes
    assert changes["prompt"] > MIN_CHANGE_PER_PROMPT, changes


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_noise_estimate_depends_on_the_state_the_level_and_the_prompt(arch, tiny_model, tiny_conditioning,
                                                                            tiny_latent):
    """Measured (in patch / outside / level step / prompt): sd15 1.08 / 0.052 / 0.13 / 0.21, sd15_v
    1.27 / 0.015 / 0.021 / 0.044, sdxl 1.08 / 0.060 / 0.11 / 0.078; the earlier "normalised input"
    eps models moved by about 0.004 per level step. A denoiser with a constant noise estimate (the
    control below) gives 0 for all four."""
    model = tiny_model(arch, 0)
    z = tiny_latent(arch, seed=3)["samples"] * model.model.latent_format.scale_factor
    sigmas = model.model.model_sampling.sigma(torch.tensor(TIMESTEPS))

    def denoise_with(prompt_seed: int):
        context, extras = tiny_conditioning(arch, seed=prompt_seed)[0]
        kwargs = {"c_crossattn": context}
        if arch == "sdxl":
            kwargs["y"] = model.model.encode_adm(**extras)

        def denoise(x, sigma):
            with torch.inference_mode():
                return model.model.apply_model(x, sigma, **kwargs)

        return denoise

    assert tiny_conditioning(arch, seed=1)[0][0].shape == (1, 8, context_dim(arch))
    eps = noise_estimate(denoise_with(1), z, sigmas[:1])
    assert 0.1 < eps.std().item() < 10.0, "the noise estimate should be O(1)"
    assert_noise_estimate_depends_on_everything(noise_estimate_changes(denoise_with, z, sigmas))


def test_a_constant_noise_estimate_fails_the_dependence_check():
    """Negative control: x0 = x - sigma * eps with a fixed eps moves x0 with x, sigma and nothing else."""
    fixed = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    changes = noise_estimate_changes(lambda _prompt: lambda x, sigma: x - sigma * fixed, z, torch.tensor([3.0, 3.5]))
    assert max(changes.values()) < 1e-6, changes
    with pytest.raises(AssertionError):
        assert_noise_estimate_depends_on_everything(changes)


def test_sampler_progress_reaches_the_server(run_graph, graph):
    sample_graph(graph, "sd15", seed=1)
    [sampler_id] = [node_id for node_id, node in graph.prompt.items() if node["class_type"] == "KSamplerAdvanced"]
    result = run_graph(graph)
    progress = [data for event, data in result.messages if event == "progress" and data["node"] == sampler_id]
    assert [data["value"] for data in progress] == list(range(1, SAMPLE_STEPS + 1))
    assert {data["max"] for data in progress} == {SAMPLE_STEPS}


def test_failing_graph_reports_comfyui_error(run_graph, graph):
    latent = graph.node("InvEditTestLatent", arch="sd15", seed=0, batch=1, height=8, width=8)
    graph.capture("a", latent)
    graph.capture("a", latent)
    with pytest.raises(GraphExecutionError, match="two InvEditTestCapture nodes use the key 'a'") as failure:
        run_graph(graph)
    assert failure.value.node_type == "InvEditTestCapture"
    assert failure.value.exception_type == "ValueError"


def test_invalid_graph_reports_validation_error(run_graph, graph):
    graph.capture("x", graph.node("InvEditTestLatent", arch="not-an-arch", seed=0))
    with pytest.raises(GraphValidationError, match="not-an-arch"):
        run_graph(graph)
