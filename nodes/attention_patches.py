"""ComfyUI glue of the Prompt-to-Prompt controller: attention patches on a cloned MODEL and a guider.

Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control" (ICLR 2023), on real
images through an INVERSION (Mokady et al., "Null-text Inversion", CVPR 2023; Ju et al., "PnP
Inversion", arXiv 2310.01506).

* Every transformer block of the UNet (``input_blocks`` / ``middle_block`` / ``output_blocks``,
  each SpatialTransformer at each depth) gets an ``attn1`` and an ``attn2`` replace patch on a
  clone of the MODEL. A patch is a plain closure (``ModelPatcher.clone`` deep-copies
  ``model_options``; functions survive it, callable objects would be copied). The layer's place,
  the rows' layout and the sigma come from the patch's own ``extra_options`` on every call:
  nothing is counted, so ComfyUI may batch cond and uncond together or run them apart.
* The step index is the position of the call's sigma among the INVERSION's sampling sigmas (an
  error names the fix when it is not one of them).
* :class:`P2PGuider` samples source and edits as one batch ``[source, edit_1, ...]`` from an
  INVERSION: its unconditioning (null-text per-step contexts, negative-prompt) comes from
  :class:`~.unconditioning.InversionGuider`; LocalBlend and direct inversion's source pin act on
  the state after each step through the guider's denoised output (:func:`denoised_landing_on`),
  which is exact for one-evaluation-per-step samplers (ddim, euler, InvEdit Replay Sampler); so
  does a user's mask, applied last (outside it the edited rows equal the source row).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

import comfy.ldm.modules.attention as comfy_attention

from ..attention import AttentionContext, AttentionSite, PromptToPrompt
from ..attention.joint import JointPromptToPrompt
from ..inversion import SourcePin
from ..inversion.masks import keep_outside
from ..inversion.null_text import REFERENCE_GUIDANCE
from ..inversion.solvers import SOLVER_EULER, SOLVER_FIXED_POINT
from .checks import check_unet_attention
from .conditioning import inversion_guidance, with_distilled_guidance
from .errors import InvEditInputError
from .guiders import InversionGuider
from .schedules import step_for_sigma

ATTENTION_KINDS = ("attn1", "attn2")
"""Self attention (``attn1``) and cross attention (``attn2``) of a transformer block."""

UNET_BLOCKS = ("input_blocks", "middle_block", "output_blocks")


@dataclass(frozen=True)
class TransformerSite:
    """One transformer block of the UNet, as ComfyUI's replace patches key it.

    Attributes:
        block_name: ``"input"``, ``"middle"`` or ``"output"``.
        block_id: index in ``input_blocks`` / ``output_blocks`` (0 for the middle block).
        depth: index of the block inside its SpatialTransformer (``transformer_index`` of
            ``set_model_attn*_replace``, ``block_index`` in ``extra_options``).
    """

    block_name: str
    block_id: int
    depth: int


def _transformer_depths(module: torch.nn.Module) -> list[int]:
    """Depth of every SpatialTransformer directly inside one UNet block (a sequential)."""
    return [len(layer.transformer_blocks) for layer in module
            if isinstance(layer, comfy_attention.SpatialTransformer)]


def transformer_sites(model) -> list[TransformerSite]:
    """Every transformer block of a MODEL's UNet (SD1.x, SD2.x, SDXL layouts).

    Raises:
        InvEditInputError: the model is not a UNet with SpatialTransformer blocks.
    """
    unet = model.get_model_object("diffusion_model")
    if not all(hasattr(unet, name) for name in UNET_BLOCKS):
        raise InvEditInputError(
            f"Prompt-to-Prompt edits the attention of a UNet (SD1.x, SD2.x, SDXL); this model's "
            f"{type(unet).__name__} has no input/middle/output blocks. Use a UNet checkpoint."
        )
    groups = (("input", list(unet.input_blocks)), ("middle", [unet.middle_block]),
              ("output", list(unet.output_blocks)))
    sites = [TransformerSite(block_name, block_id, d) for block_name, blocks in groups
             for block_id, block in enumerate(blocks) for depth in _transformer_depths(block) for d in range(depth)]
    if not sites:
        raise InvEditInputError(
            "This UNet has no transformer (attention) blocks, so there is nothing for Prompt-to-Prompt to edit."
        )
    return sites


def context_from_extra_options(extra_options: dict, *, is_cross: bool, step: int, n_steps: int) -> AttentionContext:
    """The library's :class:`AttentionContext` from the ``extra_options`` of a UNet attention replace patch.

    Reads ``block``, ``block_index``, ``n_heads``, ``cond_or_uncond`` (the row chunks),
    ``activations_shape`` (``[b, c, h, w]`` of the layer), ``original_shape`` (the latent's) and
    ``attn_precision``; the dict is not modified.
    """
    block_name, block_id = extra_options["block"][:2]
    activations = extra_options["activations_shape"]
    original = extra_options.get("original_shape")
    return AttentionContext(
        site=AttentionSite(
            block=(str(block_name), int(block_id)),
            depth=int(extra_options.get("block_index", 0)),
            is_cross=is_cross,
            heads=int(extra_options["n_heads"]),
            query_shape=(int(activations[-2]), int(activations[-1])),
        ),
        step=step,
        n_steps=n_steps,
        chunks=tuple(int(c) for c in extra_options["cond_or_uncond"]),
        latent_shape=(int(original[-2]), int(original[-1])) if original is not None else None,
        attn_precision=extra_options.get("attn_precision"),
    )


class EditRun:
    """The per-run state a patched model's attention calls share: controller and schedule.

    Args:
        controller: the Prompt-to-Prompt controller (its LocalBlend and map store fill up
            during a run; :meth:`reset` clears them).
        sampling_sigmas: ``[N+1]`` the INVERSION's sampling sigmas; a call's sigma must be one of
            the first ``N``.
    """

    def __init__(self, controller: PromptToPrompt, sampling_sigmas: torch.Tensor) -> None:
        self.controller = controller
        self.sampling_sigmas = sampling_sigmas.detach().to("cpu", torch.float64)
        self.n_steps = self.sampling_sigmas.numel() - 1
        self._last: tuple[Optional[torch.Tensor], int] = (None, 0)

    def reset(self) -> None:
        """Clear the controller's run state (call before each sampling run)."""
        self.controller.reset()
        self._last = (None, 0)

    def step_of(self, sigma: torch.Tensor) -> int:
        """The sampling step whose sigma this is (an InvEditInputError otherwise).

        Every layer of one model call receives the same ``sigmas`` tensor: its step is looked up
        once per call (no device synchronisation per layer).
        """
        if sigma is not self._last[0]:
            self._last = (sigma, step_for_sigma(sigma, self.sampling_sigmas))
        return self._last[1]

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict,
               is_cross: bool) -> torch.Tensor:
        """One attention call: ``[rows, Nq, heads*dim]`` out, edits on the conditional rows."""
        context = context_from_extra_options(extra_options, is_cross=is_cross,
                                             step=self.step_of(extra_options["sigmas"]), n_steps=self.n_steps)
        return self.controller(q, k, v, context)


def _attention_patch(run: EditRun, is_cross: bool) -> Callable:
    """A replace patch ``f(q, k, v, extra_options)`` (a closure, so clones share ``run``)."""

    def patch(q, k, v, extra_options):
        return run.attend(q, k, v, extra_options, is_cross)

    return patch


def patched_model(model, run: EditRun):
    """A clone of ``model`` whose every attention layer goes through ``run``; ``model`` is untouched."""
    clone = model.clone()
    replaced = clone.model_options.get("transformer_options", {}).get("patches_replace", {})
    for site in transformer_sites(model):
        for kind in ATTENTION_KINDS:
            key = (site.block_name, site.block_id, site.depth)
            if key in replaced.get(kind, {}) or key[:2] in replaced.get(kind, {}):
                logging.warning("InvEdit P2P: replacing another node's %s patch at %s", kind, key)
            patch = _attention_patch(run, is_cross=kind == "attn2")
            clone.set_model_patch_replace(patch, kind, site.block_name, site.block_id, site.depth)
    return clone


class StepHook:
    """What happens to the batch ``[source, edit_1, ...]`` after each sampling step.

    Direct inversion first puts the source row back on the recorded trajectory (PnP Inversion
    adds ``z*_{i+1} - z_{i+1}`` to it); then LocalBlend keeps the edited rows equal to the
    source outside the blend words' mask. The order is the PnP Inversion code's.
    """

    def __init__(self, controller: PromptToPrompt, pin: Optional[SourcePin]) -> None:
        self.controller = controller
        self.pin = pin

    @property
    def active(self) -> bool:
        """Whether the hook ever changes a state."""
        return self.pin is not None or self.controller.local_blend is not None

    def __call__(self, step: int, n_steps: int, x_next: torch.Tensor) -> torch.Tensor:
        if self.pin is not None:
            x_next = self.pin.apply(step, x_next)
        return self.controller.blend(x_next, step, n_steps)


def _check_single_image(record) -> None:
    batch = record.trajectory.noise.shape[0]
    if batch != 1:
        raise InvEditInputError(
            f"Prompt-to-Prompt edits one inverted image at a time, but this inversion holds {batch} images: "
            "invert a single image (pick one with Latent From Batch before inverting)."
        )


def _check_one_call_per_step(record) -> None:
    """Refuse an inversion whose replay queries the model between the sampling sigmas (FireFlow)."""
    if record.replay_solver != SOLVER_EULER:
        raise InvEditInputError(
            f"This inversion was made with the {record.replay_solver} solver, whose replay asks the model at "
            "midpoints between the steps; Prompt-to-Prompt pairs each model call with one step of the inversion. "
            f"Invert with solver '{SOLVER_FIXED_POINT}' instead (with fixed_point_iterations 3 nearly as accurate "
            "as FireFlow at the same step count, at more inversion calls; replayed by one call per step) or 'euler'."
        )


class P2PGuider(InversionGuider):
    """Samples an INVERSION's source row and its edited rows in one batch with P2P attention.

    Args:
        model: the MODEL the image was inverted with (it is cloned and patched, never changed).
        record: the INVERSION (one image; null-text, negative-prompt or direct inversion alike).
        positive: CONDITIONING whose context holds one row per batch row ``[1+E, L, D]``.
        controller: the P2P controller for ``E`` edits.
        negative: unconditional prompt when the INVERSION carries no unconditioning.
        cfg: guidance scale.
        mask: ``[1 or E, 1, H, W]`` latent-size feathered mask (:func:`.masks.edit_mask`), or None:
            outside it the edited rows equal the source row after every step.
    """

    def __init__(self, model, record, positive, controller: PromptToPrompt | JointPromptToPrompt, negative=None, cfg: float = REFERENCE_GUIDANCE,
                 mask: Optional[torch.Tensor] = None):
        self.rows = 1 + len(controller.edits)
        _check_single_image(record)
        _check_one_call_per_step(record)
        if isinstance(controller, JointPromptToPrompt):
            from .dit_patches import JointEditRun, dit_patched_model  # it builds on EditRun, defined here

            self.run = JointEditRun(controller, record.sampling_sigmas)
            patched = dit_patched_model(model, self.run)
        else:
            check_unet_attention(model, "Prompt-to-Prompt")
            self.run = EditRun(controller, record.sampling_sigmas)
            patched = patched_model(model, self.run)
        pin = SourcePin(record.step_targets(), (0,)) if record.pin_source else None
        self.hook = StepHook(controller, pin)
        guidance = inversion_guidance(record)  # Flux dev: every row at the inversion's FluxGuidance, so the
        if guidance is not None:               # source row reconstructs (P2P Edit's prompts carry none: 3.5)
            positive, _ = with_distilled_guidance(model, positive, guidance)
        super().__init__(patched, record, positive, negative, cfg, mask)

    def _batch(self, latent: torch.Tensor, what: str) -> torch.Tensor:
        if latent.shape[0] == self.rows:
            return latent
        if latent.shape[0] == 1:
            return latent.expand(self.rows, *latent.shape[1:]).clone()
        raise InvEditInputError(
            f"The {what} has {latent.shape[0]} rows; a P2P edit with {self.rows - 1} edited prompt(s) samples "
            f"{self.rows} rows from one inverted latent: connect the inversion's single noise latent."
        )

    def sample(self, noise, latent_image, sampler, sigmas, *args, **kwargs):
        if bool(torch.count_nonzero(noise) > 0):
            raise InvEditInputError(
                "A P2P edit replays the inversion deterministically and must not add noise: connect Disable Noise "
                "to SamplerCustomAdvanced's noise input."
            )
        self.run.reset()
        return super().sample(self._batch(noise, "noise"), self._batch(latent_image, "latent"), sampler, sigmas,
                              *args, **kwargs)

    def check_mask_rows(self, rows: int) -> None:
        """Refuse a mask batch that is neither one mask nor one per edited row."""
        if self.mask is not None and self.mask.shape[0] not in (1, self.rows - 1):
            raise InvEditInputError(
                f"{self.mask.shape[0]} masks for {self.rows - 1} edited prompt(s): give one mask for all edits, or "
                "one per edited prompt, in order.")

    @property
    def steers(self) -> bool:
        return self.hook.active or self.mask is not None

    def state_after_step(self, step: int, x_next: torch.Tensor) -> torch.Tensor:
        """Source pin, then LocalBlend, then the mask: edited rows equal the source row outside it.

        The mask multiplies LocalBlend's (the edit changes only where both allow it): the mask is the
        user's guarantee, LocalBlend narrows the edit inside it.
        """
        wanted = self.hook(step, self.run.n_steps, x_next)
        if self.mask is None:
            return wanted
        kept = wanted.clone()
        kept[1:] = keep_outside(wanted[:1], wanted[1:], self.mask)
        return kept
