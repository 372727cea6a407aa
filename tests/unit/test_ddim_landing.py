"""Steering a DDIM step through the clean estimate (how P2P's LocalBlend and source pin reach any sampler)."""

from __future__ import annotations

import pytest
import torch

from invedit.inversion.steps import denoised_landing_on


def euler_step(x, x0, sigma_from, sigma_to):
    """ComfyUI's euler / ddim step (k-diffusion ``to_d`` then ``x + d * dt``)."""
    return x + (x - x0) / sigma_from * (sigma_to - sigma_from)


@pytest.mark.parametrize("sigma_from, sigma_to", [(14.6, 12.1), (1.0, 0.5), (0.03, 0.0)])
def test_the_step_lands_on_the_wanted_state(sigma_from, sigma_to):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64) * (1 + sigma_from)
    x0 = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    x_next = euler_step(x, x0, sigma_from, sigma_to)
    wanted = x_next.clone()
    wanted[1, :, :4] = torch.randn(4, 4, 8, generator=generator, dtype=torch.float64)
    steered = denoised_landing_on(x, x0, sigma_from, sigma_to, x_next, wanted)
    assert torch.allclose(euler_step(x, steered, sigma_from, sigma_to), wanted, rtol=0, atol=1e-12)
    # Where nothing is wanted of the step, the clean estimate is kept bit for bit.
    untouched = torch.ones_like(x, dtype=torch.bool)
    untouched[1, :, :4] = False
    assert torch.equal(steered[untouched], x0[untouched])


def test_a_step_that_does_not_go_down_is_refused():
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="go down in sigma"):
        denoised_landing_on(x, x, 1.0, 1.0, x, x)
