"""The inversion nodes inside ComfyUI's prompt executor, on tiny real models."""

from __future__ import annotations

import pytest
import torch

import comfy.samplers
from invedit.nodes.options import option_defaults

import tiny_models
from tiny_models import ARCHS, ModelSnapshot

STEPS = tiny_models.ROUND_TRIP_STEPS
OPTIONS = option_defaults()
# Round-trip bounds at STEPS steps: regression bands measured on the tiny models, each test with its
# negative controls (the simple rule, the schedule shifted one step) beside it (tiny_models.ROUND_TRIP_BOUND).
ROUND_TRIP_BOUND = tiny_models.ROUND_TRIP_BOUND


def inversion_graph(graph, arch: str, **overrides):
    """Tiny model, prompt and latent -> InvEdit DDIM Inversion; returns (model, cond, latent, inversion)."""
    model = graph.node("InvEditTestTinyModel", arch=arch, seed=0)
    positive = graph.node("InvEditTestConditioning", arch=arch, seed=1, tokens=8)
    negative = graph.node("InvEditTestConditioning", arch=arch, seed=2, tokens=8)
    latent = graph.node("InvEditTestLatent", arch=arch, seed=3, batch=1, height=16, width=16)
    settings = dict(OPTIONS, steps=STEPS, inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero")
    settings.update(overrides)
    inversion = graph.node("InvEditDDIMInversion", model=model, positive=positive, negative=negative,
                           latent=latent, **settings)
    return model, positive, negative, latent, inversion


def stock_reconstruction(graph, model, positive, negative, noise_link, steps: int = STEPS):
    return graph.node("KSamplerAdvanced", model=model, add_noise="disable", noise_seed=0, steps=steps, cfg=1.0,
                      sampler_name="ddim", scheduler="ddim_uniform", positive=positive, negative=negative,
                      latent_image=noise_link, start_at_step=0, end_at_step=10000,
                      return_with_leftover_noise="disable")


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result - reference).abs().max() / reference.std())


def shifted_replay(graph, model, positive, negative, noise_link, sigmas_link):
    """Negative control: the inverted noise sampled along the inversion's sigmas shifted down one step
    (SplitSigmas after the first level), i.e. taken for the state one level lower than it is."""
    guider = graph.node("CFGGuider", model=model, positive=positive, negative=negative, cfg=1.0)
    lower = graph.node("SplitSigmas", sigmas=sigmas_link, step=1).out(1)
    return graph.node("SamplerCustomAdvanced", noise=graph.node("DisableNoise"), guider=guider,
                      sampler=graph.node("KSamplerSelect", sampler_name="ddim"), sigmas=lower, latent_image=noise_link)


@pytest.mark.parametrize("arch", ARCHS)
def test_invert_then_stock_ksampler_advanced_round_trips(graph, run_graph, arch):
    model, positive, negative, latent, inversion = inversion_graph(graph, arch)
    _, _, _, _, simple = inversion_graph(graph, arch, timestep_rule="simple")
    graph.capture("source", latent)
    graph.capture("noise", inversion.out(0))
    graph.capture("stock", stock_reconstruction(graph, model, positive, negative, inversion.out(0)))
    graph.capture("ours", graph.node("InvEditReconstruct", model=model, positive=positive, negative=negative,
                                     inversion=inversion.out(1), cfg=1.0))
    graph.capture("simple", stock_reconstruction(graph, model, positive, negative, simple.out(0)))
    graph.capture("shifted", shifted_replay(graph, model, positive, negative, inversion.out(0), inversion.out(2)))
    result = run_graph(graph)
    source = result["source"]["samples"]
    errors = {key: relative_error(result[key]["samples"], source) for key in ("stock", "simple", "shifted")}
    bound = ROUND_TRIP_BOUND[arch]
    assert errors["stock"] < bound < min(errors["simple"], errors["shifted"]), errors
    # With the clean level at 0 the pack's replay is the stock ddim sampler, bit for bit.
    assert torch.equal(result["ours"]["samples"], result["stock"]["samples"])
    # The noise is really noise-sized: sigma_max (about 14.6) in model units.
    assert 8.0 < float(result["noise"]["samples"].std()) < 200.0


@pytest.mark.parametrize("arch", ["sd15", "sd15_v"])
def test_sampler_path_equals_the_inversion_node(graph, run_graph, arch):
    """InvEdit Inversion Sampler inside SamplerCustomAdvanced gives the node's noise exactly; the
    replay round-trips within the node's bound, which the sampler with the simple rule fails."""
    model, positive, negative, latent, inversion = inversion_graph(graph, arch)
    guider = graph.node("CFGGuider", model=model, positive=positive, negative=negative, cfg=1.0)
    sigmas = graph.node("BasicScheduler", model=model, scheduler="ddim_uniform", steps=STEPS, denoise=1.0)
    for rule in ("reference", "simple"):
        sampler = graph.node("InvEditInversionSampler", **dict(OPTIONS, timestep_rule=rule))
        inverted = graph.node("SamplerCustomAdvanced", noise=graph.node("DisableNoise"), guider=guider,
                              sampler=sampler, sigmas=sigmas, latent_image=latent)
        replayed = graph.node("SamplerCustomAdvanced", noise=graph.node("DisableNoise"), guider=guider,
                              sampler=graph.node("KSamplerSelect", sampler_name="ddim"), sigmas=sigmas,
                              latent_image=inverted.out(0))
        graph.capture(f"{rule} noise", inverted.out(0))
        graph.capture(f"{rule} replayed", replayed.out(0))
    graph.capture("node_noise", inversion.out(0))
    graph.capture("source", latent)
    result = run_graph(graph)
    assert torch.equal(result["reference noise"]["samples"], result["node_noise"]["samples"])
    errors = {rule: relative_error(result[f"{rule} replayed"]["samples"], result["source"]["samples"])
              for rule in ("reference", "simple")}
    assert errors["reference"] < ROUND_TRIP_BOUND[arch] < errors["simple"], errors


def test_lowest_timestep_clean_level_is_replayed_exactly_by_the_sigmas_output(graph, run_graph):
    model, positive, negative, latent, inversion = inversion_graph(graph, "sd15", clean_level="lowest timestep")
    _, _, _, _, simple = inversion_graph(graph, "sd15", clean_level="lowest timestep", timestep_rule="simple")
    guider = graph.node("CFGGuider", model=model, positive=positive, negative=negative, cfg=1.0)
    replayed = graph.node("SamplerCustomAdvanced", noise=graph.node("DisableNoise"), guider=guider,
                          sampler=graph.node("InvEditReplaySampler"), sigmas=inversion.out(2),
                          latent_image=inversion.out(0))
    graph.capture("replayed", replayed.out(0))
    graph.capture("reconstructed", graph.node("InvEditReconstruct", model=model, positive=positive,
                                              negative=negative, inversion=inversion.out(1), cfg=1.0))
    graph.capture("simple", graph.node("InvEditReconstruct", model=model, positive=positive, negative=negative,
                                       inversion=simple.out(1), cfg=1.0))
    graph.capture("sigmas", inversion.out(2))
    graph.capture("source", latent)
    result = run_graph(graph)
    sigmas = result["sigmas"]
    assert float(sigmas[-1]) > 0.0 and len(sigmas) == STEPS + 1
    assert torch.equal(result["replayed"]["samples"], result["reconstructed"]["samples"])
    source = result["source"]["samples"]
    errors = {key: relative_error(result[key]["samples"], source) for key in ("reconstructed", "simple")}
    assert errors["reconstructed"] < ROUND_TRIP_BOUND["sd15"] < errors["simple"], errors


def test_warm_start_and_easyinv_through_the_node(graph, run_graph):
    _, _, _, _, plain = inversion_graph(graph, "sd15")
    _, _, _, _, warm0 = inversion_graph(graph, "sd15", warm_start_seed=7)
    _, _, _, _, warm2 = inversion_graph(graph, "sd15", warm_start_steps=2, warm_start_seed=7)
    _, _, _, _, easy = inversion_graph(graph, "sd15", easyinv="SD1.x")
    for key, node in (("plain", plain), ("warm0", warm0), ("warm2", warm2), ("easy", easy)):
        graph.capture(key, node.out(1))
    result = run_graph(graph)
    assert torch.equal(result["warm0"].trajectory.noise, result["plain"].trajectory.noise)
    assert result["warm2"].trajectory.model_calls == STEPS - 2
    assert result["easy"].trajectory.model_calls == STEPS
    assert result["easy"].settings["easyinv"]["eta"] == 0.5
    assert not torch.allclose(result["easy"].trajectory.noise, result["plain"].trajectory.noise, atol=1e-3)
    assert not torch.allclose(result["warm2"].trajectory.noise, result["plain"].trajectory.noise, atol=1e-3)


def test_batch_rows_invert_independently(pack_nodes, tiny_model, tiny_conditioning, tiny_latent):
    model = tiny_model("sd15")
    cond = tiny_conditioning("sd15", 1)
    batch = tiny_latent("sd15", 3, batch=3)
    node = pack_nodes["InvEditDDIMInversion"]
    settings = dict(OPTIONS, steps=20, inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero")
    with torch.inference_mode():
        together = node.execute(model=model, positive=cond, negative=cond, latent=batch, **settings).result[0]
        alone = node.execute(model=model, positive=cond, negative=cond,
                             latent={"samples": batch["samples"][1:2]}, **settings).result[0]
    assert torch.allclose(together["samples"][1:2], alone["samples"], atol=1e-4, rtol=1e-4)


def test_inputs_are_not_mutated(pack_nodes, tiny_model, tiny_conditioning, tiny_latent):
    model = tiny_model("sdxl")
    before = ModelSnapshot.take(model)
    cond = tiny_conditioning("sdxl", 1)
    latent = tiny_latent("sdxl", 3)
    samples_before = latent["samples"].clone()
    keys_before = set(latent)
    settings = dict(OPTIONS, steps=10, inversion_cfg=2.0, scheduler="ddim_uniform", clean_level="zero",
                    easyinv="SDXL", warm_start_steps=1)
    with torch.inference_mode():
        inversion = pack_nodes["InvEditDDIMInversion"].execute(model=model, positive=cond, negative=cond,
                                                               latent=latent, **settings).result[1]
        pack_nodes["InvEditReconstruct"].execute(model=model, positive=cond, negative=cond, inversion=inversion,
                                                 cfg=3.0)
    before.assert_unchanged(model)
    assert torch.equal(latent["samples"], samples_before) and set(latent) == keys_before


def test_interrupt_stops_the_inversion(pack_nodes, tiny_model, tiny_conditioning, tiny_latent):
    import comfy.model_management

    model = tiny_model("sd15")
    before = ModelSnapshot.take(model)
    cond = tiny_conditioning("sd15", 1)
    settings = dict(OPTIONS, steps=STEPS, inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero")
    comfy.model_management.interrupt_current_processing(True)
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException), torch.inference_mode():
            pack_nodes["InvEditDDIMInversion"].execute(model=model, positive=cond, negative=cond,
                                                       latent=tiny_latent("sd15", 3), **settings)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    before.assert_unchanged(model)


def test_progress_is_reported_every_step(graph, run_graph):
    _, _, _, _, inversion = inversion_graph(graph, "sd15", steps=10)
    graph.capture("noise", inversion.out(0))
    result = run_graph(graph)
    progress = [data for event, data in result.messages
                if event == "progress" and data.get("node") == inversion.node_id]
    assert [(data["value"], data["max"]) for data in progress] == [(step, 10) for step in range(1, 11)]


# --- bad input ------------------------------------------------------------------------------


def run_inversion(pack_nodes, model, cond, latent, **overrides):
    settings = dict(OPTIONS, steps=10, inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero")
    settings.update(overrides)
    with torch.inference_mode():
        return pack_nodes["InvEditDDIMInversion"].execute(model=model, positive=cond, negative=cond, latent=latent,
                                                          **settings)


def test_latent_from_another_model_family_is_refused(pack_nodes, tiny_model, tiny_conditioning):
    with pytest.raises(ValueError, match="channels.*own VAE"):
        run_inversion(pack_nodes, tiny_model("sd15"), tiny_conditioning("sd15", 1),
                      {"samples": torch.randn(1, 16, 16, 16)})


def test_noise_mask_and_nan_latents_are_refused(pack_nodes, tiny_model, tiny_conditioning, tiny_latent):
    latent = dict(tiny_latent("sd15", 3), noise_mask=torch.ones(1, 16, 16))
    with pytest.raises(ValueError, match="noise mask"):
        run_inversion(pack_nodes, tiny_model("sd15"), tiny_conditioning("sd15", 1), latent)
    with pytest.raises(ValueError, match="NaN"):
        run_inversion(pack_nodes, tiny_model("sd15"), tiny_conditioning("sd15", 1),
                      {"samples": torch.full((1, 4, 16, 16), float("nan"))})


def test_a_model_that_returns_nan_gives_a_clear_error(pack_nodes, tiny_model, tiny_conditioning, tiny_latent):
    broken = tiny_model("sd15").clone()
    broken.set_model_unet_function_wrapper(lambda apply_model, args: torch.full_like(args["input"], float("nan")))
    with pytest.raises(ValueError, match="NaN.*float16"):
        run_inversion(pack_nodes, broken, tiny_conditioning("sd15", 1), tiny_latent("sd15", 3))


def test_continuous_edm_models_are_refused(pack_nodes, tiny_model, tiny_conditioning, tiny_latent):
    """A continuous (EDM-style) schedule is neither the DDPM family nor rectified flow: a clear refusal."""
    import nodes

    edm_model = nodes.NODE_CLASS_MAPPINGS["ModelSamplingContinuousEDM"]().patch(tiny_model("sd15"), "edm", 80.0,
                                                                               0.002)[0]
    with pytest.raises(ValueError, match="continuous EDM-style schedule"):
        run_inversion(pack_nodes, edm_model, tiny_conditioning("sd15", 1), tiny_latent("sd15", 3))


def test_warm_start_longer_than_the_inversion_is_refused(pack_nodes, tiny_model, tiny_conditioning, tiny_latent):
    with pytest.raises(ValueError, match="fewer warm-start steps"):
        run_inversion(pack_nodes, tiny_model("sd15"), tiny_conditioning("sd15", 1), tiny_latent("sd15", 3),
                      warm_start_steps=10)


def test_steps_out_of_range_are_refused_by_validation(graph, run_graph):
    from comfy_graph import GraphValidationError

    _, _, _, _, inversion = inversion_graph(graph, "sd15", steps=0)
    graph.capture("noise", inversion.out(0))
    with pytest.raises(GraphValidationError, match="steps"):
        run_graph(graph)


def test_random_noise_in_sampler_custom_advanced_is_refused(graph, run_graph):
    from comfy_graph import GraphExecutionError

    model, positive, negative, latent, _ = inversion_graph(graph, "sd15")
    guider = graph.node("CFGGuider", model=model, positive=positive, negative=negative, cfg=1.0)
    sigmas = graph.node("BasicScheduler", model=model, scheduler="ddim_uniform", steps=10, denoise=1.0)
    inverted = graph.node("SamplerCustomAdvanced", noise=graph.node("RandomNoise", noise_seed=1), guider=guider,
                          sampler=graph.node("InvEditInversionSampler", **OPTIONS), sigmas=sigmas,
                          latent_image=latent)
    graph.capture("noise", inverted.out(0))
    with pytest.raises(GraphExecutionError, match="Disable Noise"):
        run_graph(graph)


# --- step counts ----------------------------------------------------------------------------

TRAINING_TIMESTEPS = 1000


def ddim_uniform_steps(requested: int) -> int:
    """Steps of ComfyUI's ddim_uniform for ``steps = requested``, from its definition: timesteps
    1, 1 + 1000 // N, 1 + 2 * (1000 // N), ... below 1000, each one sampling step."""
    return len(range(1, TRAINING_TIMESTEPS, TRAINING_TIMESTEPS // requested))


@pytest.mark.parametrize("requested", [7, 30, 50, 6, 3])
def test_ddim_uniform_records_the_steps_it_made_and_says_so(graph, run_graph, requested):
    made = ddim_uniform_steps(requested)
    _, _, _, _, inversion = inversion_graph(graph, "sd15", steps=requested)
    graph.capture("inversion", inversion.out(1))
    result = run_graph(graph)
    record = result["inversion"]
    assert record.sampling_sigmas.numel() - 1 == made == record.trajectory.model_calls
    assert record.settings["steps"] == made and record.settings["steps_requested"] == requested
    [text] = result.ui[inversion.node_id]["text"]  # the node's report, with a note when the steps differ
    if made == requested:
        assert "steps = " not in text, text
    else:  # 30 -> 31, 7 -> 8, 6 -> 7: the node's UI text says what was made and what to pick
        assert f"gives {made} steps for steps = {requested}" in text and "divides 1000" in text, text


@pytest.mark.parametrize("scheduler", [name for name in comfy.samplers.SCHEDULER_NAMES if name != "ddim_uniform"])
def test_other_schedulers_make_the_steps_asked(pack_nodes, tiny_model, tiny_conditioning, tiny_latent, scheduler):
    for requested in (7, 30):
        output = run_inversion(pack_nodes, tiny_model("sd15"), tiny_conditioning("sd15", 1), tiny_latent("sd15", 3),
                               steps=requested, scheduler=scheduler)
        record = output.result[1]
        assert record.settings["steps"] == record.settings["steps_requested"] == requested
        assert record.trajectory.model_calls == requested
        assert "steps = " not in output.ui.as_dict()["text"][0]
