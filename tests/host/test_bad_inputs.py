"""Bad inputs and faults, case by case (issue 7): each gives a clear error or a measured, correct result.

A clear error is an ``InvEditInputError`` (or ComfyUI's own validation) whose message says what to
change; the tests match its key words. A correct result is checked with numbers. No case may end in
a traceback from deep inside torch, a NaN (black) image or a changed MODEL. Cases already covered
elsewhere are named in the README's bad-input table, not repeated here: another model / another
image / damaged file / unsafe names for Load and Save Inversion (test_storage_nodes.py), a word swap
with another word count and missing words with a CLIP (test_p2p_nodes.py), interrupts before the
first step (test_inversion_nodes.py, test_guidance_gap.py).

Models: the tiny SD1.x and SDXL models of tiny_models.py, the shipped test-bed model (1-channel
latent, its own closed-vocabulary text encoder) and a tiny CLIP for Prompt-to-Prompt.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import comfy.model_management
import comfy.samplers
import nodes
import p2p_models
from invedit.nodes import p2p_nodes
from invedit.nodes.options import option_defaults
from invedit.testbed import data as testbed_data
from tiny_models import ROUND_TRIP_BOUND as ROUND_TRIP_BOUNDS
from tiny_models import ROUND_TRIP_STEPS, ModelSnapshot, build_tiny_model

STEPS = 6
CFG = 7.5
OPTIONS = option_defaults()
# Max |error| / std of the latent of invert -> reconstruct at cfg 1 on the tiny models, per
# architecture: regression bands measured on those models (tiny_models.ROUND_TRIP_BOUND), each
# checked with a negative control that must fail it (assert_round_trip).
ONE_STEP_BOUND = 5e-3  # one ddim_uniform step reaches only timestep 1 (sigma 0.04): measured 2.8e-3,
#                        the simple rule 1.05e-2 (16x16); 2.5e-3 and 1.3e-2 at 40x56
# Rows of a batch against the same image alone: only float32 rounding of batched matmuls differs.
BATCH_TOLERANCE = 1e-4
NULL_TEXT = dict(guidance=CFG, inner_steps=3, learning_rate=0.01, learning_rate_decay=0.01, early_stop=1e-5,
                 early_stop_growth=2e-5, stop_check="before step", start_from="empty prompt")
P2P_SETTINGS = dict(mode="word swap", cross_replace=0.8, self_replace=0.5, self_max_pixels=1024, word_windows="",
                    reweight="", blend_words="", blend_start=0.2, blend_threshold=0.3, blend_layer_downsample=2)
TESTBED_SOURCE = "a photo of three and seven"
TESTBED_HELDOUT_PROMPT = "a photo of eight and five"  # held-out canvas 0 of seed 0
TESTBED_STEPS = 20
TESTBED_PSNR_FLOOR = 30.0  # dB at 20 steps, cfg 1 (measured 32.7 empty, 31.9 with the prompt; the replay
#                            along the schedule shifted one step, the negative control: ... dB)
FP16_OVERFLOW_SCALE = 1e5  # conv_in outputs of about 1e5: past float16's 65504, fine in float32


# ---------------------------------------------------------------------------------------------
# Helpers


@contextlib.contextmanager
def refused(match: str):
    """Expect an InvEditInputError (from either copy of the pack) whose message matches ``match``."""
    with pytest.raises(ValueError, match=match) as error:
        yield error
    assert type(error.value).__name__ == "InvEditInputError", repr(error.value)


def canvas_psnr(result: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of test-bed canvases (values in [-1, 1], so a peak-to-peak range of 2)."""
    return float(10 * torch.log10(4.0 / (result - reference).pow(2).mean()))


def relative(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result - reference).abs().max() / reference.std())


def invert(pack_nodes, model, positive, negative, latent, steps: int = STEPS, **overrides):
    """InvEdit DDIM Inversion -> (noise LATENT, INVERSION, SIGMAS)."""
    settings = dict(OPTIONS, steps=steps, inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero")
    settings.update(overrides)
    with torch.inference_mode():
        return pack_nodes["InvEditDDIMInversion"].execute(model=model, positive=positive, negative=negative,
                                                          latent=latent, **settings).result


def round_trip_errors(pack_nodes, model, positive, negative, latent, steps: int = ROUND_TRIP_STEPS,
                      **overrides) -> dict[str, float]:
    """Max |error| / std of invert -> Reconstruct at cfg 1: the reference rule, and two negative controls:
    the simple rule, and the replay along the schedule shifted one step (the noise taken for the state
    one level lower)."""
    errors = {}
    for rule in ("reference", "simple"):
        _, record, _ = invert(pack_nodes, model, positive, negative, latent, steps=steps, timestep_rule=rule,
                              **overrides)
        errors[rule] = relative(reconstruct(pack_nodes, model, positive, record, negative=negative), latent["samples"])
        if rule == "reference" and record.sampling_sigmas.numel() > 2:
            shifted = record.with_changes(sampling_sigmas=record.sampling_sigmas[1:])
            errors["shifted"] = relative(reconstruct(pack_nodes, model, positive, shifted, negative=negative),
                                         latent["samples"])
    return errors


def assert_round_trip(errors: dict[str, float], bound: float, control: str = "simple") -> None:
    """The reference rule within ``bound``; the negative control ``control`` (and the shifted schedule,
    where the schedule has a level to shift to) beyond it."""
    controls = [errors[control]] + ([errors["shifted"]] if "shifted" in errors else [])
    assert errors["reference"] < bound < min(controls), errors


def reconstruct(pack_nodes, model, positive, record, cfg: float = 1.0, negative=None) -> torch.Tensor:
    with torch.inference_mode():
        return pack_nodes["InvEditReconstruct"].execute(model=model, positive=positive, inversion=record, cfg=cfg,
                                                        negative=negative).result[0]["samples"]


def null_text(pack_nodes, model, record, negative, **overrides):
    with torch.inference_mode():
        return pack_nodes["InvEditNullTextInversion"].execute(model=model, inversion=record, negative=negative,
                                                              **dict(NULL_TEXT, **overrides)).result[0]


def sampler(name: str, **options):
    """A SAMPLER as KSamplerSelect gives it, or with options as SamplerEulerAncestral & co. give them."""
    if options:
        return comfy.samplers.ksampler(name, options)
    return nodes.NODE_CLASS_MAPPINGS["KSamplerSelect"]().get_sampler(name)[0]


def sample_custom_advanced(guider, sampler_object, record, model) -> torch.Tensor:
    """SamplerCustomAdvanced with Disable Noise, the inversion's SIGMAS and its noise latent."""
    latent = {"samples": model.model.process_latent_out(record.trajectory.noise.clone())}
    with torch.inference_mode():
        return nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample(
            nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider, sampler_object,
            record.sampling_sigmas, latent)[0]["samples"]


def inversion_guider(pack_nodes, model, positive, record, negative=None, cfg: float = CFG):
    with torch.inference_mode():
        return pack_nodes["InvEditInversionGuider"].execute(model=model, positive=positive, inversion=record, cfg=cfg,
                                                            negative=negative).result[0]


def edit_plan(text_encoder, source: str, targets: str, **settings):
    with torch.inference_mode():
        return p2p_nodes.P2PEditSettings.execute(text_encoder=text_encoder, source_prompt=source,
                                                 edited_prompts=targets, **dict(P2P_SETTINGS, **settings)).result[0]


def p2p_sample(model, record, edit, negative, map_budget_mib: int = 0):
    with torch.inference_mode():
        return p2p_nodes.P2PSample.execute(model=model, inversion=record, edit=edit, cfg=CFG,
                                           map_budget_mib=map_budget_mib, negative=negative).result


@pytest.fixture
def sd15(tiny_model, tiny_conditioning):
    """(MODEL, positive, negative) of the tiny SD1.x model."""
    return tiny_model("sd15"), tiny_conditioning("sd15", 1), tiny_conditioning("sd15", 2)


@pytest.fixture
def sdxl(tiny_model, tiny_conditioning):
    return tiny_model("sdxl"), tiny_conditioning("sdxl", 1), tiny_conditioning("sdxl", 2)


@pytest.fixture(scope="module")
def testbed(pack_nodes):
    """(MODEL, text encoder, encode(text) -> CONDITIONING, one held-out canvas LATENT)."""
    with torch.inference_mode():
        model, text_encoder = pack_nodes["InvEditTestbedModelLoader"].execute(verify=True).result

    def encode(text: str):
        with torch.inference_mode():
            return pack_nodes["InvEditTestbedTextEncode"].execute(text_encoder=text_encoder, text=text).result[0]

    canvases, prompts, _ = testbed_data.heldout_canvases(1, 0)
    assert prompts == [TESTBED_HELDOUT_PROMPT]
    return model, text_encoder, encode, {"samples": canvases}


# ---------------------------------------------------------------------------------------------
# A latent, an inversion or a prompt from another model family


def test_a_latent_of_another_latent_format_is_refused(pack_nodes, sd15, sdxl, testbed):
    model_sd, positive, negative = sd15
    model_tb, _, encode, _ = testbed
    snapshot = ModelSnapshot.take(model_tb)
    with refused("4 channels but this model expects 1.*own VAE"):
        invert(pack_nodes, model_tb, encode(TESTBED_SOURCE), encode(""), {"samples": torch.zeros(1, 4, 8, 16)})
    with refused("16 channels but this model expects 4.*own VAE"):
        invert(pack_nodes, sdxl[0], sdxl[1], sdxl[2], {"samples": torch.zeros(1, 16, 16, 16)})
    with refused("4-D 'samples'.*video latents"):
        invert(pack_nodes, model_sd, positive, negative, {"samples": torch.zeros(1, 4, 2, 16, 16)})
    # Through the inversion SAMPLER in SamplerCustomAdvanced, the same check.
    guider = nodes.NODE_CLASS_MAPPINGS["CFGGuider"]().get_guider(model_tb, encode(TESTBED_SOURCE), encode(""), 1.0)[0]
    sigmas = nodes.NODE_CLASS_MAPPINGS["BasicScheduler"]().get_sigmas(model_tb, "ddim_uniform", STEPS, 1.0)[0]
    inversion_sampler = pack_nodes["InvEditInversionSampler"].execute(**OPTIONS).result[0]
    with refused("4 channels but this model expects 1"), torch.inference_mode():
        nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample(
            nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider, inversion_sampler, sigmas,
            {"samples": torch.randn(1, 4, 8, 16)})  # all zeros would be taken for an empty latent and reshaped
    snapshot.assert_unchanged(model_tb)


def test_an_inversion_from_another_model_family_is_refused(pack_nodes, sd15, sdxl, testbed):
    model_sd, positive, negative = sd15
    model_xl, positive_xl, negative_xl = sdxl
    model_tb, text_encoder, encode, canvas = testbed
    _, record_tb, _ = invert(pack_nodes, model_tb, encode(TESTBED_SOURCE), encode(""), canvas)
    with refused("1-channel latents but the model expects 4.*inverted with"):
        reconstruct(pack_nodes, model_sd, positive, record_tb, negative=negative)
    with refused("1-channel latents but the model expects 4"):
        inversion_guider(pack_nodes, model_sd, positive, record_tb, negative)
    # SD1.x and SDXL latents both have 4 channels: the inversion's recorded architecture tells them apart.
    snapshot = ModelSnapshot.take(model_xl)
    _, record_sd, _ = invert(pack_nodes, model_sd, positive, negative, {"samples": torch.randn(1, 4, 16, 16)})
    with refused("another architecture.*SD1.x inversion on an SDXL model.*inverted with"):
        reconstruct(pack_nodes, model_xl, positive_xl, record_sd, negative=negative_xl)
    with refused("another architecture"):
        inversion_guider(pack_nodes, model_xl, positive_xl, record_sd, negative_xl)
    snapshot.assert_unchanged(model_xl)
    # The P2P nodes check it too.
    _, record_tb_p2p, _ = invert(pack_nodes, model_tb, encode(TESTBED_SOURCE), encode(""), canvas)
    edit = edit_plan(text_encoder, TESTBED_SOURCE, "a photo of three and one")
    with refused("1-channel latents but the model expects 4"):
        p2p_sample(model_sd, record_tb_p2p, edit, negative)


def test_a_prompt_from_another_text_encoder_or_an_empty_conditioning_is_refused(pack_nodes, sd15, sdxl,
                                                                               tiny_latent):
    model_sd, positive, negative = sd15
    model_xl, positive_xl, negative_xl = sdxl
    latent = tiny_latent("sdxl", 3)
    snapshot = ModelSnapshot.take(model_xl)
    # Without the check: KeyError 'pooled_output' from inside comfy.model_base.
    with refused("positive prompt was encoded by a text encoder of another model family.*width 64.*takes "
                 "2048.*CLIP of this model"):
        invert(pack_nodes, model_xl, positive, negative, latent)
    with refused("negative prompt .*another model family"):
        invert(pack_nodes, model_xl, positive_xl, negative, latent, inversion_cfg=2.0)
    # Without the check: an empty CONDITIONING list inverts "successfully" and reconstructs 4 stds off.
    with refused("positive CONDITIONING is empty.*CLIP Text Encode"):
        invert(pack_nodes, model_sd, [], negative, tiny_latent("sd15", 3))
    _, record_xl, _ = invert(pack_nodes, model_xl, positive_xl, negative_xl, latent)
    with refused("positive prompt was encoded by a text encoder of another model family"):
        reconstruct(pack_nodes, model_xl, positive, record_xl, negative=negative_xl)
    snapshot.assert_unchanged(model_xl)


def test_an_sd1_latent_into_an_sdxl_model_cannot_be_told_apart_and_inverts_like_any_latent(pack_nodes, sdxl,
                                                                                          tiny_latent):
    """A LATENT carries no format: 4 SD1.x channels look like 4 SDXL channels (documented, not checked)."""
    model_xl, positive_xl, negative_xl = sdxl
    latent = tiny_latent("sd15", 3)  # SD1.x scale (1 / 0.18215 instead of 1 / 0.13025)
    assert_round_trip(round_trip_errors(pack_nodes, model_xl, positive_xl, negative_xl, latent),
                      ROUND_TRIP_BOUNDS["sdxl"])


# ---------------------------------------------------------------------------------------------
# Sizes


@pytest.mark.parametrize("arch, height, width, control", [("sd15", 13, 11, "simple"), ("sdxl", 13, 11, "simple"),
                                                          ("sd15", 2, 2, "shifted"), ("sdxl", 4, 5, "shifted")])
def test_odd_and_smallest_latent_sizes_round_trip(pack_nodes, tiny_model, tiny_conditioning, tiny_latent, arch,
                                                  height, width, control):
    """Odd sizes (images not a multiple of 16 / 32 px) and the smallest size the UNet takes (there the
    two timestep rules come close, and the shifted schedule is the negative control)."""
    model, positive, negative = tiny_model(arch), tiny_conditioning(arch, 1), tiny_conditioning(arch, 2)
    latent = tiny_latent(arch, 3, 1, height, width)
    _, record, _ = invert(pack_nodes, model, positive, negative, latent, steps=1)
    assert reconstruct(pack_nodes, model, positive, record, negative=negative).shape == latent["samples"].shape
    assert_round_trip(round_trip_errors(pack_nodes, model, positive, negative, latent), ROUND_TRIP_BOUNDS[arch],
                      control)


@pytest.mark.parametrize("arch, height, width, smallest", [("sd15", 1, 1, 2), ("sd15", 1, 16, 2), ("sdxl", 3, 8, 4),
                                                           ("sd2", 3, 16, 4)])
def test_a_latent_smaller_than_the_unet_takes_is_refused(pack_nodes, tiny_model, tiny_conditioning, arch, height,
                                                         width, smallest):
    """Without the check: 'Expected more than 1 value per channel' from torch's group_norm. The tiny
    SD1.x / SDXL models have two channels per GroupNorm group (one deepest pixel suffices); the tiny
    SD2.x-layout model of p2p_models has one (it needs two)."""
    model = p2p_models.tiny_sd2_model() if arch == "sd2" else tiny_model(arch)
    conditioning_arch = "sd15" if arch == "sd2" else arch
    expected = f"latent is {height}x{width}, too small.*shrinks the latent.*at least {smallest}x{smallest} latent"
    with refused(expected + " pixels.*Upscale"):
        invert(pack_nodes, model, tiny_conditioning(conditioning_arch, 1), tiny_conditioning(conditioning_arch, 2),
               {"samples": torch.randn(1, 4, height, width)})


def test_a_large_latent_works(pack_nodes, sd15, tiny_latent):
    """40x56 latent pixels (a 320x448 image) on the tiny model, one step: the pack adds only its trajectory."""
    model, positive, negative = sd15
    latent = tiny_latent("sd15", 3, 1, 40, 56)
    _, record, _ = invert(pack_nodes, model, positive, negative, latent, steps=1)
    result = reconstruct(pack_nodes, model, positive, record, negative=negative)
    assert result.shape == latent["samples"].shape and bool(torch.isfinite(result).all())
    assert record.trajectory.latents.shape == (2, *latent["samples"].shape)
    assert_round_trip(round_trip_errors(pack_nodes, model, positive, negative, latent, steps=1), ONE_STEP_BOUND)


def test_a_testbed_image_of_another_size_is_refused(pack_nodes):
    with refused("8x16 canvases; this image is 9x15.*ImageScale"):
        pack_nodes["InvEditTestbedImageToLatent"].execute(image=torch.zeros(1, 9, 15, 3))


def test_p2p_on_an_odd_latent_size_blends_and_draws_its_maps(pack_nodes, sd15, tiny_latent):
    """13x11 latent: the 2x-downsampled attention layers are 7x6 (the UNet rounds up)."""
    model, _, _ = sd15
    encoder = p2p_models.tiny_clip()
    source, target = "a photo of a cat on a red sofa", "a photo of a dog on a red sofa"
    with torch.inference_mode():
        positive = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(encoder, source)[0]
        negative = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(encoder, "")[0]
    _, record, _ = invert(pack_nodes, model, positive, negative, tiny_latent("sd15", 3, 1, 13, 11))
    edit = edit_plan(encoder, source, target, blend_words="cat; dog", blend_layer_downsample=2, blend_threshold=0.8)
    plain = edit_plan(encoder, source, target)
    source_row, edited, maps = p2p_sample(model, record, edit, negative, map_budget_mib=4)
    source_row, edited = source_row["samples"], edited["samples"]
    plain_edited = p2p_sample(model, record, plain, negative)[1]["samples"]
    assert source_row.shape == (1, 4, 13, 11) and bool(torch.isfinite(edited).all())
    # LocalBlend found its layers: part of the edited row is the source's, part is not.
    kept = (edited - source_row).abs().amax(1)[0] < 1e-5 * float(source_row.std())
    assert 0 < int(kept.sum()) < kept.numel()
    assert relative(edited, plain_edited) > 1e-4
    with torch.inference_mode():
        grid = p2p_nodes.P2PAttentionMaps.execute(maps=maps, layer_downsample=2, cell_height=16, labels=False).result[0]
    assert grid.shape[-1] == 3 and bool(torch.isfinite(grid).all())


def test_local_blend_finds_the_deeper_layers_of_an_odd_latent_or_says_which_sizes_exist(pack_nodes, sdxl,
                                                                                       tiny_latent):
    """Tiny SDXL (attention at 1/2 and 1/4), 13x11 latent: the 1/4 layers are 4x3 (13 -> 7 -> 4). Without
    the fix LocalBlend looked for round(13 / 4) = 3 rows, found no layer and silently blended nothing."""
    model = sdxl[0]
    encoder = p2p_models.FakeSDXLClip()
    source, target = "a photo of a cat on a red sofa", "a photo of a dog on a red sofa"
    with torch.inference_mode():
        positive = encoder.encode_from_tokens_scheduled(encoder.tokenize(source))
        negative = encoder.encode_from_tokens_scheduled(encoder.tokenize(""))
    _, record, _ = invert(pack_nodes, model, positive, negative, tiny_latent("sdxl", 3, 1, 13, 11))
    # The mask is normalised by its maximum; on the 4x3 layers the 3x3 max-pool spreads it, so a high
    # threshold leaves part of the 13x11 latent out of it (measured: 0.95 covers about 0.7 of it).
    edit = edit_plan(encoder, source, target, blend_words="cat; dog", blend_layer_downsample=4, blend_threshold=0.95)
    source_row, edited, _ = (out["samples"] if isinstance(out, dict) else out
                             for out in p2p_sample(model, record, edit, negative))
    kept = (edited - source_row).abs().amax(1)[0] < 1e-5 * float(source_row.std())
    assert 0 < int(kept.sum()) < kept.numel()
    # SDXL has no attention at full latent size: a blend there would do nothing, so it is refused.
    no_layer = edit_plan(encoder, source, target, blend_words="cat; dog", blend_layer_downsample=1)
    with pytest.raises(ValueError, match="no cross-attention layer at 1/1 of the 13x11 latent.*7x6, 4x3.*"
                                         "blend_layer_downsample.*one of 2, 4"):
        p2p_sample(model, record, no_layer, negative)


# ---------------------------------------------------------------------------------------------
# Batches and empty prompts


def test_a_batch_gives_each_image_its_single_image_result(pack_nodes, sd15, tiny_latent):
    model, positive, negative = sd15
    batch = tiny_latent("sd15", 3, batch=3)
    _, record, _ = invert(pack_nodes, model, positive, negative, batch)
    together = reconstruct(pack_nodes, model, positive, record, cfg=CFG, negative=negative)
    optimised = null_text(pack_nodes, model, record, negative)
    together_null_text = reconstruct(pack_nodes, model, positive, optimised, cfg=CFG)
    for row in (0, 2):
        alone_latent = {"samples": batch["samples"][row:row + 1]}
        _, alone, _ = invert(pack_nodes, model, positive, negative, alone_latent)
        assert relative(record.trajectory.noise[row:row + 1], alone.trajectory.noise) < BATCH_TOLERANCE
        alone_result = reconstruct(pack_nodes, model, positive, alone, cfg=CFG, negative=negative)
        assert relative(together[row:row + 1], alone_result) < BATCH_TOLERANCE
        alone_null_text = reconstruct(pack_nodes, model, positive, null_text(pack_nodes, model, alone, negative),
                                      cfg=CFG)
        # Adam's step does not depend on the 1/B of the batch mean (up to its eps), and both ran
        # the same gradient steps, so the embeddings agree closely, the images to rounding.
        assert relative(together_null_text[row:row + 1], alone_null_text) < 1e-3


def test_empty_prompts_invert_and_edit_or_say_what_to_write(pack_nodes, testbed):
    """An empty source prompt round-trips a held-out digit as well as its own prompt does."""
    model, text_encoder, encode, canvas = testbed
    empty = encode("")
    psnr = {}
    for text in ("", TESTBED_HELDOUT_PROMPT):
        _, record, _ = invert(pack_nodes, model, encode(text), empty, canvas, steps=TESTBED_STEPS)
        result = reconstruct(pack_nodes, model, encode(text), record, negative=empty)
        psnr[text] = canvas_psnr(result, canvas["samples"])
        shifted = record.with_changes(sampling_sigmas=record.sampling_sigmas[1:])
        psnr[f"{text!r} shifted"] = canvas_psnr(reconstruct(pack_nodes, model, encode(text), shifted, negative=empty),
                                                canvas["samples"])
    assert psnr[""] > TESTBED_PSNR_FLOOR and psnr[""] > psnr[TESTBED_HELDOUT_PROMPT] - 1.0, psnr
    assert psnr["'' shifted"] < TESTBED_PSNR_FLOOR, psnr  # the negative control
    _, record, _ = invert(pack_nodes, model, empty, empty, canvas)
    optimised = null_text(pack_nodes, model, record, empty)  # empty source and empty null prompt: works
    assert bool(torch.isfinite(optimised.unconditioning.step_contexts).all())
    with refused("Write the source prompt and at least one edited prompt"):
        edit_plan(text_encoder, "", "a photo of three and one")
    with refused("Write the source prompt and at least one edited prompt"):
        edit_plan(text_encoder, TESTBED_SOURCE, " \n ")


def test_p2p_prompt_mistakes_with_the_testbed_encoder(testbed):
    """The CLIP versions of these are in test_p2p_nodes.py."""
    _, text_encoder, _, _ = testbed
    with refused("same number of words.*'a photo of three' has 4.*Refine"):
        edit_plan(text_encoder, TESTBED_SOURCE, "a photo of three")
    with refused("'eight' is not a word of the prompt 'a photo of three and seven'"):
        edit_plan(text_encoder, TESTBED_SOURCE, "a photo of three and one", blend_words="eight; one")
    with refused("'eight' is not a word of the prompt"):
        edit_plan(text_encoder, TESTBED_SOURCE, TESTBED_SOURCE, mode="reweight", reweight="eight: 2")
    with refused("does not know the word.*'cat'.*Allowed words"):
        edit_plan(text_encoder, TESTBED_SOURCE, "a photo of three and cat")


# ---------------------------------------------------------------------------------------------
# Steps


def test_one_step_works_everywhere(pack_nodes, sd15, tiny_latent):
    model, _, _ = sd15
    encoder = p2p_models.tiny_clip()
    with torch.inference_mode():
        positive = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(encoder, "a cat")[0]
        negative = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(encoder, "")[0]
    latent = tiny_latent("sd15", 3)
    _, record, sigmas = invert(pack_nodes, model, positive, negative, latent, steps=1)
    assert record.steps == 1 and len(sigmas) == 2
    # One ddim_uniform step goes from the image to timestep 1 only (sigma 0.04): a round trip that
    # says little about inversion, checked against its measured band with the simple rule beside it.
    assert_round_trip(round_trip_errors(pack_nodes, model, positive, negative, latent, steps=1), ONE_STEP_BOUND)
    optimised = null_text(pack_nodes, model, record, negative)
    assert len(optimised.unconditioning.report["gradient_steps"]) == 1
    source, edited, _ = p2p_sample(model, optimised, edit_plan(encoder, "a cat", "a dog"), negative)
    assert bool(torch.isfinite(edited["samples"]).all())
    assert relative(source["samples"], reconstruct(pack_nodes, model, positive, optimised, cfg=CFG)) < 1e-5


def test_a_thousand_steps_work_and_more_are_refused_by_validation(pack_nodes, sd15, tiny_latent, graph, run_graph):
    """1000 steps on a model whose UNet is replaced by a cheap function (the pack's path at full length:
    schedule, 1000-entry trajectory, replay); ddim_uniform gives 999 steps there, as KSampler's does, and
    the replay is stock KSamplerAdvanced's bit for bit. (No round-trip band here: at 999 steps adjacent
    levels are so close that neither the simple rule nor a shifted schedule misses by more than the
    reference, 0.03 of the latent's std for this function.)"""
    from comfy_graph import GraphValidationError

    model, positive, negative = sd15
    cheap = model.clone()
    cheap.set_model_unet_function_wrapper(lambda apply_model, args: 0.9 * args["input"])
    latent = tiny_latent("sd15", 3, 1, 8, 8)
    _, record, sigmas = invert(pack_nodes, cheap, positive, negative, latent, steps=1000)
    stock = nodes.NODE_CLASS_MAPPINGS["BasicScheduler"]().get_sigmas(cheap, "ddim_uniform", 1000, 1.0)[0]
    assert record.steps == 999 and torch.equal(sigmas, stock)
    result = reconstruct(pack_nodes, cheap, positive, record, negative=negative)
    with torch.inference_mode():
        stock_sampled = nodes.NODE_CLASS_MAPPINGS["KSamplerAdvanced"]().sample(
            cheap, "disable", 0, 1000, 1.0, "ddim", "ddim_uniform", positive, negative,
            {"samples": cheap.model.process_latent_out(record.trajectory.noise.clone())}, 0, 10000, "disable")[0]
    assert torch.equal(result, stock_sampled["samples"]) and bool(torch.isfinite(result).all())
    node = graph.node("InvEditDDIMInversion", model=graph.node("InvEditTestTinyModel", arch="sd15", seed=0),
                      positive=graph.node("InvEditTestConditioning", arch="sd15", seed=1, tokens=8),
                      negative=graph.node("InvEditTestConditioning", arch="sd15", seed=2, tokens=8),
                      latent=graph.node("InvEditTestLatent", arch="sd15", seed=3, batch=1, height=8, width=8),
                      **dict(OPTIONS, steps=1001, inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero"))
    graph.capture("noise", node.out(0))
    with pytest.raises(GraphValidationError, match="steps"):
        run_graph(graph)


# ---------------------------------------------------------------------------------------------
# Stochastic samplers on a deterministic replay


@pytest.mark.parametrize("name", ["euler_ancestral", "dpmpp_sde", "dpmpp_2m_sde", "ddpm", "lcm"])
def test_a_stochastic_sampler_is_refused_by_the_inversion_guiders(pack_nodes, sd15, tiny_latent, name):
    """Without the check: euler_ancestral, ddpm, lcm gave a noisy image silently (dpmpp_sde: an error
    about sigmas only with null-text)."""
    model, positive, negative = sd15
    _, record, _ = invert(pack_nodes, model, positive, negative, tiny_latent("sd15", 3))
    optimised = null_text(pack_nodes, model, record, negative, inner_steps=1)
    with refused(f"'{name}' adds fresh random noise.*KSamplerSelect \\(ddim, "):
        sample_custom_advanced(inversion_guider(pack_nodes, model, positive, optimised), sampler(name), optimised,
                               model)
    with refused("adds fresh random noise"):
        sample_custom_advanced(inversion_guider(pack_nodes, model, positive, record, negative), sampler(name), record,
                               model)


def test_a_stochastic_sampler_is_refused_by_the_p2p_guider_and_eta_zero_is_deterministic(pack_nodes, sd15,
                                                                                         tiny_latent):
    model, _, _ = sd15
    encoder = p2p_models.tiny_clip()
    with torch.inference_mode():
        positive = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(encoder, "a cat")[0]
        negative = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(encoder, "")[0]
    _, record, _ = invert(pack_nodes, model, positive, negative, tiny_latent("sd15", 3))
    with torch.inference_mode():
        guider = p2p_nodes.P2PGuiderNode.execute(model=model, inversion=record, cfg=CFG, negative=negative,
                                                 edit=edit_plan(encoder, "a cat", "a dog")).result[0]
    with refused("'euler_ancestral' adds fresh random noise"):
        sample_custom_advanced(guider, sampler("euler_ancestral"), record, model)
    # SamplerEulerAncestral with eta 0 adds no noise: it is euler, and allowed.
    quiet = sample_custom_advanced(guider, sampler("euler_ancestral", eta=0.0, s_noise=1.0), record, model)
    euler = sample_custom_advanced(guider, sampler("euler"), record, model)
    assert relative(quiet, euler) < 1e-5  # its last step returns x0 directly: rounding only


# ---------------------------------------------------------------------------------------------
# A float16 model that overflows


def test_a_float16_overflow_is_reported_with_advice_not_a_black_image(pack_nodes, sd15, tiny_latent):
    model, positive, negative = sd15
    latent = tiny_latent("sd15", 3)
    _, record, _ = invert(pack_nodes, model, positive, negative, latent)
    overflowing = build_tiny_model("sd15", 0)
    with torch.inference_mode():
        overflowing.model.diffusion_model.input_blocks[0][0].weight.mul_(FP16_OVERFLOW_SCALE)
    # In float32 the same weights give finite values: the advice is right.
    assert bool(torch.isfinite(reconstruct(pack_nodes, overflowing, positive, record, negative=negative)).all())
    half = overflowing.clone()
    half.set_model_compute_dtype(torch.float16)
    snapshot = ModelSnapshot.take(half)
    advice = "NaN or infinite.*float16.*--force-fp32.*bfloat16"
    with refused(f"inversion produced {advice}"):
        invert(pack_nodes, half, positive, negative, latent)
    with refused(f"replay produced {advice}"):
        reconstruct(pack_nodes, half, positive, record, negative=negative)
    # Without the check: a NaN latent (a black image) from the guider with a stock sampler.
    with refused(f"Sampling produced {advice}"):
        sample_custom_advanced(inversion_guider(pack_nodes, half, positive, record, negative), sampler("euler"),
                               record, half)
    snapshot.assert_unchanged(half)


# ---------------------------------------------------------------------------------------------
# Interrupts in the middle of a run (before the first step: test_inversion_nodes.py,
# test_guidance_gap.py)


class InterruptAt:
    """A UNet wrapper that counts model calls and presses Cancel during call ``at``."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.calls = 0

    def __call__(self, apply_model, args):
        self.calls += 1
        if self.calls == self.at:
            comfy.model_management.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])


@contextlib.contextmanager
def interrupted():
    try:
        with pytest.raises(comfy.model_management.InterruptProcessingException):
            yield
    finally:
        comfy.model_management.interrupt_current_processing(False)


def test_interrupt_in_the_middle_of_the_inversion_stops_within_one_step(pack_nodes, sd15, tiny_latent):
    model, positive, negative = sd15
    counter = InterruptAt(3)
    counted = model.clone()
    counted.set_model_unet_function_wrapper(counter)
    snapshot = ModelSnapshot.take(counted)
    latent = tiny_latent("sd15", 3)
    with interrupted():
        invert(pack_nodes, counted, positive, negative, latent, steps=10)
    assert counter.calls == 3  # the step that saw Cancel finished; no further model call
    snapshot.assert_unchanged(counted)
    # Nothing is left behind: the next run equals a run that was never interrupted.
    counter.at = -1
    again = invert(pack_nodes, counted, positive, negative, latent, steps=10)[1]
    never_interrupted = invert(pack_nodes, model, positive, negative, latent, steps=10)[1]
    assert torch.equal(again.trajectory.noise, never_interrupted.trajectory.noise)


def test_interrupt_in_the_middle_of_null_text_stops_within_one_adam_step(pack_nodes, sd15, tiny_latent):
    model, positive, negative = sd15
    _, record, _ = invert(pack_nodes, model, positive, negative, tiny_latent("sd15", 3))
    counter = InterruptAt(5)  # inside the second sampling step's optimisation
    counted = model.clone()
    counted.set_model_unet_function_wrapper(counter)
    snapshot = ModelSnapshot.take(counted)
    with interrupted():
        null_text(pack_nodes, counted, record, negative)
    assert counter.calls <= counter.at + 1  # at most the forward pass that was already under way
    snapshot.assert_unchanged(counted)
    counter.at = -1
    again = null_text(pack_nodes, counted, record, negative)
    assert torch.equal(again.unconditioning.step_contexts,
                       null_text(pack_nodes, model, record, negative).unconditioning.step_contexts)


# ---------------------------------------------------------------------------------------------
# The same inputs give the same outputs


def test_same_inputs_and_seed_give_identical_outputs(pack_nodes, sd15, tiny_latent):
    model, positive, negative = sd15
    latent = tiny_latent("sd15", 3)

    def run(**overrides):
        noise, record, _ = invert(pack_nodes, model, positive, negative, latent, **overrides)
        return noise["samples"], reconstruct(pack_nodes, model, positive, record, cfg=CFG, negative=negative), record

    first, second = run(), run()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    contexts = [null_text(pack_nodes, model, first[2], negative).unconditioning.step_contexts for _ in range(2)]
    assert torch.equal(contexts[0], contexts[1])
    warm = [run(warm_start_steps=2, warm_start_seed=seed)[0] for seed in (7, 7, 8)]
    assert torch.equal(warm[0], warm[1])
    assert relative(warm[0], warm[2]) > 1e-2  # another seed, another inversion
