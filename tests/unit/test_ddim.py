"""DDIM inversion and replay on analytic denoisers (no ComfyUI)."""

from __future__ import annotations

import math

import pytest
import torch
from analytic import ConstantEpsDenoiser, GaussianDenoiser, ddim_levels, sd_sigmas

from invedit.inversion import InversionConfig, invert, replay
from invedit.inversion.ddim import predict_slope, query_sigma
from invedit.inversion.levels import as_ascending_levels, to_ddpm_scale

SIGMA_FLOOR = float(sd_sigmas()[0])


def round_trip_error(denoiser, x_clean, n_steps: int, rule: str) -> float:
    levels = ddim_levels(n_steps)
    trajectory = invert(denoiser, levels, x_clean, InversionConfig(timestep_rule=rule, sigma_floor=SIGMA_FLOOR))
    return float((replay(denoiser, levels, trajectory.noise) - x_clean).abs().max())


@pytest.mark.parametrize("rule", ["reference", "simple"])
def test_round_trip_error_shrinks_as_steps_grow(gaussian_data, rule):
    denoiser, x_clean = gaussian_data
    errors = [round_trip_error(denoiser, x_clean, n, rule) for n in (10, 25, 50, 100)]
    assert all(later < 0.6 * earlier for earlier, later in zip(errors, errors[1:])), errors
    # First-order method: error roughly halves when the steps double.
    assert errors[-1] < 0.08, errors


def test_reference_rule_beats_simple_rule_on_gaussian_data(gaussian_data):
    denoiser, x_clean = gaussian_data
    assert round_trip_error(denoiser, x_clean, 50, "reference") < 0.5 * round_trip_error(denoiser, x_clean, 50, "simple")


def test_inverted_gaussian_data_is_standard_noise_at_the_top_level(gaussian_data):
    denoiser, _ = gaussian_data
    generator = torch.Generator().manual_seed(1)
    x_clean = denoiser.mean + denoiser.var ** 0.5 * torch.randn(64, 4, 8, 8, generator=generator, dtype=torch.float64)
    levels = ddim_levels(100)
    noise = invert(denoiser, levels, x_clean).noise
    # The probability-flow ODE maps N(mean, var) to N(mean, var + sigma_max^2) exactly.
    expected_std = math.sqrt(denoiser.var + float(levels[-1]) ** 2)
    assert float(noise.std()) == pytest.approx(expected_std, rel=0.03)


def test_simple_rule_is_exact_for_a_point_mass():
    """For data at one point the noise estimate along the ODE is constant: Euler is exact."""
    denoiser = GaussianDenoiser(mean=0.7, var=0.0)
    x_clean = torch.full((1, 4, 8, 8), 0.7, dtype=torch.float64)
    levels = ddim_levels(20, clean=SIGMA_FLOOR)
    start = x_clean + SIGMA_FLOOR * torch.linspace(-1, 1, 256, dtype=torch.float64).reshape(1, 4, 8, 8)
    trajectory = invert(denoiser, levels, to_ddpm_scale(start, levels[0]), InversionConfig(timestep_rule="simple"))
    back = replay(denoiser, levels, trajectory.noise)
    assert torch.allclose(back, to_ddpm_scale(start, levels[0]), atol=1e-12)


def test_replay_matches_comfyui_euler_bit_for_bit_when_the_schedule_ends_at_zero(gaussian_data):
    denoiser, x_clean = gaussian_data
    levels = ddim_levels(20, dtype=torch.float32)
    x = (x_clean.float() + 14.0 * torch.randn_like(x_clean.float()))
    sigmas = levels.flip(0)
    expected = x.clone()
    unit = expected.new_ones([expected.shape[0]])
    for i in range(len(sigmas) - 1):  # k-diffusion sample_euler with s_churn = 0
        denoised = denoiser(expected, sigmas[i] * unit)
        d = (expected - denoised) / sigmas[i].reshape(1, 1, 1, 1)
        expected = expected + d * (sigmas[i + 1] - sigmas[i])
    assert torch.equal(replay(denoiser, sigmas, x), expected)


def test_replay_to_a_nonzero_level_returns_the_ddpm_scale_latent():
    eps = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    denoiser = ConstantEpsDenoiser(eps)
    levels = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    x_top = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    x_bottom = x_top + eps * (0.5 - 2.0)  # Euler with a constant eps is exact
    assert torch.allclose(replay(denoiser, levels, x_top), x_bottom / math.sqrt(1 + 0.25), atol=1e-12)


def test_model_is_queried_where_each_rule_says():
    levels = torch.tensor([0.0, 0.5, 1.5, 4.0], dtype=torch.float64)
    seen = []

    def recorder(x, sigma):
        seen.append(float(sigma[0]))
        return torch.zeros_like(x)

    invert(recorder, levels, torch.ones(1, 1, 2, 2, dtype=torch.float64), InversionConfig(timestep_rule="reference"))
    assert seen == [0.5, 1.5, 4.0]
    seen.clear()
    invert(recorder, levels, torch.ones(1, 1, 2, 2, dtype=torch.float64),
           InversionConfig(timestep_rule="simple", sigma_floor=0.03))
    assert seen == [0.03, 0.5, 1.5]


def test_reference_rule_presents_the_current_ddpm_latent_to_the_model():
    """The UNet input at the query level must equal z_from (diffusers feeds the sample unchanged)."""
    inputs = []

    def recorder(x, sigma):
        inputs.append(x / torch.sqrt(1 + sigma.reshape(-1, 1, 1, 1) ** 2))  # what the UNet sees
        return torch.zeros_like(x)

    x = torch.randn(2, 4, 4, 4, dtype=torch.float64)
    sigma_from, sigma_to = torch.tensor(0.8, dtype=torch.float64), torch.tensor(2.0, dtype=torch.float64)
    predict_slope(recorder, x, sigma_from, sigma_to, InversionConfig())
    assert torch.allclose(inputs[0], to_ddpm_scale(x, sigma_from), atol=1e-14)


def test_v_prediction_converts_at_the_state_level_like_diffusers():
    """Hand computation of DDIMInverseScheduler's v branch for one step."""
    generator = torch.Generator().manual_seed(3)
    z = torch.randn(1, 4, 4, 4, generator=generator, dtype=torch.float64)
    v = torch.randn(1, 4, 4, 4, generator=generator, dtype=torch.float64)
    sigma_from, sigma_to = torch.tensor(0.6, dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64)
    a_from, a_to = 1 / (1 + sigma_from ** 2), 1 / (1 + sigma_to ** 2)

    def v_model(x, sigma):
        # ComfyUI's V_PREDICTION.calculate_denoised with sigma_data = 1 and the model output v.
        s = sigma.reshape(-1, 1, 1, 1)
        return x / (s ** 2 + 1) - v * s / (s ** 2 + 1).sqrt()

    x_from = z * (1 + sigma_from ** 2).sqrt()
    eps, x0 = predict_slope(v_model, x_from, sigma_from, sigma_to, InversionConfig(prediction_type="v", v_conversion="state"))
    expected_eps = a_from.sqrt() * v + (1 - a_from).sqrt() * z
    expected_x0_ddpm = a_from.sqrt() * z - (1 - a_from).sqrt() * v
    assert torch.allclose(eps, expected_eps, atol=1e-12)
    assert torch.allclose(x0, expected_x0_ddpm, atol=1e-12)
    # The next DDPM-scale latent of DDIMInverseScheduler.step.
    z_next = a_to.sqrt() * expected_x0_ddpm + (1 - a_to).sqrt() * expected_eps
    x_next = x_from + eps * (sigma_to - sigma_from)
    assert torch.allclose(x_next / (1 + sigma_to ** 2).sqrt(), z_next, atol=1e-12)


def test_v_prediction_query_conversion_reads_the_model_like_a_sampler():
    """The default conversion uses the eps implied by the model's x0 at the level it was asked."""
    v = torch.randn(1, 4, 4, 4, dtype=torch.float64)

    def v_model(x, sigma):
        s = sigma.reshape(-1, 1, 1, 1)
        return x / (s ** 2 + 1) - v * s / (s ** 2 + 1).sqrt()

    x_from = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    sigma_from, sigma_to = torch.tensor(0.6, dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64)
    eps, _ = predict_slope(v_model, x_from, sigma_from, sigma_to, InversionConfig(prediction_type="v"))
    x_query = x_from * (1 + sigma_to ** 2).sqrt() / (1 + sigma_from ** 2).sqrt()
    assert torch.allclose(eps, (x_query - v_model(x_query, sigma_to.reshape(1))) / sigma_to, atol=1e-12)
    diffusers_eps, _ = predict_slope(v_model, x_from, sigma_from, sigma_to, InversionConfig(prediction_type="v", v_conversion="state"))
    assert (eps - diffusers_eps).abs().max() > 1e-2  # the two conventions really differ


def test_trajectory_shape_and_endpoints(gaussian_data):
    denoiser, x_clean = gaussian_data
    levels = ddim_levels(10)
    trajectory = invert(denoiser, levels.flip(0), x_clean)  # descending input is accepted
    assert trajectory.latents.shape == (11, *x_clean.shape)
    assert torch.equal(trajectory.sigmas, levels)
    assert torch.equal(trajectory.latents[0], x_clean)
    assert torch.equal(trajectory.noise, trajectory.latents[-1])
    assert trajectory.model_calls == denoiser.calls == 10


def test_callback_sees_every_step(gaussian_data):
    denoiser, x_clean = gaussian_data
    steps = []
    invert(denoiser, ddim_levels(8), x_clean, callback=lambda info: steps.append(info["i"]))
    assert steps == list(range(8))


def test_schedules_that_are_not_monotone_are_refused():
    with pytest.raises(ValueError, match="monotone"):
        as_ascending_levels(torch.tensor([0.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match="at least 2"):
        as_ascending_levels(torch.tensor([1.0]))


def test_simple_rule_from_zero_needs_the_model_floor():
    with pytest.raises(ValueError, match="sigma_floor"):
        query_sigma("simple", torch.tensor(0.0), torch.tensor(1.0), None)


@pytest.mark.parametrize("field,value", [("timestep_rule", "midpoint"), ("prediction_type", "x0"),
                                         ("v_conversion", "halfway")])
def test_unknown_settings_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        InversionConfig(**{field: value})
