"""Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024) on the UNets: exact reconstruction,
the recorded noises against the paper's equations, the edit sampler, the mask, save / load and refusals.

The oracle is ``inversion_forward_process`` of the official code (inbarhub/DDPM_inversion) at eta 1, written
out here in the DDPM form with ``alphas_cumprod`` from diffusers' DDPMScheduler (SD's scaled_linear betas)
and the network's raw output (eps, or v turned into eps), given the same noisy states; the pack works in
ComfyUI's sigma form with ComfyUI's clean estimate.
"""

from __future__ import annotations

import nodes
import pytest
import torch
from diffusers import DDPMScheduler
from test_bad_inputs import refused

import tiny_flow_models as tfm

STEPS = 25
SEED = 3
CFGS = (1.0, 7.5)
EXACT = 1e-5
"""Acceptance: the reconstruction's max |error| in the latent (model units) at any CFG."""
CONTROL_MIN = 1e-3
NOISE_ORACLE_BOUND = 1e-4
"""Max |pack - paper| over the recorded noises relative to their std (the tiny models' noises have std 3): float32
rounding divided by the posterior standard deviation, which is small on the last steps (measured 3e-5, 1e-5)."""
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@pytest.fixture(scope="module")
def digits(pack_nodes):
    with torch.inference_mode():
        model, text_encoder = pack_nodes["InvEditTestbedModelLoader"].execute(verify=True).result
        encode = pack_nodes["InvEditTestbedTextEncode"].execute
        positive = encode(text_encoder=text_encoder, text="a photo of three and seven").result[0]
        negative = encode(text_encoder=text_encoder, text="").result[0]
        target = encode(text_encoder=text_encoder, text="a photo of eight and seven").result[0]
    from invedit.testbed import data

    canvas = data.heldout_canvases(1, seed=4)[0]
    return model, positive, negative, target, {"samples": canvas}


def subject(arch: str, digits_setup, tiny_model, tiny_conditioning, tiny_latent):
    """(model, positive, negative, another prompt, latent) for the digits UNet or a tiny SD model."""
    if arch == "digits":
        return digits_setup
    return (tiny_model(arch), tiny_conditioning(arch, 1), tiny_conditioning(arch, 2), tiny_conditioning(arch, 5),
            tiny_latent(arch, 3))


def invert(pack_nodes, model, positive, negative, latent, cfg: float, steps: int = STEPS, seed: int = SEED):
    with torch.inference_mode():
        return pack_nodes["InvEditDDPMNoiseInversion"].execute(model=model, positive=positive, negative=negative,
                                                               latent=latent, steps=steps, scheduler="ddim_uniform",
                                                               cfg=cfg, seed=seed).result


def reconstruct(pack_nodes, model, positive, negative, record, cfg: float) -> torch.Tensor:
    with torch.inference_mode():
        return pack_nodes["InvEditReconstruct"].execute(model=model, positive=positive, inversion=record, cfg=cfg,
                                                        negative=negative).result[0]["samples"]


def edit(pack_nodes, model, prompt, negative, record, sigmas, latent, cfg: float, skip: int = 0, **options):
    """InvEdit DDPM Edit Sampler in SamplerCustomAdvanced with a stock CFGGuider; raw latent out."""
    with torch.inference_mode():
        guider = nodes.NODE_CLASS_MAPPINGS["CFGGuider"]().get_guider(model, prompt, negative, cfg)[0]
        sampler = pack_nodes["InvEditDDPMEditSampler"].execute(inversion=record, skip=skip, **options).result[0]
        return nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample(
            nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider, sampler, sigmas, latent)[0]["samples"]


def latent_error(model, result: torch.Tensor, latent: dict) -> float:
    """Max |result - source| in the model's latent units."""
    process_in = model.model.latent_format.process_in
    return float((process_in(result) - process_in(latent["samples"])).abs().max())


@pytest.mark.parametrize("arch", ["digits", "sd15", "sd15_v", "sdxl"])
def test_sampling_with_the_recorded_noises_returns_the_image_at_any_cfg(pack_nodes, digits, tiny_model,
                                                                        tiny_conditioning, tiny_latent, arch):
    """At the inversion's prompt and CFG: exact to 1e-5. Negative control: the same noises sampled at another CFG."""
    model, positive, negative, _, latent = subject(arch, digits, tiny_model, tiny_conditioning, tiny_latent)
    for cfg in CFGS:
        record, _ = invert(pack_nodes, model, positive, negative, latent, cfg)
        error = latent_error(model, reconstruct(pack_nodes, model, positive, negative, record, cfg), latent)
        control = latent_error(model, reconstruct(pack_nodes, model, positive, negative, record, cfg + 1.0), latent)
        print(f"\n[ddpm inversion] {arch} cfg {cfg:g}: reconstruction max |error| {error:.1e}; "
              f"sampled at cfg {cfg + 1:g}: {control:.2e}")
        assert error <= EXACT
        assert control > CONTROL_MIN
        assert record.trajectory.model_calls == STEPS


def raw_eps(model, prompt, z: torch.Tensor, timestep: int, abar: float) -> torch.Tensor:
    """The network's own noise estimate at the DDPM-scale latent ``z`` (v turned into eps for v models)."""
    base = model.model
    context = prompt[0][0]
    with torch.inference_mode():
        output = base.diffusion_model(z, torch.full((z.shape[0],), float(timestep)), context=context).float()
    if base.model_type.name == "V_PREDICTION":
        return abar**0.5 * output + (1 - abar) ** 0.5 * z
    return output


def paper_noises(model, positive, negative, cfg: float, states: torch.Tensor, sigmas: torch.Tensor,
                 query_shift: int = 0) -> torch.Tensor:
    """``inversion_forward_process`` (eta 1) for every step that lands above sigma 0, on the given states."""
    abar = DDPMScheduler(**SD_BETAS).alphas_cumprod.double()
    sigma_of_t = ((1 - abar) / abar).sqrt()
    noises = []
    for i in range(sigmas.numel() - 2):
        t, prev = (int((sigma_of_t - float(s)).abs().argmin()) for s in (sigmas[i], sigmas[i + 1]))
        assert abs(float(sigma_of_t[t]) / float(sigmas[i]) - 1) < 1e-4  # ComfyUI's sigmas are this schedule's
        a_t, a_p = float(abar[t]), float(abar[prev])
        z_t, z_p = a_t**0.5 * states[i].double(), a_p**0.5 * states[i + 1].double()
        eps_u = raw_eps(model, negative, z_t.float(), t + query_shift, a_t).double()
        eps_c = raw_eps(model, positive, z_t.float(), t + query_shift, a_t).double()
        eps = eps_u + cfg * (eps_c - eps_u)
        pred_original_sample = (z_t - (1 - a_t) ** 0.5 * eps) / a_t**0.5
        variance = (1 - a_p) / (1 - a_t) * (1 - a_t / a_p)
        mu_xt = a_p**0.5 * pred_original_sample + (1 - a_p - variance) ** 0.5 * eps
        noises.append((z_p - mu_xt) / variance**0.5)
    return torch.stack(noises).float()


@pytest.mark.parametrize("arch", ["sd15", "sd15_v"])
def test_recorded_noises_match_the_papers_equations(pack_nodes, tiny_model, tiny_conditioning, tiny_latent, arch):
    """Negative control: the model queried one timestep off (a shifted schedule) misses by far more."""
    model, positive, negative = tiny_model(arch), tiny_conditioning(arch, 1), tiny_conditioning(arch, 2)
    record, sigmas = invert(pack_nodes, model, positive, negative, tiny_latent(arch, 3), 3.5)
    states = record.sampling_states()
    expected = paper_noises(model, positive, negative, 3.5, states, sigmas)
    shifted = paper_noises(model, positive, negative, 3.5, states, sigmas, query_shift=1)
    recorded = record.ddpm_noises[:-1]
    error = float((recorded - expected).abs().max() / recorded.std())
    control = float((recorded - shifted).abs().max() / recorded.std())
    print(f"\n[ddpm inversion] {arch}: recorded noises vs the paper's max |diff| / std {error:.1e}; timestep shifted by one: "
          f"{control:.2e}; noise std {float(recorded.std()):.3f}")
    assert error < NOISE_ORACLE_BOUND
    assert control > CONTROL_MIN
    # The last step lands on sigma 0, where the posterior variance is 0: the record keeps its residual.
    assert float(sigmas[-1]) == 0.0


def test_the_edit_sampler_reconstructs_from_any_skip_edits_and_keeps_the_source_outside_a_mask(pack_nodes, digits):
    model, positive, negative, target, latent = digits
    cfg = 3.5
    record, sigmas = invert(pack_nodes, model, positive, negative, latent, cfg)
    for skip in (0, 10):
        assert latent_error(model, edit(pack_nodes, model, positive, negative, record, sigmas, latent, cfg, skip),
                            latent) <= EXACT
    edited = edit(pack_nodes, model, target, negative, record, sigmas, latent, 7.5, skip=5)
    assert latent_error(model, edited, latent) > 0.1
    mask = torch.zeros(1, 8, 16)
    mask[..., :8] = 1.0  # the left digit
    masked = edit(pack_nodes, model, target, negative, record, sigmas, latent, 7.5, skip=5, mask=mask, mask_feather=0)
    right = float((masked[..., 8:] - latent["samples"][..., 8:]).abs().max())
    assert right <= EXACT
    assert float((masked[..., :8] - latent["samples"][..., :8]).abs().max()) > 0.1


def test_saved_and_loaded_noises_reconstruct_exactly(pack_nodes, digits, tmp_path, monkeypatch):
    import folder_paths

    model, positive, negative, _, latent = digits
    record, _ = invert(pack_nodes, model, positive, negative, latent, 3.5)
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    with torch.inference_mode():
        pack_nodes["InvEditSaveInversion"].execute(inversion=record, file_name="ddpm_digits", overwrite=True)
    loaded = pack_nodes["InvEditLoadInversion"].execute(model=model, file_name="ddpm_digits").result[1]
    assert torch.equal(loaded.ddpm_noises, record.ddpm_noises)
    assert latent_error(model, reconstruct(pack_nodes, model, positive, negative, loaded, 3.5), latent) <= EXACT


def test_refusals_say_what_to_change(pack_nodes, digits, tiny_model, tiny_conditioning, tiny_latent):
    flow = tfm.cached_tiny_flow_model(tfm.FLUX_DEV)
    prompt = tfm.tiny_flow_conditioning(tfm.FLUX_DEV, 1)
    with refused("Edit-friendly DDPM inversion .* this model is"):
        invert(pack_nodes, flow, prompt, prompt, tfm.tiny_flow_latent(tfm.FLUX_DEV, 1), 1.0)
    model, positive, negative, _, latent = digits
    record, sigmas = invert(pack_nodes, model, positive, negative, latent, 3.5)
    with refused("belong to the inversion's 25 steps"):
        edit(pack_nodes, model, positive, negative, record, sigmas[5:], latent, 3.5)
    with refused("recorded DDPM noises"):
        with torch.inference_mode():
            guider = pack_nodes["InvEditInversionGuider"].execute(model=model, positive=positive, inversion=record,
                                                                  cfg=3.5, negative=negative).result[0]
            nodes.NODE_CLASS_MAPPINGS["SamplerCustomAdvanced"]().sample(
                nodes.NODE_CLASS_MAPPINGS["DisableNoise"]().get_noise()[0], guider,
                nodes.NODE_CLASS_MAPPINGS["KSamplerSelect"]().get_sampler("ddim")[0], sigmas, latent)
    with refused("recorded DDPM noises"):
        pack_nodes["InvEditDirectInversion"].execute(inversion=record)
