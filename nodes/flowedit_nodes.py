"""FlowEdit (Kulikov et al., ICCV 2025) in SamplerCustomAdvanced: a GUIDER and a SAMPLER.

FlowEdit needs two guided denoisers at every step (the source prompt at one state, the target
prompt at another, each with its own guidance), a source latent to start from as it is, and its
own noise draws. In ComfyUI's graph that splits naturally:

* **InvEdit FlowEdit Guider** (GUIDER) holds the model, both prompts, the negative prompt and each
  branch's CFG / distilled guidance. Called like any guider it is the target prompt's CFG guider,
  so with a stock sampler it simply generates the target; the FlowEdit sampler also asks it for
  the source branch.
* **InvEdit FlowEdit Sampler** (SAMPLER) runs the FlowEdit loop (n_max, n_min, n_avg, its seed,
  an optional mask) on the latent it is given: use it with Disable Noise, the source image's latent
  and the SIGMAS of the preset's step count. Progress bar and previews come from SamplerCustomAdvanced.
"""

from __future__ import annotations

from typing import Optional

import torch

import comfy.samplers
import node_helpers
from comfy_api.latest import io

from ..inversion.flowedit import (PRESET_CUSTOM, PRESETS, FlowEditPreset, FlowEditSettings, check_flow_process,
                                  flowedit)
from .checks import check_conditioning, check_latent_shape, image_latent_samples
from .masks import edit_mask, mask_inputs
from .errors import InvEditInputError
from .model_info import is_flow_model
from .sampling import PackSampler, SamplerRun
from .sockets import CATEGORY_SAMPLING, MAX_CFG

PRESET_NAMES = [*PRESETS, PRESET_CUSTOM]
SOURCE_CONDS = ("source_positive", "source_negative")
MAX_STEPS = 10000
MAX_AVERAGES = 64
SEED_MAX = 2**63 - 1


def preset_for(name: str) -> Optional[FlowEditPreset]:
    """The named preset, or None for ``custom`` (an unknown name is an input error)."""
    if name == PRESET_CUSTOM:
        return None
    if name not in PRESETS:
        raise InvEditInputError(f"Unknown FlowEdit preset {name!r}; choose one of {PRESET_NAMES}.")
    return PRESETS[name]


def with_guidance(conditioning, guidance: Optional[float]):
    """``conditioning`` with distilled guidance ``guidance`` written in (as FluxGuidance does), or as it is."""
    if guidance is None:
        return conditioning
    return node_helpers.conditioning_set_values(conditioning, {"guidance": guidance})


class FlowEditGuider(comfy.samplers.CFGGuider):
    """CFG guider of the target prompt that also evaluates the source prompt (FlowEdit's two branches)."""

    def __init__(self, model, source, target, negative, source_cfg: float, target_cfg: float) -> None:
        if not is_flow_model(model):
            raise InvEditInputError(
                "FlowEdit needs a rectified-flow model (SD3 / SD3.5, Flux, Chroma, Qwen-Image, the flow test-bed); "
                "this is a UNet. For SD1.x / SD2.x / SDXL use InvEdit DDPM Noise Inversion and InvEdit DDPM Edit "
                "Sampler, or DDIM inversion with Prompt-to-Prompt."
            )
        check_conditioning(model, source, "source")
        check_conditioning(model, target, "target")
        if negative is None:
            if source_cfg != 1.0 or target_cfg != 1.0:
                raise InvEditInputError("FlowEdit with a CFG other than 1 needs a negative prompt: connect 'negative' "
                                        "(an empty prompt works) or set both CFGs to 1.")
            negative = target  # never evaluated: at cfg 1 ComfyUI skips the unconditional branch
        else:
            check_conditioning(model, negative, "negative")
        super().__init__(model)
        self.inner_set_conds({"positive": target, "negative": negative,
                              SOURCE_CONDS[0]: source, SOURCE_CONDS[1]: negative})
        self.set_cfg(target_cfg)
        self.source_cfg = source_cfg

    def source_denoised(self, x: torch.Tensor, sigma: torch.Tensor, model_options: dict, seed=None) -> torch.Tensor:
        """The source prompt's guided clean estimate at ``x``, ``sigma [B]``."""
        return comfy.samplers.sampling_function(self.inner_model, x, sigma, self.conds.get(SOURCE_CONDS[1]),
                                                self.conds.get(SOURCE_CONDS[0]), self.source_cfg,
                                                model_options=model_options, seed=seed)


def flowedit_loop(run: SamplerRun, settings: FlowEditSettings, seed: int, preset_steps: Optional[int],
                  mask: Optional[torch.Tensor], feather: int) -> torch.Tensor:
    """Pack loop: FlowEdit of ``run.latent`` (the source) with the FlowEdit guider's two prompts."""
    guider = run.guider
    if not isinstance(guider, FlowEditGuider):
        raise InvEditInputError("The InvEdit FlowEdit sampler needs the InvEdit FlowEdit Guider (it holds the source "
                                "and target prompts): connect it to SamplerCustomAdvanced's guider input.")
    try:
        check_flow_process(run.process)
    except ValueError as error:
        raise InvEditInputError(str(error)) from error
    patcher = guider.model_patcher
    image_latent_samples(patcher, run.latent)
    check_latent_shape(patcher, run.latent.shape)
    steps = run.sigmas.numel() - 1
    if preset_steps is not None and steps != preset_steps:
        raise InvEditInputError(f"This FlowEdit preset is made for {preset_steps} steps; the SIGMAS have {steps}. Set "
                                f"steps to {preset_steps} on the scheduler, or choose the custom preset.")
    try:
        settings.check(steps)
    except ValueError as error:
        raise InvEditInputError(f"{error} Lower n_max / n_min, or give more steps.") from error
    generator = torch.Generator(device="cpu").manual_seed(seed)
    source = run.latent

    def draw_noise() -> torch.Tensor:
        return torch.randn(source.shape, generator=generator, dtype=torch.float32).to(source.device, source.dtype)

    options, call_seed = run.extra_args["model_options"], run.extra_args.get("seed")

    def denoise_pair(z_src: torch.Tensor, z_tar: torch.Tensor, sigma: torch.Tensor):
        return guider.source_denoised(z_src, sigma, options, call_seed), run.denoise(z_tar, sigma)

    latent_mask = edit_mask(mask, source.shape, source.shape[0], feather, "InvEdit FlowEdit Sampler")
    if latent_mask is not None:
        latent_mask = latent_mask.to(source.device)
    return flowedit(denoise_pair, run.denoise, run.sigmas, source, settings, draw_noise, run.on_step, latent_mask)


class FlowEditGuiderNode(io.ComfyNode):
    """FlowEdit's two prompts and their guidance, as a GUIDER."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditFlowEditGuider",
            display_name="InvEdit FlowEdit Guider",
            category=CATEGORY_SAMPLING,
            description=(
                "The source and target prompts of a FlowEdit edit (Kulikov et al., ICCV 2025) with each one's "
                "guidance, for SamplerCustomAdvanced with the InvEdit FlowEdit Sampler. Flow models only (SD3 / "
                "SD3.5, Flux, Chroma, Qwen-Image). With any other sampler it generates the target prompt."
            ),
            inputs=[
                io.Model.Input("model", tooltip="A rectified-flow model (a UNet is refused)."),
                io.Conditioning.Input("source", tooltip="The prompt that describes the source image."),
                io.Conditioning.Input("target", tooltip="The prompt of the edited image."),
                io.Combo.Input("preset", options=PRESET_NAMES, default=next(iter(PRESETS)),
                               tooltip="The paper's guidance: SD3 CFG 3.5 / 13.5; Flux distilled guidance 1.5 / 5.5 at "
                                       "CFG 1 (written into both prompts); the flow test-bed's measured CFG 2 / 2. "
                                       "custom: the two CFG widgets below (and the prompts' own guidance)."),
                io.Float.Input("source_cfg", default=3.5, min=0.0, max=MAX_CFG, step=0.1, round=0.01,
                               tooltip="CFG of the source branch (used by the custom preset)."),
                io.Float.Input("target_cfg", default=13.5, min=0.0, max=MAX_CFG, step=0.1, round=0.01,
                               tooltip="CFG of the target branch (used by the custom preset)."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative prompt of both branches (needed when a CFG is not 1)."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, source, target, preset: str, source_cfg: float, target_cfg: float,
                negative=None) -> io.NodeOutput:
        chosen = preset_for(preset)
        if chosen is not None:
            source = with_guidance(source, chosen.source_guidance)
            target = with_guidance(target, chosen.target_guidance)
            source_cfg, target_cfg = chosen.source_cfg, chosen.target_cfg
        return io.NodeOutput(FlowEditGuider(model, source, target, negative, source_cfg, target_cfg))


class FlowEditSamplerNode(io.ComfyNode):
    """FlowEdit's loop as a SAMPLER."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditFlowEditSampler",
            display_name="InvEdit FlowEdit Sampler",
            category=CATEGORY_SAMPLING,
            description=(
                "Inversion-free editing of a real image with a flow model (FlowEdit, Kulikov et al., ICCV 2025): "
                "from the source latent, steps along the difference of the target and source velocities at coupled "
                "noisy states. Use in SamplerCustomAdvanced with the InvEdit FlowEdit Guider, Disable Noise, the "
                "source image's latent, and SIGMAS with the preset's steps (SD3 50, Flux 28, test-bed 28)."
            ),
            inputs=[
                io.Combo.Input("preset", options=PRESET_NAMES, default=next(iter(PRESETS)),
                               tooltip="The paper's settings: SD3 50 steps, n_max 33; Flux 28 steps, n_max 24; the "
                                       "test-bed's measured 28 steps, n_max 20. custom: the widgets below."),
                io.Int.Input("n_max", default=33, min=1, max=MAX_STEPS,
                             tooltip="Steps that edit, counted from the end (custom preset). Larger: a stronger edit, "
                                     "less of the source kept."),
                io.Int.Input("n_min", default=0, min=0, max=MAX_STEPS,
                             tooltip="Final steps that sample plainly with the target prompt (custom preset; 0 in "
                                     "the paper)."),
                io.Int.Input("n_avg", default=1, min=1, max=MAX_AVERAGES,
                             tooltip="Noise draws averaged per step (custom preset): each costs two model calls."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Seed of FlowEdit's own noise draws (one per step and draw)."),
                *mask_inputs("the source latent is kept"),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, preset: str, n_max: int, n_min: int, n_avg: int, seed: int, mask=None,
                mask_feather: int = 1) -> io.NodeOutput:
        chosen = preset_for(preset)
        settings = chosen.settings if chosen is not None else FlowEditSettings(n_max=n_max, n_min=n_min, n_avg=n_avg)
        options = {"settings": settings, "seed": seed, "preset_steps": None if chosen is None else chosen.steps,
                   "mask": mask, "feather": mask_feather}
        return io.NodeOutput(PackSampler(flowedit_loop, "The InvEdit FlowEdit sampler", "The FlowEdit edit", options))


NODES = [FlowEditGuiderNode, FlowEditSamplerNode]
