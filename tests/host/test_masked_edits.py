"""Masked edits on both test-bed families: outside the mask the edited latent equals the reference (the
recorded trajectory for the Inversion Guider, the source row for Prompt-to-Prompt) to 1e-5 at the end of
sampling, with a control beside each bound (the same edit without the mask changes that region), and the
mask errors (size, coverage, batch) say what to change.

The UNet family is the digits test-bed model (DDPM), the flow family the trained tiny ComfyUI Flux
(rectified flow); each canvas is 8x16 latent pixels, the left digit in columns 0-7.
"""

from __future__ import annotations

import logging

import pytest
import torch

from invedit.nodes import p2p_nodes
from invedit.nodes.options import option_defaults
from invedit.nodes.sampling import inversion_noise_latent, replay_sampler, sample_with_guider
from invedit.testbed import data, vocabulary

STEPS = 10
CFG = 2.0
SWAP_OFFSET = 5
KEPT_MAX_ERROR = 1e-5  # the acceptance bound: float32 rounding of the steered step, not a regression band
EDIT_MIN_CHANGE = 1e-3  # the control: without the mask the same edit moves the other half by more than this
DIGIT = data.DIGIT_SIZE
FAMILIES = ("unet", "flow")
LOADERS = {"unet": "InvEditTestbedModelLoader", "flow": "InvEditTestbedFlowModelLoader"}


def left_digit_mask(batch: int = 1) -> torch.Tensor:
    """``[batch, 8, 16]`` MASK over the left digit (latent = image size on the test-beds)."""
    mask = torch.zeros(batch, data.CANVAS_HEIGHT, data.CANVAS_WIDTH)
    mask[..., :DIGIT] = 1.0
    return mask


def right_half(latent: torch.Tensor) -> torch.Tensor:
    return latent[..., DIGIT:]


def encode(pack_nodes, text_encoder, prompts):
    return pack_nodes["InvEditTestbedTextEncode"].execute(text_encoder=text_encoder, text="\n".join(prompts)).result[0]


@pytest.fixture(scope="module", params=FAMILIES)
def inverted(request, pack_nodes):
    """(family, model, text encoder, prompt, edited prompt, negative, INVERSION) of one held-out canvas."""
    with torch.inference_mode():
        model, text_encoder = pack_nodes[LOADERS[request.param]].execute(verify=True).result
        canvases, prompts, _ = data.heldout_canvases(1, seed=3)
        positive, negative = encode(pack_nodes, text_encoder, prompts), encode(pack_nodes, text_encoder, [""])
        scheduler = "ddim_uniform" if request.param == "unet" else "auto"
        _, record, _ = pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=positive, negative=negative, latent={"samples": canvases}, steps=STEPS,
            inversion_cfg=1.0, scheduler=scheduler, clean_level="zero", **option_defaults()).result
    edited = vocabulary.shift_digit_word(prompts[0], vocabulary.LEFT_WORD_POSITION, SWAP_OFFSET)
    return request.param, model, text_encoder, prompts[0], edited, negative, record


def guided(pack_nodes, model, record, positive, negative, **mask_inputs) -> torch.Tensor:
    with torch.inference_mode():
        guider = pack_nodes["InvEditInversionGuider"].execute(model=model, positive=positive, inversion=record, cfg=CFG,
                                                              negative=negative, **mask_inputs).result[0]
        return sample_with_guider(guider, inversion_noise_latent(model, record), replay_sampler(),
                                  record.sampling_sigmas, preview=False)


def test_the_masked_inversion_guider_keeps_the_recorded_trajectory_outside_the_mask(pack_nodes, inverted):
    family, model, text_encoder, _, edited_prompt, negative, record = inverted
    positive = encode(pack_nodes, text_encoder, [edited_prompt])
    recorded = model.model.process_latent_out(record.trajectory.latents[0].clone())
    masked = guided(pack_nodes, model, record, positive, negative, mask=left_digit_mask(), mask_feather=1)
    plain = guided(pack_nodes, model, record, positive, negative)
    kept_error = float((right_half(masked) - right_half(recorded)).abs().max())
    plain_change = float((right_half(plain) - right_half(recorded)).abs().max())
    print(f"\n[masked edits] {family} Inversion Guider: other half vs recorded {kept_error:.2e} (no mask: "
          f"{plain_change:.3f}); edited half moved {float((masked - recorded)[..., :DIGIT].abs().max()):.3f}")
    assert kept_error <= KEPT_MAX_ERROR
    assert plain_change > EDIT_MIN_CHANGE  # control: the edit does reach the other half without the mask
    assert float((masked - recorded)[..., :DIGIT].abs().max()) > EDIT_MIN_CHANGE  # the masked half is edited


def p2p(model, text_encoder, record, source, edited, negative, **mask_inputs):
    options = {widget.id: widget.default for widget in p2p_nodes.P2PEditSettings.GET_SCHEMA().inputs
               if getattr(widget, "default", None) is not None}
    options.update(blend_layer_downsample=2)
    with torch.inference_mode():
        edit = p2p_nodes.P2PEditSettings.execute(**{**options, "text_encoder": text_encoder, "source_prompt": source,
                                                    "edited_prompts": edited}).result[0]
        source_row, edited_rows, _ = p2p_nodes.P2PSample.execute(model=model, inversion=record, edit=edit, cfg=CFG,
                                                                 map_budget_mib=0, negative=negative,
                                                                 **mask_inputs).result
    return source_row["samples"], edited_rows["samples"]


def test_masked_p2p_keeps_the_source_row_outside_the_mask(pack_nodes, inverted):
    family, model, text_encoder, source, edited, negative, record = inverted
    source_row, masked = p2p(model, text_encoder, record, source, edited, negative, mask=left_digit_mask(),
                             mask_feather=2)
    plain_source, unmasked = p2p(model, text_encoder, record, source, edited, negative)
    with torch.inference_mode():
        reconstruction = pack_nodes["InvEditReconstruct"].execute(
            model=model, positive=encode(pack_nodes, text_encoder, [source]), inversion=record, cfg=CFG,
            negative=negative).result[0]["samples"]
    kept_error = float((right_half(masked) - right_half(source_row)).abs().max())
    reconstruction_error = float((right_half(masked) - right_half(reconstruction)).abs().max())
    print(f"\n[masked edits] {family} P2P: other half vs source row {kept_error:.2e}, vs reconstruction "
          f"{reconstruction_error:.2e} (no mask: {float((right_half(unmasked) - right_half(source_row)).abs().max()):.3f})")
    assert torch.equal(source_row, plain_source)  # the mask never touches the source row
    assert kept_error <= KEPT_MAX_ERROR and reconstruction_error <= KEPT_MAX_ERROR
    assert float((right_half(unmasked) - right_half(source_row)).abs().max()) > EDIT_MIN_CHANGE  # control


@pytest.mark.parametrize("mask, message", [
    (torch.ones(1, 16, 16), "aspect ratio"),
    (torch.zeros(1, 8, 16), "empty"),
    (torch.ones(1, 8, 16), "whole image"),
    (left_digit_mask(3), "3 masks for 1"),
])
def test_unusable_masks_are_refused_by_the_guiders(pack_nodes, inverted, mask, message):
    family, model, text_encoder, source, edited, negative, record = inverted
    with pytest.raises(ValueError, match=message) as error:
        guided(pack_nodes, model, record, encode(pack_nodes, text_encoder, [edited]), negative, mask=mask)
    assert type(error.value).__name__ == "InvEditInputError"
    with pytest.raises(ValueError, match=message) as error:
        p2p(model, text_encoder, record, source, edited, negative, mask=mask)
    assert type(error.value).__name__ == "InvEditInputError"


def test_an_image_size_mask_is_resized_with_a_note(pack_nodes, inverted, caplog):
    family, model, text_encoder, _, edited, negative, record = inverted
    large = torch.nn.functional.interpolate(left_digit_mask()[:, None], scale_factor=8)[:, 0]
    with caplog.at_level(logging.INFO):
        masked = guided(pack_nodes, model, record, encode(pack_nodes, text_encoder, [edited]), negative, mask=large,
                        mask_feather=0)
    recorded = model.model.process_latent_out(record.trajectory.latents[0].clone())
    assert "resized" in caplog.text
    assert float((right_half(masked) - right_half(recorded)).abs().max()) <= KEPT_MAX_ERROR
