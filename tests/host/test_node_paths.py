"""Paths through the inversion nodes a user will hit, each checked with numbers (issue 12).

Reconstruct and the Inversion Guider on a plain inversion without a negative prompt; the
warm-start fraction; every scheduler ComfyUI offers; the simple and diffusers-v timestep rules;
EasyInv's custom settings and output variant; inverting at a guidance other than 1; a
CONDITIONING of several entries; a latent noise mask in the Inversion Sampler.

Round trips are checked against the tiny models' measured errors (regression bands, set from
measurement on tests/host/tiny_models.py's models), each with the simple timestep rule beside it
as a negative control that must fail the same bound.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import comfy.samplers
import nodes
from invedit.nodes.options import option_defaults

STEPS = 20
OPTIONS = option_defaults()
CFG = 7.5
# Max |error| / std of the latent of a 20-step round trip on the tiny SD1.x model: regression bands
# set from measurement, each with a negative control beside it that must fail it.
ROUND_TRIP_BOUND = 0.3  # ddim_uniform: measured 0.196, the simple rule 0.50; cfg 2: 0.25 / 0.41; two
#                         conditioning entries: 0.19 / 0.55
SCHEDULER_ROUND_TRIP = {  # measured reference rule (simple rule); the control is the shifted schedule
    "simple": 0.255, "sgm_uniform": 0.265, "karras": 0.280, "exponential": 0.351, "ddim_uniform": 0.196,
    "beta": 0.236, "normal": 0.278, "kl_optimal": 0.676,
}  # simple rule: 0.86, 0.89, 0.49, 0.60, 0.50, 0.35, 0.76, 1.91
# linear_quadratic (made for flow models) keeps half its steps near sigma_max and ends with one step
# from sigma 2.7 to 0 on an SD schedule: nothing round-trips through it (measured 1.62 reference,
# 1.42 simple, 1.48 shifted at 20 steps; 0.65 / 0.58 at 50), so only its equality with stock
# sampling is checked.
SCHEDULER_BAND = 1.5  # bound = 1.5 x the measured reference error
SCHEDULERS = list(comfy.samplers.SCHEDULER_NAMES)


@contextlib.contextmanager
def refused(match: str):
    """Expect an InvEditInputError (from either copy of the pack) whose message matches ``match``."""
    with pytest.raises(ValueError, match=match) as error:
        yield error
    assert type(error.value).__name__ == "InvEditInputError", repr(error.value)


def relative(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result - reference).abs().max() / reference.std())


@pytest.fixture
def sd15(tiny_model, tiny_conditioning, tiny_latent):
    """(model, positive, negative, latent) on the tiny SD1.x model."""
    return tiny_model("sd15"), tiny_conditioning("sd15", 1), tiny_conditioning("sd15", 2), tiny_latent("sd15", 3)


def invert(pack_nodes, model, positive, negative, latent, **overrides):
    """InvEdit DDIM Inversion -> its NodeOutput (noise LATENT, INVERSION, SIGMAS; ui)."""
    settings = dict(OPTIONS, steps=STEPS, inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero")
    settings.update(overrides)
    with torch.inference_mode():
        return pack_nodes["InvEditDDIMInversion"].execute(model=model, positive=positive, negative=negative,
                                                          latent=latent, **settings)


def reconstruct(pack_nodes, model, positive, record, cfg: float = 1.0, negative=None) -> torch.Tensor:
    with torch.inference_mode():
        return pack_nodes["InvEditReconstruct"].execute(model=model, positive=positive, inversion=record, cfg=cfg,
                                                        negative=negative).result[0]["samples"]


def stock_ddim(model, positive, negative, noise: dict, scheduler: str, cfg: float = 1.0) -> torch.Tensor:
    """ComfyUI's KSamplerAdvanced, ddim, no added noise, the same steps and scheduler."""
    with torch.inference_mode():
        return nodes.NODE_CLASS_MAPPINGS["KSamplerAdvanced"]().sample(
            model, "disable", 0, STEPS, cfg, "ddim", scheduler, positive, negative, noise, 0, 10000,
            "disable")[0]["samples"]


def round_trip_errors(pack_nodes, model, positive, negative, latent, **overrides) -> dict[str, float]:
    """Max |error| / std of invert -> Reconstruct: the reference rule, and two negative controls: the simple
    rule, and the replay along the schedule shifted one step (the noise taken for one level lower)."""
    cfg = overrides.get("inversion_cfg", 1.0)
    errors = {}
    for rule in ("reference", "simple"):
        record = invert(pack_nodes, model, positive, negative, latent, timestep_rule=rule, **overrides).result[1]
        errors[rule] = relative(reconstruct(pack_nodes, model, positive, record, cfg, negative), latent["samples"])
        if rule == "reference":
            shifted = record.with_changes(sampling_sigmas=record.sampling_sigmas[1:])
            errors["shifted"] = relative(reconstruct(pack_nodes, model, positive, shifted, cfg, negative),
                                         latent["samples"])
    return errors


def assert_round_trip_with_control(errors: dict[str, float], bound: float = ROUND_TRIP_BOUND,
                                   control: str = "simple") -> None:
    assert errors["reference"] < bound < min(errors[control], errors["shifted"]), errors


# ---------------------------------------------------------------------------------------------
# No negative prompt


def test_reconstruct_and_the_guider_need_no_negative_at_cfg_1(pack_nodes, sd15):
    model, positive, negative, latent = sd15
    record = invert(pack_nodes, model, positive, negative, latent).result[1]
    with_negative = reconstruct(pack_nodes, model, positive, record, 1.0, negative)
    without = reconstruct(pack_nodes, model, positive, record, 1.0, None)
    assert torch.equal(with_negative, without)  # at cfg 1 the negative prompt is never evaluated
    with torch.inference_mode():
        guider = pack_nodes["InvEditInversionGuider"].execute(model=model, positive=positive, inversion=record,
                                                              cfg=1.0, negative=None).result[0]
        sampled = nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample(
            nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider,
            nodes.NODE_CLASS_MAPPINGS["KSamplerSelect"]().get_sampler("ddim")[0], record.sampling_sigmas,
            {"samples": model.model.process_latent_out(record.trajectory.noise.clone())})[0]["samples"]
    assert torch.equal(sampled, without)
    for node_id in ("InvEditReconstruct", "InvEditInversionGuider"):
        with refused("no null-text or negative-prompt unconditioning: connect a negative prompt"):
            with torch.inference_mode():
                pack_nodes[node_id].execute(model=model, positive=positive, inversion=record, cfg=CFG, negative=None)


# ---------------------------------------------------------------------------------------------
# Warm start, EasyInv, timestep rules through the node


def test_the_warm_start_fraction_equals_its_steps_and_both_at_once_are_refused(pack_nodes, sd15):
    model, positive, negative, latent = sd15
    by_fraction = invert(pack_nodes, model, positive, negative, latent, steps=50, warm_start_fraction=0.04,
                         warm_start_seed=7).result[1]
    by_steps = invert(pack_nodes, model, positive, negative, latent, steps=50, warm_start_steps=2,
                      warm_start_seed=7).result[1]
    assert torch.equal(by_fraction.trajectory.noise, by_steps.trajectory.noise)
    assert by_fraction.trajectory.model_calls == 48
    assert by_fraction.settings["warm_start"] == {"steps": 0, "fraction": 0.04, "seed": 7}
    with refused("either the warm-start steps or the warm-start fraction, not both"):
        invert(pack_nodes, model, positive, negative, latent, warm_start_steps=2, warm_start_fraction=0.04)


def test_easyinv_custom_settings_and_the_output_variant_through_the_node(pack_nodes, sd15):
    model, positive, negative, latent = sd15

    def inversion(**options):
        return invert(pack_nodes, model, positive, negative, latent, **options).result[1]

    preset = inversion(easyinv="SD1.x")
    same_as_preset = inversion(easyinv="custom", easyinv_eta=0.5, easyinv_start=0.05, easyinv_length=0.2)
    custom = inversion(easyinv="custom", easyinv_eta=0.7, easyinv_start=0.1, easyinv_length=0.5)
    output = inversion(easyinv="SD1.x", easyinv_variant="output")
    plain = inversion()
    assert torch.equal(same_as_preset.trajectory.noise, preset.trajectory.noise)
    assert custom.settings["easyinv"] == {"eta": 0.7, "start": 0.1, "length": 0.5, "variant": "input"}
    assert output.settings["easyinv"]["variant"] == "output"
    noises = [record.trajectory.noise for record in (preset, custom, output, plain)]
    for i, first in enumerate(noises):
        for second in noises[i + 1:]:
            assert relative(first, second) > 1e-4
    # The preset's window at 20 steps is steps 2..4 (0.05 * 20 < i < 0.25 * 20): the latents it moved
    # from before step 2 are the plain inversion's, bit for bit.
    assert torch.equal(preset.trajectory.latents[:2], plain.trajectory.latents[:2])
    assert not torch.equal(preset.trajectory.latents[3], plain.trajectory.latents[3])


def test_the_diffusers_v_rule_through_the_node(pack_nodes, tiny_model, tiny_conditioning, tiny_latent, sd15):
    """On an eps model it is the reference rule bit for bit; on the v model it is the conversion
    diffusers makes (recorded), which round-trips about 10x less tightly than the default
    (measured at 20 steps: 0.051 default, 0.51 diffusers v)."""
    model, positive, negative, latent = sd15
    reference = invert(pack_nodes, model, positive, negative, latent).result[1]
    diffusers_v = invert(pack_nodes, model, positive, negative, latent, timestep_rule="reference (diffusers v)").result[1]
    assert torch.equal(reference.trajectory.noise, diffusers_v.trajectory.noise)
    assert diffusers_v.settings["v_conversion"] == "query"
    v_model, v_positive, v_latent = tiny_model("sd15_v"), tiny_conditioning("sd15_v", 1), tiny_latent("sd15_v", 3)
    errors = {}
    for rule in ("reference", "reference (diffusers v)"):
        record = invert(pack_nodes, v_model, v_positive, v_positive, v_latent, timestep_rule=rule).result[1]
        errors[rule] = relative(reconstruct(pack_nodes, v_model, v_positive, record), v_latent["samples"])
        assert record.settings["v_conversion"] == ("state" if rule != "reference" else "query")
    assert errors["reference (diffusers v)"] > 5 * errors["reference"], errors


# ---------------------------------------------------------------------------------------------
# Schedulers, guidance while inverting, several conditioning entries


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_round_trips_through_stock_sampling(pack_nodes, sd15, scheduler):
    model, positive, negative, latent = sd15
    noise, record, _ = invert(pack_nodes, model, positive, negative, latent, scheduler=scheduler).result
    ours = reconstruct(pack_nodes, model, positive, record, 1.0, negative)
    assert torch.equal(ours, stock_ddim(model, positive, negative, noise, scheduler))
    if scheduler in SCHEDULER_ROUND_TRIP:
        assert_round_trip_with_control(round_trip_errors(pack_nodes, model, positive, negative, latent,
                                                         scheduler=scheduler),
                                       SCHEDULER_BAND * SCHEDULER_ROUND_TRIP[scheduler], control="shifted")


def test_inverting_at_a_guidance_other_than_1_round_trips_at_that_guidance(pack_nodes, sd15):
    model, positive, negative, latent = sd15
    cfg = 2.0
    noise, record, _ = invert(pack_nodes, model, positive, negative, latent, inversion_cfg=cfg).result
    assert record.settings["inversion_cfg"] == cfg
    ours = reconstruct(pack_nodes, model, positive, record, cfg, negative)
    assert torch.equal(ours, stock_ddim(model, positive, negative, noise, "ddim_uniform", cfg))
    plain = invert(pack_nodes, model, positive, negative, latent).result[1]
    assert relative(record.trajectory.noise, plain.trajectory.noise) > 1e-2  # the negative prompt took part
    assert_round_trip_with_control(round_trip_errors(pack_nodes, model, positive, negative, latent,
                                                     inversion_cfg=cfg))


def test_a_conditioning_of_several_entries_round_trips(pack_nodes, sd15, tiny_conditioning):
    model, positive, negative, latent = sd15
    with torch.inference_mode():
        combined = nodes.NODE_CLASS_MAPPINGS["ConditioningCombine"]().combine(positive, tiny_conditioning("sd15", 4))[0]
    assert len(combined) == 2
    noise, record, _ = invert(pack_nodes, model, combined, negative, latent).result
    ours = reconstruct(pack_nodes, model, combined, record, 1.0, negative)
    assert torch.equal(ours, stock_ddim(model, combined, negative, noise, "ddim_uniform"))
    single = invert(pack_nodes, model, positive, negative, latent).result[1]
    assert relative(record.trajectory.noise, single.trajectory.noise) > 1e-2  # the second entry took part
    assert_round_trip_with_control(round_trip_errors(pack_nodes, model, combined, negative, latent))


# ---------------------------------------------------------------------------------------------
# A noise mask in SamplerCustomAdvanced


def test_a_noise_mask_is_refused_by_the_inversion_sampler(pack_nodes, sd15):
    model, positive, negative, latent = sd15
    node = nodes.NODE_CLASS_MAPPINGS
    with torch.inference_mode():
        masked = node["SetLatentNoiseMask"]().set_mask(latent, torch.ones(1, 16, 16))[0]
        guider = node["CFGGuider"]().get_guider(model, positive, negative, 1.0)[0]
        sigmas = node["BasicScheduler"]().get_sigmas(model, "ddim_uniform", STEPS, 1.0)[0]
        sampler = pack_nodes["InvEditInversionSampler"].execute(**OPTIONS).result[0]
        with refused("cannot use a latent noise mask; remove Set Latent Noise Mask"):
            node["SamplerCustomAdvanced"]().sample(node["DisableNoise"]().get_noise()[0], guider, sampler, sigmas,
                                                   masked)
