"""EasyInv aggregation and forward warm start against hand-computed values (no ComfyUI)."""

from __future__ import annotations

import math

import pytest
import torch
from analytic import ConstantEpsDenoiser, StateDependentEpsDenoiser, ddim_levels

from invedit.inversion import EASYINV_PRESETS, EasyInvConfig, InversionConfig, WarmStartConfig, invert
from invedit.inversion.easyinv import in_window
from invedit.inversion.warm_start import forward_noise


def scalar_inversion(x0: float, levels: list[float], eta: float, window: set[int], variant: str,
                     query_after_mixing: bool = False) -> list[float]:
    """EasyInv on one element, written as the official code runs it, on the DDPM scale.

    Official SD1.4 code (potato-kitty/EasyInv, utilsV14.invert with opt_invert): the noise is
    predicted on the latent as the previous step left it (``step_backward``), THEN the latent is
    mixed with the previous one (``eta * z + (1 - eta) * z_last``, input variant), and the mixed
    latent is stepped with that prediction (``next_step``: DDIM from ``t - 1000 // N`` to ``t``,
    the model queried at ``t``). The output variant (``example.py``) mixes each step's result with
    the step's input instead. ``query_after_mixing`` runs the input variant in the other order (a
    control the pack must not match). The noise estimate is
    :meth:`StateDependentEpsDenoiser.eps`. Returns the latent each step moves from and the final
    latent, as ``x = z * sqrt(1 + sigma^2)``.
    """
    scale = [math.sqrt(1 + s * s) for s in levels]
    z = x0 / scale[0]
    z_last = None
    moved_from = []
    for i in range(len(levels) - 1):
        mixing = variant == "input" and i in window and z_last is not None
        if mixing and query_after_mixing:
            z = eta * z + (1 - eta) * z_last
        eps = StateDependentEpsDenoiser.eps(z, levels[i + 1])
        if mixing and not query_after_mixing:
            z = eta * z + (1 - eta) * z_last
        z_last = z
        moved_from.append(z * scale[i])
        a_t, a_n = 1 / scale[i] ** 2, 1 / scale[i + 1] ** 2
        pred_x0 = (z - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)
        z_next = math.sqrt(a_n) * pred_x0 + math.sqrt(1 - a_n) * eps
        if variant == "output" and i in window:
            z_next = eta * z_next + (1 - eta) * z
        z = z_next
    return moved_from + [z * scale[-1]]


@pytest.mark.parametrize("variant", ["input", "output"])
def test_easyinv_matches_hand_computation(variant):
    levels = ddim_levels(10)
    config = EasyInvConfig(eta=0.3, start=0.1, length=0.5, variant=variant)
    window = {i for i in range(10) if in_window(i, 10, config)}
    assert window == {2, 3, 4, 5}  # 0.1*10 < i < 0.6*10
    x0_value = -1.2
    denoiser = StateDependentEpsDenoiser()
    trajectory = invert(denoiser, levels, torch.full((1, 1, 1, 1), x0_value, dtype=torch.float64),
                        InversionConfig(easyinv=config))
    expected = scalar_inversion(x0_value, levels.tolist(), 0.3, window, variant)
    assert trajectory.latents.flatten().tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    plain = scalar_inversion(x0_value, levels.tolist(), 1.0, set(), variant)
    assert abs(expected[-1] - plain[-1]) > 1e-3  # aggregation really changed the result
    assert trajectory.model_calls == denoiser.calls == 10  # no extra model calls


def test_easyinv_queries_the_model_before_mixing():
    """Negative control: with a state-dependent noise estimate, "mix, then query" is another result.

    The two orders differ by about 1e-3 here (first mixed step and final noise), nine orders of
    magnitude above the 1e-12 the pack matches the official order to, so a pack that mixed first
    fails the test above.
    """
    levels = ddim_levels(10)
    config = EasyInvConfig(eta=0.3, start=0.1, length=0.5)
    window = {i for i in range(10) if in_window(i, 10, config)}
    trajectory = invert(StateDependentEpsDenoiser(), levels, torch.full((1, 1, 1, 1), -1.2, dtype=torch.float64),
                        InversionConfig(easyinv=config))
    mixed_first = scalar_inversion(-1.2, levels.tolist(), 0.3, window, "input", query_after_mixing=True)
    first_mixed_step = min(window)
    assert abs(trajectory.latents.flatten()[first_mixed_step + 1].item() - mixed_first[first_mixed_step + 1]) > 1e-5
    assert abs(trajectory.noise.item() - mixed_first[-1]) > 1e-5


def test_easyinv_eta_one_is_plain_inversion_bit_for_bit():
    eps = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    x_clean = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    levels = ddim_levels(20)
    plain = invert(ConstantEpsDenoiser(eps), levels, x_clean)
    for variant in ("input", "output"):
        same = invert(ConstantEpsDenoiser(eps), levels, x_clean,
                      InversionConfig(easyinv=EasyInvConfig(eta=1.0, start=0.0, length=1.0, variant=variant)))
        assert torch.allclose(same.latents, plain.latents, rtol=0, atol=1e-12)


def test_official_windows():
    sd = [i for i in range(50) if in_window(i, 50, EASYINV_PRESETS["SD1.x"])]
    sdxl = [i for i in range(50) if in_window(i, 50, EASYINV_PRESETS["SDXL"])]
    assert sd == list(range(3, 13))
    assert sdxl == list(range(43, 48))
    assert (EASYINV_PRESETS["SD1.x"].eta, EASYINV_PRESETS["SDXL"].eta) == (0.5, 0.8)


@pytest.mark.parametrize("kwargs", [dict(eta=1.5, start=0, length=0.1), dict(eta=0.5, start=-0.1, length=0.1),
                                    dict(eta=0.5, start=0.1, length=0.1, variant="middle")])
def test_easyinv_refuses_bad_settings(kwargs):
    with pytest.raises(ValueError):
        EasyInvConfig(**kwargs)


def test_warm_start_lands_on_the_forward_diffused_latent(gaussian_data):
    denoiser, x_clean = gaussian_data
    levels = ddim_levels(50)
    trajectory = invert(denoiser, levels, x_clean, InversionConfig(warm_start=WarmStartConfig(steps=2, seed=123)))
    noise = forward_noise(x_clean.shape, 123, x_clean.dtype, x_clean.device)
    assert torch.equal(trajectory.latents[2], x_clean + levels[2] * noise)  # level of step 2's start
    assert torch.equal(trajectory.latents[1], x_clean + levels[1] * noise)
    assert torch.equal(trajectory.latents[0], x_clean)
    assert trajectory.model_calls == denoiser.calls == 48


def test_warm_start_continues_with_inversion_steps_from_level_k():
    eps = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    x_clean = torch.randn(1, 4, 4, 4, dtype=torch.float64)
    levels = ddim_levels(10)
    trajectory = invert(ConstantEpsDenoiser(eps), levels, x_clean,
                        InversionConfig(warm_start=WarmStartConfig(steps=3, seed=9)))
    x_k = trajectory.latents[3]
    expected_noise = x_k + eps * (levels[-1] - levels[3])  # constant eps: the remaining steps add up exactly
    assert torch.allclose(trajectory.noise, expected_noise, atol=1e-12)


def test_warm_start_with_zero_steps_is_plain_inversion_bit_for_bit(gaussian_data):
    denoiser, x_clean = gaussian_data
    levels = ddim_levels(25)
    plain = invert(denoiser, levels, x_clean)
    zero = invert(denoiser, levels, x_clean, InversionConfig(warm_start=WarmStartConfig(steps=0, seed=5)))
    assert torch.equal(plain.latents, zero.latents)


def test_warm_start_fraction_and_seeds(gaussian_data):
    denoiser, x_clean = gaussian_data
    levels = ddim_levels(50)
    by_fraction = invert(denoiser, levels, x_clean, InversionConfig(warm_start=WarmStartConfig(fraction=0.04, seed=1)))
    by_steps = invert(denoiser, levels, x_clean, InversionConfig(warm_start=WarmStartConfig(steps=2, seed=1)))
    other_seed = invert(denoiser, levels, x_clean, InversionConfig(warm_start=WarmStartConfig(steps=2, seed=2)))
    assert torch.equal(by_fraction.noise, by_steps.noise)
    assert not torch.allclose(by_steps.noise, other_seed.noise, atol=1e-3)


def test_warm_start_must_leave_an_inversion_step(gaussian_data):
    denoiser, x_clean = gaussian_data
    with pytest.raises(ValueError, match="leave|fewer"):
        invert(denoiser, ddim_levels(10), x_clean, InversionConfig(warm_start=WarmStartConfig(steps=10)))
    with pytest.raises(ValueError, match="not both"):
        WarmStartConfig(steps=2, fraction=0.1)
