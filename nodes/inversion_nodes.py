"""Nodes: DDIM / flow inversion (with EasyInv, the forward warm start and the higher-accuracy solvers),
direct inversion, reconstruction, and the inverted noise as a NOISE for stock sampling of flow models."""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Optional

import comfy.samplers
import torch
from comfy_api.latest import io, ui

from ..inversion import InversionConfig, InversionTrajectory, SourcePin
from ..inversion.record import InversionRecord, tensor_sha256
from ..inversion.solvers import SOLVER_FIXED_POINT
from .checks import check_latent
from .conditioning import with_distilled_guidance
from .errors import InvEditInputError
from .fingerprint import model_fingerprint
from .ddpm_nodes import ddpm_edit_sampler
from .guiders import InversionGuider
from .model_info import guidance_distillation, has_guidance_embedding, lowest_sigma
from .options import inversion_config, inversion_option_inputs
from .sampling import check_not_recorded_noises, inversion_noise_latent, inversion_sampler, plain_guider, replay_sampler, sample_with_guider
from .schedules import SCHEDULER_AUTO, SIGMA_MATCH_RTOL, resolve_scheduler, schedule, steps_made_note
from .sockets import CATEGORY_INVERSION, CATEGORY_SAMPLING, MAX_CFG, Inversion

CLEAN_LEVEL_ZERO = "zero"

CLEAN_LEVEL_LOWEST = "lowest timestep"

MAX_STEPS = 1000

DEFAULT_STEPS = 50

DEFAULT_DISTILLED_GUIDANCE = 1.0
"""Distilled guidance while inverting a guidance-distilled model: 1, as the official RF-Solver, FireFlow and
Stable Flow inversions of Flux dev do (FlowEdit and KV-Edit use 1.5); low guidance keeps the flow straight."""

MAX_DISTILLED_GUIDANCE = 100.0


def inversion_report(trajectory: InversionTrajectory, steps: int, cfg: float, distilled_guidance: Optional[float]) -> str:
    """A line for the node's report: the solver, its model calls and the guidance used."""
    config = trajectory.config
    solver = config.solver
    if solver == SOLVER_FIXED_POINT:
        solver = f"{solver} (k = {config.fixed_point_iterations})"
    rows = "1 row each" if cfg == 1.0 else f"2 rows each: cfg {cfg:g}"
    text = f"{solver} inversion ({config.process}): {steps} steps, {trajectory.model_calls} model calls ({rows})"
    if distilled_guidance is not None:
        text += f"; distilled guidance {distilled_guidance:g} (sample with FluxGuidance {distilled_guidance:g} to reconstruct)"
    return text + "."


def _settings(config: InversionConfig, trajectory: InversionTrajectory, **values) -> dict:
    """The INVERSION's settings: how it was made (JSON-able), with the solver and its model calls."""
    return {
        **values,
        "timestep_rule": config.timestep_rule, "v_conversion": config.v_conversion,
        "prediction_type": config.prediction_type, "process": config.process,
        "solver": config.solver, "fixed_point_iterations": config.fixed_point_iterations,
        "model_calls": trajectory.model_calls,
        "easyinv": None if config.easyinv is None else asdict(config.easyinv),
        "warm_start": None if config.warm_start is None else asdict(config.warm_start),
    }


def _schedule_with_clean_level(model, scheduler: str, steps: int, clean_level: str) -> torch.Tensor:
    """Descending sigmas ending at 0, or at the model's lowest level for the diffusers convention."""
    sigmas = schedule(model, scheduler, steps)
    if clean_level == CLEAN_LEVEL_LOWEST and float(sigmas[-1]) == 0.0:
        lowest = lowest_sigma(model)
        if sigmas.numel() > 2 and float(sigmas[-2]) <= lowest * (1.0 + SIGMA_MATCH_RTOL):
            raise InvEditInputError(
                f"clean_level '{CLEAN_LEVEL_LOWEST}' reads the image at the model's lowest level (sigma {lowest:.4g}), "
                f"but the {scheduler} schedule already ends there: use clean_level '{CLEAN_LEVEL_ZERO}' (the "
                "convention of flow models and of stock samplers)."
            )
        sigmas = sigmas.clone()
        sigmas[-1] = lowest
    return sigmas


class DDIMInversion(io.ComfyNode):
    """Invert a clean latent to the noise that regenerates it (DDIM for UNets, Euler / FireFlow for flow models)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditDDIMInversion",
            display_name="InvEdit DDIM Inversion",
            category=CATEGORY_INVERSION,
            description=(
                "Runs the sampler backwards from an encoded image to the noise that regenerates it: DDIM for SD1.x / "
                "SD2.x / SDXL, the rectified-flow Euler inversion for SD3 / SD3.5, Flux, Chroma, Qwen-Image (or the "
                "FireFlow / fixed-point solvers). UNets: the noise goes into KSamplerAdvanced (add_noise disable, same "
                "steps and scheduler, sampler ddim, start 0, end 10000). Flow models: InvEdit Inversion Noise gives "
                "SamplerCustomAdvanced its NOISE (sampler euler, the sigmas output). InvEdit Reconstruct takes the "
                "inversion for either. Invert at cfg 1 with the source prompt."
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
                io.Combo.Input("scheduler", options=[SCHEDULER_AUTO, *comfy.samplers.SCHEDULER_NAMES],
                               default=SCHEDULER_AUTO,
                               tooltip="Levels to invert along; reconstruct along the same ones (the sigmas output). "
                                       "auto: ddim_uniform for UNets (the DDIM timesteps 981, 961, ..., 1), normal for "
                                       "SD3 / SD3.5 (diffusers' flow-matching sigmas), simple for Flux, Chroma and "
                                       "Qwen-Image (FluxPipeline's sigmas)."),
                io.Combo.Input("clean_level", options=[CLEAN_LEVEL_ZERO, CLEAN_LEVEL_LOWEST],
                               default=CLEAN_LEVEL_ZERO,
                               tooltip="zero: the image sits at sigma 0, exactly mirrored by stock samplers. "
                                       "lowest timestep: the image is read as the state at timestep 0 "
                                       "(diffusers' set_alpha_to_one=False); reconstruct with InvEdit Reconstruct "
                                       "or the SIGMAS output."),
                *inversion_option_inputs(),
                io.Float.Input("distilled_guidance", default=DEFAULT_DISTILLED_GUIDANCE, min=0.0,
                               max=MAX_DISTILLED_GUIDANCE, step=0.1, round=0.01, optional=True,
                               tooltip="Guidance-distilled models only (Flux dev, Krea, Kontext; ignored by every "
                                       "other model): the guidance embedding while inverting, set on a copy of the "
                                       "positive prompt. 1 as the official RF-Solver / FireFlow inversions (FlowEdit, "
                                       "KV-Edit: 1.5). Reconstruct with FluxGuidance at this value; the edit's "
                                       "guidance is set on its own prompt."),
            ],
            outputs=[
                io.Latent.Output(display_name="noise",
                                 tooltip="The inverted noise. UNets: feed to KSamplerAdvanced with add_noise disabled. "
                                         "Flow models: use InvEdit Inversion Noise instead (stock samplers scale a "
                                         "LATENT away at sigma 1)."),
                Inversion.Output(display_name="inversion",
                                 tooltip="Trajectory, schedule and settings, for InvEdit Reconstruct and editing nodes."),
                io.Sigmas.Output(display_name="sigmas",
                                 tooltip="The schedule that replays this inversion exactly (for SamplerCustomAdvanced)."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps, inversion_cfg, scheduler, clean_level,
                distilled_guidance: float = DEFAULT_DISTILLED_GUIDANCE, **options) -> io.NodeOutput:
        samples = check_latent(model, latent)
        config = inversion_config(model, **options)
        scheduler_used = resolve_scheduler(model, scheduler)
        sigmas = _schedule_with_clean_level(model, scheduler_used, steps, clean_level)
        positive, distilled = with_distilled_guidance(model, positive, distilled_guidance)
        steps_made = sigmas.numel() - 1
        sink: list = []
        guider = plain_guider(model, positive, negative, inversion_cfg)
        noise = sample_with_guider(guider, samples, inversion_sampler(config, sink), sigmas)
        trajectory = sink[0]
        record = InversionRecord(
            trajectory=trajectory,
            sampling_sigmas=trajectory.sigmas.flip(0).cpu(),
            settings=_settings(
                config, trajectory, steps=steps_made, steps_requested=steps, scheduler=scheduler,
                scheduler_used=scheduler_used,
                inversion_cfg=inversion_cfg, clean_level=clean_level, distilled_guidance=distilled,
                guidance_distilled_model=has_guidance_embedding(model), distillation=guidance_distillation(model),
                source_latent_sha256=tensor_sha256(samples), model_fingerprint=model_fingerprint(model)),
            positive=positive,
            negative=negative,
        )
        report = inversion_report(trajectory, steps_made, inversion_cfg, distilled)
        note = steps_made_note(scheduler_used, steps, steps_made)
        if note is not None:
            logging.warning("InvEdit DDIM Inversion: %s", note)
            report += " " + note
        # The report (solver, model calls, guidance) is shown on the node; the settings carry the same.
        return io.NodeOutput({"samples": noise}, record, record.sampling_sigmas.clone(), ui=ui.PreviewText(report))


class Reconstruct(io.ComfyNode):
    """Sample an INVERSION back to a clean latent along its own schedule."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditReconstruct",
            display_name="InvEdit Reconstruct",
            category=CATEGORY_SAMPLING,
            description=(
                "Replays an inversion's exact schedule with deterministic DDIM / Euler (FireFlow for a FireFlow "
                "inversion) and returns the latent. At the "
                "inversion's own cfg (usually 1) it gives the image back; a higher cfg shows the guidance gap, "
                "which an inversion from InvEdit Null-text / Negative-Prompt / Direct Inversion closes. With direct "
                "inversion every row is pinned to the recorded trajectory, so the output is the input image. An "
                "edit-friendly DDPM inversion is sampled with its recorded noises (exact at its own prompt and cfg)."
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
        guider = InversionGuider(model, inversion, positive, negative, cfg)
        if inversion.is_ddpm_noise_space:  # sampled with its recorded noises; the latent only gives the shape
            start = model.model.process_latent_out(inversion.sampling_states()[0].clone())
            return io.NodeOutput({"samples": sample_with_guider(guider, start, ddpm_edit_sampler(inversion),
                                                                inversion.sampling_sigmas)})
        noise_raw = inversion_noise_latent(model, inversion)
        pin = None
        if inversion.pin_source:
            pin = SourcePin(inversion.step_targets(), tuple(range(noise_raw.shape[0])))
        sampler = replay_sampler(pin, inversion.replay_solver)
        samples = sample_with_guider(guider, noise_raw, sampler, inversion.sampling_sigmas)
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
        check_not_recorded_noises(inversion, "InvEdit Direct Inversion")
        return io.NodeOutput(inversion.with_changes(pin_source=True,
                                                    settings={**inversion.settings, "direct_inversion": True}))


class RecordedNoise:
    """A ComfyUI NOISE (``seed``, ``generate_noise(latent)``) that hands out an inversion's noise.

    Stock samplers start a rectified-flow model at sigma 1 from ``noise_scaling(1, noise, latent) =
    noise``, so the inverted state must come in as the NOISE, in the model's own units.
    """

    def __init__(self, noise: torch.Tensor) -> None:
        self.seed = 0
        self.noise = noise

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if tuple(samples.shape) != tuple(self.noise.shape):
            raise InvEditInputError(
                f"The latent given to the sampler is {tuple(samples.shape)} but the inversion's noise is "
                f"{tuple(self.noise.shape)}: connect the source image's latent (or an empty latent of its size and "
                "batch) as SamplerCustomAdvanced's latent_image."
            )
        return self.noise.clone()


class InversionNoise(io.ComfyNode):
    """An INVERSION's noise as the NOISE input of SamplerCustomAdvanced (rectified-flow models)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditInversionNoise",
            display_name="InvEdit Inversion Noise",
            category=CATEGORY_SAMPLING,
            description=(
                "The inverted noise of a flow model (SD3 / SD3.5, Flux, Chroma, Qwen-Image) as a NOISE, so that stock "
                "SamplerCustomAdvanced reconstructs (sampler euler, the inversion's sigmas) or edits the image: stock "
                "samplers start a flow model at sigma 1 from the NOISE alone. Connect the source latent (or an empty "
                "latent of its size) as latent_image. UNet inversions use DDIM Inversion's noise LATENT instead."
            ),
            inputs=[Inversion.Input("inversion", tooltip="From InvEdit DDIM Inversion or Load Inversion (a flow model's).")],
            outputs=[io.Noise.Output(display_name="noise", tooltip="For SamplerCustomAdvanced's noise input.")],
        )

    @classmethod
    def execute(cls, inversion: InversionRecord) -> io.NodeOutput:
        process = inversion.trajectory.config.forward_process
        # Only a family whose top level is pure noise starts stock sampling from the NOISE alone.
        if process.top_sigma is None:
            raise InvEditInputError(
                f"This inversion is of a {process.family}: stock samplers add its noise to the latent scaled by sigma, "
                "so it is not a NOISE. Feed DDIM Inversion's noise LATENT to KSamplerAdvanced (add_noise disable, same "
                "steps and scheduler, sampler ddim), or use InvEdit Reconstruct."
            )
        top = float(inversion.sampling_sigmas[0])
        if top != process.top_sigma:
            raise InvEditInputError(
                f"This inversion stops at sigma {top:.4g}, below the top level {process.top_sigma:g}: a stock sampler "
                "would mix the NOISE with the latent there. Invert with the scheduler auto (or simple / normal) at "
                "full denoise, or reconstruct with InvEdit Reconstruct / Replay Sampler."
            )
        return io.NodeOutput(RecordedNoise(inversion.trajectory.noise.detach().clone().cpu()))


NODES = [DDIMInversion, Reconstruct, DirectInversion, InversionNoise]
