"""Acceptance: reference-rule DDIM inversion and its replay agree with diffusers' DDIM schedulers.

One small seeded diffusers ``UNet2DConditionModel`` (SD1.x layout) runs on both sides: as itself
under diffusers' ``DDIMInverseScheduler`` / ``DDIMScheduler`` (the SD1.x scheduler config, 50
steps, float32), and converted to ComfyUI's format inside a real ``BaseModel`` (eps and
v-prediction) under ``invedit.inversion.invert`` / ``replay``, compared on the DDPM scale
``z = x / sqrt(1 + sigma^2)``:

* inversion: every one of the 51 latents within 1e-4 per element;
* reconstruction, from the same starting noise: every one of the 50 steps, taken from the same
  state on both sides, within 1e-4 per element; and the free-running 50-step trajectories within
  1e-4 per element relative to the size of the latent, ``1e-4 * max(1, max|z|)`` (see below).

What lines the two up:
* the levels: diffusers visits t = 1, 21, ..., 981 (``leading`` spacing, ``steps_offset`` 1) and
  starts the inversion at ``alphas_cumprod[0]`` (``set_alpha_to_one=False``); our schedule is
  ComfyUI's own ``model_sampling.sigmas`` at t = 0, 1, 21, ..., 981, and ComfyUI maps each of
  those sigmas back to exactly that integer timestep;
* the network: the raw UNet outputs are compared first, so a conversion error shows as such.
  ComfyUI's CPU attention (sub-quadratic) differs from diffusers' by about 5e-6 per element;
  with ComfyUI's PyTorch attention the two are bit-identical.

Why the free-running reconstruction gets a relative bound: with random weights the eps model's
samples are far from realistic latents (the clean estimate ``(z - sqrt(1-abar) eps)/sqrt(abar)``
is amplified up to 14.6 times at t=981 and nothing cancels it), the reconstructed latent reaches
|z| of about 14, and float32 rounding accumulates to about 1e-5 of that over 50 steps: diffusers'
own float32 run differs from the same run in float64 by about 1.5e-4 there, more than ours does.
Driven by one float64 network, the two step formulas agree to about 1e-13: the difference is
rounding, not arithmetic. Each single step, and every inversion latent (|z| stays near 1, and the
comparison divides the x-space state by sqrt(1 + sigma^2)), meets 1e-4 absolutely.

A negative control shows the comparison discriminates: the ``simple`` timestep rule (the model
queried at the current level, as core FlipSigmas + euler does) misses the diffusers trajectory by
orders of magnitude more than the tolerance.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]

if "invedit" not in sys.modules:  # tests/conftest.py normally does this; never put the root on sys.path
    _spec = importlib.util.spec_from_file_location(
        "invedit", REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["invedit"] = _module
    _spec.loader.exec_module(_module)

from invedit.inversion import InversionConfig, invert, replay  # noqa: E402

import diffusers_convert  # noqa: E402

TOL = 1e-4
N_STEPS = 50
SEED = 0
BATCH = 2
TOKENS = 8
LATENT_SHAPE = (BATCH, diffusers_convert.LATENT_CHANNELS, 16, 16)
# diffusers' prediction_type for each of our prediction types.
PREDICTIONS = {"eps": "epsilon", "v": "v_prediction"}
# The SD1.x DDIMScheduler config (scheduler_config.json of the SD1.x checkpoints).
SD1_DDIM_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


@pytest.fixture(scope="module")
def comfy():
    """ComfyUI importable and on the CPU; harmless when the host conftest already did it."""
    comfyui_path = os.environ.get("COMFYUI_PATH")
    if "comfy.cli_args" not in sys.modules:
        if not comfyui_path:
            pytest.fail("COMFYUI_PATH is not set: point it at the pinned ComfyUI checkout")
        if comfyui_path not in sys.path:
            sys.path.insert(0, comfyui_path)
        import comfy.options

        comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.ldm.modules.attention

    return comfy


@pytest.fixture(scope="module")
def diffusers_unet():
    """The seeded diffusers UNet (float32, eval) both sides run."""
    return diffusers_convert.build_diffusers_unet(SEED)


@pytest.fixture(scope="module")
def inputs():
    """``(z_clean [2,4,16,16] with std ~1, context [2,8,64])`` from a fixed generator."""
    generator = torch.Generator().manual_seed(SEED + 100)
    z_clean = torch.randn(LATENT_SHAPE, generator=generator)
    context = torch.randn(BATCH, TOKENS, diffusers_convert.CONTEXT_DIM, generator=generator)
    return z_clean, context


def pytorch_attention_options(comfy) -> dict:
    """``transformer_options`` that make ComfyUI's attention layers use ``attention_pytorch``."""
    attention = comfy.ldm.modules.attention

    def override(func, *args, **kwargs):
        return attention.attention_pytorch(*args, **kwargs)

    return {"optimized_attention_override": override}


def diffusers_schedulers(prediction_type: str):
    """``(DDIMScheduler, DDIMInverseScheduler)`` of the SD1.x config, set to ``N_STEPS``."""
    diffusers_convert.diffusers_unet_class()  # imports diffusers (past a broken torchaudio)
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    scheduler = DDIMScheduler(prediction_type=prediction_type, **SD1_DDIM_CONFIG)
    inverse = DDIMInverseScheduler.from_config(scheduler.config)
    scheduler.set_timesteps(N_STEPS)
    inverse.set_timesteps(N_STEPS)
    return scheduler, inverse


@dataclass
class OracleRun:
    """Both sides' latents for one prediction type, DDPM scale, ``[N+1, B, C, H, W]``."""

    prediction: str
    timesteps: list[int]  # [0] + the inverse scheduler's timesteps, ascending
    levels: torch.Tensor  # ComfyUI's sigmas at those timesteps, ascending
    comfy_timesteps: list[int]  # what ComfyUI's model_sampling maps the levels back to
    ref_inversion: torch.Tensor  # diffusers: z_clean, then the latent after each inverse step
    our_inversion: torch.Tensor
    simple_inversion: torch.Tensor  # the simple timestep rule (negative control)
    ref_reconstruction: torch.Tensor  # diffusers: the noise, then the latent after each step
    our_reconstruction: torch.Tensor  # free-running replay from the same noise
    our_steps: torch.Tensor  # [0]: the noise; [i+1]: one replay step from ref_reconstruction[i]


def run_oracle(comfy, diffusers_unet, inputs, prediction: str) -> OracleRun:
    z_clean, context = inputs
    scheduler, inverse = diffusers_schedulers(PREDICTIONS[prediction])
    model = diffusers_convert.build_comfy_model(diffusers_unet, v_prediction=prediction == "v")
    model_sampling = model.model_sampling

    timesteps = [0] + [int(t) for t in inverse.timesteps]
    levels = model_sampling.sigmas[timesteps].to(torch.float32)
    descending = levels.flip(0)

    def vp_scale(sigma):
        return torch.sqrt(1.0 + sigma * sigma)

    def denoiser(x, sigma):
        return model.apply_model(x, sigma, c_crossattn=context)

    def unet(z, t):
        return diffusers_unet(z, t, encoder_hidden_states=context).sample

    with torch.no_grad():
        comfy_timesteps = [int(t) for t in model_sampling.timestep(levels)]

        z = z_clean
        ref_inversion = [z]
        for t in inverse.timesteps:
            z = inverse.step(unet(z, t), t, z).prev_sample
            ref_inversion.append(z)
        ref_inversion = torch.stack(ref_inversion)

        config = dict(prediction_type=prediction, v_conversion="state", sigma_floor=float(levels[0]))
        ours = invert(denoiser, levels, z_clean, InversionConfig(timestep_rule="reference", **config))
        simple = invert(denoiser, levels, z_clean, InversionConfig(timestep_rule="simple", **config))

        # Reconstruction from the same starting noise on both sides: diffusers' inverted noise.
        noise = ref_inversion[-1]
        z = noise
        ref_reconstruction = [z]
        for t in scheduler.timesteps:
            z = scheduler.step(unet(z, t), t, z).prev_sample
            ref_reconstruction.append(z)
        ref_reconstruction = torch.stack(ref_reconstruction)

        states: list[torch.Tensor] = []
        final = replay(denoiser, levels, noise * vp_scale(descending[0]), callback=lambda info: states.append(info["x"]))
        our_reconstruction = torch.stack([x / vp_scale(s) for x, s in zip(states, descending)] + [final])

        # Each step on its own: one replay step from diffusers' state before that step.
        our_steps = [noise] + [
            replay(denoiser, descending[i : i + 2], ref_reconstruction[i] * vp_scale(descending[i]))
            for i in range(N_STEPS)
        ]
        our_steps = torch.stack(our_steps)

    return OracleRun(
        prediction=prediction,
        timesteps=timesteps,
        levels=levels,
        comfy_timesteps=comfy_timesteps,
        ref_inversion=ref_inversion,
        our_inversion=ours.latents / vp_scale(levels).view(-1, 1, 1, 1, 1),
        simple_inversion=simple.latents / vp_scale(levels).view(-1, 1, 1, 1, 1),
        ref_reconstruction=ref_reconstruction,
        our_reconstruction=our_reconstruction,
        our_steps=our_steps,
    )


@pytest.fixture(scope="module", params=sorted(PREDICTIONS))
def oracle(request, comfy, diffusers_unet, inputs) -> OracleRun:
    return run_oracle(comfy, diffusers_unet, inputs, request.param)


def per_step_error(ours: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Max absolute error per element at each step, ``[N+1]``."""
    assert ours.shape == ref.shape
    return (ours.double() - ref.double()).abs().flatten(1).amax(dim=1)


def describe(errors: torch.Tensor) -> str:
    worst = int(errors.argmax())
    return f"max {float(errors[worst]):.3g} at step {worst}; every 10th step: " + ", ".join(
        f"{float(e):.2g}" for e in errors[::10]
    )


def test_converted_unet_matches_diffusers(comfy, diffusers_unet, inputs):
    """The conversion is exact: ComfyUI's UNet computes diffusers' outputs from the same weights."""
    z, context = inputs
    model = diffusers_convert.build_comfy_model(diffusers_unet, v_prediction=False)
    options = pytorch_attention_options(comfy)  # ComfyUI's attention on NVIDIA GPUs
    with torch.no_grad():
        for t in (1, 481, 981):
            ref = diffusers_unet(z, t, encoder_hidden_states=context).sample
            timestep = torch.full((BATCH,), float(t))
            default = model.diffusion_model(z, timestep, context=context)
            pytorch = model.diffusion_model(z, timestep, context=context, transformer_options=options)
            assert float(ref.std()) > 0.3, f"t={t}: UNet output std {float(ref.std()):.3g} is not O(1)"
            assert (default - ref).abs().max() < 1e-5, f"t={t}: ComfyUI (default attention) vs diffusers"
            assert (pytorch - ref).abs().max() < 1e-6, f"t={t}: ComfyUI (pytorch attention) vs diffusers"


def test_unet_output_depends_on_timestep_and_input(diffusers_unet, inputs):
    """Guards the oracle's strength: a rule that queried the wrong timestep would show."""
    z, context = inputs
    with torch.no_grad():

        def eps(sample, t):
            return diffusers_unet(sample, t, encoder_hidden_states=context).sample

        far = (eps(z, 981) - eps(z, 1)).std() / eps(z, 981).std()
        neighbour = (eps(z, 981) - eps(z, 961)).abs().max()
        input_change = (eps(0.5 * z, 481) - eps(z, 481)).std() / eps(z, 481).std()
    assert far > 0.05, f"t=1 and t=981 predictions differ by only {float(far):.3g} (relative std)"
    assert neighbour > 100 * TOL, f"t=961 and t=981 predictions differ by only {float(neighbour):.3g}"
    assert input_change > 0.1, f"the prediction barely depends on the input ({float(input_change):.3g})"


def test_levels_are_the_timesteps_diffusers_visits(oracle):
    assert oracle.timesteps == [0] + list(range(1, 1000, 1000 // N_STEPS))
    assert oracle.comfy_timesteps == oracle.timesteps, "ComfyUI maps the levels to other timesteps"
    scheduler, _ = diffusers_schedulers(PREDICTIONS[oracle.prediction])
    alphas = scheduler.alphas_cumprod[oracle.timesteps].double()
    ours = 1.0 / (1.0 + oracle.levels.double() ** 2)
    assert torch.allclose(ours, alphas, rtol=1e-5, atol=0.0)


def test_inversion_matches_ddim_inverse_scheduler(oracle):
    errors = per_step_error(oracle.our_inversion, oracle.ref_inversion)
    assert errors.numel() == N_STEPS + 1
    assert float(errors.max()) < TOL, f"{oracle.prediction} inversion vs DDIMInverseScheduler: {describe(errors)}"


def test_each_reconstruction_step_matches_ddim_scheduler(oracle):
    """Every one of the 50 replay steps, taken from diffusers' state, lands on diffusers' next state."""
    errors = per_step_error(oracle.our_steps, oracle.ref_reconstruction)
    assert errors.numel() == N_STEPS + 1
    assert float(errors.max()) < TOL, f"{oracle.prediction} replay steps vs DDIMScheduler: {describe(errors)}"


def test_reconstruction_matches_ddim_scheduler(oracle):
    """The free-running 50-step replay follows DDIMScheduler within 1e-4 of the latent's size."""
    errors = per_step_error(oracle.our_reconstruction, oracle.ref_reconstruction)
    scale = oracle.ref_reconstruction.abs().flatten(1).amax(dim=1).double().clamp_min(1.0)
    assert errors.numel() == N_STEPS + 1
    assert bool((errors < TOL * scale).all()), (
        f"{oracle.prediction} replay vs DDIMScheduler: {describe(errors)}; "
        f"relative to max(1, max|z|): {describe(errors / scale)}"
    )


def test_simple_rule_is_not_the_reference(oracle):
    """Negative control: querying the model at the current level misses diffusers by far."""
    errors = per_step_error(oracle.simple_inversion, oracle.ref_inversion)
    assert float(errors.max()) > 100 * TOL, f"the simple rule agrees with diffusers: {describe(errors)}"
