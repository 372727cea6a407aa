"""The deterministic-sampler allow-list (nodes/checks.py) against how every stock sampler behaves.

A replay of an inversion must not add noise. InvEdit's guiders accept only samplers known to be
deterministic (fail closed). The independent reference here is behaviour: a sampler is
deterministic when two runs that differ only in the seed give the same latent, bit for bit. Every
sampler ComfyUI ships is run that way on the tiny SD1.x model, with and without its noise option
(``eta`` / ``s_noise``) at 0, and the allow-list must give the same verdict.
"""

from __future__ import annotations

import inspect

import pytest
import torch

import comfy.samplers
from invedit.nodes.checks import check_deterministic_sampler, sampler_is_deterministic

STEPS = 4
SEEDS = (1, 2)
LATENT_SIDE = 8
NOISE_OPTIONS = ("eta", "s_noise")
CHURN = 1.0


def run_sampler(model, conditioning, sampler, seed: int) -> torch.Tensor:
    """``sampler`` on a fixed start latent, down a 4-step schedule, with ``seed`` for any noise it draws."""
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(conditioning, conditioning)
    guider.set_cfg(1.0)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "normal", STEPS)
    start = torch.randn(1, 4, LATENT_SIDE, LATENT_SIDE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return guider.sample(start, torch.zeros_like(start), sampler, sigmas, disable_pbar=True, seed=seed)


def behaves_deterministically(model, conditioning, sampler) -> bool:
    """Whether two seeds give the same result bit for bit."""
    first, second = (run_sampler(model, conditioning, sampler, seed) for seed in SEEDS)
    return torch.equal(first, second)


def noise_options(name: str) -> list[str]:
    """The options among eta / s_noise that the stock sampler ``name`` takes."""
    function = comfy.samplers.sampler_object(name).sampler_function
    parameters = inspect.signature(function).parameters
    return [option for option in NOISE_OPTIONS if option in parameters]


@pytest.fixture(scope="module")
def behaviour(tiny_model_module) -> dict[str, bool]:
    """Every stock sampler name -> whether it behaves deterministically."""
    model, conditioning = tiny_model_module
    return {name: behaves_deterministically(model, conditioning, comfy.samplers.sampler_object(name))
            for name in comfy.samplers.SAMPLER_NAMES}


@pytest.fixture(scope="module")
def tiny_model_module():
    import tiny_models

    return tiny_models.cached_tiny_model("sd15", 0), tiny_models.tiny_conditioning("sd15", 1)


def test_every_stock_sampler_is_judged_as_it_behaves(behaviour):
    verdicts = {name: sampler_is_deterministic(comfy.samplers.sampler_object(name)) for name in behaviour}
    wrong = {name: verdicts[name] for name in behaviour if verdicts[name] != behaviour[name]}
    assert not wrong, f"allow-list verdicts that differ from behaviour (name: verdict): {wrong}"
    # Both kinds are well represented, so the comparison is not vacuous.
    assert sum(behaviour.values()) >= 15 and sum(not value for value in behaviour.values()) >= 15, behaviour


def test_stochastic_samplers_with_their_noise_switched_off_are_judged_as_they_behave(tiny_model_module, behaviour):
    model, conditioning = tiny_model_module
    checked = []
    for name in [name for name, deterministic in behaviour.items() if not deterministic]:
        for option in noise_options(name):
            sampler = comfy.samplers.ksampler(name, {option: 0.0})
            assert sampler_is_deterministic(sampler) == behaves_deterministically(model, conditioning, sampler), \
                (name, option)
            checked.append((name, option))
    assert len(checked) >= 10, checked


def test_euler_with_churn_adds_noise_and_is_refused(tiny_model_module):
    model, conditioning = tiny_model_module
    for name in ("euler", "heun", "dpm_2"):
        churning = comfy.samplers.ksampler(name, {"s_churn": CHURN})
        assert not behaves_deterministically(model, conditioning, churning), name
        with pytest.raises(ValueError, match=f"'{name}' adds fresh random noise"):
            check_deterministic_sampler(churning, "This InvEdit guider")


def test_an_unknown_sampler_is_refused_fail_closed():
    """A sampler function InvEdit does not know (a new ComfyUI sampler, a custom node's) is refused,
    even when it happens to be deterministic."""

    def sample_brand_new(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return x

    unknown = comfy.samplers.KSAMPLER(sample_brand_new)
    assert not sampler_is_deterministic(unknown)
    with pytest.raises(ValueError, match="'brand_new' adds fresh random noise .*or is not known to InvEdit"):
        check_deterministic_sampler(unknown, "This InvEdit guider")


def test_the_message_names_every_deterministic_stock_sampler(behaviour):
    with pytest.raises(ValueError) as refusal:
        check_deterministic_sampler(comfy.samplers.sampler_object("euler_ancestral"), "This InvEdit guider")
    listed = refusal.value.args[0].split("KSamplerSelect (", 1)[1].split(")", 1)[0].split(", ")
    assert set(listed) == {name for name, deterministic in behaviour.items() if deterministic}
