"""The inversion solvers (Euler, FireFlow, fixed-point) against independent transcriptions, on analytic models."""

from __future__ import annotations

import math

import pytest
import torch
from analytic import GaussianDenoiser, ddim_levels, flow_levels

from invedit.inversion import InversionConfig, WarmStartConfig, invert, replay
from invedit.inversion.process import RECTIFIED_FLOW
from invedit.inversion.record import InversionRecord, Unconditioning
from invedit.inversion.solvers import model_calls, replay_solver

FLOW_FLOOR = 3.0 * 0.001 / (1 + 2.0 * 0.001)  # SD3's lowest level (shift 3, timestep 1 of 1000)
FLOW = {"process": "rectified-flow", "prediction_type": "velocity", "sigma_floor": FLOW_FLOOR}


def flow_config(**changes) -> InversionConfig:
    return InversionConfig(**{**FLOW, **changes})


# --- independent transcriptions ---------------------------------------------------------------


def euler_flow_inversion(velocity, levels: list[float], x: torch.Tensor, rule: str) -> torch.Tensor:
    """Rectified-flow Euler inversion written from the ODE dx/dt = v(x, t), up the ascending ``levels``.

    reference: the velocity of the current state read at the next level; simple: at the current one
    (at the floor for t = 0).
    """
    for t_from, t_to in zip(levels[:-1], levels[1:]):
        t_query = t_to if rule == "reference" else max(t_from, FLOW_FLOOR)
        x = x + (t_to - t_from) * velocity(x, t_query)
    return x


def official_fireflow(velocity, timesteps: list[float], img: torch.Tensor, inverse: bool) -> torch.Tensor:
    """``denoise_fireflow`` of the official FireFlow code (HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-
    for-Image-Semantic-Editing, src/flux/sampling.py), without its feature injection and guidance vector.

    ``timesteps`` descend from 1 to 0 as the code's ``get_schedule`` makes them. One deviation, which the
    pack makes too: the code asks the network at t = 0; ComfyUI's models give x0, not v, and (x - x0) / 0
    is undefined, so t = 0 is asked at the model's lowest level.
    """
    if inverse:
        timesteps = timesteps[::-1]
    next_step_velocity = None
    for t_curr, t_prev in zip(timesteps[:-1], timesteps[1:]):
        if next_step_velocity is None:
            pred = velocity(img, t_curr if t_curr > 0 else FLOW_FLOOR)
        else:
            pred = next_step_velocity
        img_mid = img + (t_prev - t_curr) / 2 * pred
        t_vec_mid = t_curr + (t_prev - t_curr) / 2
        pred_mid = velocity(img_mid, t_vec_mid)
        next_step_velocity = pred_mid
        img = img + (t_prev - t_curr) * pred_mid
    return img


def renoise_inversion(denoiser: GaussianDenoiser, levels: list[float], x_clean: torch.Tensor,
                      renoising_steps: int) -> torch.Tensor:
    """ReNoise (Garibi et al., ECCV 2024, Algorithm 1) on the DDPM scale with the averaging window reduced to the
    last estimate and no noise regularisation: the plain fixed-point iteration of the implicit DDIM inversion step.

    DDIM inversion step: ``z_t = sqrt(a_t) (z_prev - sqrt(1 - a_prev) eps) / sqrt(a_prev) + sqrt(1 - a_t) eps``;
    the first estimate asks the model at ``(z_prev, t)``, each re-noising step at the last estimate.
    """

    def abar(sigma: float) -> float:
        return 1.0 / (1.0 + sigma * sigma)

    def eps(z: torch.Tensor, sigma: float) -> torch.Tensor:  # the model's noise estimate for a DDPM-scale latent
        x = z * math.sqrt(1 + sigma * sigma)
        return (x - denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype))) / sigma

    def inverse_step(z_prev: torch.Tensor, noise: torch.Tensor, a_prev: float, a_t: float) -> torch.Tensor:
        return math.sqrt(a_t) * (z_prev - math.sqrt(1 - a_prev) * noise) / math.sqrt(a_prev) + math.sqrt(1 - a_t) * noise

    z = x_clean / math.sqrt(1 + levels[0] ** 2)
    for s_prev, s_t in zip(levels[:-1], levels[1:]):
        estimate = inverse_step(z, eps(z, s_t), abar(s_prev), abar(s_t))
        for _ in range(renoising_steps):
            estimate = inverse_step(z, eps(estimate, s_t), abar(s_prev), abar(s_t))
        z = estimate
    return z * math.sqrt(1 + levels[-1] ** 2)


# --- agreement with the transcriptions ---------------------------------------------------------


@pytest.mark.parametrize("rule", ["reference", "simple"])
def test_flow_euler_inversion_equals_the_ode_written_out(gaussian_flow_data, rule):
    denoiser, x_clean = gaussian_flow_data
    levels = flow_levels(28)
    ours = invert(denoiser, levels, x_clean, flow_config(timestep_rule=rule)).noise
    expected = euler_flow_inversion(denoiser.velocity, levels.tolist(), x_clean, rule)
    assert torch.allclose(ours, expected, rtol=0, atol=1e-12)
    other = euler_flow_inversion(denoiser.velocity, levels.tolist(), x_clean,
                                 "simple" if rule == "reference" else "reference")
    assert (other - expected).abs().max() > 1e-3  # the two rules really differ


@pytest.mark.parametrize("clean", [0.0, FLOW_FLOOR / 3], ids=["from-zero", "from-a-level-above-zero"])
def test_fireflow_equals_the_official_code_both_ways(gaussian_flow_data, clean):
    denoiser, x_clean = gaussian_flow_data
    levels = flow_levels(8, clean=clean)
    timesteps = levels.flip(0).tolist()
    trajectory = invert(denoiser, levels, x_clean, flow_config(solver="fireflow"))
    official_noise = official_fireflow(denoiser.velocity, timesteps, x_clean, inverse=True)
    assert torch.allclose(trajectory.noise, official_noise, rtol=0, atol=1e-12)
    ours_back = replay(denoiser, levels, trajectory.noise, process=RECTIFIED_FLOW, solver="fireflow")
    official_back = official_fireflow(denoiser.velocity, timesteps, official_noise, inverse=False)
    assert torch.allclose(ours_back, official_back, rtol=0, atol=1e-12)
    # Negative control: plain midpoint (a fresh half-step velocity every step) is another method.
    plain_midpoint = x_clean
    for t_from, t_to in zip(levels[:-1].tolist(), levels[1:].tolist()):
        half = plain_midpoint + (t_to - t_from) / 2 * denoiser.velocity(plain_midpoint, max(t_from, FLOW_FLOOR))
        plain_midpoint = plain_midpoint + (t_to - t_from) * denoiser.velocity(half, (t_from + t_to) / 2)
    assert (plain_midpoint - official_noise).abs().max() > 1e-4


@pytest.mark.parametrize("k", [1, 2, 4])
def test_fixed_point_equals_renoise_without_averaging(gaussian_data, k):
    denoiser, x_clean = gaussian_data
    levels = ddim_levels(20)
    ours = invert(denoiser, levels, x_clean, InversionConfig(solver="fixed-point", fixed_point_iterations=k)).noise
    expected = renoise_inversion(denoiser, levels.tolist(), x_clean, renoising_steps=k - 1)
    assert torch.allclose(ours, expected, rtol=0, atol=1e-10)
    if k > 1:
        fewer = renoise_inversion(denoiser, levels.tolist(), x_clean, renoising_steps=k - 2)
        assert (fewer - expected).abs().max() > 1e-6  # each iteration changes the result


def test_fixed_point_on_flow_solves_the_implicit_euler_step(gaussian_flow_data):
    """The flow form: x_to = x + (t_to - t_from) v(x_to, t_to), iterated from the current state seen at t_to."""
    denoiser, x_clean = gaussian_flow_data
    levels = flow_levels(10).tolist()
    ours = invert(denoiser, torch.tensor(levels, dtype=torch.float64), x_clean,
                  flow_config(solver="fixed-point", fixed_point_iterations=3)).noise
    x = x_clean
    for t_from, t_to in zip(levels[:-1], levels[1:]):
        guess = x
        for _ in range(3):
            guess = x + (t_to - t_from) * denoiser.velocity(guess, t_to)
        x = guess
    assert torch.allclose(ours, x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("family", ["ddpm", "rectified-flow"])
def test_one_fixed_point_iteration_is_the_euler_reference_rule_bit_for_bit(gaussian_data, gaussian_flow_data, family):
    denoiser, x_clean = gaussian_data if family == "ddpm" else gaussian_flow_data
    levels = ddim_levels(12) if family == "ddpm" else flow_levels(12)
    base = {} if family == "ddpm" else FLOW
    euler = invert(denoiser, levels, x_clean, InversionConfig(**base))
    fixed = invert(denoiser, levels, x_clean, InversionConfig(**base, solver="fixed-point", fixed_point_iterations=1))
    assert torch.equal(euler.latents, fixed.latents)


# --- model calls ------------------------------------------------------------------------------


@pytest.mark.parametrize("solver,k,expected", [("euler", 1, 20), ("fireflow", 1, 21), ("fixed-point", 3, 60)])
@pytest.mark.parametrize("warm", [0, 2])
def test_model_calls_are_n_n_plus_one_and_k_n(gaussian_flow_data, solver, k, expected, warm):
    denoiser, x_clean = gaussian_flow_data
    config = flow_config(solver=solver, fixed_point_iterations=k,
                         warm_start=WarmStartConfig(steps=warm, seed=1) if warm else None)
    trajectory = invert(denoiser, flow_levels(20), x_clean, config)
    expected_calls = model_calls(solver, 20 - warm, k)
    assert trajectory.model_calls == denoiser.calls == expected_calls
    assert expected_calls == (expected if warm == 0 else {"euler": 18, "fireflow": 19, "fixed-point": 54}[solver])


def test_fireflow_asks_the_first_level_then_only_midpoints(gaussian_flow_data):
    denoiser, x_clean = gaussian_flow_data
    levels = flow_levels(4)
    invert(denoiser, levels, x_clean, flow_config(solver="fireflow"))
    midpoints = ((levels[:-1] + levels[1:]) / 2).tolist()
    assert denoiser.levels == pytest.approx([FLOW_FLOOR] + midpoints, abs=1e-15)


# --- accuracy (the reason to use them) --------------------------------------------------------


def flow_round_trip(denoiser, x_clean, steps: int, solver: str, replay_with: str, k: int = 2) -> float:
    levels = flow_levels(steps)
    noise = invert(denoiser, levels, x_clean, flow_config(solver=solver, fixed_point_iterations=k)).noise
    back = replay(denoiser, levels, noise, process=RECTIFIED_FLOW, solver=replay_with)
    return float((back - x_clean).abs().max())


def test_fireflow_at_n_plus_one_calls_beats_euler_at_2n(gaussian_flow_data):
    """The paper's claim on exact Gaussian data: FireFlow 10 steps (11 + 11 calls) vs Euler 20 steps (20 + 20)."""
    denoiser, x_clean = gaussian_flow_data
    fireflow = flow_round_trip(denoiser, x_clean, 10, "fireflow", "fireflow")
    euler_2n = flow_round_trip(denoiser, x_clean, 20, "euler", "euler")
    assert fireflow < 0.5 * euler_2n, (fireflow, euler_2n)
    # Negative control: a FireFlow inversion sampled back with plain Euler loses the second order.
    assert flow_round_trip(denoiser, x_clean, 10, "fireflow", "euler") > 2 * euler_2n


def test_the_inverted_noise_follows_the_exact_flow(gaussian_flow_data):
    """The flow ODE of Gaussian data is known in closed form: FireFlow lands far closer to it than Euler."""
    denoiser, x_clean = gaussian_flow_data
    levels = flow_levels(10)
    exact = denoiser.exact_state(x_clean, float(levels[-1]))
    errors = {solver: float((invert(denoiser, levels, x_clean, flow_config(solver=solver)).noise - exact).abs().max())
              for solver in ("euler", "fireflow")}
    assert errors["fireflow"] < 0.2 * errors["euler"], errors


def test_fixed_point_iterations_converge_to_the_inverse_of_the_euler_sampler(gaussian_flow_data):
    denoiser, x_clean = gaussian_flow_data
    errors = [flow_round_trip(denoiser, x_clean, 20, "fixed-point", "euler", k) for k in (1, 2, 4, 8)]
    assert all(later < 0.5 * earlier for earlier, later in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-6 < errors[0], errors  # k = 1 (plain Euler) is the negative control


def test_replay_solver_of_each_inversion():
    assert [replay_solver(name) for name in ("euler", "fireflow", "fixed-point")] == ["euler", "fireflow", "euler"]
    trajectory = invert(lambda x, s: torch.zeros_like(x), flow_levels(2), torch.ones(1, 1, 2, 2, dtype=torch.float64),
                        flow_config(solver="fireflow"))
    record = InversionRecord(trajectory, trajectory.sigmas.flip(0))
    assert record.replay_solver == "fireflow"
    contexts = Unconditioning("null-text", [], step_contexts=torch.zeros(2, 1, 3, 4))
    assert record.with_changes(unconditioning=contexts).replay_solver == "euler"  # contexts are paired with Euler steps


@pytest.mark.parametrize("changes,match", [
    ({"solver": "heun"}, "solver"),
    ({"solver": "fixed-point", "fixed_point_iterations": 0}, "fixed_point_iterations"),
    ({"prediction_type": "v", "v_conversion": "state", "solver": "fireflow"}, "euler"),
])
def test_bad_solver_settings_are_refused(changes, match):
    with pytest.raises(ValueError, match=match):
        InversionConfig(**changes)


def test_replay_refuses_a_solver_that_does_not_sample():
    with pytest.raises(ValueError, match="fireflow"):
        replay(lambda x, s: x, flow_levels(2), torch.ones(1, 1, 2, 2), process=RECTIFIED_FLOW, solver="fixed-point")
