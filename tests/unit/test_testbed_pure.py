"""The test-bed's pure parts (no ComfyUI): the shipped held-out digits, the flow model's maths and
token layout, the text encoders' conditioning and the selectivity measure."""

from __future__ import annotations

import math

import pytest
import torch

from invedit.testbed import data, flow, selectivity, text, vocabulary
from invedit.testbed.weights import DEFAULT_MODEL_PATH, load_testbed


# ---------------------------------------------------------------------------------------------
# Held-out digits shipped in the digits file


def test_the_shipped_held_out_digits_are_the_split_rules_digits():
    shipped = load_testbed(DEFAULT_MODEL_PATH).tensors
    rebuilt = data.heldout_tensors()  # from scikit-learn and the split rule
    for key in data.HELDOUT_KEYS:
        assert shipped[key].dtype == rebuilt[key].dtype and torch.equal(shipped[key], rebuilt[key]), key
    assert torch.equal(shipped[data.HELDOUT_INDICES_KEY], torch.from_numpy(data.split_indices()[1]))


@pytest.mark.parametrize("count, seed", [(1, 0), (32, 5), (64, 0), (359, 3)])
def test_held_out_canvases_from_the_file_equal_those_built_from_scikit_learn(count, seed):
    canvases, prompts, pairs = data.heldout_canvases(count, seed)
    expected_pairs = data.random_pairs(data.split_indices()[1], count, torch.Generator().manual_seed(seed))
    assert torch.equal(pairs, expected_pairs)
    assert torch.equal(canvases, data.make_canvases(pairs[:, 0], pairs[:, 1]))
    assert prompts == data.prompts_for_pairs(pairs)


# ---------------------------------------------------------------------------------------------
# Rectified flow


def comfy_flux_time_shift(mu: float, t: float) -> float:
    """ComfyUI's ``flux_time_shift(mu, 1.0, t)``, written out."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)


def test_time_shift_is_comfyuis_flux_shift_and_a_logit_offset():
    t = torch.linspace(0.01, 0.99, 25, dtype=torch.float64)
    shifted = flow.time_shift(flow.SHIFT, t)
    assert torch.allclose(shifted, torch.tensor([comfy_flux_time_shift(flow.SHIFT, float(v)) for v in t],
                                                dtype=torch.float64), atol=1e-12)
    assert torch.allclose(torch.logit(shifted), torch.logit(t) + flow.SHIFT, atol=1e-10)
    assert torch.equal(flow.time_shift(0.0, t), t)


def test_training_levels_are_logit_normal_around_the_shift():
    levels = flow.training_sigmas(200_000, torch.Generator().manual_seed(0))
    logits = torch.logit(levels.double())
    assert abs(float(logits.mean()) - flow.SHIFT) < 0.01 and abs(float(logits.std()) - 1.0) < 0.01
    # The median training level is the median step of the sampling schedule (time shift of t = 0.5).
    sigmas = flow.simple_sigmas(1000)[:-1]
    assert abs(float(levels.median()) - float(sigmas.median())) < 0.01
    assert abs(float(sigmas.median()) - 0.5) > 0.1  # the shift matters (control: unshifted median 0.5)


def test_simple_sigmas_start_at_pure_noise_and_end_at_zero():
    sigmas = flow.simple_sigmas(25)
    assert sigmas.shape == (26,) and float(sigmas[0]) == 1.0 and float(sigmas[-1]) == 0.0
    assert bool((sigmas[1:] < sigmas[:-1]).all())


def gaussian_velocity(mean: float, std: float):
    """Exact rectified-flow velocity when every pixel of x0 is N(mean, std^2) and noise N(0, 1)."""

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.view(-1, 1, 1, 1).to(x.dtype)
        variance = (1 - s) ** 2 * std**2 + s**2
        x0_hat = mean + (1 - s) * std**2 / variance * (x - (1 - s) * mean)
        return (x - x0_hat) / s

    return velocity


def test_euler_sampling_and_inversion_round_trip_converge_on_an_exact_velocity():
    velocity = gaussian_velocity(0.3, 0.5)
    x0 = 0.3 + 0.5 * torch.randn(4, 1, 8, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    errors = {}
    for steps in (10, 50):
        sigmas = flow.simple_sigmas(steps).double()
        sigmas[-1] = 1e-9  # the exact velocity divides by sigma; the model's does not
        for next_level in (True, False):
            noise = flow.euler_invert(velocity, x0, sigmas, next_level=next_level)
            errors[steps, next_level] = float((flow.euler_sample(velocity, noise, sigmas) - x0).abs().max())
    for next_level in (True, False):  # first order: 5x the steps, about 5x smaller
        assert errors[50, next_level] < errors[10, next_level] / 3
    for steps in (10, 50):  # the velocity at the level the undone sampling step used is ~4x closer
        assert errors[steps, True] < errors[steps, False] / 2


def test_noised_state_and_velocity_give_back_the_clean_canvas():
    x0, noise = torch.randn(3, 1, 8, 16), torch.randn(3, 1, 8, 16)
    sigma = torch.tensor([0.0, 0.4, 1.0])
    x = flow.noised(x0, noise, sigma)
    assert torch.equal(x[0], x0[0]) and torch.equal(x[2], noise[2])
    assert torch.allclose(x - sigma.view(-1, 1, 1, 1) * flow.velocity_target(x0, noise), x0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Configuration, token layout, conditioning


def test_flux_config_is_small_and_guidance_free():
    config = flow.flux_config()
    assert config["image_model"] == "flux" and config["guidance_embed"] is False and config["patch_size"] == 2
    assert sum(config["axes_dim"]) == config["hidden_size"] // config["num_heads"]
    assert flow.attention_blocks(config) == [("double_block", 0), ("double_block", 1),
                                             ("single_block", 0), ("single_block", 1)]
    with pytest.raises(ValueError, match="even sizes"):
        flow.flux_config(axes_dim=(4, 13, 15))


def test_token_layout_text_first_then_image_rows():
    assert flow.TEXT_TOKENS == vocabulary.TOKEN_LENGTH == 8 and flow.IMAGE_GRID == (4, 8)
    size = flow.TEXT_TOKENS + flow.IMAGE_TOKENS
    probs = torch.zeros(2, 3, size, size)
    probs[:, :, flow.TEXT_TOKENS + 5, vocabulary.LEFT_WORD_POSITION] = 1.0  # image token row 0, column 5
    image_rows = flow.image_query_attention(probs)
    assert image_rows.shape == (6, flow.IMAGE_TOKENS, size)
    assert float(image_rows[:, 5, vocabulary.LEFT_WORD_POSITION].sum()) == 6.0
    left, _ = selectivity.half_masks(*flow.IMAGE_GRID)
    assert not bool(left[5]) and bool(left[3]) and bool(left[8 + 3])


def test_each_text_encoder_gives_the_conditioning_its_model_takes():
    prompts = ["a photo of three and seven", ""]
    unet_encoder, flow_encoder = text.PromptEmbedding(), text.PooledPromptEmbedding()
    generator = torch.Generator().manual_seed(0)
    unet_encoder.reset_parameters(generator)
    flow_encoder.load_state_dict(unet_encoder.state_dict())
    context, extras = unet_encoder.encode_conditioning(prompts)
    assert extras == {} and context.shape == (2, 8, text.CONTEXT_DIM)
    flow_context, flow_extras = flow_encoder.encode_conditioning(prompts)
    assert torch.equal(flow_context, context)
    assert set(flow_extras) == {"pooled_output"} and torch.equal(flow_extras["pooled_output"], context.mean(dim=1))


def test_own_half_share_is_the_accumulators_selectivity_and_differentiable():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 32, 40, generator=generator, requires_grad=True)
    probs = logits.softmax(-1)
    share = selectivity.own_half_share(probs, 4, 8)
    accumulator = selectivity.SelectivityAccumulator()
    accumulator.add("block", probs.detach().flatten(0, 1), 4, 8)
    assert abs(float(share.detach()) - accumulator.table()["block"]) < 1e-6
    share.backward()
    assert logits.grad is not None and float(logits.grad.abs().sum()) > 0
