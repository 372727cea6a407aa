"""Nodes that give an INVERSION its own unconditional branch: null-text and negative-prompt inversion.

Each takes the INVERSION of InvEdit DDIM Inversion (made at cfg 1) and returns an INVERSION that
InvEdit Reconstruct, InvEdit Inversion Guider and the editing nodes sample at a higher cfg while
staying on the inverted trajectory (the guidance gap closed).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Callable, Optional

import torch
from comfy_api.latest import io

import comfy.utils

from ..inversion.negative_prompt import blend_with_empty
from ..inversion.null_text import (
    REFERENCE_EARLY_STOP,
    REFERENCE_EARLY_STOP_GROWTH,
    REFERENCE_GUIDANCE,
    REFERENCE_INNER_STEPS,
    REFERENCE_LEARNING_RATE,
    REFERENCE_LEARNING_RATE_DECAY,
    STOP_AFTER_STEP,
    STOP_BEFORE_STEP,
    NullTextConfig,
)
from ..inversion.record import METHOD_NEGATIVE_PROMPT, METHOD_NULL_TEXT, InversionRecord, Unconditioning
from .conditioning import single_entry, with_context
from .errors import InvEditInputError
from .model_info import DISTILLED_GUIDANCE, DISTILLED_TIMESTEPS, guidance_distillation
from .null_text_runner import run_null_text
from .previews import image_from_pil, loss_plot, progress_preview
from .sockets import CATEGORY_INVERSION, MAX_CFG, Inversion

START_EMPTY = "empty prompt"

START_SOURCE = "source prompt"

MAX_INNER_STEPS = 100

DEFAULT_STOP_CHECK = STOP_BEFORE_STEP

PREVIEW_INTERVAL_S = 0.5
"""Null-text sends its loss-plot preview at most this often (seconds); the bar moves every Adam step."""


class NullTextProgress:
    """Progress bar over all inner steps, with a preview plot of the loss per sampling step.

    The bar moves on every Adam step; the plot is drawn and sent at most once per
    ``preview_interval`` seconds (a run makes hundreds of Adam steps a second on small models,
    and each preview is an image sent to the browser), and :meth:`finish` always sends the last.
    """

    def __init__(self, n_steps: int, config: NullTextConfig, preview_interval: float = PREVIEW_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic):
        self.config = config
        self.n_steps = n_steps
        self.total = max(n_steps * config.inner_steps, 1)
        self.bar = comfy.utils.ProgressBar(self.total)
        self.losses: list[float] = []
        self.preview_interval = preview_interval
        self.clock = clock
        self.last_preview: Optional[float] = None
        self.unsent: Optional[tuple[int, str]] = None

    def __call__(self, info: dict) -> None:
        step = info["step"]
        del self.losses[step:]
        self.losses.append(info["loss"])
        caption = f"step {step + 1}/{self.n_steps}  loss {info['loss']:.2e}  bound {info['threshold']:.1e}"
        value = step * self.config.inner_steps + info["inner"] + 1
        now = self.clock()
        if self.last_preview is not None and now - self.last_preview < self.preview_interval:
            self.unsent = (value, caption)
            self.bar.update_absolute(value, self.total)
            return
        self.last_preview, self.unsent = now, None
        self.bar.update_absolute(value, self.total, self._preview(caption))

    def finish(self) -> None:
        """Send the preview of the last loss if it was held back."""
        if self.unsent is not None:
            value, caption = self.unsent
            self.unsent = None
            self.bar.update_absolute(value, self.total, self._preview(caption))

    def _preview(self, caption: str):
        bounds = [self.config.step_threshold(i) for i in range(len(self.losses))]
        return progress_preview(loss_plot(self.losses, bounds, self.n_steps, caption))


DISTILLED_MODEL_WORDS = {
    DISTILLED_GUIDANCE: "guidance-distilled (Flux dev, Krea or Kontext: it reads its guidance from FluxGuidance and "
                        "is sampled at cfg 1)",
    DISTILLED_TIMESTEPS: "timestep-distilled (Flux schnell: a few-step model sampled at cfg 1)",
}


def check_real_guidance(distillation: Optional[str], method: str) -> None:
    """Refuse a guidance-distilled model: ``method`` changes the unconditional branch, which it has not got.

    ``distillation`` is :func:`.model_info.guidance_distillation` of the model (None: real CFG).
    """
    if distillation is None:
        return
    raise InvEditInputError(
        f"{method} inversion changes the unconditional branch of classifier-free guidance, and this model is "
        f"{DISTILLED_MODEL_WORDS.get(distillation, distillation)}: it was trained without one, so there is no "
        "guidance gap to close. Use InvEdit Direct Inversion (it works on every model), and reconstruct or edit "
        "at cfg 1."
    )


def recorded_distillation(inversion: InversionRecord) -> Optional[str]:
    """The distillation of the model an INVERSION was made with (None: real CFG, or a record that predates it)."""
    settings = inversion.settings
    if settings.get("distillation") is not None:
        return settings["distillation"]
    return DISTILLED_GUIDANCE if settings.get("guidance_distilled_model") else None


def start_contexts(start: torch.Tensor, batch: int) -> torch.Tensor:
    """``[batch, L, D]`` float32 start contexts: each image its own row of ``start``, or its one row."""
    if start.shape[0] not in (1, batch):
        raise InvEditInputError(
            f"The source prompt holds {start.shape[0]} prompts but the inversion has {batch} images: give one "
            "prompt, or one per image."
        )
    return start.float().expand(batch, -1, -1).clone()


def with_pooled_output(template, source_options: dict) -> list:
    """``template`` (a one-entry CONDITIONING) carrying the source prompt's pooled output, if it has one.

    Starting null-text from the source prompt starts from all of it: the token context and the pooled
    vector that models with one (SDXL, SD3.5, Flux, the flow test-bed) read besides the tokens, which
    null-text keeps fixed. At step 0 that is exactly negative-prompt inversion's unconditional branch.
    """
    pooled = source_options.get("pooled_output")
    if pooled is None:
        return template
    conditioning = with_context(template, single_entry(template, "negative (empty) prompt")[0])
    conditioning[0][1]["pooled_output"] = pooled
    return conditioning


POOLED_NONE = "none"
POOLED_OPTIMISED = "optimised"
POOLED_UNCHANGED = "unchanged"


def pooled_outcome(pooled: Optional[torch.Tensor], result) -> str:
    """What null-text did with the pooled vector: none in the prompt, optimised, or unchanged (a model that
    reads none, or no Adam step)."""
    if pooled is None:
        return POOLED_NONE
    return POOLED_UNCHANGED if result.step_pooled is None else POOLED_OPTIMISED


def _report_text(method: str, report: dict, steps: int) -> str:
    """A few lines for the node's report output."""
    landing = report.get("landing_losses", [])
    return (
        f"{method}: {steps} steps, {report.get('total_gradient_steps', 0)} gradient steps, "
        f"{report.get('seconds', 0.0):.1f} s; worst step loss {max(landing, default=0.0):.2e}, "
        f"mean {sum(landing) / max(len(landing), 1):.2e}"
    )


class NullTextInversion(io.ComfyNode):
    """Optimise one unconditional context per step so guided sampling lands on the inversion."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditNullTextInversion",
            display_name="InvEdit Null-text Inversion",
            category=CATEGORY_INVERSION,
            description=(
                "Null-text inversion (Mokady et al. 2023): for every step, optimises the unconditional (empty "
                "prompt) embedding so that sampling at the chosen cfg retraces the inversion. Feed it the INVERSION "
                "of InvEdit DDIM Inversion (cfg 1); the result reconstructs the image at cfg 7.5 and edits keep "
                "what the prompt does not name. Takes gradients: about 10 UNet forward+backward passes per step "
                "at most. Save the result with InvEdit Save Inversion to edit many times."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model the image was inverted with."),
                Inversion.Input("inversion", tooltip="From InvEdit DDIM Inversion (inverted at cfg 1)."),
                io.Float.Input("guidance", default=REFERENCE_GUIDANCE, min=1.0, max=MAX_CFG, step=0.1, round=0.01,
                               tooltip="The cfg you will sample and edit with; the embeddings are optimised for it."),
                io.Int.Input("inner_steps", default=REFERENCE_INNER_STEPS, min=0, max=MAX_INNER_STEPS,
                             tooltip="Most Adam steps per sampling step (reference 10)."),
                io.Float.Input("learning_rate", default=REFERENCE_LEARNING_RATE, min=0.0, max=1.0, step=0.001,
                               round=1e-5, tooltip="Adam learning rate at the first step (reference 0.01)."),
                io.Float.Input("learning_rate_decay", default=REFERENCE_LEARNING_RATE_DECAY, min=0.0, max=1.0,
                               step=0.001, round=1e-5,
                               tooltip="Step i uses learning_rate * (1 - decay * i) (reference 0.01)."),
                io.Float.Input("early_stop", default=REFERENCE_EARLY_STOP, min=0.0, max=1.0, step=1e-6, round=1e-8,
                               tooltip="A step stops optimising once its loss is below this (reference 1e-5)."),
                io.Float.Input("early_stop_growth", default=REFERENCE_EARLY_STOP_GROWTH, min=0.0, max=1.0,
                               step=1e-6, round=1e-8,
                               tooltip="The bound grows by this per step: later steps matter less (reference 2e-5)."),
                io.Combo.Input("stop_check", options=[STOP_BEFORE_STEP, STOP_AFTER_STEP], default=DEFAULT_STOP_CHECK,
                               tooltip="before step: test the loss before each Adam step and stop without stepping "
                                       "once it is below the bound (fewer gradient steps, same fidelity). "
                                       "after step: the reference's order (always at least one step)."),
                io.Combo.Input("start_from", options=[START_EMPTY, START_SOURCE], default=START_EMPTY,
                               tooltip="The embedding the first step starts from: the empty prompt (reference), or "
                                       "the source prompt (negative-prompt inversion's answer, often nearer)."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="The empty prompt (CLIPTextEncode with no text). Default: the negative "
                                              "the inversion was made with."),
            ],
            outputs=[
                Inversion.Output(display_name="inversion",
                                 tooltip="The inversion with per-step null-text embeddings (for Reconstruct, the "
                                         "Inversion Guider and the editing nodes)."),
                io.Image.Output(display_name="loss_plot", tooltip="Loss per step (blue) against the bound (orange)."),
                io.String.Output(display_name="report", tooltip="Gradient steps, time and losses."),
            ],
        )

    @classmethod
    def execute(cls, model, inversion: InversionRecord, guidance, inner_steps, learning_rate, learning_rate_decay,
                early_stop, early_stop_growth, stop_check, start_from, negative=None) -> io.NodeOutput:
        check_real_guidance(guidance_distillation(model), "Null-text")
        template = negative if negative is not None else inversion.negative
        empty_context, _ = single_entry(template, "negative (empty) prompt")
        source_context, source_options = single_entry(inversion.positive, "inversion's source prompt")
        start = source_context if start_from == START_SOURCE else empty_context[:1]
        if start_from == START_SOURCE:
            template = with_pooled_output(template, source_options)
        if start.shape[-1] != empty_context.shape[-1]:
            raise InvEditInputError("The source and empty prompts come from different text encoders: use one CLIP.")
        batch = inversion.trajectory.noise.shape[0]
        initial = start_contexts(start, batch)
        pooled = single_entry(template, "negative (empty) prompt")[1].get("pooled_output")
        initial_pooled = None if pooled is None else start_contexts(pooled[:, None], batch)[:, 0]
        config = NullTextConfig(guidance=guidance, inner_steps=inner_steps, learning_rate=learning_rate,
                                learning_rate_decay=learning_rate_decay, early_stop=early_stop,
                                early_stop_growth=early_stop_growth, stop_check=stop_check)
        progress = NullTextProgress(inversion.steps, config)
        result = run_null_text(model, inversion, template, initial, config, progress, initial_pooled)
        progress.finish()
        report = {**result.report(), "start_from": start_from, "pooled_output": pooled_outcome(pooled, result)}
        step_pooled = None if result.step_pooled is None else result.step_pooled.cpu()
        record = inversion.with_changes(
            unconditioning=Unconditioning(METHOD_NULL_TEXT, template, result.step_contexts.cpu(), report, step_pooled),
            settings={**inversion.settings, "null_text": {**asdict(config), "start_from": start_from}},
        )
        bounds = [config.step_threshold(i) for i in range(inversion.steps)]
        plot = loss_plot(result.landing_losses, bounds, inversion.steps)
        return io.NodeOutput(record, image_from_pil(plot)[None], _report_text("null-text", report, inversion.steps))


class NegativePromptInversion(io.ComfyNode):
    """Use the source prompt as the unconditional prompt: no optimisation."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditNegativePromptInversion",
            display_name="InvEdit Negative-Prompt Inversion",
            category=CATEGORY_INVERSION,
            description=(
                "Negative-prompt inversion (Miyake et al. 2023): sampling uses the source prompt as the "
                "unconditional prompt, so cfg no longer pulls the reconstruction off the inversion. Instant (no "
                "optimisation); close to null-text fidelity. Edits then push away from the source prompt."
            ),
            inputs=[
                Inversion.Input("inversion", tooltip="From InvEdit DDIM Inversion (inverted at cfg 1)."),
                io.Float.Input("empty_prompt_weight", default=0.0, min=0.0, max=1.0, step=0.05, round=0.001,
                               tooltip="Blend the empty prompt back in: 0 = pure negative-prompt inversion (most "
                                       "faithful), 1 = plain empty prompt (plain DDIM)."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="The empty prompt for the blend. Default: the inversion's negative."),
            ],
            outputs=[Inversion.Output(display_name="inversion")],
        )

    @classmethod
    def execute(cls, inversion: InversionRecord, empty_prompt_weight, negative=None) -> io.NodeOutput:
        check_real_guidance(recorded_distillation(inversion), "Negative-prompt")
        source_context, source_options = single_entry(inversion.positive, "inversion's source prompt")
        options = dict(source_options)
        context = source_context
        if empty_prompt_weight > 0.0:
            empty_context, empty_options = single_entry(negative if negative is not None else inversion.negative,
                                                        "negative (empty) prompt")
            try:
                context = blend_with_empty(source_context, empty_context, empty_prompt_weight)
                if "pooled_output" in options and empty_options.get("pooled_output") is not None:
                    options["pooled_output"] = blend_with_empty(options["pooled_output"],
                                                                empty_options["pooled_output"], empty_prompt_weight)
            except ValueError as error:
                raise InvEditInputError(str(error)) from error
        record = inversion.with_changes(
            unconditioning=Unconditioning(METHOD_NEGATIVE_PROMPT, [[context, options]], None,
                                          {"empty_prompt_weight": empty_prompt_weight}),
            settings={**inversion.settings, "negative_prompt": {"empty_prompt_weight": empty_prompt_weight}},
        )
        return io.NodeOutput(record)


NODES = [NullTextInversion, NegativePromptInversion]
