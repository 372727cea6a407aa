"""Pure-torch checks of the edit-friendly DDPM noise space and FlowEdit (no ComfyUI).

The DDPM posterior step in ComfyUI's sigma form is checked against the paper's DDPM form with
``abar = 1 / (1 + sigma^2)`` (DDIM eq. 12/16 at eta 1); the recorded noises against a toy denoiser
reconstruct exactly; FlowEdit with the same prompt on both branches returns the source, and with a
mask keeps it outside.
"""

from __future__ import annotations

import torch

from invedit.inversion.ddpm_noise import (extract_noises, independent_states, noise_scale, posterior_levels,
                                          posterior_mean, sample_with_noises)
from invedit.inversion.flowedit import FlowEditSettings, flowedit

SIGMAS = torch.tensor([14.6, 6.0, 2.5, 1.0, 0.4, 0.1, 0.0], dtype=torch.float64)
SHAPE = (2, 3, 4, 4)


def toy_denoiser(offset: float = 0.0):
    """A smooth, state- and level-dependent clean estimate (doubles)."""
    return lambda x, sigma: torch.tanh(x / (1 + sigma.view(-1, 1, 1, 1) ** 2) ** 0.5) * 0.8 + offset


def test_the_sigma_form_step_is_the_papers_ddpm_step():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=generator, dtype=torch.float64) * 3
    x0 = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    noise = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    for sigma_t, sigma_s in zip(SIGMAS[:-2], SIGMAS[1:-1]):
        a_t, a_s = 1 / (1 + sigma_t**2), 1 / (1 + sigma_s**2)
        z_t = a_t**0.5 * x
        eps = (z_t - a_t**0.5 * x0) / (1 - a_t) ** 0.5
        variance = (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
        z_s = a_s**0.5 * x0 + (1 - a_s - variance) ** 0.5 * eps + variance**0.5 * noise
        pack = posterior_mean(x, x0, sigma_t, sigma_s) + noise_scale(sigma_t, sigma_s) * noise
        assert torch.allclose(pack, z_s / a_s**0.5, rtol=0, atol=1e-10)
        # The negative control: the deterministic DDIM step (eta 0) with the same noise added is far off.
        ddim = x0 + sigma_s * (x - x0) / sigma_t + posterior_levels(sigma_t, sigma_s)[1] * noise
        assert float((ddim - z_s / a_s**0.5).abs().max()) > 1e-2


def test_recorded_noises_reconstruct_exactly_and_only_with_their_denoiser():
    generator = torch.Generator().manual_seed(1)
    x0 = torch.randn(SHAPE, generator=generator, dtype=torch.float64)
    states = independent_states(x0, SIGMAS, lambda: torch.randn(SHAPE, generator=generator, dtype=torch.float64))
    assert torch.equal(states[-1], x0)
    recorded = extract_noises(toy_denoiser(), SIGMAS, states)
    result = sample_with_noises(toy_denoiser(), SIGMAS, recorded.noises, recorded.states[0])
    assert float((result - x0).abs().max()) < 1e-12
    skipped = sample_with_noises(toy_denoiser(), SIGMAS, recorded.noises, recorded.states[3], start_step=3)
    assert float((skipped - x0).abs().max()) < 1e-12
    other = sample_with_noises(toy_denoiser(0.1), SIGMAS, recorded.noises, recorded.states[0])
    assert float((other - x0).abs().max()) > 1e-3
    assert recorded.model_calls == SIGMAS.numel() - 1


def test_flowedit_with_one_prompt_returns_the_source_and_a_mask_keeps_it_outside():
    sigmas = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)
    generator = torch.Generator().manual_seed(2)
    x_src = torch.randn(SHAPE, generator=generator, dtype=torch.float64)

    def draw():
        return torch.randn(SHAPE, generator=generator, dtype=torch.float64)

    same = toy_denoiser()
    result = flowedit(lambda zs, zt, s: (same(zs, s), same(zt, s)), same, sigmas, x_src, FlowEditSettings(8), draw)
    assert float((result - x_src).abs().max()) < 1e-12
    other = toy_denoiser(0.3)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2] = 1.0
    edited = flowedit(lambda zs, zt, s: (same(zs, s), other(zt, s)), other, sigmas, x_src,
                      FlowEditSettings(8, n_min=2), draw, mask=mask)
    assert float((edited[..., 2:] - x_src[..., 2:]).abs().max()) < 1e-12
    assert float((edited[..., :2] - x_src[..., :2]).abs().max()) > 1e-2
