"""Null-text on float16 and bfloat16 models: optimised in the model's own dtype, float32 state.

The model computes forward and backward in its own dtype (no float32 copy of its weights); the
contexts and Adam's state stay float32; float16 gets dynamic loss scaling, bfloat16 none.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import comfy.model_patcher
from invedit.inversion import metrics
from invedit.nodes.options import option_defaults
from invedit.nodes.testbed_nodes import load_testbed_model
from null_text_models import model_in
from test_guidance_gap import ERROR_RATIO, GUIDANCE, NULL_TEXT_DEFAULTS, TESTBED_STEPS
from test_null_text_gradients import model_objects
from tiny_models import build_tiny_model, tiny_conditioning, tiny_latent

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

STEPS = 6
SETTINGS = dict(guidance=7.5, inner_steps=3, learning_rate=0.01, learning_rate_decay=0.01, early_stop=1e-5,
                early_stop_growth=2e-5, stop_check="before step", start_from="empty prompt")
FP16_OVERFLOW_SCALE = 1e5  # conv_in outputs of about 1e5: past float16's 65504


def attention_dtypes(model, seen: list) -> comfy.model_patcher.ModelPatcher:
    """A clone that notes the dtype the middle block's cross-attention computes in."""

    def record_dtype(q, k, v, extra_options):
        seen.append(q.dtype)
        heads = extra_options["n_heads"]
        split = [t.reshape(t.shape[0], t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v)]
        return torch.nn.functional.scaled_dot_product_attention(*split).transpose(1, 2).reshape(q.shape)

    clone = model.clone()
    clone.set_model_attn2_replace(record_dtype, "middle", 0, 0)
    return clone


def invert_and_optimise(pack_nodes, model, **overrides):
    positive, negative = tiny_conditioning("sd15", 1, 8), tiny_conditioning("sd15", 2, 8)
    with torch.inference_mode():
        _, record, _ = pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=positive, negative=negative, latent=tiny_latent("sd15", 3, 1, 16, 16), steps=STEPS,
            inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero", **option_defaults()).result
        optimised = pack_nodes["InvEditNullTextInversion"].execute(model=model, inversion=record, negative=negative,
                                                                   **dict(SETTINGS, **overrides)).result[0]
    return negative, optimised


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_is_optimised_in_its_own_dtype(pack_nodes, dtype):
    seen: list[torch.dtype] = []
    model = attention_dtypes(model_in(dtype), seen)
    objects = model_objects(model)
    negative, optimised = invert_and_optimise(pack_nodes, model)
    assert set(seen) == {dtype}  # inversion and optimisation: no float32 compute
    uncond = optimised.unconditioning
    assert uncond.step_contexts.dtype == torch.float32
    assert bool(torch.isfinite(uncond.step_contexts).all())
    assert all(torch.isfinite(torch.tensor(uncond.report["losses"])))
    assert sum(uncond.report["gradient_steps"]) > 0
    # Adam steps of 1e-2 on values near 1 survive in float32 (half precision would round many away).
    assert float((uncond.step_contexts[-1, 0] - negative[0][0][0].float()).abs().max()) > 1e-3
    if dtype == torch.float16:
        scale = uncond.report["loss_scale"]
        assert scale is not None and scale == 2.0 ** round(torch.log2(torch.tensor(scale)).item())
    else:
        assert uncond.report["loss_scale"] is None  # bfloat16 has float32's range: no scaling
    assert model_objects(model) == objects


def test_a_float16_overflow_in_null_text_says_what_to_do(pack_nodes):
    """Inverted with the float16 model (an inversion of another precision is refused as another
    architecture), then optimised on the same model with one weight scaled until float16 overflows."""
    positive, negative = tiny_conditioning("sd15", 1, 8), tiny_conditioning("sd15", 2, 8)
    with torch.inference_mode():
        _, record, _ = pack_nodes["InvEditDDIMInversion"].execute(
            model=model_in(torch.float16, build_tiny_model("sd15", 0)), positive=positive, negative=negative,
            latent=tiny_latent("sd15", 3, 1, 16, 16), steps=STEPS, inversion_cfg=1.0, scheduler="ddim_uniform",
            clean_level="zero", **option_defaults()).result
    overflowing = build_tiny_model("sd15", 0)
    with torch.inference_mode():
        overflowing.model.diffusion_model.input_blocks[0][0].weight.mul_(FP16_OVERFLOW_SCALE)
        half = model_in(torch.float16, overflowing)
        with pytest.raises(ValueError, match="not finite.*overflows in float16.*--bf16-unet.*--force-fp32") as error:
            pack_nodes["InvEditNullTextInversion"].execute(model=half, inversion=record, negative=negative, **SETTINGS)
    assert type(error.value).__name__ == "InvEditInputError"


# ---------------------------------------------------------------------------------------------
# Memory: no float32 copy of the weights (measured in a fresh process by the benchmark's code)

NO_COPY_SHARE = 0.25  # of the weights' float32 size: half the bfloat16 weights themselves
COPY_SHARE = 0.75


def test_a_bfloat16_model_is_optimised_without_a_float32_copy_of_its_weights():
    """Peak memory above the loaded model while null-text runs, on the SD1.5 layout at 64 channels
    (42M parameters, 80 MiB in bfloat16) with an 8x8 latent, so that weights dwarf activations."""
    sys.path.insert(0, str(BENCHMARKS))
    import null_text_cost

    pack, copies = null_text_cost.spawn("small-sd15", ["pack", null_text_cost.COPIES], "bfloat16", 1)
    float32_copy = 4 * pack["parameters"]
    assert pack["weight_bytes"] == 2 * pack["parameters"]
    assert pack["peak_increase"] < NO_COPY_SHARE * float32_copy, (pack["peak_increase"], float32_copy)
    # Negative control: the mechanism issue 18 replaced holds a float32 copy through the backward pass.
    assert copies["peak_increase"] > COPY_SHARE * float32_copy, (copies["peak_increase"], float32_copy)


# ---------------------------------------------------------------------------------------------
# Fidelity: the guidance gap closes in float16 as in float32


def half_precision_testbed(dtype: torch.dtype) -> tuple:
    """The shipped test-bed model with its weights stored and computed in ``dtype``, and its text encoder."""
    model, text_encoder = load_testbed_model(verify=False)
    return model_in(dtype, model), text_encoder


FAST_NULL_TEXT = dict(NULL_TEXT_DEFAULTS, learning_rate=0.05)  # the README's "before step, lr 0.05" row


def test_null_text_on_a_float16_testbed_closes_the_guidance_gap(pack_nodes):
    """One held-out digit, 50 steps, as tests/host/test_guidance_gap.py does in float32; float16
    computes about 20x slower on a CPU, hence lr 0.05 (a third of the gradient steps)."""
    model, text_encoder = half_precision_testbed(torch.float16)
    with torch.inference_mode():
        images, prompts = pack_nodes["InvEditTestbedHeldOutDigits"].execute(count=1, seed=0).result
        encode = pack_nodes["InvEditTestbedTextEncode"]
        positive = encode.execute(text_encoder=text_encoder, text=prompts).result[0]
        negative = encode.execute(text_encoder=text_encoder, text="").result[0]
        latent = pack_nodes["InvEditTestbedImageToLatent"].execute(image=images).result[0]
        _, record, _ = pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=positive, negative=negative, latent=latent, steps=TESTBED_STEPS, inversion_cfg=1.0,
            scheduler="ddim_uniform", clean_level="zero", **option_defaults()).result
        optimised = pack_nodes["InvEditNullTextInversion"].execute(model=model, inversion=record,
                                                                   **FAST_NULL_TEXT).result[0]

        def error(inversion) -> float:
            rebuilt = pack_nodes["InvEditReconstruct"].execute(model=model, positive=positive, negative=negative,
                                                               inversion=inversion, cfg=GUIDANCE).result[0]
            canvas = pack_nodes["InvEditTestbedLatentToImage"].execute(latent=rebuilt, scale=1).result[0]
            return float(metrics.mse(images.movedim(-1, 1).double(), canvas.movedim(-1, 1).double()).mean())

        plain, null_text = error(record), error(optimised)
    assert optimised.unconditioning.report["loss_scale"] is not None
    assert plain > 0.01  # the guidance gap is there in float16 too
    assert null_text < plain / ERROR_RATIO, (plain, null_text)
