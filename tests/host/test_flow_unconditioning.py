"""Null-text and negative-prompt inversion on rectified-flow models, inside ComfyUI (issue 14, part 2a).

On the flow test-bed (ComfyUI's own Flux, trained on the digits; its usual cfg is 2), 50 steps, held-out
canvases: null-text's reconstruction at cfg 2 and 4 is at least :data:`ERROR_RATIO` times closer to the image
than plain Euler sampling of the same inversion at the same cfg (the independent reference: the guidance
gap itself), and null-text with 0 Adam steps, which is plain Euler again, fails that bound. Negative-prompt
inversion makes the unconditional branch equal to the conditional one, so the cfg changes nothing: exact
equality across cfg. On the tiny real-class models (tests/host/tiny_flow_models.py): the families with real
CFG (SD3.5, Qwen-Image, Chroma) run both and leave the MODEL unchanged; the distilled ones (Flux dev, Flux
schnell) are refused with a message naming the model kind and direct inversion; an SD3.5 loaded by UNETLoader
with fp8 weights runs null-text through ComfyUI's cast-on-the-fly layers.
"""

from __future__ import annotations

import pytest
import torch
import tiny_flow_models as tfm
from test_flow_fp8 import assert_runs_on_fp8_weights, sd35_fp8_via_unet_loader  # noqa: F401 (fixture)
from test_flow_inversion import shared_flow_models_unchanged  # noqa: F401 (autouse fixture)
from tiny_models import ModelSnapshot

from invedit.inversion import metrics
from invedit.nodes.options import option_defaults

TESTBED_STEPS = 50
TESTBED_IMAGES = 2
TESTBED_GUIDANCES = (2.0, 4.0)
ERROR_RATIO = 10.0
"""Null-text's image MSE is at least this many times below plain Euler's at the same cfg (measured on 8 held-out
canvases, benchmarks/results/guidance_gap_flow.md: 25x at cfg 2, 84x at cfg 4)."""
NULL_TEXT = dict(inner_steps=10, learning_rate=0.01, learning_rate_decay=0.01, early_stop=1e-5,
                 early_stop_growth=2e-5, stop_check="before step", start_from="empty prompt")
SAVED_NAME = "invedit-tests/flow_testbed_null_text"
TINY_STEPS = 10
TINY_GUIDANCE = 4.0
TINY_NULL_TEXT = dict(NULL_TEXT, inner_steps=5)
LATENT_ROUNDING = 1e-5
"""Float rounding of a latent taken into a model's units and back (Flux's latent format scales and shifts)."""
REAL_CFG_FAMILIES = (tfm.SD35, tfm.QWEN_IMAGE, tfm.CHROMA)
DISTILLED_FAMILIES = {tfm.FLUX_DEV: "guidance-distilled", tfm.FLUX_SCHNELL: "timestep-distilled"}


def invert(pack_nodes, model, positive, negative, latent, steps: int) -> object:
    """InvEdit DDIM Inversion at cfg 1, scheduler auto (Euler for flow models) -> INVERSION."""
    with torch.inference_mode():
        return pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=positive, negative=negative, latent=latent,
            **dict(option_defaults(), steps=steps, inversion_cfg=1.0, scheduler="auto", clean_level="zero")).result[1]


def reconstruct(pack_nodes, model, positive, negative, record, cfg: float) -> torch.Tensor:
    with torch.inference_mode():
        return pack_nodes["InvEditReconstruct"].execute(model=model, positive=positive, negative=negative,
                                                         inversion=record, cfg=cfg).result[0]["samples"]


def null_text(pack_nodes, model, record, guidance: float, **settings):
    with torch.inference_mode():
        return pack_nodes["InvEditNullTextInversion"].execute(model=model, inversion=record, guidance=guidance,
                                                               **{**NULL_TEXT, **settings}).result[0]


def negative_prompt(pack_nodes, record, empty_prompt_weight: float = 0.0):
    with torch.inference_mode():
        return pack_nodes["InvEditNegativePromptInversion"].execute(
            inversion=record, empty_prompt_weight=empty_prompt_weight).result[0]


# ---------------------------------------------------------------------------------------------
# The flow test-bed: the guidance gap closed


@pytest.fixture(scope="module")
def flow_testbed_inversion(pack_nodes):
    """Held-out canvases inverted at cfg 1 by the flow test-bed: (model, positive, negative, images, record)."""
    with torch.inference_mode():
        model, text_encoder = pack_nodes["InvEditTestbedFlowModelLoader"].execute(verify=True).result
        images, prompts = pack_nodes["InvEditTestbedHeldOutDigits"].execute(count=TESTBED_IMAGES, seed=0).result
        encode = pack_nodes["InvEditTestbedTextEncode"]
        positive = encode.execute(text_encoder=text_encoder, text=prompts).result[0]
        negative = encode.execute(text_encoder=text_encoder, text="").result[0]
        latent = pack_nodes["InvEditTestbedImageToLatent"].execute(image=images).result[0]
    record = invert(pack_nodes, model, positive, negative, latent, TESTBED_STEPS)
    return model, positive, negative, images, record


def image_mse(pack_nodes, testbed, record, cfg: float) -> float:
    model, positive, negative, images, _ = testbed
    rebuilt = reconstruct(pack_nodes, model, positive, negative, record, cfg)
    with torch.inference_mode():
        result = pack_nodes["InvEditTestbedLatentToImage"].execute(latent={"samples": rebuilt}, scale=1).result[0]
    return float(metrics.mse(images.movedim(-1, 1).double(), result.movedim(-1, 1).double()).mean())


@pytest.mark.parametrize("cfg", TESTBED_GUIDANCES)
def test_null_text_closes_the_guidance_gap_of_the_flow_testbed(pack_nodes, flow_testbed_inversion, cfg):
    model, _, _, _, record = flow_testbed_inversion
    snapshot = ModelSnapshot.take(model)
    plain = image_mse(pack_nodes, flow_testbed_inversion, record, cfg)
    assert plain > 1e-3  # the guidance gap is real at this cfg (measured 22 dB at cfg 2, 17 dB at cfg 4)
    optimised = null_text(pack_nodes, model, record, cfg)
    assert optimised.settings["process"] == "rectified-flow"
    assert optimised.unconditioning.step_contexts.shape[:2] == (TESTBED_STEPS, TESTBED_IMAGES)
    # The pooled vector (Flux's y, [B, 64] here) is optimised with the token context.
    assert optimised.unconditioning.report["pooled_output"] == "optimised"
    assert optimised.unconditioning.step_pooled.shape == (TESTBED_STEPS, TESTBED_IMAGES, 64)
    assert image_mse(pack_nodes, flow_testbed_inversion, optimised, cfg) < plain / ERROR_RATIO
    # Control: no Adam step leaves the empty prompt's context at every step, which is plain Euler.
    unoptimised = null_text(pack_nodes, model, record, cfg, inner_steps=0)
    assert sum(unoptimised.unconditioning.report["gradient_steps"]) == 0
    assert unoptimised.unconditioning.step_pooled is None  # nothing moved: the template's pooled vector
    assert not image_mse(pack_nodes, flow_testbed_inversion, unoptimised, cfg) < plain / ERROR_RATIO
    snapshot.assert_unchanged(model)


def test_null_text_from_the_source_prompt_starts_on_negative_prompt_inversion(pack_nodes, flow_testbed_inversion):
    """Starting from the source prompt starts from its pooled vector too: step 0 already lands on the
    trajectory (the unconditional branch is the conditional one), so no Adam step is taken."""
    model, positive, negative, _, record = flow_testbed_inversion
    optimised = null_text(pack_nodes, model, record, TESTBED_GUIDANCES[0], start_from="source prompt")
    assert sum(optimised.unconditioning.report["gradient_steps"]) == 0
    template_options = optimised.unconditioning.conditioning[0][1]
    assert torch.equal(template_options["pooled_output"], positive[0][1]["pooled_output"])
    assert not torch.equal(negative[0][1]["pooled_output"], positive[0][1]["pooled_output"][:1])


def test_a_saved_flow_null_text_inversion_loads_back_for_the_flow_model_only(pack_nodes, flow_testbed_inversion):
    """Save / load keeps the per-step contexts and pooled vectors and the model family: the loaded record
    reconstructs exactly as the one saved; the digits UNet refuses it, naming the family."""
    model, positive, negative, _, record = flow_testbed_inversion
    optimised = null_text(pack_nodes, model, record, TESTBED_GUIDANCES[0], inner_steps=2)
    assert optimised.unconditioning.step_pooled is not None
    with torch.inference_mode():
        pack_nodes["InvEditSaveInversion"].execute(inversion=optimised, file_name=SAVED_NAME, overwrite=True)
        loaded = pack_nodes["InvEditLoadInversion"].execute(model=model, file_name=SAVED_NAME).result[1]
        unet, _ = pack_nodes["InvEditTestbedModelLoader"].execute(verify=True).result
    assert loaded.settings["process"] == "rectified-flow"
    assert torch.equal(loaded.unconditioning.step_pooled, optimised.unconditioning.step_pooled)
    assert torch.equal(reconstruct(pack_nodes, model, positive, None, loaded, TESTBED_GUIDANCES[0]),
                       reconstruct(pack_nodes, model, positive, None, optimised, TESTBED_GUIDANCES[0]))
    with torch.inference_mode(), pytest.raises(ValueError, match="rectified-flow|another"):
        pack_nodes["InvEditLoadInversion"].execute(model=unet, file_name=SAVED_NAME)


def test_negative_prompt_inversion_makes_the_flow_testbed_cfg_free(pack_nodes, flow_testbed_inversion):
    """The source prompt as the unconditional one: uncond + (cond - uncond) * w = cond for every w, exactly;
    the blend fully back to the empty prompt is plain Euler (the control)."""
    model, positive, negative, _, record = flow_testbed_inversion
    inverted = negative_prompt(pack_nodes, record)
    low, high = (reconstruct(pack_nodes, model, positive, None, inverted, cfg) for cfg in TESTBED_GUIDANCES)
    assert torch.equal(low, high)
    at_one = image_mse(pack_nodes, flow_testbed_inversion, record, 1.0)
    assert image_mse(pack_nodes, flow_testbed_inversion, inverted, TESTBED_GUIDANCES[1]) < 1.01 * at_one
    blended_back = negative_prompt(pack_nodes, record, empty_prompt_weight=1.0)
    assert torch.equal(reconstruct(pack_nodes, model, positive, None, blended_back, TESTBED_GUIDANCES[1]),
                       reconstruct(pack_nodes, model, positive, negative, record, TESTBED_GUIDANCES[1]))


# ---------------------------------------------------------------------------------------------
# The tiny real-class families


def tiny_inversion(pack_nodes, family: str, model=None):
    model = model or tfm.cached_tiny_flow_model(family)
    positive, negative = tfm.tiny_flow_conditioning(family, 1), tfm.tiny_flow_conditioning(family, 2)
    record = invert(pack_nodes, model, positive, negative, tfm.tiny_flow_latent(family, 3), TINY_STEPS)
    return model, positive, negative, record


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result - reference).abs().max() / reference.std())


def latent_error(result: torch.Tensor, source: torch.Tensor) -> float:
    return float((result - source).pow(2).mean())


@pytest.mark.parametrize("family", REAL_CFG_FAMILIES)
def test_null_text_and_negative_prompt_run_on_flow_families_with_real_cfg(pack_nodes, family):
    """Null-text lowers the error at cfg 4 (measured on these random-weight models with the context alone:
    SD3.5 0.455 -> 0.357, Qwen-Image 0.0095 -> 0.0072, Chroma 0.071 -> 0.0026) and optimises SD3.5's pooled
    vector (Qwen-Image and Chroma have none); negative-prompt inversion reconstructs at cfg 4 exactly as at any
    other cfg; the MODEL is unchanged."""
    model, positive, negative, record = tiny_inversion(pack_nodes, family)
    snapshot = ModelSnapshot.take(model)
    source = tfm.tiny_flow_latent(family, 3)["samples"]
    plain = latent_error(reconstruct(pack_nodes, model, positive, negative, record, TINY_GUIDANCE), source)
    optimised = null_text(pack_nodes, model, record, TINY_GUIDANCE, **TINY_NULL_TEXT)
    rebuilt = reconstruct(pack_nodes, model, positive, None, optimised, TINY_GUIDANCE)
    assert bool(torch.isfinite(rebuilt).all()) and latent_error(rebuilt, source) < plain
    assert optimised.unconditioning.report["pooled_output"] == ("optimised" if family == tfm.SD35 else "none")
    inverted = negative_prompt(pack_nodes, record)
    assert torch.equal(reconstruct(pack_nodes, model, positive, None, inverted, TINY_GUIDANCE),
                       reconstruct(pack_nodes, model, positive, None, inverted, 2 * TINY_GUIDANCE))
    snapshot.assert_unchanged(model)


@pytest.mark.parametrize("family", sorted(DISTILLED_FAMILIES))
def test_distilled_flux_is_refused_clearly_and_direct_inversion_runs(pack_nodes, family):
    model, positive, negative, record = tiny_inversion(pack_nodes, family)
    assert record.settings["distillation"] == DISTILLED_FAMILIES[family]
    snapshot = ModelSnapshot.take(model)
    for method, run in (("Null-text", lambda: null_text(pack_nodes, model, record, TINY_GUIDANCE, **TINY_NULL_TEXT)),
                        ("Negative-prompt", lambda: negative_prompt(pack_nodes, record))):
        with pytest.raises(ValueError) as refused:
            run()
        message = str(refused.value)
        assert type(refused.value).__name__ == "InvEditInputError"
        assert message.startswith(method) and DISTILLED_FAMILIES[family] in message, message
        assert "Direct Inversion" in message and "cfg 1" in message, message
    with torch.inference_mode():
        direct = pack_nodes["InvEditDirectInversion"].execute(inversion=record).result[0]
    source = tfm.tiny_flow_latent(family, 3)["samples"]
    rebuilt = reconstruct(pack_nodes, model, positive, negative, direct, 1.0)
    # Pinned to the trajectory: the source latent up to the latent format's scaling in and out.
    assert relative_error(rebuilt, source) < LATENT_ROUNDING
    # Control: the same inversion without the pin drifts by the Euler round trip's error.
    assert relative_error(reconstruct(pack_nodes, model, positive, negative, record, 1.0), source) > LATENT_ROUNDING
    snapshot.assert_unchanged(model)


def test_records_without_the_distillation_setting_fall_back_on_the_guidance_embedding(pack_nodes):
    """Inversions saved before the ``distillation`` setting existed: Flux dev is still refused by its
    ``guidance_distilled_model`` setting (control: the same record marked as not distilled runs)."""
    _, _, _, record = tiny_inversion(pack_nodes, tfm.FLUX_DEV)
    older = {key: value for key, value in record.settings.items() if key != "distillation"}
    with pytest.raises(ValueError, match="guidance-distilled"):
        negative_prompt(pack_nodes, record.with_changes(settings=older))
    negative_prompt(pack_nodes, record.with_changes(settings={**older, "guidance_distilled_model": False}))


def test_null_text_runs_on_an_sd35_with_fp8_weights(pack_nodes, sd35_fp8_via_unet_loader):
    """The stock UNETLoader's fp8_e4m3fn weights, cast layer by layer: gradients reach the context through
    the cast-on-the-fly layers, the result is finite and closes part of the gap; the MODEL is unchanged."""
    model = sd35_fp8_via_unet_loader
    assert_runs_on_fp8_weights(model)
    snapshot = ModelSnapshot.take(model)
    _, positive, negative, record = tiny_inversion(pack_nodes, tfm.SD35, model=model)
    source = tfm.tiny_flow_latent(tfm.SD35, 3)["samples"]
    plain = latent_error(reconstruct(pack_nodes, model, positive, negative, record, TINY_GUIDANCE), source)
    optimised = null_text(pack_nodes, model, record, TINY_GUIDANCE, **TINY_NULL_TEXT)
    assert sum(optimised.unconditioning.report["gradient_steps"]) > 0
    rebuilt = reconstruct(pack_nodes, model, positive, None, optimised, TINY_GUIDANCE)
    assert bool(torch.isfinite(rebuilt).all()) and latent_error(rebuilt, source) < plain
    snapshot.assert_unchanged(model)
