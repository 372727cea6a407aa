"""Running the pack's own loops inside ComfyUI's sampling: a SAMPLER class and the guider glue.

A :class:`PackSampler` is a ``comfy.samplers.Sampler`` (the public base class SamplerCustomAdvanced
accepts) that runs one of the library's deterministic loops (inversion, replay, null-text) on the
latent exactly as the guider hands it over. Unlike ComfyUI's KSAMPLER it applies no noise scaling:
KSAMPLER's ``noise_scaling(sigmas[0])`` and ``inverse_noise_scaling(sigmas[-1])`` are the identity
for DDPM-family models when no noise is added, but for rectified flow they are
``sigma * noise + (1 - sigma) * latent`` and a division by ``1 - sigma``, which at the flow's top
level sigma = 1 would erase the latent or divide by zero. Going through the guider keeps ComfyUI's
model loading, conditioning, patches, latent scaling (``process_latent_in/out``), progress bar and
previews.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

import comfy.model_management
import comfy.samplers
import comfy.utils
import latent_preview

from ..inversion import InversionConfig, SourcePin, invert, replay
from ..inversion.process import DiffusionProcess
from ..inversion.solvers import SOLVER_EULER
from .errors import InvEditInputError
from .checks import check_conditioning, check_finite, check_inversion_model, check_no_added_noise
from .model_info import diffusion_process

USES_RECORDED_NOISES = "uses_recorded_noises"
"""Attribute set on a SAMPLER that samples an INVERSION with its recorded DDPM noises (the DDPM edit sampler)."""

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(x [B, C, ...], sigma [B]) -> x0``: the guided denoiser of a sampling run."""


@dataclass
class SamplerRun:
    """What a pack loop receives when ComfyUI runs a :class:`PackSampler`.

    Attributes:
        guider: the CFGGuider (or subclass) running the sampling; ``guider.inner_model`` is the
            loaded BaseModel and ``guider.conds`` its processed conditions.
        sigmas: the schedule the sampler was given.
        latent: ``[B, C, ...]`` the start state, in the model's own units.
        extra_args: ComfyUI's ``{"model_options", "seed"}`` for model calls.
        on_step: k-diffusion style step callback (progress, previews, interrupt).
    """

    guider: Any
    sigmas: torch.Tensor
    latent: torch.Tensor
    extra_args: dict
    on_step: Callable[[dict], None]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The guided clean estimate at ``x``, ``sigma [B]`` (CFG, patches and wrappers applied)."""
        return self.guider(x, sigma, model_options=self.extra_args["model_options"], seed=self.extra_args.get("seed"))

    @property
    def process(self) -> DiffusionProcess:
        """The forward process of the model being sampled."""
        return diffusion_process(self.guider.model_patcher)


Loop = Callable[..., torch.Tensor]
"""``loop(run: SamplerRun, **options) -> [B, C, ...]`` the state the run ends at."""


class PackSampler(comfy.samplers.Sampler):
    """A SAMPLER running one of the pack's deterministic loops (see the module docstring).

    Args:
        loop: ``loop(run, **options)``.
        name: how errors name it ("The InvEdit inversion sampler").
        result_name: how errors name its result ("The inversion").
        options: keyword arguments for the loop.
    """

    deterministic = True
    """Read by :func:`.checks.sampler_is_deterministic`: the pack's loops add no noise."""

    def __init__(self, loop: Loop, name: str, result_name: str, options: Optional[dict[str, Any]] = None) -> None:
        self.loop = loop
        self.name = name
        self.result_name = result_name
        self.extra_options = dict(options or {})

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        check_no_added_noise(noise, denoise_mask, self.name)
        total_steps = sigmas.numel() - 1

        def on_step(info: dict) -> None:
            comfy.model_management.throw_exception_if_processing_interrupted()
            if callback is not None:
                callback(info["i"], info["denoised"], info["x"], total_steps)

        start = latent_image if latent_image is not None else torch.zeros_like(noise)
        run = SamplerRun(model_wrap, sigmas, start, extra_args, on_step)
        return check_finite(self.loop(run, **self.extra_options), self.result_name)


def inversion_loop(run: SamplerRun, config: InversionConfig, trajectory_sink: Optional[list] = None) -> torch.Tensor:
    """Pack loop: invert ``run.latent`` along ``run.sigmas``; the trajectory goes to ``trajectory_sink``."""
    trajectory = invert(run.denoise, run.sigmas, run.latent, config, run.on_step)
    if trajectory_sink is not None:
        trajectory_sink.append(trajectory)
    return trajectory.noise


def replay_loop(run: SamplerRun, pin: Optional[SourcePin] = None,
                process: Optional[DiffusionProcess] = None, solver: str = SOLVER_EULER) -> torch.Tensor:
    """Pack loop: deterministic sampling down ``run.sigmas`` to their last level, the inverse of the inversion.

    ``pin`` keeps source rows on a recorded trajectory (direct inversion); ``solver`` is ``"euler"`` or
    ``"fireflow"``.
    """
    return replay(run.denoise, run.sigmas, run.latent, run.on_step, pin, process or run.process, solver)


def inversion_sampler(config: InversionConfig, trajectory_sink: Optional[list] = None) -> PackSampler:
    """The SAMPLER that inverts (the latent it gets is the clean image's)."""
    return PackSampler(inversion_loop, "The InvEdit inversion sampler", "The inversion",
                       {"config": config, "trajectory_sink": trajectory_sink})


def replay_sampler(pin: Optional[SourcePin] = None, solver: str = SOLVER_EULER) -> PackSampler:
    """The SAMPLER that replays an inversion (the latent it gets is the inverted noise) with ``solver``."""
    return PackSampler(replay_loop, "The InvEdit replay sampler", "The replay", {"pin": pin, "solver": solver})


def check_not_recorded_noises(record, what: str) -> None:
    """Refuse an edit-friendly DDPM INVERSION where a DDIM / Euler path is needed."""
    if getattr(record, "ddpm_noises", None) is not None:
        raise InvEditInputError(
            f"{what} samples an inversion along its deterministic path, but this inversion holds recorded DDPM noises "
            "(InvEdit DDPM Noise Inversion): sample it with InvEdit DDPM Edit Sampler or InvEdit Reconstruct, or "
            "invert with InvEdit DDIM Inversion for this node."
        )


def inversion_noise_latent(model, record, what: str = "This node") -> torch.Tensor:
    """An INVERSION's noise as raw VAE-latent ``samples`` for ``model`` (family, latent format, architecture checked;
    an edit-friendly DDPM inversion is refused, since its top state is not a DDIM noise)."""
    check_not_recorded_noises(record, what)
    check_inversion_model(model, record)
    return model.model.process_latent_out(record.trajectory.noise.clone())


def sample_with_guider(guider: comfy.samplers.CFGGuider, latent: torch.Tensor, sampler: comfy.samplers.Sampler,
                       sigmas: torch.Tensor, preview: bool = True) -> torch.Tensor:
    """Run a SAMPLER through a ComfyUI guider (conds, patches, latent scaling, progress).

    ``latent`` is in raw VAE-latent units and so is the result; no noise is added. With
    ``preview`` False the caller reports progress itself.
    """
    steps = sigmas.numel() - 1
    callback = latent_preview.prepare_callback(guider.model_patcher, steps) if preview else None
    return guider.sample(torch.zeros_like(latent), latent, sampler, sigmas, callback=callback,
                         disable_pbar=not (preview and comfy.utils.PROGRESS_BAR_ENABLED), seed=0)


def plain_guider(model, positive, negative, cfg: float) -> comfy.samplers.CFGGuider:
    """ComfyUI's CFGGuider over ``model``, the prompts and ``cfg`` (prompts checked first)."""
    check_conditioning(model, positive, "positive")
    if cfg != 1.0:
        check_conditioning(model, negative, "negative")
    guider = comfy.samplers.CFGGuider(model)
    guider.set_conds(positive, negative)
    guider.set_cfg(cfg)
    return guider

