"""Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024) for the UNet models.

* **InvEdit DDPM Noise Inversion** draws the noisy states of an image independently per step, records the
  per-step noises that make DDPM sampling return it (at the inversion's prompt and CFG), and stores them in
  an INVERSION (saved and loaded like any other).
* **InvEdit DDPM Edit Sampler** (SAMPLER for SamplerCustomAdvanced) samples with the recorded noises from
  step ``skip`` on: with the source prompt and CFG it gives the image back, with another prompt it edits.
  InvEdit Reconstruct also samples such an INVERSION (skip 0).
"""

from __future__ import annotations

from typing import Optional

import comfy.samplers
import torch
from comfy_api.latest import io, ui

from ..inversion import InversionConfig, InversionTrajectory
from ..inversion.ddpm_noise import check_ddpm_process, extract_noises, independent_states, sample_with_noises
from ..inversion.record import InversionRecord, tensor_sha256
from .checks import check_inversion_model, check_latent
from .masks import edit_mask, mask_inputs
from .errors import InvEditInputError
from .fingerprint import model_fingerprint
from .model_info import diffusion_process, prediction_type
from .sampling import USES_RECORDED_NOISES, PackSampler, SamplerRun, plain_guider, sample_with_guider
from .schedules import DDIM_UNIFORM, SIGMA_MATCH_RTOL, schedule
from .sockets import CATEGORY_INVERSION, CATEGORY_SAMPLING, MAX_CFG, Inversion

METHOD = "edit-friendly DDPM"
DEFAULT_STEPS = 50
MAX_STEPS = 1000
DEFAULT_SOURCE_CFG = 3.5
"""The official code's source guidance (``cfg_src``): the inversion's prompt CFG."""
SEED_MAX = 2**63 - 1


def check_ddpm_model(model) -> None:
    """Refuse a model outside the DDPM family (flow models), saying what to use instead."""
    try:
        check_ddpm_process(diffusion_process(model))
    except ValueError as error:
        raise InvEditInputError(str(error) + " (InvEdit FlowEdit Guider + Sampler).") from error


def record_noises_loop(run: SamplerRun, seed: int, sink: list) -> torch.Tensor:
    """Pack loop: draw the independent states of ``run.latent``, record the noises; returns the top state."""
    check_ddpm_model(run.guider.model_patcher)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    clean = run.latent

    def draw_noise() -> torch.Tensor:
        return torch.randn(clean.shape, generator=generator, dtype=torch.float32).to(clean.device, clean.dtype)

    try:
        recorded = extract_noises(run.denoise, run.sigmas, independent_states(clean, run.sigmas, draw_noise),
                                  run.on_step)
    except ValueError as error:
        raise InvEditInputError(f"{error} Pick a scheduler that ends at sigma 0.") from error
    sink.append(recorded)
    return recorded.states[0]


def check_same_schedule(sigmas: torch.Tensor, record: InversionRecord) -> None:
    """Refuse SIGMAS other than the inversion's own (the recorded noises belong to its steps)."""
    recorded = record.sampling_sigmas.to(sigmas.device, sigmas.dtype)
    if sigmas.shape != recorded.shape or not torch.allclose(sigmas, recorded, rtol=SIGMA_MATCH_RTOL, atol=0.0):
        raise InvEditInputError(
            f"The recorded DDPM noises belong to the inversion's {record.steps} steps; these SIGMAS "
            f"({sigmas.numel() - 1} steps) are others. Connect the sigmas output of InvEdit DDPM Noise Inversion."
        )


def edit_with_noises_loop(run: SamplerRun, record: InversionRecord, skip: int, mask: Optional[torch.Tensor],
                          feather: int) -> torch.Tensor:
    """Pack loop: DDPM sampling with ``record``'s noises from step ``skip`` (the latent gives only the shape)."""
    patcher = run.guider.model_patcher
    if not record.is_ddpm_noise_space:
        raise InvEditInputError("The InvEdit DDPM Edit Sampler needs an inversion from InvEdit DDPM Noise Inversion; "
                                "this one has no recorded noises (sample it with InvEdit Replay Sampler).")
    check_inversion_model(patcher, record)
    check_same_schedule(run.sigmas, record)
    states = record.sampling_states().to(run.latent.device, run.latent.dtype)
    if tuple(run.latent.shape) != tuple(states.shape[1:]):
        raise InvEditInputError(f"The latent {tuple(run.latent.shape)} does not match the inversion's "
                                f"{tuple(states.shape[1:])}: connect the inverted image's latent.")
    if not 0 <= skip < record.steps:
        raise InvEditInputError(f"skip must be below the inversion's {record.steps} steps; got {skip}.")
    latent_mask = edit_mask(mask, run.latent.shape, run.latent.shape[0], feather, "InvEdit DDPM Edit Sampler")
    if latent_mask is not None:
        latent_mask = latent_mask.to(run.latent.device)
    noises = record.ddpm_noises.to(run.latent.device, run.latent.dtype)
    return sample_with_noises(run.denoise, run.sigmas, noises, states[skip], skip, run.on_step, latent_mask, states)


def ddpm_edit_sampler(record: InversionRecord, skip: int = 0, mask: Optional[torch.Tensor] = None,
                      feather: int = 0) -> PackSampler:
    """The SAMPLER that samples ``record`` with its recorded noises from step ``skip``."""
    sampler = PackSampler(edit_with_noises_loop, "The InvEdit DDPM edit sampler", "The DDPM edit",
                          {"record": record, "skip": skip, "mask": mask, "feather": feather})
    setattr(sampler, USES_RECORDED_NOISES, True)
    return sampler


class DDPMNoiseInversion(io.ComfyNode):
    """Record an image's edit-friendly DDPM noises."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditDDPMNoiseInversion",
            display_name="InvEdit DDPM Noise Inversion",
            category=CATEGORY_INVERSION,
            description=(
                "Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024) for SD1.x / SD2.x / SDXL: draws "
                "the image's noisy states independently per step and records the per-step noises that make DDPM "
                "sampling return it exactly, at this prompt and CFG. Edit with InvEdit DDPM Edit Sampler (another "
                "prompt, a skip, a CFG) without inverting again; InvEdit Reconstruct gives the image back. Flow "
                "models are refused (use FlowEdit)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x / SD2.x / SDXL model (eps or v prediction)."),
                io.Conditioning.Input("positive", tooltip="The source prompt: what the image shows."),
                io.Conditioning.Input("negative", tooltip="Negative prompt (used when cfg is not 1)."),
                io.Latent.Input("latent", tooltip="The encoded image (VAE Encode)."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=MAX_STEPS,
                             tooltip="Sampling steps; edits use the same ones (the sigmas output)."),
                io.Combo.Input("scheduler", options=list(comfy.samplers.SCHEDULER_NAMES), default=DDIM_UNIFORM,
                               tooltip="The levels (must end at sigma 0). ddim_uniform: the DDIM timesteps of the "
                                       "official code."),
                io.Float.Input("cfg", default=DEFAULT_SOURCE_CFG, min=0.0, max=MAX_CFG, step=0.1, round=0.01,
                               tooltip="Guidance of the source prompt while recording (the official code: 3.5). "
                                       "Sampling at this cfg with this prompt returns the image exactly."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Seed of the independent noisy states."),
            ],
            outputs=[
                Inversion.Output(display_name="inversion", tooltip="The recorded noises and states, for InvEdit DDPM "
                                                                   "Edit Sampler, Reconstruct and Save Inversion."),
                io.Sigmas.Output(display_name="sigmas", tooltip="The schedule the noises belong to."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, negative, latent, steps: int, scheduler: str, cfg: float,
                seed: int) -> io.NodeOutput:
        check_ddpm_model(model)
        samples = check_latent(model, latent)
        sigmas = schedule(model, scheduler, steps)
        sink: list = []
        guider = plain_guider(model, positive, negative, cfg)
        sample_with_guider(guider, samples, PackSampler(record_noises_loop, "The InvEdit DDPM noise inversion",
                                                        "The DDPM noise inversion", {"seed": seed, "sink": sink}),
                           sigmas)
        recorded = sink[0]
        steps_made = sigmas.numel() - 1
        trajectory = InversionTrajectory(
            sigmas=sigmas.flip(0), latents=recorded.states.flip(0).cpu(), model_calls=recorded.model_calls,
            config=InversionConfig(prediction_type=prediction_type(model), process=diffusion_process(model).name))
        record = InversionRecord(
            trajectory=trajectory, sampling_sigmas=sigmas.clone(),
            settings={"method": METHOD, "steps": steps_made, "steps_requested": steps, "scheduler": scheduler,
                      "scheduler_used": scheduler, "cfg": cfg, "seed": seed, "model_calls": recorded.model_calls,
                      "prediction_type": trajectory.config.prediction_type, "process": trajectory.config.process,
                      "source_latent_sha256": tensor_sha256(samples), "model_fingerprint": model_fingerprint(model)},
            positive=positive, negative=negative, ddpm_noises=recorded.noises.cpu())
        report = (f"{METHOD} inversion: {steps_made} steps, {recorded.model_calls} model calls "
                  f"({'1 row' if cfg == 1.0 else f'2 rows: cfg {cfg:g}'} each); sample at cfg {cfg:g} with this "
                  "prompt to get the image back.")
        return io.NodeOutput(record, record.sampling_sigmas.clone(), ui=ui.PreviewText(report))


class DDPMEditSampler(io.ComfyNode):
    """Sampling with an inversion's recorded DDPM noises, as a SAMPLER."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditDDPMEditSampler",
            display_name="InvEdit DDPM Edit Sampler",
            category=CATEGORY_SAMPLING,
            description=(
                "DDPM sampling with the noises InvEdit DDPM Noise Inversion recorded (Huberman-Spiegelglas et al., "
                "CVPR 2024). In SamplerCustomAdvanced with Disable Noise, the inversion's sigmas, the image's latent "
                "(it gives the shape; the start is the recorded state at step skip) and a CFGGuider: the source "
                "prompt at the inversion's cfg reconstructs exactly; another prompt edits (the paper: cfg 15, skip 36 "
                "of 100 steps)."
            ),
            inputs=[
                Inversion.Input("inversion", tooltip="From InvEdit DDPM Noise Inversion (or Load Inversion)."),
                io.Int.Input("skip", default=0, min=0, max=MAX_STEPS,
                             tooltip="Steps not taken: sampling starts from the recorded state at this step. Larger "
                                     "keeps more of the source layout."),
                *mask_inputs("every step lands on the recorded source state"),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, inversion: InversionRecord, skip: int, mask=None, mask_feather: int = 1) -> io.NodeOutput:
        return io.NodeOutput(ddpm_edit_sampler(inversion, skip, mask, mask_feather))


NODES = [DDPMNoiseInversion, DDPMEditSampler]
