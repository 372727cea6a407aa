"""Prompt-to-Prompt on joint attention, on the flow test-bed (the tiny trained ComfyUI Flux) inside ComfyUI.

Held-out canvases ("a photo of LEFT and RIGHT", seed 11) are Euler-inverted (25 steps, guidance 1) and
each digit word is swapped for the digit 5 further on (16 swaps), with the edit node's defaults (layout
rule "source image q, k", Shin et al. 2025, over the first half of the steps, every block). The test-bed
classifier (fitted on the training split, not on the pack's output) reads the swapped and the kept digit;
the source row is compared with ComfyUI's own reconstruction, and with a mask the other half of the edited
latent with the source row. Figures are printed (``-s``) and tabled by benchmarks/p2p_flow_testbed.py.
"""

from __future__ import annotations

import pytest
import torch

from invedit.nodes import p2p_nodes
from invedit.nodes.options import option_defaults
from invedit.testbed import classifier, data, vocabulary

STEPS = 25
CFG = 2.0
CANVASES = 8
CANVAS_SEED = 11
SWAP_OFFSET = 5
DIGIT = data.DIGIT_SIZE
SOURCE_ROW_MAX_ERROR = 1e-5  # acceptance bound (float32 batch rounding)
KEPT_MAX_ERROR = 1e-5  # acceptance bound for the masked half
SWAP_SUCCESS_MIN = 0.9  # acceptance: the swapped digit reads as the new digit in at least 90 % of the edits
OTHER_KEPT_MIN = 0.9  # ... and the other digit keeps its class


def encode(pack_nodes, text_encoder, prompts):
    return pack_nodes["InvEditTestbedTextEncode"].execute(text_encoder=text_encoder, text="\n".join(prompts)).result[0]


def one_image(record, index: int):
    context, options = record.positive[0]
    extras = {key: value[index:index + 1] if torch.is_tensor(value) else value for key, value in options.items()}
    return record.select_images([index]).with_changes(positive=[[context[index:index + 1], extras]])


def half(canvas: torch.Tensor, side: int) -> torch.Tensor:
    return canvas[..., side * DIGIT:(side + 1) * DIGIT]


@pytest.fixture(scope="module")
def flow_testbed(pack_nodes):
    with torch.inference_mode():
        return pack_nodes["InvEditTestbedFlowModelLoader"].execute(verify=True).result


@pytest.fixture(scope="module")
def inverted(pack_nodes, flow_testbed):
    model, text_encoder = flow_testbed
    canvases, prompts, _ = data.heldout_canvases(CANVASES, seed=CANVAS_SEED)
    with torch.inference_mode():
        positive, negative = encode(pack_nodes, text_encoder, prompts), encode(pack_nodes, text_encoder, [""])
        _, record, _ = pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=positive, negative=negative, latent={"samples": canvases}, steps=STEPS,
            inversion_cfg=1.0, scheduler="auto", clean_level="zero", **option_defaults()).result
    return canvases, prompts, negative, record


def p2p_sample(model, text_encoder, record, negative, source, targets, **settings):
    options = {widget.id: widget.default for widget in p2p_nodes.P2PEditSettings.GET_SCHEMA().inputs
               if getattr(widget, "default", None) is not None}
    options.update(blend_layer_downsample=1)
    options.update({key: value for key, value in settings.items() if key not in ("mask", "mask_feather")})
    with torch.inference_mode():
        edit = p2p_nodes.P2PEditSettings.execute(**{**options, "text_encoder": text_encoder, "source_prompt": source,
                                                    "edited_prompts": "\n".join(targets)}).result[0]
        source_row, edited, _ = p2p_nodes.P2PSample.execute(
            model=model, inversion=record, edit=edit, cfg=CFG, map_budget_mib=0, negative=negative,
            mask=settings.get("mask"), mask_feather=settings.get("mask_feather", 0)).result
    return source_row["samples"], edited["samples"]


def test_the_source_row_equals_the_plain_reconstruction(pack_nodes, flow_testbed, inverted):
    model, text_encoder = flow_testbed
    canvases, prompts, negative, record = inverted
    single = one_image(record, 0)
    target = vocabulary.shift_digit_word(prompts[0], vocabulary.LEFT_WORD_POSITION, SWAP_OFFSET)
    with torch.inference_mode():
        reconstruction = pack_nodes["InvEditReconstruct"].execute(model=model, positive=single.positive, inversion=single,
                                                                  cfg=CFG, negative=negative).result[0]["samples"]
    source_row, edited = p2p_sample(model, text_encoder, single, negative, prompts[0], [target])
    untouched, plain_edit = p2p_sample(model, text_encoder, single, negative, prompts[0], [target], self_replace=0.0,
                                       cross_replace=0.0)
    error = float((source_row - reconstruction).abs().max())
    print(f"\n[p2p flow] source row vs reconstruction: max |diff| {error:.2e}")
    assert error <= SOURCE_ROW_MAX_ERROR
    assert torch.equal(source_row, untouched)  # the injection never reaches the source row
    assert float((edited - plain_edit).abs().max()) > 1e-3  # control: it does reach the edited row


def test_swapped_digits_read_as_the_new_digit_and_the_other_digit_keeps_its_class(flow_testbed, inverted):
    model, text_encoder = flow_testbed
    canvases, prompts, negative, record = inverted
    predict = classifier.training_split_classifier().predict_canvases
    sides = (vocabulary.LEFT_WORD_POSITION, vocabulary.RIGHT_WORD_POSITION)
    swapped, kept, errors, plain_errors = [], [], [], []
    for index, prompt in enumerate(prompts):
        targets = [vocabulary.shift_digit_word(prompt, position, SWAP_OFFSET) for position in sides]
        single = one_image(record, index)
        source_row, edited = p2p_sample(model, text_encoder, single, negative, prompt, targets)
        _, plain = p2p_sample(model, text_encoder, single, negative, prompt, targets, self_replace=0.0,
                              cross_replace=0.0)
        source_labels = predict(source_row)[0]
        for side, (target, position) in enumerate(zip(targets, sides)):
            labels = predict(edited[side:side + 1])[0]
            swapped.append(int(labels[side]) == vocabulary.DIGIT_WORDS.index(target.split()[position]))
            kept.append(int(labels[1 - side]) == int(source_labels[1 - side]))
            errors.append(float((half(edited[side], 1 - side) - half(source_row[0], 1 - side)).abs().mean()))
            plain_errors.append(float((half(plain[side], 1 - side) - half(source_row[0], 1 - side)).abs().mean()))
    rate, kept_rate = sum(swapped) / len(swapped), sum(kept) / len(kept)
    print(f"[p2p flow] {len(swapped)} swaps: swapped digit read as the new one {rate:.2f}, other digit kept "
          f"{kept_rate:.2f}; other digit vs source row: P2P {sum(errors) / len(errors):.4f}, plain regeneration "
          f"{sum(plain_errors) / len(plain_errors):.4f}")
    assert rate >= SWAP_SUCCESS_MIN and kept_rate >= OTHER_KEPT_MIN


def test_a_mask_keeps_the_other_half_equal_to_the_reconstruction(pack_nodes, flow_testbed, inverted):
    model, text_encoder = flow_testbed
    canvases, prompts, negative, record = inverted
    single = one_image(record, 1)
    target = vocabulary.shift_digit_word(prompts[1], vocabulary.LEFT_WORD_POSITION, SWAP_OFFSET)
    mask = torch.zeros(1, data.CANVAS_HEIGHT, data.CANVAS_WIDTH)
    mask[..., :DIGIT] = 1.0
    with torch.inference_mode():
        reconstruction = pack_nodes["InvEditReconstruct"].execute(model=model, positive=single.positive, inversion=single,
                                                                  cfg=CFG, negative=negative).result[0]["samples"]
    _, masked = p2p_sample(model, text_encoder, single, negative, prompts[1], [target], mask=mask, mask_feather=1)
    _, unmasked = p2p_sample(model, text_encoder, single, negative, prompts[1], [target])
    error = float((half(masked, 1) - half(reconstruction, 1)).abs().max())
    print(f"[p2p flow] masked swap: other half vs reconstruction {error:.2e} (unmasked "
          f"{float((half(unmasked, 1) - half(reconstruction, 1)).abs().max()):.3f})")
    assert error <= KEPT_MAX_ERROR
    assert float((half(unmasked, 1) - half(reconstruction, 1)).abs().max()) > 1e-3  # control


def test_local_blend_and_the_word_maps_on_the_flow_model(pack_nodes, flow_testbed, inverted):
    """LocalBlend from the blend words' text-query maps keeps the other digit closer to the source row than the
    same swap without it (and the swap still reads as the new digit); the map viewer draws every word."""
    model, text_encoder = flow_testbed
    canvases, prompts, negative, record = inverted
    predict = classifier.training_split_classifier().predict_canvases
    errors, blended_errors, swapped = [], [], []
    for index in range(4):
        target = vocabulary.shift_digit_word(prompts[index], vocabulary.LEFT_WORD_POSITION, SWAP_OFFSET)
        old, new = prompts[index].split()[3], target.split()[3]
        single = one_image(record, index)
        source_row, edited = p2p_sample(model, text_encoder, single, negative, prompts[index], [target])
        _, blended = p2p_sample(model, text_encoder, single, negative, prompts[index], [target],
                                blend_words=f"{old}; {new}")
        errors.append(float((half(edited, 1) - half(source_row, 1)).abs().mean()))
        blended_errors.append(float((half(blended, 1) - half(source_row, 1)).abs().mean()))
        swapped.append(int(predict(blended)[0][0]) == vocabulary.DIGIT_WORDS.index(new))
    print(f"\n[p2p flow] LocalBlend: other digit vs source row {sum(blended_errors) / 4:.4f} (without "
          f"{sum(errors) / 4:.4f}); swapped {sum(swapped)}/4")
    assert sum(blended_errors) < sum(errors) and all(swapped)
    options = {widget.id: widget.default for widget in p2p_nodes.P2PEditSettings.GET_SCHEMA().inputs
               if getattr(widget, "default", None) is not None}
    target = vocabulary.shift_digit_word(prompts[0], vocabulary.LEFT_WORD_POSITION, SWAP_OFFSET)
    with torch.inference_mode():
        edit = p2p_nodes.P2PEditSettings.execute(**{**options, "text_encoder": text_encoder,
                                                    "source_prompt": prompts[0], "edited_prompts": target}).result[0]
        maps = p2p_nodes.P2PSample.execute(model=model, inversion=one_image(record, 0), edit=edit, cfg=CFG,
                                           map_budget_mib=64, negative=negative).result[2]
        grid = p2p_nodes.P2PAttentionMaps.execute(maps=maps, layer_downsample=2, cell_height=32, labels=False).result[0]
    assert grid.shape[0] == 1 and grid.shape[-1] == 3 and bool(torch.isfinite(grid).all())
    # The left digit word's map lies mostly on the left half of the 4x8 patch grid (word selectivity).
    left_word = maps.aggregate(2)[0, :, :, vocabulary.LEFT_WORD_POSITION]
    assert float(left_word[:, :4].sum()) > float(left_word[:, 4:].sum())
