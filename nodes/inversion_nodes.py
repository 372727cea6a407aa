"""Nodes: DDIM inversion (with EasyInv and forward warm start) and its exact reconstruction."""

from __future__ import annotations

from dataclasses import asdict

import comfy.samplers
import torch
from comfy_api.latest import io

from ..inversion import SourcePin
from ..inversion.record import InversionRecord, tensor_sha256
from . import host
from .options import inversion_config, inversion_option_inputs
from .unconditioning import InversionGuider

Inversion = io.Custom("INVERSION")

CATEGORY_INVERSION = "InvEdit/inversion"
CATEGORY_SAMPLING = "InvEdit/sampling"
CLEAN_LEVEL_ZERO = "zero"
CLEAN_LEVEL_LOWEST = "lowest timestep"
MAX_STEPS = 1000
DEFAULT_STEPS = 50
MAX_CFG = 100.0


def _schedule_with_clean_level(model, scheduler: str, steps: int, clean_level: str) -> torch.Tensor:
    """Descending sigmas ending at 0, or at the model's lowest level for the diffusers convention."""
    sigmas = host.schedule(model, scheduler, steps)
    if clean_level == CLEAN_LEVEL_LOWEST and float(sigmas[-1]) == 0.0:
        sigmas = sigmas.clone()
        sigmas[-1] = host.lowest_sigma(model)
    return sigmas


class DDIMInversion(io.ComfyNode):
    """Invert a clean latent to the noise that regenerates it (DDIM, eta 0)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditDDIMInversion",
            display_name="InvEdit DDIM Inversion",
            category=CATEGORY_INVERSION,
            description=(
                "Runs DDIM backwards from an encoded image to the noise that regenerates it. The noise "
                "goes into KSamplerAdvanced (add_noise disable, same steps and scheduler, sampler ddim, "
                "start 0, end 10000) or into InvEdit Reconstruct. Invert at cfg 1 with the source prompt."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive", tooltip="The source prompt: what the image shows."),
                io.Conditioning.Input("negative", tooltip="Only used when inversion_cfg is not 1."),
                io.Latent.Input("latent", tooltip="The encoded image (VAE Encode)."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS,
                             tooltip="Inversion steps; reconstruct with the same number (50 is the reference)."),
                io.Float.Input("inversion_cfg", default=1.0, min=0.0, max=MAX_CFG, step=0.1, round=0.01,
                               tooltip="Guidance while inverting. Keep 1 (the references do): inverting at 7.5 "
                                       "fails. Guidance for the edit is set on the sampler, separately."),
                io.Combo.Input("scheduler", options=comfy.samplers.SCHEDULER_NAMES, default="ddim_uniform",
                               tooltip="Timesteps to invert along; use the same scheduler to reconstruct. "
                                       "ddim_uniform gives the DDIM timesteps 981, 961, ..., 1."),
                io.Combo.Input("clean_level", options=[CLEAN_LEVEL_ZERO, CLEAN_LEVEL_LOWEST],
                               default=CLEAN_LEVEL_ZERO,
                               tooltip="zero: the image sits at sigma 0, exactly mirrored by stock samplers. "
                                       "lowest timestep: the image is read as the state at timestep 0 "
                                       "(diffusers' set_alpha_to_one=False); reconstruct with InvEdit Reconstruct "
                                       "or the SIGMAS output."),
                *inversion_option_inputs(),
            ],
            outputs=[
                io.Latent.Output(display_name="noise", tooltip="The inverted noise (feed with add_noise disabled)."),
                Inversion.Output(display_name="inversion",
                                 tooltip="Trajectory, schedule and settings, for InvEdit Reconstruct and editing nodes."),
                io.Sigmas.Output(display_name="sigmas",
                                 tooltip="The schedule that replays this inversion exactly (for SamplerCustomAdvanced)."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, inversion_cfg, scheduler, clean_level,
                **options) -> io.NodeOutput:
        samples = host.check_latent(model, latent)
        config = inversion_config(model, **options)
        sigmas = _schedule_with_clean_level(model, scheduler, steps, clean_level)
        sink: list = []
        noise = host.run_sampler(model, positive, negative, inversion_cfg, samples, host.sample_inversion,
                                 sigmas, extra_options={"config": config, "trajectory_sink": sink})
        trajectory = sink[0]
        record = InversionRecord(
            trajectory=trajectory,
            sampling_sigmas=trajectory.sigmas.flip(0).cpu(),
            settings={
                "steps": steps, "scheduler": scheduler, "inversion_cfg": inversion_cfg,
                "clean_level": clean_level, "timestep_rule": config.timestep_rule,
                "v_conversion": config.v_conversion,
                "prediction_type": config.prediction_type, "model_calls": trajectory.model_calls,
                "easyinv": None if config.easyinv is None else asdict(config.easyinv),
                "warm_start": None if config.warm_start is None else asdict(config.warm_start),
                "source_latent_sha256": tensor_sha256(samples),
                "model_fingerprint": host.model_fingerprint(model),
            },
            positive=positive,
            negative=negative,
        )
        return io.NodeOutput({"samples": noise}, record, record.sampling_sigmas.clone())


class InversionSampler(io.ComfyNode):
    """DDIM inversion as a SAMPLER for SamplerCustomAdvanced."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditInversionSampler",
            display_name="InvEdit Inversion Sampler",
            category=CATEGORY_SAMPLING,
            description=(
                "A SAMPLER that inverts instead of denoising. Use it in SamplerCustomAdvanced with "
                "Disable Noise, a CFGGuider (cfg 1) and the SIGMAS you will sample with (e.g. BasicScheduler "
                "ddim_uniform); the output is the noise that those SIGMAS with sampler ddim turn back into "
                "the image."
            ),
            inputs=inversion_option_inputs(),
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, **options) -> io.NodeOutput:
        # The model is only known when sampling starts: its prediction type and lowest
        # sigma are read there.
        return io.NodeOutput(comfy.samplers.KSAMPLER(
            _sample_inversion_for_model, extra_options={"options": dict(options)}))


def _sample_inversion_for_model(model, x, sigmas, extra_args=None, callback=None, disable=None, options=None):
    """KSAMPLER function that builds the inversion settings from the model being sampled."""
    patcher = model.inner_model.model_patcher
    host.check_latent_shape(patcher, x.shape)
    config = inversion_config(patcher, **(options or {}))
    return host.sample_inversion(model, x, sigmas, extra_args, callback, disable, config=config)


class ReplaySampler(io.ComfyNode):
    """Deterministic DDIM replay as a SAMPLER (the exact inverse of the inversion)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditReplaySampler",
            display_name="InvEdit Replay Sampler",
            category=CATEGORY_SAMPLING,
            description=(
                "Deterministic DDIM (eta 0) that walks the given SIGMAS down to their last level, also when "
                "that level is not 0. With the SIGMAS output of InvEdit DDIM Inversion it is the exact "
                "inverse of the inversion. Use with Disable Noise."
            ),
            inputs=[],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(comfy.samplers.KSAMPLER(host.sample_replay))


class Reconstruct(io.ComfyNode):
    """Sample an INVERSION back to a clean latent along its own schedule."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditReconstruct",
            display_name="InvEdit Reconstruct",
            category=CATEGORY_SAMPLING,
            description=(
                "Replays an inversion's exact schedule with deterministic DDIM and returns the latent. At the "
                "inversion's own cfg (usually 1) it gives the image back; a higher cfg shows the guidance gap, "
                "which an inversion from InvEdit Null-text / Negative-Prompt / Direct Inversion closes. With direct "
                "inversion every row is pinned to the recorded trajectory, so the output is the input image."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Conditioning.Input("positive", tooltip="The source prompt to reconstruct (another prompt edits)."),
                Inversion.Input("inversion"),
                io.Float.Input("cfg", default=1.0, min=0.0, max=MAX_CFG, step=0.1, round=0.01,
                               tooltip="Guidance while reconstructing (1 = the inversion's own guidance; with null-"
                                       "text, the guidance it was optimised for)."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Used only when the inversion carries no null-text or negative-prompt "
                                              "unconditioning (which then takes its place)."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, positive, inversion: InversionRecord, cfg, negative=None) -> io.NodeOutput:
        noise_raw = host.inversion_noise_latent(model, inversion)
        guider = InversionGuider(model, inversion, positive, negative, cfg)
        pin = None
        if inversion.pin_source:
            pin = SourcePin(inversion.step_targets(), tuple(range(noise_raw.shape[0])))
        samples = host.sample_with_guider(guider, noise_raw, host.sample_replay, inversion.sampling_sigmas,
                                          extra_options={"pin": pin})
        return io.NodeOutput({"samples": samples})


NODES = [DDIMInversion, InversionSampler, ReplaySampler, Reconstruct]
