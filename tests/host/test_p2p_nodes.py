"""Prompt-to-Prompt nodes on tiny real models of the SD1.x, SD2.x and SDXL attention layouts.

What is checked here is the plumbing, with numbers: every transformer block is patched, the source
row is never touched by the edit, cond and uncond may run in separate forwards, prompts longer than
77 tokens work, the guider gives the sampler node's result through SamplerCustomAdvanced with stock
samplers, direct inversion pins the source row, LocalBlend keeps the edit outside its mask equal to
the source, the stored maps respect their budget, and bad inputs give errors that say what to change.
The nodes are called through their module (``invedit.nodes.p2p_nodes``).
"""

from __future__ import annotations

import re

import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import nodes
import p2p_models
from invedit.nodes import attention_patches, p2p_nodes
from invedit.nodes.errors import InvEditInputError
from invedit.nodes.sampling import inversion_noise_latent, replay_sampler, sample_with_guider
from invedit.nodes.options import option_defaults

STEPS = 8
CFG = 4.0
EXACT = 3e-5  # relative bound where only float32 rounding separates two results (measured up to 1.4e-5
#               on the 64-channel tiny models: batched against single-row passes, cond and uncond apart)
SOURCE = "a photo of a cat on a red sofa"
TARGET = "a photo of a dog on a red sofa"
LONG_FILLER = " ".join(["a quiet", "old", "house with", "a small garden"] * 5)  # about 60 tokens
LONG_SOURCE = f"{LONG_FILLER} {LONG_FILLER} and a cat"  # two chunks; the cat sits in the second
LONG_TARGET = f"{LONG_FILLER} {LONG_FILLER} and a dog"
BLOCK_PATTERN = r"(input_blocks|middle_block|output_blocks)\.(?:(\d+)\.)?\d+\.transformer_blocks\.(\d+)"
SDXL_LATENT = 32  # the tiny SDXL has attention from its second level on: 16x16 maps at 32x32


def text_encoder(arch: str):
    return p2p_models.FakeSDXLClip() if arch == "sdxl" else p2p_models.tiny_clip()


def model_for(arch: str, tiny_model):
    return p2p_models.tiny_sd2_model() if arch == "sd2" else tiny_model(arch)


def latent_for(arch: str, tiny_latent) -> dict:
    size = SDXL_LATENT if arch == "sdxl" else 16
    return tiny_latent("sdxl" if arch == "sdxl" else "sd15", 3, 1, size, size)


def clip_encode(encoder, text: str) -> list:
    if isinstance(encoder, p2p_models.SeededClip):
        return encoder.encode_from_tokens_scheduled(encoder.tokenize(text))
    return nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(encoder, text)[0]


def invert(pack_nodes, model, encoder, latent, source=SOURCE, **changes):
    with torch.inference_mode():
        positive, negative = clip_encode(encoder, source), clip_encode(encoder, "")
        _, record, _ = pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=positive, negative=negative, latent=latent, steps=STEPS, inversion_cfg=1.0,
            scheduler="ddim_uniform", clean_level="zero", **option_defaults()).result
    return record.with_changes(**changes), positive, negative


def edit_plan(encoder, source=SOURCE, targets=TARGET, **settings):
    options = dict(mode="word swap", cross_replace=0.8, self_replace=0.5, self_max_pixels=1024, word_windows="",
                   reweight="", blend_words="", blend_start=0.2, blend_threshold=0.3, blend_layer_downsample=4)
    options.update(settings)
    with torch.inference_mode():
        return p2p_nodes.P2PEditSettings.execute(text_encoder=encoder, source_prompt=source, edited_prompts=targets,
                                                 **options).result[0]


def p2p_sample(model, record, edit, negative, budget=0):
    with torch.inference_mode():
        source, edited, maps = p2p_nodes.P2PSample.execute(model=model, inversion=record, edit=edit, cfg=CFG,
                                                           map_budget_mib=budget, negative=negative).result
    return source["samples"], edited["samples"], maps


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.std())


@pytest.mark.parametrize("arch", ["sd15", "sd2", "sdxl"])
def test_every_transformer_block_is_a_site(arch, tiny_model):
    model = model_for(arch, tiny_model)
    expected = set()
    for name, module in model.model.diffusion_model.named_modules():
        if isinstance(module, comfy_attention.BasicTransformerBlock):
            match = re.fullmatch(BLOCK_PATTERN, name)
            block = {"input_blocks": "input", "middle_block": "middle", "output_blocks": "output"}[match[1]]
            expected.add((block, int(match[2] or 0), int(match[3])))
    sites = {(s.block_name, s.block_id, s.depth) for s in attention_patches.transformer_sites(model)}
    assert sites == expected and len(sites) >= 5


@pytest.mark.parametrize("arch", ["sd15", "sd2", "sdxl"])
def test_the_edit_changes_the_edited_row_and_never_the_source_row(arch, pack_nodes, tiny_model, tiny_latent):
    model, encoder = model_for(arch, tiny_model), text_encoder(arch)
    record, positive, negative = invert(pack_nodes, model, encoder, latent_for(arch, tiny_latent))
    edit = edit_plan(encoder)
    assert edit.conditioning[0][0].shape[0] == 2
    if arch == "sdxl":
        assert edit.conditioning[0][1]["pooled_output"].shape == (2, 1280)
    source, edited, _ = p2p_sample(model, record, edit, negative)
    plain_source, plain_edited, _ = p2p_sample(model, record, edit_plan(encoder, cross_replace=0.0, self_replace=0.0),
                                               negative)
    with torch.inference_mode():
        reconstruction = pack_nodes["InvEditReconstruct"].execute(model=model, positive=positive, negative=negative,
                                                                  inversion=record, cfg=CFG).result[0]["samples"]
    assert torch.equal(source, plain_source)
    assert relative(source, reconstruction) < EXACT
    assert relative(edited, plain_edited) > 2 * EXACT  # the tiny SD2 (random v-prediction) reacts least


def test_cond_and_uncond_in_separate_forwards_give_the_same_edit(pack_nodes, tiny_model, tiny_latent, monkeypatch):
    encoder, model = p2p_models.tiny_clip(), tiny_model("sd15")
    record, _, negative = invert(pack_nodes, model, encoder, latent_for("sd15", tiny_latent))
    edit = edit_plan(encoder, blend_words="cat; dog", blend_layer_downsample=2)
    chunks: list[int] = []
    counted = model.clone()

    def count(apply_model, args):
        chunks.append(len(args["cond_or_uncond"]))
        return apply_model(args["input"], args["timestep"], **args["c"])

    counted.set_model_unet_function_wrapper(count)
    together = p2p_sample(counted, record, edit, negative)
    assert set(chunks) == {2}
    chunks.clear()
    monkeypatch.setattr(comfy.model_management, "get_free_memory", lambda *args, **kwargs: 0)
    apart = p2p_sample(counted, record, edit, negative)
    assert set(chunks) == {1}
    for joined, split in zip(together[:2], apart[:2]):
        assert relative(split, joined) < EXACT


def test_prompts_longer_than_77_tokens(pack_nodes, tiny_model, tiny_latent):
    encoder, model = p2p_models.tiny_clip(), tiny_model("sd15")
    record, _, negative = invert(pack_nodes, model, encoder, latent_for("sd15", tiny_latent), source=LONG_SOURCE)
    edit = edit_plan(encoder, LONG_SOURCE, LONG_TARGET, blend_words="cat; dog", blend_layer_downsample=2)
    assert edit.conditioning[0][0].shape[:2] == (2, 154)
    source_ids, target_ids = edit.prompts[0].token_ids, edit.prompts[1].token_ids
    swapped = [(s, t) for s, t, _ in edit.edits[0].cross.links if source_ids[s] != target_ids[t]]
    assert swapped and all(s >= 77 and t >= 77 for s, t in swapped)
    source, edited, maps = p2p_sample(model, record, edit, negative, budget=4)
    _, plain_edited, _ = p2p_sample(model, record, edit_plan(encoder, LONG_SOURCE, LONG_TARGET, cross_replace=0.0,
                                                             self_replace=0.0), negative)
    assert relative(edited, plain_edited) > 1e-3
    assert maps.word_mass(1, "dog") > 0.0


@pytest.mark.parametrize("sampler_name", ["ddim", "euler", "replay"])
def test_the_guider_in_sampler_custom_advanced_equals_the_sample_node(sampler_name, pack_nodes, tiny_model,
                                                                      tiny_latent):
    """Direct inversion and LocalBlend included: both act through the guider's denoised output."""
    encoder, model = p2p_models.tiny_clip(), tiny_model("sd15")
    record, _, negative = invert(pack_nodes, model, encoder, latent_for("sd15", tiny_latent), pin_source=True)
    edit = edit_plan(encoder, blend_words="cat; dog", blend_layer_downsample=2)
    source, edited, _ = p2p_sample(model, record, edit, negative)
    if sampler_name == "replay":
        sampler = pack_nodes["InvEditReplaySampler"].execute().result[0]
    else:
        sampler = nodes.NODE_CLASS_MAPPINGS["KSamplerSelect"]().get_sampler(sampler_name)[0]
    with torch.inference_mode():
        guider = p2p_nodes.P2PGuiderNode.execute(model=model, inversion=record, edit=edit, cfg=CFG,
                                                 negative=negative).result[0]
        noise_latent = {"samples": model.model.process_latent_out(record.trajectory.noise.clone())}
        output = nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample(
            nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider, sampler, record.sampling_sigmas,
            noise_latent)[0]["samples"]
    assert output.shape[0] == 2
    assert relative(output[:1], source) < EXACT and relative(output[1:], edited) < EXACT


def test_a_multistep_sampler_runs_the_edit(pack_nodes, tiny_model, tiny_latent):
    encoder, model = p2p_models.tiny_clip(), tiny_model("sd15")
    record, _, negative = invert(pack_nodes, model, encoder, latent_for("sd15", tiny_latent))
    source, _, _ = p2p_sample(model, record, edit_plan(encoder), negative)
    with torch.inference_mode():
        guider = p2p_nodes.P2PGuiderNode.execute(model=model, inversion=record, edit=edit_plan(encoder), cfg=CFG,
                                                 negative=negative).result[0]
        output = nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample(
            nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider,
            nodes.NODE_CLASS_MAPPINGS["KSamplerSelect"]().get_sampler("dpmpp_2m")[0], record.sampling_sigmas,
            {"samples": model.model.process_latent_out(record.trajectory.noise.clone())})[0]["samples"]
    assert output.shape[0] == 2 and bool(torch.isfinite(output).all())
    assert relative(output[:1], source) < 0.5  # another solver on the same 8 steps: close, not equal


def test_direct_inversion_pins_the_source_row_only(pack_nodes, tiny_model, tiny_latent):
    encoder, model = p2p_models.tiny_clip(), tiny_model("sd15")
    latent = latent_for("sd15", tiny_latent)
    record, _, negative = invert(pack_nodes, model, encoder, latent, pin_source=True)
    source, edited, _ = p2p_sample(model, record, edit_plan(encoder), negative)
    assert relative(source, latent["samples"]) < EXACT
    unpinned_source, unpinned_edited, _ = p2p_sample(model, record.with_changes(pin_source=False), edit_plan(encoder),
                                                     negative)
    assert relative(unpinned_source, latent["samples"]) > 1e-3  # cfg 4 misses the image without the pin
    assert relative(edited, unpinned_edited) > 1e-3


def test_local_blend_keeps_the_edited_row_equal_to_the_source_outside_its_mask(pack_nodes, tiny_model, tiny_latent):
    encoder, model = p2p_models.tiny_clip(), tiny_model("sd15")
    record, _, negative = invert(pack_nodes, model, encoder, latent_for("sd15", tiny_latent))
    edit = edit_plan(encoder, blend_words="cat; dog", blend_layer_downsample=2, blend_threshold=0.5)
    controller = edit.controller()
    with torch.inference_mode():
        guider = attention_patches.P2PGuider(model, record, edit.conditioning, controller, negative, CFG)
        samples = sample_with_guider(guider, inversion_noise_latent(model, record), replay_sampler(),
                                          record.sampling_sigmas, preview=False)
    mask = controller.local_blend.mask(tuple(samples.shape[-2:]))[1, 0].bool()
    assert 0 < int(mask.sum()) < mask.numel()
    difference = (samples[1] - samples[0]).abs()
    assert float(difference[:, ~mask].max()) < EXACT * float(samples.std())
    assert float(difference[:, mask].mean()) > 1e-3 * float(samples.std())


def test_stored_maps_respect_their_budget_and_render_a_grid(pack_nodes, tiny_model, tiny_latent):
    encoder, model = p2p_models.tiny_clip(), tiny_model("sd15")
    record, _, negative = invert(pack_nodes, model, encoder, latent_for("sd15", tiny_latent))
    edit = edit_plan(encoder)
    _, _, maps = p2p_sample(model, record, edit, negative, budget=16)
    assert maps.layers and not maps.refused
    with torch.inference_mode():
        image = p2p_nodes.P2PAttentionMaps.execute(maps=maps, layer_downsample=0, cell_height=32, labels=True).result[0]
    words = len(SOURCE.split())
    assert image.shape[0] == 1 and image.shape[-1] == 3
    assert image.shape[1] > 2 * 32 and image.shape[2] > words * 32
    store_rows = 2 * 16 * 16 * 77 * 4  # one 16x16 layer of two rows, float32: 158 kB
    _, _, small = p2p_sample(model, record, edit, negative, budget=0)
    assert not small.layers
    with pytest.raises(InvEditInputError, match="map_budget_mib"):
        p2p_nodes.P2PAttentionMaps.execute(maps=small, layer_downsample=4, cell_height=32, labels=True)
    from invedit.attention import CrossMapStore

    store = CrossMapStore(max_bytes=store_rows)
    with torch.inference_mode():
        guider = attention_patches.P2PGuider(model, record, edit.conditioning, edit.controller(store), negative, CFG)
        sample_with_guider(guider, inversion_noise_latent(model, record), replay_sampler(),
                                record.sampling_sigmas, preview=False)
    assert store.used_bytes <= store_rows and store.refused


# ---------------------------------------------------------------------------------------------
# Node inputs a user writes: per-word windows, one blend group for every prompt, reweight on a swap

WINDOW_STEP = 3  # of STEPS = 8: inside the default window [0, 0.8) (steps 0-5), outside "dog: 0-0.4" (steps 0-2)
#                 and "sofa: 0.3" (steps 0-1)


def clip_position(encoder, prompt: str, word: str) -> int:
    """Key position of ``word`` in ``prompt`` from the CLIP tokenizer itself (start token at 0)."""
    token_ids = [token for token, _ in encoder.tokenize(prompt)["l"][0]]
    [word_id] = [token for token, _ in encoder.tokenize(word)["l"][0][1:2]]
    return token_ids.index(word_id)


def test_word_windows_are_read_into_the_cross_schedule_and_change_the_edit(pack_nodes, tiny_model, tiny_latent):
    encoder, model = p2p_models.tiny_clip(), tiny_model("sd15")
    edit = edit_plan(encoder, word_windows="dog: 0-0.4, sofa: 0.3")
    schedule = edit.edits[0].schedule
    dog, sofa = clip_position(encoder, TARGET, "dog"), clip_position(encoder, TARGET, "sofa")
    assert (dog, (0.0, 0.4)) in [(p, (w.start, w.end)) for p, w in schedule.per_position]
    assert (sofa, (0.0, 0.3)) in [(p, (w.start, w.end)) for p, w in schedule.per_position]
    alphas = schedule.alphas(WINDOW_STEP, STEPS, 77)
    assert alphas[dog] == 0.0 and alphas[sofa] == 0.0 and alphas[dog - 1] == 1.0  # the default window still holds
    record, _, negative = invert(pack_nodes, model, encoder, latent_for("sd15", tiny_latent))
    source, windowed, _ = p2p_sample(model, record, edit, negative)
    plain_source, plain, _ = p2p_sample(model, record, edit_plan(encoder), negative)
    assert torch.equal(source, plain_source) and relative(windowed, plain) > 1e-3
    for unreadable in ("dog: a-b", "dog 0.4", "dog: 0.6-0.2"):
        with pytest.raises(InvEditInputError, match="window|Could not read"):
            edit_plan(encoder, word_windows=unreadable)


def test_one_blend_group_applies_to_every_prompt(pack_nodes, tiny_model, tiny_latent):
    encoder, model = p2p_models.tiny_clip(), tiny_model("sd15")
    targets = "a photo of a cat on a blue sofa\na photo of a cat on a green sofa"
    # "sofa" draws attention everywhere on these random-weight maps: threshold 0.8 leaves about 0.45 of
    # the latent outside the mask (0.5 leaves nothing).
    edit = edit_plan(encoder, SOURCE, targets, blend_words="sofa", blend_layer_downsample=2,
                     blend_threshold=0.8)
    assert edit.blend.words == (("sofa",),) * 3
    record, _, negative = invert(pack_nodes, model, encoder, latent_for("sd15", tiny_latent))
    controller = edit.controller()
    with torch.inference_mode():
        guider = attention_patches.P2PGuider(model, record, edit.conditioning, controller, negative, CFG)
        samples = sample_with_guider(guider, inversion_noise_latent(model, record), replay_sampler(),
                                     record.sampling_sigmas, preview=False)
    for row in (1, 2):
        mask = controller.local_blend.mask(tuple(samples.shape[-2:]))[row, 0].bool()
        assert 0 < int(mask.sum()) < mask.numel()
        assert float((samples[row] - samples[0]).abs()[:, ~mask].max()) < EXACT * float(samples.std())
    with pytest.raises(InvEditInputError, match="one group per prompt"):
        edit_plan(encoder, SOURCE, targets, blend_words="sofa; sofa")


def test_reweight_on_top_of_a_swap(pack_nodes, tiny_model, tiny_latent):
    encoder, model = p2p_models.tiny_clip(), tiny_model("sd15")
    swap = edit_plan(encoder)
    swap_and_reweight = edit_plan(encoder, reweight="dog: 2")
    cross = swap_and_reweight.edits[0].cross
    dog = clip_position(encoder, TARGET, "dog")
    assert type(cross).__name__ == "Reweight" and cross.base == swap.edits[0].cross
    source_map, edit_scale = cross.replacement(77)
    swap_map, swap_scale = swap.edits[0].cross.replacement(77)
    equalizer = torch.ones(77, dtype=torch.float64)
    equalizer[dog] = 2.0
    assert torch.equal(source_map, swap_map * equalizer) and torch.equal(edit_scale, swap_scale * equalizer)
    record, _, negative = invert(pack_nodes, model, encoder, latent_for("sd15", tiny_latent))
    source, reweighted, _ = p2p_sample(model, record, swap_and_reweight, negative)
    swap_source, swapped, _ = p2p_sample(model, record, swap, negative)
    assert torch.equal(source, swap_source) and relative(reweighted, swapped) > 1e-3


# ---------------------------------------------------------------------------------------------
# Errors that say what to change


def test_a_swap_with_another_word_count_says_to_keep_one_word_per_word():
    encoder = p2p_models.tiny_clip()
    with pytest.raises(InvEditInputError, match="same number of words.*Refine"):
        edit_plan(encoder, SOURCE, "a photo of a big dog on a red sofa")


def test_blend_words_absent_from_the_prompt_are_named():
    encoder = p2p_models.tiny_clip()
    with pytest.raises(InvEditInputError, match="'tiger' is not a word of the prompt"):
        edit_plan(encoder, blend_words="cat; tiger")


def test_prompts_that_tokenize_differently_are_refused():
    encoder = p2p_models.tiny_clip()
    # A long replacement word pushes the following words into the next 77-token chunk.
    words = ["a"] * 73
    source = " ".join(words + ["cat", "sits", "here"])
    target = " ".join(words + ["hippopotamus", "sits", "here"])
    with pytest.raises(InvEditInputError, match="tokenize differently outside the swapped words"):
        edit_plan(encoder, source, target)
    with pytest.raises(InvEditInputError, match="different lengths.*same number of chunks"):
        edit_plan(encoder, SOURCE, LONG_TARGET, mode="refine")
    with pytest.raises(InvEditInputError, match="emphasis"):
        edit_plan(encoder, SOURCE, "a photo of a (dog:1.3) on a red sofa")


def test_reweight_mode_needs_words_and_the_words_must_exist():
    encoder = p2p_models.tiny_clip()
    with pytest.raises(InvEditInputError, match="reweight words"):
        edit_plan(encoder, SOURCE, SOURCE, mode="reweight")
    with pytest.raises(InvEditInputError, match="'sofas' is not a word"):
        edit_plan(encoder, SOURCE, SOURCE, mode="reweight", reweight="sofas: 2")
    with pytest.raises(InvEditInputError, match="write entries like .fluffy: 2.0"):
        edit_plan(encoder, SOURCE, SOURCE, mode="reweight", reweight="sofa 2")


def test_sampling_mistakes_are_refused(pack_nodes, tiny_model, tiny_latent):
    encoder, model = p2p_models.tiny_clip(), tiny_model("sd15")
    record, _, negative = invert(pack_nodes, model, encoder, tiny_latent("sd15", 3, 2, 16, 16))
    with pytest.raises(InvEditInputError, match="one inverted image at a time"):
        p2p_sample(model, record, edit_plan(encoder), negative)
    record, _, negative = invert(pack_nodes, model, encoder, latent_for("sd15", tiny_latent))
    sca = nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]()
    sampler = nodes.NODE_CLASS_MAPPINGS["KSamplerSelect"]().get_sampler("euler")[0]
    latent = {"samples": model.model.process_latent_out(record.trajectory.noise.clone())}
    with torch.inference_mode():
        guider = p2p_nodes.P2PGuiderNode.execute(model=model, inversion=record, edit=edit_plan(encoder), cfg=CFG,
                                                 negative=negative).result[0]
        random_noise = nodes.NODE_CLASS_MAPPINGS["RandomNoise"]().get_noise(0)[0]
        with pytest.raises(InvEditInputError, match="Disable Noise"):
            sca.sample(random_noise, guider, sampler, record.sampling_sigmas, latent)
        other_sigmas = nodes.NODE_CLASS_MAPPINGS["BasicScheduler"]().get_sigmas(model, "karras", STEPS, 1.0)[0]
        with pytest.raises(InvEditInputError, match="inversion's own SIGMAS"):
            sca.sample(nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider, sampler, other_sigmas,
                       latent)
