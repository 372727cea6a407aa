"""CONDITIONING values: one-prompt entries, their contexts, and the unconditional rows of a model call."""

from __future__ import annotations

from typing import Any, Callable, Optional

import node_helpers
import torch

from .errors import InvEditInputError
from .model_info import has_guidance_embedding

GUIDANCE_OPTION = "guidance"
"""The CONDITIONING option FluxGuidance writes: the distilled guidance a guidance-distilled model reads."""


def single_entry(conditioning, what: str) -> tuple[torch.Tensor, dict]:
    """The ``(context [1, L, D], options)`` of a one-entry CONDITIONING, or a clear error."""
    if not isinstance(conditioning, list) or len(conditioning) != 1:
        count = len(conditioning) if isinstance(conditioning, list) else "no"
        raise InvEditInputError(
            f"The {what} must be a single prompt (one CLIPTextEncode output) but it has {count} entries: "
            "connect the text encoder directly, without Conditioning Combine / Concat / area nodes."
        )
    context, options = conditioning[0][0], conditioning[0][1]
    if not isinstance(context, torch.Tensor) or context.ndim != 3:
        raise InvEditInputError(f"The {what} does not hold a [batch, tokens, width] text context.")
    return context, options


def with_context(conditioning, context: torch.Tensor) -> list:
    """A new one-entry CONDITIONING with ``context`` and the same options (pooled output, sizes)."""
    _, options = single_entry(conditioning, "unconditional prompt")
    return [[context, dict(options)]]


def negative_for(record, fallback) -> Any:
    """The unconditional CONDITIONING to sample ``record`` with (its own, else ``fallback``)."""
    uncond = record.unconditioning
    if uncond is None:
        if fallback is None:
            raise InvEditInputError(
                "This inversion has no null-text or negative-prompt unconditioning: connect a negative prompt "
                "(at cfg 1 none is needed)."
            )
        return fallback
    if uncond.step_contexts is None:
        return uncond.conditioning
    conditioning = with_context(uncond.conditioning, uncond.step_contexts[0][:1])
    if uncond.step_pooled is not None:
        conditioning[0][1]["pooled_output"] = uncond.step_pooled[0][:1]
    return conditioning


def substitute_uncond_context(batch_context: torch.Tensor, cond_or_uncond: list[int],
                              uncond_context: torch.Tensor) -> torch.Tensor:
    """Put ``uncond_context`` into the unconditional chunks of a model call's context batch.

    Args:
        batch_context: ``[rows, L_batch, D]`` cross-attention context of one model call;
            rows are chunks, one per entry of ``cond_or_uncond``, each of ``B`` rows.
        cond_or_uncond: per chunk, 0 for conditional and 1 for unconditional.
        uncond_context: ``[B or 1, L, D]``; ``L`` must divide ``L_batch`` (tokens are
            repeated to fill it, as ComfyUI pads contexts of different lengths).

    Returns:
        ``[rows, L_batch, D]``, differentiable in ``uncond_context``; conditional rows unchanged.
    """
    rows, length, width = batch_context.shape
    chunks = len(cond_or_uncond)
    if chunks == 0 or rows % chunks != 0:
        raise ValueError(f"{rows} context rows cannot be split into {chunks} chunks.")
    batch = rows // chunks
    ctx_batch, ctx_length, ctx_width = uncond_context.shape
    if ctx_width != width or length % ctx_length != 0:
        raise ValueError(
            f"The unconditional context [{ctx_batch}, {ctx_length}, {ctx_width}] does not fit a batch context of "
            f"{length} tokens x {width}: it was made with another text encoder or prompt length."
        )
    if ctx_batch not in (1, batch):
        raise ValueError(
            f"The unconditional context holds {ctx_batch} rows but the model call has {batch} rows per chunk: "
            "invert and sample the same batch of images."
        )
    dtype = torch.promote_types(batch_context.dtype, uncond_context.dtype)
    filler = uncond_context.to(batch_context.device, dtype).repeat(1, length // ctx_length, 1)
    filler = filler.expand(batch, length, width)
    pieces = [filler if kind == 1 else batch_context[k * batch:(k + 1) * batch].to(dtype)
              for k, kind in enumerate(cond_or_uncond)]
    return torch.cat(pieces)


def substitute_uncond_pooled(batch_y: torch.Tensor, cond_or_uncond: list[int], pooled: torch.Tensor) -> torch.Tensor:
    """Put ``pooled [B or 1, P]`` into the first ``P`` channels of the unconditional chunks of ``y [rows, Y]``.

    ComfyUI's models that read a pooled prompt vector take it as the head of their ``y``: all of it for
    SD3 and Flux, followed by the size embeddings for SDXL. Differentiable in ``pooled``.
    """
    rows, width = batch_y.shape
    chunks = len(cond_or_uncond)
    batch, pooled_width = rows // chunks, pooled.shape[-1]
    if pooled_width > width or pooled.shape[0] not in (1, batch):
        raise ValueError(f"The unconditional pooled vector {list(pooled.shape)} does not fit the model's y "
                         f"[{rows}, {width}]: it was made with another text encoder or batch.")
    dtype = torch.promote_types(batch_y.dtype, pooled.dtype)
    pieces = []
    for k, kind in enumerate(cond_or_uncond):
        chunk = batch_y[k * batch:(k + 1) * batch].to(dtype)
        if kind == 1:
            chunk = torch.cat([pooled.to(batch_y.device, dtype).expand(batch, -1), chunk[:, pooled_width:]], dim=1)
        pieces.append(chunk)
    return torch.cat(pieces)


ContextForCall = Callable[[torch.Tensor], torch.Tensor]
"""``timestep [rows] -> context [B or 1, L, D]`` (or pooled vector ``[B or 1, P]``) for the unconditional rows
of a model call."""


def uncond_context_wrapper(context_for: ContextForCall, previous: Optional[Callable] = None,
                           pooled_for: Optional[ContextForCall] = None) -> Callable:
    """A ``model_function_wrapper`` that puts ``context_for(sigma)`` into the unconditional rows.

    ``pooled_for(sigma)``, if given, goes into the head of their ``y`` (models that read no ``y``
    ignore it). ``previous`` is the wrapper the model already had; it is called with the new context.
    """

    def wrapper(apply_model, args: dict):
        cond_or_uncond = args["cond_or_uncond"]
        c = args["c"]
        if 1 in cond_or_uncond:
            c = dict(c)
            c["c_crossattn"] = substitute_uncond_context(c["c_crossattn"], cond_or_uncond,
                                                         context_for(args["timestep"]))
            if pooled_for is not None and c.get("y") is not None:
                c["y"] = substitute_uncond_pooled(c["y"], cond_or_uncond, pooled_for(args["timestep"]))
        if previous is not None:
            return previous(apply_model, {**args, "c": c})
        return apply_model(args["input"], args["timestep"], **c)

    return wrapper


def with_distilled_guidance(model, conditioning, guidance: float) -> tuple[Any, Optional[float]]:
    """``(conditioning, guidance used)``: a copy of ``conditioning`` whose distilled ``guidance`` is ``guidance``.

    Only guidance-distilled models (a guidance embedding: Flux dev, Krea, Kontext) read the value; for every
    other model the conditioning is returned as it is, with None. The caller's conditioning is never changed.
    """
    if not has_guidance_embedding(model):
        return conditioning, None
    return node_helpers.conditioning_set_values(conditioning, {GUIDANCE_OPTION: guidance}), guidance


def inversion_guidance(record) -> Optional[float]:
    """The distilled guidance the inversion's prompt carried (FluxGuidance), or None."""
    positive = record.positive or []
    values = [options[GUIDANCE_OPTION] for _, options in positive if options.get(GUIDANCE_OPTION) is not None]
    return float(values[0]) if values else None
