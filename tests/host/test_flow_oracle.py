"""Flow inversion against independent references: diffusers' flow-matching schedules and Euler scheduler, and
the published FireFlow and fixed-point (ReNoise) updates written out here over the raw network.

The network is a tiny model of ComfyUI's own class (tests/host/tiny_flow_models.py); the references call it
directly for its velocity (``diffusion_model(x, timestep, context, y, guidance)``), as diffusers pipelines
do, while the pack reads the velocity from ComfyUI's clean estimate, ``(x - x0) / sigma``.

Which ComfyUI scheduler gives diffusers' sigmas (measured): SD3 (ModelSamplingDiscreteFlow, shift 3):
``normal`` to float rounding (1.2e-7) at 28 and 50 steps; ``simple`` is off by 0.092 / 0.049, ``sgm_uniform``
0.099 / 0.057, ``beta`` 0.091 / 0.116. Flux (ModelSamplingFlux with the resolution shift): ``simple`` within
ComfyUI's 10000-level table (1.5e-4 to 2.3e-4 at 28 steps, 6e-8 at 50, where 10000 / 50 is whole);
``normal`` is off by 0.04 to 0.10. The pack's scheduler ``auto`` picks ``normal`` and ``simple`` accordingly.
"""

from __future__ import annotations

import math

import nodes
import pytest
import torch
import tiny_flow_models as tfm
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

from invedit.nodes.options import option_defaults

OPTIONS = option_defaults()
SD3_SHIFT = 3.0
FLUX_SCHEDULER_CONFIG = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                         "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}
"""The scheduler config of black-forest-labs/FLUX.1-dev (diffusers' FluxPipeline)."""
COMFY_FLUX_TABLE_STEP = 1e-4
"""ModelSamplingFlux tabulates its levels at t = 1/10000, 2/10000, ..., 1 (what the simple scheduler picks from)."""
FLOAT_ROUNDING = 1e-6
ORACLE_BOUND = 1e-5
"""Agreement of the pack's inversion with a reference loop over the same network, relative to the latent's std
(measured: Euler 1.9e-6, FireFlow 1.4e-6, fixed-point 7e-7)."""


def velocity_of(model, family: str, prompt, guidance: float = 1.0):
    """``v(x, sigma)``: the raw network output of a flow model for ``prompt`` (what diffusers' pipelines call)."""
    base = model.model
    context, options = prompt[0]
    extras = {"context": context}
    if options.get("pooled_output") is not None:
        extras["y"] = options["pooled_output"]
    if family in (tfm.FLUX_DEV, tfm.CHROMA):
        extras["guidance"] = torch.tensor([guidance])

    def velocity(x: torch.Tensor, sigma: float) -> torch.Tensor:
        sigmas = torch.full((x.shape[0],), float(sigma))
        with torch.inference_mode():
            return base.diffusion_model(x, base.model_sampling.timestep(sigmas).float(), **extras).float()

    return velocity


def invert(pack_nodes, model, family: str, steps: int, **overrides):
    """(INVERSION, clean latent in model units) of DDIM Inversion with scheduler auto at cfg 1."""
    prompt, latent = tfm.tiny_flow_conditioning(family, 1), tfm.tiny_flow_latent(family, 3)
    settings = dict(OPTIONS, steps=steps, inversion_cfg=1.0, scheduler="auto", clean_level="zero")
    settings.update(overrides)
    with torch.inference_mode():
        inversion = pack_nodes["InvEditDDIMInversion"].execute(model=model, positive=prompt, negative=prompt,
                                                               latent=latent, **settings).result[1]
    return inversion, model.model.latent_format.process_in(latent["samples"])


def relative_error(result: torch.Tensor, reference: torch.Tensor, scale: torch.Tensor) -> float:
    return float((result - reference).abs().max() / scale.std())


# --- schedules --------------------------------------------------------------------------------


def comfy_sigmas(model, scheduler: str, steps: int) -> torch.Tensor:
    return nodes.NODE_CLASS_MAPPINGS["BasicScheduler"]().get_sigmas(model, scheduler, steps, 1.0)[0].double()


@pytest.mark.parametrize("steps", [28, 50])
def test_the_default_sd3_schedule_is_diffusers_flow_matching_schedule(pack_nodes, steps):
    model = tfm.cached_tiny_flow_model(tfm.SD35)
    reference = FlowMatchEulerDiscreteScheduler(shift=SD3_SHIFT)
    reference.set_timesteps(steps)
    inversion, _ = invert(pack_nodes, model, tfm.SD35, steps)
    assert inversion.settings["scheduler_used"] == "normal"
    assert float((inversion.sampling_sigmas.double() - reference.sigmas.double()).abs().max()) < FLOAT_ROUNDING
    assert float((comfy_sigmas(model, "simple", steps) - reference.sigmas.double()).abs().max()) > 1e-2


@pytest.mark.parametrize("width,height", [(512, 512), (1024, 1024)])
@pytest.mark.parametrize("steps", [28, 50])
def test_the_default_flux_schedule_is_fluxpipelines_within_comfyuis_table(pack_nodes, width, height, steps):
    """ModelSamplingFlux (node) at an image size against FluxPipeline's sigmas for that size: within the slope of
    the shift times one table step, e^mu * 1e-4 (exact when 10000 / steps is whole)."""
    base = tfm.cached_tiny_flow_model(tfm.FLUX_DEV)
    model = nodes.NODE_CLASS_MAPPINGS["ModelSamplingFlux"]().patch(base, 1.15, 0.5, width, height)[0]
    image_seq_len = (height // 16) * (width // 16)
    mu = calculate_shift(image_seq_len, FLUX_SCHEDULER_CONFIG["base_image_seq_len"],
                         FLUX_SCHEDULER_CONFIG["max_image_seq_len"], FLUX_SCHEDULER_CONFIG["base_shift"],
                         FLUX_SCHEDULER_CONFIG["max_shift"])
    reference = FlowMatchEulerDiscreteScheduler.from_config(FLUX_SCHEDULER_CONFIG)
    reference.set_timesteps(sigmas=[1.0 - i / steps for i in range(steps)], mu=mu)
    inversion, _ = invert(pack_nodes, model, tfm.FLUX_DEV, steps)
    assert inversion.settings["scheduler_used"] == "simple"
    difference = float((inversion.sampling_sigmas.double() - reference.sigmas.double()).abs().max())
    assert difference <= math.exp(mu) * COMFY_FLUX_TABLE_STEP
    if 10000 % steps == 0:
        assert difference < FLOAT_ROUNDING
    assert float((comfy_sigmas(model, "normal", steps) - reference.sigmas.double()).abs().max()) > 1e-2


# --- the inversion steps ----------------------------------------------------------------------


def test_euler_inversion_equals_diffusers_scheduler_stepped_up_reversed_sigmas(pack_nodes):
    """SD3.5, 28 steps: FlowMatchEulerDiscreteScheduler.step on the ascending sigmas, the model asked at the next
    level (the reference rule); asking it at the current level (the simple rule) is the negative control."""
    model = tfm.cached_tiny_flow_model(tfm.SD35)
    inversion, x_clean = invert(pack_nodes, model, tfm.SD35, 28)
    velocity = velocity_of(model, tfm.SD35, tfm.tiny_flow_conditioning(tfm.SD35, 1))

    def diffusers_inversion(rule: str) -> torch.Tensor:
        scheduler = FlowMatchEulerDiscreteScheduler(shift=SD3_SHIFT)
        scheduler.set_timesteps(28)
        ascending = scheduler.sigmas.flip(0)
        scheduler.sigmas, scheduler.timesteps = ascending, ascending[:-1] * scheduler.config.num_train_timesteps
        scheduler.set_begin_index(0)
        x = x_clean.clone()
        for i in range(28):
            level = ascending[i + 1] if rule == "reference" else max(ascending[i], model.model.model_sampling.sigma_min)
            x = scheduler.step(velocity(x, level), scheduler.timesteps[i], x).prev_sample
        return x

    assert relative_error(inversion.trajectory.noise, diffusers_inversion("reference"), x_clean) < ORACLE_BOUND
    assert relative_error(inversion.trajectory.noise, diffusers_inversion("simple"), x_clean) > 1e-3


def test_fireflow_equals_the_official_loop(pack_nodes):
    """Flux dev, 28 steps, distilled guidance 1 (what the official code inverts with): ``denoise_fireflow`` written
    out (HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-for-Image-Semantic-Editing, src/flux/sampling.py;
    its t = 0 call asked at the model's lowest level, as ComfyUI's x0 output requires), up and back down.
    The negative control is RF-Solver's plain midpoint, a fresh velocity at every step's start."""
    model = tfm.cached_tiny_flow_model(tfm.FLUX_DEV)
    inversion, x_clean = invert(pack_nodes, model, tfm.FLUX_DEV, 28, solver="fireflow")
    velocity = velocity_of(model, tfm.FLUX_DEV, tfm.tiny_flow_conditioning(tfm.FLUX_DEV, 1), guidance=1.0)
    floor = float(model.model.model_sampling.sigma_min)

    def official(img: torch.Tensor, timesteps: list[float], inverse: bool, reuse: bool = True) -> torch.Tensor:
        if inverse:
            timesteps = timesteps[::-1]
        next_step_velocity = None
        for t_curr, t_prev in zip(timesteps[:-1], timesteps[1:]):
            if next_step_velocity is None or not reuse:
                pred = velocity(img, t_curr if t_curr > 0 else floor)
            else:
                pred = next_step_velocity
            img_mid = img + (t_prev - t_curr) / 2 * pred
            pred_mid = velocity(img_mid, t_curr + (t_prev - t_curr) / 2)
            next_step_velocity = pred_mid
            img = img + (t_prev - t_curr) * pred_mid
        return img

    timesteps = inversion.sampling_sigmas.tolist()
    official_noise = official(x_clean, timesteps, inverse=True)
    assert relative_error(inversion.trajectory.noise, official_noise, x_clean) < ORACLE_BOUND
    assert relative_error(inversion.trajectory.noise, official(x_clean, timesteps, True, reuse=False), x_clean) > 1e-3
    prompt = nodes.NODE_CLASS_MAPPINGS["FluxGuidance"]().append(tfm.tiny_flow_conditioning(tfm.FLUX_DEV, 1), 1.0)[0]
    with torch.inference_mode():
        ours_back = pack_nodes["InvEditReconstruct"].execute(model=model, positive=prompt, inversion=inversion,
                                                             cfg=1.0, negative=prompt).result[0]["samples"]
    official_back = official(inversion.trajectory.noise, timesteps, inverse=False)
    assert relative_error(model.model.latent_format.process_in(ours_back), official_back, x_clean) < ORACLE_BOUND


def test_fixed_point_equals_renoise_without_averaging(pack_nodes):
    """SD3.5, 28 steps, k = 3: ReNoise's iteration (Garibi et al. 2024, Algorithm 1) in flow form,
    ``x_t <- x_prev + (t - t_prev) v(x_t, t)`` from ``x_t = x_prev``, the average reduced to the last estimate and
    no noise regularisation; one iteration fewer is the negative control."""
    model = tfm.cached_tiny_flow_model(tfm.SD35)
    inversion, x_clean = invert(pack_nodes, model, tfm.SD35, 28, solver="fixed-point", fixed_point_iterations=3)
    velocity = velocity_of(model, tfm.SD35, tfm.tiny_flow_conditioning(tfm.SD35, 1))
    levels = inversion.trajectory.sigmas.tolist()

    def renoise(iterations: int) -> torch.Tensor:
        x = x_clean.clone()
        for t_prev, t in zip(levels[:-1], levels[1:]):
            estimate = x
            for _ in range(iterations):
                estimate = x + (t - t_prev) * velocity(estimate, t)
            x = estimate
        return x

    assert relative_error(inversion.trajectory.noise, renoise(3), x_clean) < ORACLE_BOUND
    assert relative_error(inversion.trajectory.noise, renoise(2), x_clean) > 1e-4
