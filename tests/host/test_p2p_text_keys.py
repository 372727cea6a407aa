"""P2P Edit with the text encoders of Flux, SD3.5 and Chroma: where each word sits in the text keys.

The joint attention's text keys are the rows of the context the text encoder gives: T5 rows for Flux
(CLIP-L gives only the pooled vector) and Chroma, CLIP-L/G rows then T5 rows for SD3. The probe CLIPs
below are real ComfyUI CLIPs: ComfyUI's own tokenizers (FluxTokenizer, SD3Tokenizer, PixArtTokenizer)
and its own composite text models' ``encode_token_weights`` (FluxClipModel, SD3ClipModel, PixArtT5XXL,
which order and concatenate the encoders' outputs), with each encoder stood in for by a seeded embedding
per token id (T5-XXL's 4.7 B parameters do not fit the suite). So a context row names the token it came
from, and the test checks that every word's key positions hold that word's tokens, as each tokenizer
alone writes the word: an independent reference for the rule in nodes/p2p_prompts.py. Then a P2P edit
runs end to end through the nodes on the tiny flow models of tests/host/tiny_flow_models.py.
"""

from __future__ import annotations

import pytest
import torch

import comfy.text_encoders.sd3_clip
import nodes
import p2p_models
import tiny_flow_models as tfm
from p2p_models import CLIP_G_WIDTH, CLIP_L_WIDTH, PROBES, family_clip, probe_clip, token_embedding
from invedit.attention import TokenizedPrompt
from invedit.nodes.errors import InvEditInputError
from invedit.nodes.options import option_defaults
from invedit.nodes.p2p_prompts import encode_prompts, text_key_tokenizations

PROMPT = "a photo of a red sunflower in tall grass"
STEPS = 4
SWAP_SOURCE = "a photo of a cat on a red sofa"
SWAP_TARGET = "a photo of a hippopotamus on a red sofa"  # 1 CLIP token -> 3, 1 T5 token -> 6
SOURCE_ROW_MAX_ERROR = 1e-5  # as tests/host/test_p2p_families.py
EDIT_REACHES = 1e-6
INVERSION_DISTILLED_GUIDANCE = 1.0  # InvEdit DDIM Inversion's default for Flux dev
CLIP_ROW_PADDING = tfm.T5_WIDTH - CLIP_L_WIDTH - CLIP_G_WIDTH  # SD3 pads its CLIP-L/G rows to T5's width


def word_tokens(tokenizer, word: str) -> list[int]:
    """The word's token ids as one tokenizer alone writes it (start, end and padding left out)."""
    return [int(entry[0]) for chunk in tokenizer.tokenize_with_weights(word, True) for entry in chunk if entry[2] != 0]


def sd3_clip_row(token: int, clip_l: bool = True) -> torch.Tensor:
    """SD3's CLIP row of ``token``: CLIP-L's and CLIP-G's rows side by side (G alone sits in its own place)."""
    l_row = token_embedding("l", token, CLIP_L_WIDTH) if clip_l else torch.zeros(CLIP_L_WIDTH)
    return torch.nn.functional.pad(torch.cat([l_row, token_embedding("g", token, CLIP_G_WIDTH)]), (0, CLIP_ROW_PADDING))


def expected_rows(family: str, tokenizer, word: str, sd3_clip: bool = True, sd3_t5: bool = True,
                  clip_l: bool = True) -> torch.Tensor:
    """The context rows of ``word``'s tokens, from each tokenizer and the stand-in encoders, in key order."""
    t5_tokenizer = tokenizer.clip_t5xxl if family == "chroma" else tokenizer.t5xxl
    t5 = [token_embedding("t5xxl", t, tfm.T5_WIDTH) for t in word_tokens(t5_tokenizer, word)]
    if family != "sd35":
        return torch.stack(t5)
    clip = [sd3_clip_row(t, clip_l) for t in word_tokens(tokenizer.clip_l, word)]
    return torch.stack((clip if sd3_clip else []) + (t5 if sd3_t5 else []))


@pytest.mark.parametrize("family", sorted(PROBES))
def test_each_word_sits_at_the_rows_of_its_own_tokens(family):
    text_model, tokenizer_class, _ = PROBES[family]
    clip = probe_clip(text_model, tokenizer_class)
    encoded, = encode_prompts(clip, [PROMPT])
    context = encoded.context[0]
    assert len(encoded.prompt.token_ids) == context.shape[0]
    for word, positions in zip(encoded.prompt.words, encoded.prompt.word_positions):
        assert torch.equal(context[list(positions)], expected_rows(family, clip.tokenizer, word)), word
    # Negative control: the key positions of CLIP-L's tokenization (the rule for UNets, which Flux and SD3 also
    # tokenize) do not hold the words' T5 rows.
    if family != "chroma":
        tokens = clip.tokenize(PROMPT, return_word_ids=True)["l"][0]
        pieces = [None if e[2] == 0 else clip.tokenizer.clip_l.untokenize([e])[0][1] for e in tokens]
        clip_layout = TokenizedPrompt.from_pieces(PROMPT, [e[0] for e in tokens], pieces)
        sunflower = list(clip_layout.positions_of("sunflower"))
        assert not torch.equal(context[sunflower], expected_rows(family, clip.tokenizer, "sunflower")[-1:])


@pytest.mark.parametrize("loaded", [dict(t5=False), dict(clip_l=False), dict(clip_l=False, clip_g=False)])
def test_sd3_keys_follow_the_encoders_loaded(loaded):
    clip = probe_clip(p2p_models.probe_sd3_model(**loaded), comfy.text_encoders.sd3_clip.SD3Tokenizer)
    encoded, = encode_prompts(clip, [PROMPT])
    has_clip = loaded.get("clip_l", True) or loaded.get("clip_g", True)
    has_t5 = loaded.get("t5", True)
    context = encoded.context[0]
    assert len(encoded.prompt.token_ids) == context.shape[0]
    for word in ("red", "sunflower"):
        rows = expected_rows("sd35", clip.tokenizer, word, has_clip, has_t5, loaded.get("clip_l", True))
        assert torch.equal(context[list(encoded.prompt.positions_of(word))], rows), (loaded, word)


def test_chroma_pads_shorter_edited_prompts_to_the_source_and_refuses_longer_ones():
    clip = family_clip("chroma")
    shorter = "a photo of a sunflower"
    source, edited = encode_prompts(clip, [PROMPT, shorter])
    plain_source = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, PROMPT)[0][0][0]
    plain_edited = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]().encode(clip, shorter)[0][0][0]
    assert torch.equal(source.context, plain_source)  # the source encodes as it did for the inversion
    assert edited.context.shape == source.context.shape
    assert plain_edited.shape[1] < source.context.shape[1]  # control: unpadded, the rows would not batch
    assert torch.equal(edited.context[:, : plain_edited.shape[1] - 1], plain_edited[:, :-1])  # words, then padding
    with pytest.raises(InvEditInputError, match="T5TokenizerOptions"):
        encode_prompts(clip, [shorter, PROMPT])


def swap_through_the_nodes(pack_nodes, clip, model_family: str, solver: str = "euler",
                           distilled_guidance: float = INVERSION_DISTILLED_GUIDANCE, forget_guidance: bool = False):
    """Invert (``solver``; Flux dev at ``distilled_guidance``), edit (cat -> hippopotamus) and sample through the
    nodes: source row, edited row, the reconstruction (Flux dev: its prompt through FluxGuidance at the inversion's
    distilled guidance, as the inversion's report says), the number of text keys. ``forget_guidance``: P2P gets the
    inversion without its prompt, so without the distilled guidance it ran at."""
    model = tfm.cached_tiny_flow_model(model_family)
    encode = nodes.NODE_CLASS_MAPPINGS["CLIPTextEncode"]()
    with torch.inference_mode():
        positive = encode.encode(clip, SWAP_SOURCE)[0]
        _, record, _ = pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=positive, negative=encode.encode(clip, "")[0],
            latent=tfm.tiny_flow_latent(model_family, 3), steps=STEPS, inversion_cfg=1.0, scheduler="auto",
            clean_level="zero", **{**option_defaults(), "solver": solver}, distilled_guidance=distilled_guidance).result
        if model_family == tfm.FLUX_DEV:
            positive = nodes.NODE_CLASS_MAPPINGS["FluxGuidance"].execute(positive, distilled_guidance).result[0]
        reconstruction = pack_nodes["InvEditReconstruct"].execute(
            model=model, positive=positive, inversion=record, cfg=1.0).result[0]["samples"]
        plan = pack_nodes["InvEditP2PEdit"].execute(
            text_encoder=clip, source_prompt=SWAP_SOURCE, edited_prompts=SWAP_TARGET, mode="word swap",
            cross_replace=0.8, self_replace=0.5, self_max_pixels=1024, word_windows="", reweight="", blend_words="",
            blend_start=0.2, blend_threshold=0.3, blend_layer_downsample=1).result[0]
        if forget_guidance:
            record = record.with_changes(positive=None)
        source_row, edited, _ = pack_nodes["InvEditP2PSample"].execute(
            model=model, inversion=record, edit=plan, cfg=1.0, map_budget_mib=0).result
    return source_row["samples"], edited["samples"], reconstruction, len(plan.prompts[0].token_ids)


@pytest.mark.parametrize("family", sorted(PROBES))
def test_word_swap_through_the_nodes_keeps_the_source_row(pack_nodes, family):
    text_model, tokenizer_class, model_family = PROBES[family]
    clip = probe_clip(text_model, tokenizer_class)
    if family == "chroma":  # its T5 does not pad: the error's advice, T5TokenizerOptions, lets the longer swap batch
        with pytest.raises(InvEditInputError, match="T5TokenizerOptions"):
            encode_prompts(clip, [SWAP_SOURCE, SWAP_TARGET])
        clip = nodes.NODE_CLASS_MAPPINGS["T5TokenizerOptions"].execute(clip, min_padding=0, min_length=32).result[0]
    source_row, edited, reconstruction, keys = swap_through_the_nodes(pack_nodes, clip, model_family)
    error = float((source_row - reconstruction).abs().max())
    moved = float((edited - source_row).abs().max())
    print(f"\n[p2p text keys] {family}: {keys} text keys, source row vs reconstruction {error:.1e}, "
          f"edited row moved {moved:.3f}")
    assert error <= SOURCE_ROW_MAX_ERROR
    assert moved > EDIT_REACHES


def test_fireflow_inversions_are_refused_and_fixed_point_ones_edit(pack_nodes):
    """P2P pairs each model call with a step: FireFlow's replay (midpoint calls) is refused with advice; the
    fixed-point solver it advises replays with one call per step, and its source row is the reconstruction."""
    clip = family_clip("flux")
    with pytest.raises(Exception, match="Invert with solver 'fixed-point'") as refused:
        swap_through_the_nodes(pack_nodes, clip, tfm.FLUX_DEV, solver="fireflow")
    assert type(refused.value).__name__ == "InvEditInputError"  # the pack as ComfyUI loaded it raised it
    source_row, edited, reconstruction, _ = swap_through_the_nodes(pack_nodes, clip, tfm.FLUX_DEV, "fixed-point")
    assert float((source_row - reconstruction).abs().max()) <= SOURCE_ROW_MAX_ERROR
    assert float((edited - source_row).abs().max()) > EDIT_REACHES


def test_text_encoders_of_unknown_key_layout_are_refused():
    """HiDream's four tokenizations (CLIP-L, CLIP-G, T5, Llama) have no rule here: a clear refusal, not a guess."""
    with pytest.raises(InvEditInputError, match="SD3.5"):
        text_key_tokenizations(None, {"l", "g", "t5xxl", "llama"})


def test_flux_dev_rows_take_the_inversions_distilled_guidance(pack_nodes):
    """Flux dev reads a distilled guidance from the prompt (3.5 when none is set); the inversion runs at its own
    (here 2). P2P Edit's prompts carry none, so every row takes the inversion's and the source row is the
    reconstruction. Control: P2P given the inversion without its prompt samples every row at 3.5, and its source
    row misses the reconstruction."""
    clip = family_clip("flux")
    source_row, _, reconstruction, _ = swap_through_the_nodes(pack_nodes, clip, tfm.FLUX_DEV, distilled_guidance=2.0)
    default_row, _, _, _ = swap_through_the_nodes(pack_nodes, clip, tfm.FLUX_DEV, distilled_guidance=2.0,
                                                  forget_guidance=True)
    error, control = (float((row - reconstruction).abs().max()) for row in (source_row, default_row))
    print(f"\n[p2p text keys] flux dev inverted at distilled guidance 2: source row vs reconstruction {error:.1e}, "
          f"at the default 3.5 {control:.1e}")
    assert error <= SOURCE_ROW_MAX_ERROR
    assert control > 1e3 * SOURCE_ROW_MAX_ERROR
