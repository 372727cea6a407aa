"""Rectified-flow models through the inversion nodes, inside ComfyUI, on tiny models of ComfyUI's own classes.

Families (tests/host/tiny_flow_models.py): Flux dev (guidance embedding) and schnell (none), SD3.5
MMDiT-X, Qwen-Image (5-D latents) and Chroma. Errors are max |error| / std of the source latent.
The bounds are regression bands measured on these random-weight models (the figures are in each
test's docstring), each with a negative control that fails it.
"""

from __future__ import annotations

import nodes
import pytest
import torch
import tiny_flow_models as tfm
from comfy_graph import GraphExecutionError
from tiny_models import ModelSnapshot

from invedit.nodes.options import option_defaults

tfm.register_test_nodes(nodes)

STEPS = 28
OPTIONS = option_defaults()
EULER_BOUND = 0.08
"""Regression band of a 28-step Euler round trip at guidance 1: measured 0.020 (Chroma) to 0.068 (Flux dev)."""
SAME_SAMPLER_BOUND = 1e-5
"""Two paths that make the same Euler steps (stock euler and InvEdit Reconstruct): float rounding only."""
GUIDANCE_FAMILIES = (tfm.FLUX_DEV,)


@pytest.fixture(autouse=True)
def shared_flow_models_unchanged():
    """After each test, fail it if it changed a cached tiny flow model (the model is then rebuilt)."""
    yield
    changed = tfm.evict_changed_cached_models()
    if changed:
        pytest.fail("the test changed shared tiny flow models (patch a clone instead):\n" + "\n".join(changed))


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result - reference).abs().max() / reference.std())


def inputs(family: str):
    """``(model, prompt, latent)`` of a family: the shared model, prompt seed 1, latent seed 3."""
    return tfm.cached_tiny_flow_model(family), tfm.tiny_flow_conditioning(family, 1), tfm.tiny_flow_latent(family, 3)


def reconstruction_prompt(family: str, prompt, guidance: float = 1.0):
    """The prompt to sample with: Flux dev reads its distilled guidance from it (FluxGuidance)."""
    if family in GUIDANCE_FAMILIES:
        return nodes.NODE_CLASS_MAPPINGS["FluxGuidance"]().append(prompt, guidance)[0]
    return prompt


def invert(pack_nodes, family: str, steps: int = STEPS, cfg: float = 1.0, model=None, latent=None, **overrides):
    """InvEdit DDIM Inversion (scheduler auto) -> (noise LATENT, INVERSION, SIGMAS)."""
    default_model, prompt, default_latent = inputs(family)
    settings = dict(OPTIONS, steps=steps, inversion_cfg=cfg, scheduler="auto", clean_level="zero")
    settings.update(overrides)
    with torch.inference_mode():
        return pack_nodes["InvEditDDIMInversion"].execute(
            model=model or default_model, positive=prompt, negative=tfm.tiny_flow_conditioning(family, 2),
            latent=latent or default_latent, **settings).result


def reconstruct(pack_nodes, family: str, inversion, cfg: float = 1.0, guidance: float = 1.0, model=None):
    default_model, prompt, _ = inputs(family)
    with torch.inference_mode():
        return pack_nodes["InvEditReconstruct"].execute(
            model=model or default_model, positive=reconstruction_prompt(family, prompt, guidance), inversion=inversion,
            cfg=cfg, negative=tfm.tiny_flow_conditioning(family, 2)).result[0]["samples"]


def replay_along(pack_nodes, family: str, noise_latent: dict, sigmas: torch.Tensor, solver: str = "euler"):
    """InvEdit Replay Sampler in SamplerCustomAdvanced (Disable Noise) from a noise LATENT along ``sigmas``."""
    model, prompt, _ = inputs(family)
    guider = nodes.NODE_CLASS_MAPPINGS["CFGGuider"]().get_guider(model, reconstruction_prompt(family, prompt), prompt,
                                                                1.0)[0]
    sampler = pack_nodes["InvEditReplaySampler"].execute(solver=solver).result[0]
    with torch.inference_mode():
        return nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample(
            nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider, sampler, sigmas,
            noise_latent)[0]["samples"]


# --- every family, every node ---------------------------------------------------------------


@pytest.mark.parametrize("family", tfm.FAMILIES)
def test_each_family_inverts_to_sigma_one_and_reconstructs(pack_nodes, family):
    """Euler inversion (reference rule) and InvEdit Reconstruct round-trip within EULER_BOUND (measured
    0.0675 Flux dev, 0.0315 Flux schnell, 0.0432 SD3.5, 0.0618 Qwen-Image, 0.0198 Chroma); replaying the same
    noise along a shifted schedule (ComfyUI's beta scheduler) fails the bound."""
    model, _, latent = inputs(family)
    snapshot = ModelSnapshot.take(model)
    noise, inversion, sigmas = invert(pack_nodes, family)
    source = latent["samples"]
    assert float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0 and len(sigmas) == STEPS + 1
    assert noise["samples"].shape == source.shape  # [1, 16, 1, 16, 16] for Qwen-Image
    settings = inversion.settings
    assert (settings["process"], settings["prediction_type"], settings["solver"]) == ("rectified-flow", "velocity",
                                                                                         "euler")
    assert settings["model_calls"] == inversion.trajectory.model_calls == STEPS
    assert relative_error(reconstruct(pack_nodes, family, inversion), source) < EULER_BOUND
    shifted = nodes.NODE_CLASS_MAPPINGS["BasicScheduler"]().get_sigmas(model, "beta", STEPS, 1.0)[0]
    assert relative_error(replay_along(pack_nodes, family, noise, shifted), source) > EULER_BOUND
    snapshot.assert_unchanged(model)


@pytest.mark.parametrize("family", tfm.FAMILIES)
def test_stock_sampler_custom_advanced_reconstructs_from_the_inversion_noise(graph, run_graph, family):
    """InvEdit Inversion Noise -> stock SamplerCustomAdvanced (euler, the inversion's sigmas) gives the image back
    and the same latent as InvEdit Reconstruct (float rounding); the noise LATENT with Disable Noise, the UNet
    path, starts a flow model from zeros at sigma 1 (the negative control: error about 1)."""
    model = graph.node("InvEditTestTinyFlowModel", family=family, seed=0)
    prompt = graph.node("InvEditTestFlowConditioning", family=family, seed=1, tokens=8)
    negative = graph.node("InvEditTestFlowConditioning", family=family, seed=2, tokens=8)
    latent = graph.node("InvEditTestFlowLatent", family=family, seed=3, batch=1, height=16, width=16)
    inversion = graph.node("InvEditDDIMInversion", model=model, positive=prompt, negative=negative, latent=latent,
                           **dict(OPTIONS, steps=STEPS, inversion_cfg=1.0, scheduler="auto", clean_level="zero"))
    sampling_prompt = prompt
    if family in GUIDANCE_FAMILIES:
        sampling_prompt = graph.node("FluxGuidance", conditioning=prompt, guidance=1.0)
    guider = graph.node("CFGGuider", model=model, positive=sampling_prompt, negative=negative, cfg=1.0)
    euler = graph.node("KSamplerSelect", sampler_name="euler")
    stock = graph.node("SamplerCustomAdvanced", noise=graph.node("InvEditInversionNoise", inversion=inversion.out(1)),
                       guider=guider, sampler=euler, sigmas=inversion.out(2), latent_image=latent)
    latent_path = graph.node("SamplerCustomAdvanced", noise=graph.node("DisableNoise"), guider=guider, sampler=euler,
                             sigmas=inversion.out(2), latent_image=inversion.out(0))
    ours = graph.node("InvEditReconstruct", model=model, positive=sampling_prompt, negative=negative,
                      inversion=inversion.out(1), cfg=1.0)
    for key, node in (("source", latent), ("stock", stock), ("latent_path", latent_path), ("ours", ours)):
        graph.capture(key, node)
    result = run_graph(graph)
    source = result["source"]["samples"]
    assert relative_error(result["stock"]["samples"], source) < EULER_BOUND
    assert relative_error(result["stock"]["samples"], result["ours"]["samples"]) < SAME_SAMPLER_BOUND
    assert relative_error(result["latent_path"]["samples"], source) > 0.5


@pytest.mark.parametrize("family", tfm.FAMILIES)
def test_fireflow_at_n_plus_one_calls_beats_euler_at_2n_and_fixed_point_too(pack_nodes, family):
    """28 steps: FireFlow (29 calls) and fixed-point k = 2 (56 calls) against Euler at 56 steps (56 calls).

    Measured round-trip errors, FireFlow / fixed-point / Euler 56: Flux dev 0.0048 / 0.0031 / 0.031, Flux
    schnell 0.0008 / 0.0007 / 0.015, SD3.5 0.0030 / 0.0012 / 0.022, Qwen-Image 0.0040 / 0.0028 / 0.031, Chroma
    0.0039 / 0.0006 / 0.0097. Reconstruct samples a FireFlow inversion with FireFlow; the stock-style Euler
    replay of the same noise (the negative control) is first order and misses by more than Euler at 56 steps.
    """
    source = inputs(family)[2]["samples"]
    noise, fireflow, sigmas = invert(pack_nodes, family, solver="fireflow")
    _, fixed_point, _ = invert(pack_nodes, family, solver="fixed-point", fixed_point_iterations=2)
    _, euler_2n, _ = invert(pack_nodes, family, steps=2 * STEPS)
    assert [record.trajectory.model_calls for record in (fireflow, fixed_point, euler_2n)] == [29, 56, 56]
    assert fireflow.settings["model_calls"] == 29 and fireflow.replay_solver == "fireflow"
    errors = {name: relative_error(reconstruct(pack_nodes, family, record), source)
              for name, record in (("fireflow", fireflow), ("fixed-point", fixed_point), ("euler 2N", euler_2n))}
    assert errors["fireflow"] < 0.5 * errors["euler 2N"], errors
    assert errors["fixed-point"] < 0.5 * errors["euler 2N"], errors
    assert relative_error(replay_along(pack_nodes, family, noise, sigmas, "fireflow"),
                          reconstruct(pack_nodes, family, fireflow)) < SAME_SAMPLER_BOUND
    assert relative_error(replay_along(pack_nodes, family, noise, sigmas, "euler"), source) > errors["euler 2N"]


def count_rows(model, counter: list):
    """A clone of ``model`` whose model function wrapper counts the rows each call evaluates."""
    clone = model.clone()

    def wrapper(apply_model, args):
        counter.append(args["input"].shape[0])
        return apply_model(args["input"], args["timestep"], **args["c"])

    clone.set_model_unet_function_wrapper(wrapper)
    return clone


@pytest.mark.parametrize("solver,k,calls", [("euler", 2, STEPS), ("fireflow", 2, STEPS + 1),
                                            ("fixed-point", 3, 3 * STEPS)])
def test_model_calls_are_exact_and_doubled_rows_with_cfg(pack_nodes, solver, k, calls):
    """SD3.5 (real CFG) at cfg 1 and 2: the trajectory's count is N / N + 1 / k N; each call evaluates 1 row at
    cfg 1 and 2 (conditional and unconditional) at cfg 2, as the network sees them."""
    model = inputs(tfm.SD35)[0]
    for cfg, rows_per_call in ((1.0, 1), (2.0, 2)):
        rows: list[int] = []
        _, inversion, _ = invert(pack_nodes, tfm.SD35, cfg=cfg, model=count_rows(model, rows), solver=solver,
                                 fixed_point_iterations=k)
        assert inversion.trajectory.model_calls == inversion.settings["model_calls"] == calls
        assert sum(rows) == rows_per_call * calls


def test_distilled_guidance_goes_on_a_copy_of_the_prompt_of_guidance_distilled_models_only(pack_nodes):
    """Flux dev: the inversion reads distilled_guidance (1 by default) from a copy of the prompt; reconstructing at
    the same guidance round-trips (0.068), at Flux's default 3.5 it does not (0.93, the distilled guidance gap).
    Flux schnell has no guidance embedding: the input changes nothing and is recorded as None."""
    _, prompt, latent = inputs(tfm.FLUX_DEV)
    prompt_before = [[prompt[0][0].clone(), dict(prompt[0][1])]]
    _, at_one, _ = invert(pack_nodes, tfm.FLUX_DEV)
    _, at_three, _ = invert(pack_nodes, tfm.FLUX_DEV, distilled_guidance=3.5)
    assert torch.equal(prompt[0][0], prompt_before[0][0]) and prompt[0][1].keys() == prompt_before[0][1].keys()
    assert at_one.positive[0][1]["guidance"] == 1.0 and at_one.settings["distilled_guidance"] == 1.0
    assert (at_one.trajectory.noise - at_three.trajectory.noise).abs().max() > 1e-2
    assert relative_error(reconstruct(pack_nodes, tfm.FLUX_DEV, at_one, guidance=1.0), latent["samples"]) < EULER_BOUND
    assert relative_error(reconstruct(pack_nodes, tfm.FLUX_DEV, at_one, guidance=3.5), latent["samples"]) > EULER_BOUND
    _, schnell_one, _ = invert(pack_nodes, tfm.FLUX_SCHNELL)
    _, schnell_three, _ = invert(pack_nodes, tfm.FLUX_SCHNELL, distilled_guidance=3.5)
    assert torch.equal(schnell_one.trajectory.noise, schnell_three.trajectory.noise)
    assert schnell_one.settings["distilled_guidance"] is None and "guidance" not in schnell_one.positive[0][1]


@pytest.mark.parametrize("family", tfm.FAMILIES)
def test_inversion_sampler_and_replay_sampler_in_sampler_custom_advanced(graph, run_graph, family):
    """The Inversion Sampler gives the node's noise bit for bit; the Replay Sampler (no noise scaling) replays it
    to the Reconstruct result bit for bit, with euler and with fireflow."""
    model = graph.node("InvEditTestTinyFlowModel", family=family, seed=0)
    prompt = graph.node("InvEditTestFlowConditioning", family=family, seed=1, tokens=8)
    negative = graph.node("InvEditTestFlowConditioning", family=family, seed=2, tokens=8)
    latent = graph.node("InvEditTestFlowLatent", family=family, seed=3, batch=1, height=16, width=16)
    results = {}
    for solver in ("euler", "fireflow"):
        options = dict(OPTIONS, solver=solver)
        inversion = graph.node("InvEditDDIMInversion", model=model, positive=prompt, negative=negative, latent=latent,
                               **dict(options, steps=10, inversion_cfg=1.0, scheduler="auto", clean_level="zero"))
        sampling_prompt = prompt
        if family in GUIDANCE_FAMILIES:
            sampling_prompt = graph.node("FluxGuidance", conditioning=prompt, guidance=1.0)
        guider = graph.node("CFGGuider", model=model, positive=sampling_prompt, negative=negative, cfg=1.0)
        inverted = graph.node("SamplerCustomAdvanced", noise=graph.node("DisableNoise"), guider=guider,
                              sampler=graph.node("InvEditInversionSampler", **options), sigmas=inversion.out(2),
                              latent_image=latent)
        replayed = graph.node("SamplerCustomAdvanced", noise=graph.node("DisableNoise"), guider=guider,
                              sampler=graph.node("InvEditReplaySampler", solver=solver), sigmas=inversion.out(2),
                              latent_image=inverted.out(0))
        graph.capture(f"{solver} node", inversion.out(0))
        graph.capture(f"{solver} sampler", inverted.out(0))
        graph.capture(f"{solver} replayed", replayed.out(0))
        graph.capture(f"{solver} reconstructed", graph.node("InvEditReconstruct", model=model, positive=sampling_prompt,
                                                            negative=negative, inversion=inversion.out(1), cfg=1.0))
    results = run_graph(graph)
    for solver in ("euler", "fireflow"):
        assert torch.equal(results[f"{solver} sampler"]["samples"], results[f"{solver} node"]["samples"])
        assert torch.equal(results[f"{solver} replayed"]["samples"], results[f"{solver} reconstructed"]["samples"])


@pytest.mark.parametrize("family", tfm.FAMILIES)
def test_inversion_guider_with_stock_euler_or_the_replay_sampler(pack_nodes, family):
    """At cfg 3 with a negative prompt: InvEdit Inversion Guider + the NOISE + stock euler is InvEdit Reconstruct
    to float rounding; with the Replay Sampler and the noise LATENT bit for bit."""
    model, prompt, latent = inputs(family)
    prompt = reconstruction_prompt(family, prompt)
    negative = tfm.tiny_flow_conditioning(family, 2)
    noise, inversion, sigmas = invert(pack_nodes, family)
    ours = reconstruct(pack_nodes, family, inversion, cfg=3.0)
    guider = pack_nodes["InvEditInversionGuider"].execute(model=model, positive=prompt, inversion=inversion, cfg=3.0,
                                                          negative=negative).result[0]
    sample = nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample
    euler = nodes.NODE_CLASS_MAPPINGS["KSamplerSelect"]().get_sampler("euler")[0]
    replay_sampler = pack_nodes["InvEditReplaySampler"].execute().result[0]
    inversion_noise = pack_nodes["InvEditInversionNoise"].execute(inversion=inversion).result[0]
    with torch.inference_mode():
        stock = sample(inversion_noise, guider, euler, sigmas, latent)[0]["samples"]
        replayed = sample(nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider, replay_sampler, sigmas,
                          noise)[0]["samples"]
    assert relative_error(stock, ours) < SAME_SAMPLER_BOUND
    assert torch.equal(replayed, ours)
    assert relative_error(ours, latent["samples"]) > EULER_BOUND  # cfg 3 shows the guidance gap


@pytest.mark.parametrize("family,solver", [*((family, "euler") for family in tfm.FAMILIES), (tfm.QWEN_IMAGE, "fireflow")])
def test_direct_inversion_reconstructs_the_source_at_any_cfg(pack_nodes, family, solver):
    """Direct inversion pins the source rows to the trajectory: Reconstruct at cfg 4 returns the source latent
    (to the float rounding of the latent format's scale and shift); without it, cfg 4 misses by far."""
    source = inputs(family)[2]["samples"]
    _, inversion, _ = invert(pack_nodes, family, solver=solver)
    direct = pack_nodes["InvEditDirectInversion"].execute(inversion=inversion).result[0]
    assert relative_error(reconstruct(pack_nodes, family, direct, cfg=4.0), source) < SAME_SAMPLER_BOUND
    assert relative_error(reconstruct(pack_nodes, family, inversion, cfg=4.0), source) > EULER_BOUND


@pytest.mark.parametrize("family", tfm.FAMILIES)
def test_save_and_load_a_flow_inversion(pack_nodes, tiny_model, tmp_path, monkeypatch, family):
    """The trajectory (5-D for Qwen-Image), the solver and the family survive a file; Load checks the latent (for
    Qwen-Image in either layout) and refuses a UNet, naming both families."""
    import folder_paths

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    model, _, latent = inputs(family)
    _, inversion, _ = invert(pack_nodes, family, steps=8, solver="fireflow")
    pack_nodes["InvEditSaveInversion"].execute(inversion=inversion, file_name=family, overwrite=True)
    if family == tfm.QWEN_IMAGE:
        latent = {"samples": latent["samples"][:, :, 0]}  # the 4-D layout is checked as the 5-D one
    with torch.inference_mode():
        noise, loaded, sigmas = pack_nodes["InvEditLoadInversion"].execute(model=model, file_name=family,
                                                                           latent=latent).result
    assert torch.equal(loaded.trajectory.latents, inversion.trajectory.latents)
    assert loaded.trajectory.config.solver == "fireflow" and loaded.settings["process"] == "rectified-flow"
    assert loaded.trajectory.latents.ndim == (6 if family == tfm.QWEN_IMAGE else 5)
    assert torch.equal(sigmas, inversion.sampling_sigmas)
    with pytest.raises(ValueError, match="rectified-flow model.*DDPM-family UNet"):
        pack_nodes["InvEditLoadInversion"].execute(model=tiny_model("sd15"), file_name=family)


# --- refusals ---------------------------------------------------------------------------------


def test_an_inversion_of_one_family_is_refused_by_the_other(pack_nodes, tiny_model, tiny_conditioning, tiny_latent):
    unet, unet_prompt = tiny_model("sd15"), tiny_conditioning("sd15", 1)
    _, flow_inversion, _ = invert(pack_nodes, tfm.SD35)
    with torch.inference_mode():
        unet_inversion = pack_nodes["InvEditDDIMInversion"].execute(
            model=unet, positive=unet_prompt, negative=unet_prompt, latent=tiny_latent("sd15", 3),
            **dict(OPTIONS, steps=4, inversion_cfg=1.0, scheduler="auto", clean_level="zero")).result[1]
    with pytest.raises(ValueError, match="made with a rectified-flow model .*but this model is a DDPM-family UNet"):
        pack_nodes["InvEditReconstruct"].execute(model=unet, positive=unet_prompt, inversion=flow_inversion, cfg=1.0)
    with pytest.raises(ValueError, match="made with a DDPM-family UNet .*but this model is a rectified-flow model"):
        reconstruct(pack_nodes, tfm.FLUX_DEV, unet_inversion)
    with pytest.raises(ValueError, match="made with a DDPM-family UNet"):
        pack_nodes["InvEditInversionGuider"].execute(model=inputs(tfm.SD35)[0], positive=inputs(tfm.SD35)[1],
                                                     inversion=unet_inversion, cfg=1.0)
    with pytest.raises(ValueError, match="not a NOISE.*KSamplerAdvanced"):
        pack_nodes["InvEditInversionNoise"].execute(inversion=unet_inversion)


def test_an_inversion_below_sigma_one_is_not_a_noise(pack_nodes):
    """ddim_uniform on SD3.5 stops below sigma 1: a stock sampler would mix the NOISE with the latent there."""
    _, inversion, sigmas = invert(pack_nodes, tfm.SD35, steps=10, scheduler="ddim_uniform")
    assert float(sigmas[0]) < 1.0
    with pytest.raises(ValueError, match="stops at sigma .*below the top level 1"):
        pack_nodes["InvEditInversionNoise"].execute(inversion=inversion)


def test_the_noise_refuses_a_latent_of_another_size(graph, run_graph):
    model = graph.node("InvEditTestTinyFlowModel", family=tfm.SD35, seed=0)
    prompt = graph.node("InvEditTestFlowConditioning", family=tfm.SD35, seed=1, tokens=8)
    latent = graph.node("InvEditTestFlowLatent", family=tfm.SD35, seed=3, batch=1, height=16, width=16)
    inversion = graph.node("InvEditDDIMInversion", model=model, positive=prompt, negative=prompt, latent=latent,
                           **dict(OPTIONS, steps=4, inversion_cfg=1.0, scheduler="auto", clean_level="zero"))
    other = graph.node("EmptySD3LatentImage", width=256, height=128, batch_size=1)
    sampled = graph.node("SamplerCustomAdvanced", noise=graph.node("InvEditInversionNoise", inversion=inversion.out(1)),
                         guider=graph.node("CFGGuider", model=model, positive=prompt, negative=prompt, cfg=1.0),
                         sampler=graph.node("KSamplerSelect", sampler_name="euler"), sigmas=inversion.out(2),
                         latent_image=other)
    graph.capture("sampled", sampled)
    with pytest.raises(GraphExecutionError, match="inversion's noise is.*source image's latent"):
        run_graph(graph)


def test_qwen_image_latents_are_5d_and_videos_are_refused(pack_nodes):
    """A 4-D latent gets Qwen-Image's frame axis (the same inversion as the 5-D one); several frames, or a 5-D
    latent for a 4-D model, are refused."""
    latent = inputs(tfm.QWEN_IMAGE)[2]
    five_d, _, _ = invert(pack_nodes, tfm.QWEN_IMAGE, steps=4)
    four_d, _, _ = invert(pack_nodes, tfm.QWEN_IMAGE, steps=4, latent={"samples": latent["samples"][:, :, 0]})
    assert torch.equal(five_d["samples"], four_d["samples"]) and five_d["samples"].ndim == 5
    with pytest.raises(ValueError, match="2 frames.*one frame each"):
        invert(pack_nodes, tfm.QWEN_IMAGE, steps=4, latent={"samples": latent["samples"].repeat(1, 1, 2, 1, 1)})
    with pytest.raises(ValueError, match="4-D 'samples'.*video latents"):
        invert(pack_nodes, tfm.FLUX_DEV, steps=4, latent={"samples": latent["samples"]})


def test_the_lowest_timestep_clean_level_on_a_schedule_that_ends_there_says_what_to_use(pack_nodes):
    """karras ends at the model's lowest level already: reading the image there too would repeat a level."""
    with pytest.raises(ValueError, match="karras schedule already ends there: use clean_level 'zero'"):
        invert(pack_nodes, tfm.SD35, steps=4, scheduler="karras", clean_level="lowest timestep")
    for family in (tfm.SD35, tfm.FLUX_DEV):
        _, _, sigmas = invert(pack_nodes, family, steps=4, clean_level="lowest timestep")
        assert 0.0 < float(sigmas[-1]) < float(sigmas[-2])


def test_a_prompt_of_another_text_encoder_is_refused(pack_nodes, tiny_conditioning):
    """An SD1.x prompt (64 wide) into Flux, whose T5 context is 4096 wide (Prompt-to-Prompt on flow models:
    tests/host/test_p2p_flow.py and test_p2p_families.py)."""
    with pytest.raises(ValueError, match="another model family \\(context width 64; this model takes 4096\\)"):
        with torch.inference_mode():
            pack_nodes["InvEditDDIMInversion"].execute(
                model=inputs(tfm.FLUX_DEV)[0], positive=tiny_conditioning("sd15", 1), negative=None,
                latent=inputs(tfm.FLUX_DEV)[2],
                **dict(OPTIONS, steps=4, inversion_cfg=1.0, scheduler="auto", clean_level="zero"))
