"""Nodes: DDIM / flow inversion (with EasyInv and the forward warm start), direct inversion, and reconstruction."""

from __future__ import annotations

import logging
from dataclasses import asdict

import comfy.samplers
import torch
from comfy_api.latest import io, ui

from ..inversion import SourcePin
from ..inversion.record import InversionRecord, tensor_sha256
from .checks import check_latent
from .fingerprint import model_fingerprint
from .guiders import InversionGuider
from .model_info import lowest_sigma
from .options import inversion_config, inversion_option_inputs
from .sampling import inversion_noise_latent, inversion_sampler, plain_guider, replay_sampler, sample_with_guider
from .schedules import schedule, steps_made_note
from .sockets import CATEGORY_INVERSION, CATEGORY_SAMPLING, MAX_CFG, Inversion

CLEAN_LEVEL_ZERO = "zero"

CLEAN_LEVEL_LOWEST = "lowest timestep"

MAX_STEPS = 1000

DEFAULT_STEPS = 50



def _schedule_with_clean_level(model, scheduler: str, steps: int, clean_level: str) -> torch.Tensor:
    """Descending sigmas ending at 0, or at the model's lowest level for the diffusers convention."""
    sigmas = schedule(model, scheduler, steps)
    if clean_level == CLEAN_LEVEL_LOWEST and float(sigmas[-1]) == 0.0:
        sigmas = sigmas.clone()
        sigmas[-1] = lowest_sigma(model)
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
                             tooltip="Inversion steps; reconstruct with the same number (50 is the reference). "
                                     "ddim_uniform makes more steps than asked when the number does not divide "
                                     "1000 (31 for 30); the node then says so and records the steps made."),
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
        samples = check_latent(model, latent)
        config = inversion_config(model, **options)
        sigmas = _schedule_with_clean_level(model, scheduler, steps, clean_level)
        steps_made = sigmas.numel() - 1
        sink: list = []
        guider = plain_guider(model, positive, negative, inversion_cfg)
        noise = sample_with_guider(guider, samples, inversion_sampler(config, sink), sigmas)
        trajectory = sink[0]
        record = InversionRecord(
            trajectory=trajectory,
            sampling_sigmas=trajectory.sigmas.flip(0).cpu(),
            settings={
                "steps": steps_made, "steps_requested": steps, "scheduler": scheduler, "inversion_cfg": inversion_cfg,
                "clean_level": clean_level, "timestep_rule": config.timestep_rule,
                "v_conversion": config.v_conversion,
                "prediction_type": config.prediction_type, "process": config.process,
                "model_calls": trajectory.model_calls,
                "easyinv": None if config.easyinv is None else asdict(config.easyinv),
                "warm_start": None if config.warm_start is None else asdict(config.warm_start),
                "source_latent_sha256": tensor_sha256(samples),
                "model_fingerprint": model_fingerprint(model),
            },
            positive=positive,
            negative=negative,
        )
        note = steps_made_note(scheduler, steps, steps_made)
        if note is not None:
            logging.warning("InvEdit DDIM Inversion: %s", note)
        return io.NodeOutput({"samples": noise}, record, record.sampling_sigmas.clone(),
                             ui=None if note is None else ui.PreviewText(note))


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
                                              "unconditioning (which then takes its place) and cfg is not 1."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, positive, inversion: InversionRecord, cfg, negative=None) -> io.NodeOutput:
        noise_raw = inversion_noise_latent(model, inversion)
        guider = InversionGuider(model, inversion, positive, negative, cfg)
        pin = None
        if inversion.pin_source:
            pin = SourcePin(inversion.step_targets(), tuple(range(noise_raw.shape[0])))
        samples = sample_with_guider(guider, noise_raw, replay_sampler(pin), inversion.sampling_sigmas)
        return io.NodeOutput({"samples": samples})


class DirectInversion(io.ComfyNode):
    """Pin the source to the inverted trajectory while sampling (PnP / direct inversion)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditDirectInversion",
            display_name="InvEdit Direct Inversion",
            category=CATEGORY_INVERSION,
            description=(
                "Direct inversion (Ju et al., PnP Inversion 2023): while sampling, the source image's rows are put "
                "back on the recorded inversion after every step, so the source is reproduced exactly at any cfg; "
                "edited rows run freely and, in InvEdit's editing nodes, take the source's attention. Instant. "
                "Combines with null-text or negative-prompt inversion."
            ),
            inputs=[Inversion.Input("inversion", tooltip="From InvEdit DDIM Inversion (or a null-text / "
                                                         "negative-prompt inversion).")],
            outputs=[Inversion.Output(display_name="inversion")],
        )

    @classmethod
    def execute(cls, inversion: InversionRecord) -> io.NodeOutput:
        return io.NodeOutput(inversion.with_changes(pin_source=True,
                                                    settings={**inversion.settings, "direct_inversion": True}))


NODES = [DDIMInversion, Reconstruct, DirectInversion]
