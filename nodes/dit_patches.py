"""ComfyUI glue of joint-attention Prompt-to-Prompt: public hooks on a cloned MODEL of a flow transformer.

Three public mechanisms, nothing else (never a copy of a model's forward or block code):

* a ``model_function_wrapper`` reads each call's prompt length (``c_crossattn``) and latent size,
  and puts the family's :class:`~..attention.joint.TokenLayout` into a COPY of
  ``transformer_options``;
* a block replace patch on every ``patches_replace["dit"][("double_block", i)]`` /
  ``("single_block", i)`` adds the block's key to a copy of ``transformer_options`` and calls
  ``original_block``;
* the attention override (``transformer_options["optimized_attention_override"]``, chained onto any
  previous one) reads both, the rows (``cond_or_uncond``) and the step (from ``sigmas``), and calls
  the library with the backend ComfyUI would have used; attention calls outside a tagged block, or
  without text (SD3.5 MMDiT-X's image-only attention), go to the backend unchanged.

Families (:data:`~..attention.joint.TOKEN_RULES`): Flux and Chroma (double + single blocks), SD3
MMDiT (``joint_blocks`` as double blocks, register tokens before the prompt), Qwen-Image
(``transformer_blocks`` as double blocks).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from ..attention import AttentionContext, AttentionSite
from ..attention.joint import (
    FAMILY_CHROMA,
    FAMILY_FLUX,
    FAMILY_QWEN_IMAGE,
    FAMILY_SD3,
    JointContext,
    TokenLayout,
    token_layout,
)
from .attention_patches import EditRun
from .errors import InvEditInputError

LAYOUT_OPTION = "invedit_joint_layout"
"""``transformer_options`` key of the call's :class:`TokenLayout` (set by the model wrapper)."""
BLOCK_OPTION = "invedit_joint_block"
"""``transformer_options`` key of the running block's ``(kind, index)`` (set by the block patch)."""
DOUBLE_BLOCK = "double_block"
SINGLE_BLOCK = "single_block"

_FAMILY_BLOCKS = {  # class name -> (family, attribute of double blocks, attribute of single blocks)
    "Flux": (FAMILY_FLUX, "double_blocks", "single_blocks"),
    "Chroma": (FAMILY_CHROMA, "double_blocks", "single_blocks"),
    "OpenAISignatureMMDITWrapper": (FAMILY_SD3, "joint_blocks", None),
    "QwenImageTransformer2DModel": (FAMILY_QWEN_IMAGE, "transformer_blocks", None),
}


def _family_entry(diffusion_model) -> tuple[str, str, Optional[str]]:
    for cls in type(diffusion_model).__mro__:
        if cls.__name__ in _FAMILY_BLOCKS:
            return _FAMILY_BLOCKS[cls.__name__]
    raise InvEditInputError(
        f"Prompt-to-Prompt on joint attention knows Flux, Chroma, SD3 / SD3.5 and Qwen-Image transformers; this "
        f"model's {type(diffusion_model).__name__} is none of them. Use one of those, or a UNet model.")


def joint_family(model) -> str:
    """The token-layout family of a MODEL's transformer (an InvEditInputError for another one)."""
    return _family_entry(model.get_model_object("diffusion_model"))[0]


def joint_blocks(model) -> list[tuple[str, int]]:
    """Every joint-attention block's ``patches_replace["dit"]`` key, in the order the model runs them."""
    diffusion_model = model.get_model_object("diffusion_model")
    _, double, single = _family_entry(diffusion_model)
    keys = [(DOUBLE_BLOCK, index) for index in range(len(getattr(diffusion_model, double)))]
    if single is not None:
        keys += [(SINGLE_BLOCK, index) for index in range(len(getattr(diffusion_model, single)))]
    return keys


def call_layout(diffusion_model, family: str, prompt_tokens: int, latent_shape) -> TokenLayout:
    """The token layout of one model call: ``prompt_tokens`` and the latent ``[..., H, W]``'s patches."""
    patch = int(getattr(diffusion_model, "patch_size", 2))
    rows, columns = (-(-int(side) // patch) for side in latent_shape[-2:])
    registers = int(getattr(diffusion_model, "register_length", 0) or 0)
    return token_layout(family, prompt_tokens, rows * columns, registers)


def image_grid(diffusion_model, latent_shape) -> tuple[int, int]:
    patch = int(getattr(diffusion_model, "patch_size", 2))
    return tuple(-(-int(side) // patch) for side in latent_shape[-2:])


def layout_wrapper(diffusion_model, family: str, previous: Optional[Callable]) -> Callable:
    """A ``model_function_wrapper`` putting the call's :class:`TokenLayout` and image grid into a copy of
    ``transformer_options`` (``previous``, the model's own wrapper, is called with the new arguments)."""

    def wrapper(apply_model, args: dict):
        c = dict(args["c"])
        x = args["input"]
        layout = call_layout(diffusion_model, family, c["c_crossattn"].shape[1], x.shape)
        options = dict(c.get("transformer_options") or {})
        options[LAYOUT_OPTION] = (layout, image_grid(diffusion_model, x.shape), tuple(x.shape[-2:]))
        c["transformer_options"] = options
        if previous is not None:
            return previous(apply_model, {**args, "c": c})
        return apply_model(x, args["timestep"], **c)

    return wrapper


def block_tag(block_key: tuple[str, int]) -> Callable:
    """A ``patches_replace["dit"]`` patch: the block runs unchanged, its attention knows where it is."""

    def patch(args: dict, extra: dict) -> dict:
        options = dict(args.get("transformer_options") or {})
        options[BLOCK_OPTION] = block_key
        placed, text = options.get(LAYOUT_OPTION), args.get("txt")
        if placed is not None and text is not None and text.shape[1] != placed[0].text_tokens:
            raise ValueError(f"The text stream of {block_key} has {text.shape[1]} tokens but the token layout rule "
                             f"gives {placed[0].text_tokens}: this model family's rule does not match it.")
        return extra["original_block"]({**args, "transformer_options": options})

    return patch


class JointEditRun(EditRun):
    """Per-run state shared by the patched model's attention calls: the joint controller and the schedule."""

    def context(self, options: dict, heads: int) -> Optional[JointContext]:
        """The call's context, or None when the call is not in a tagged block of a wrapped model call."""
        block, placed = options.get(BLOCK_OPTION), options.get(LAYOUT_OPTION)
        if block is None or placed is None or "cond_or_uncond" not in options:
            return None
        layout, grid, latent_hw = placed
        site = AttentionSite(block=tuple(block), depth=0, is_cross=True, heads=heads, query_shape=tuple(grid))
        rows = AttentionContext(site=site, step=self.step_of(options["sigmas"]), n_steps=self.n_steps,
                                chunks=tuple(int(c) for c in options["cond_or_uncond"]), latent_shape=latent_hw)
        return JointContext(rows, layout)


def _as_heads(x: torch.Tensor, heads: int, dim_head: int, skip_reshape: bool) -> torch.Tensor:
    """``[B, H, L, D]`` from the backend's input: ``[B, H, L, D]`` with skip_reshape, else ``[B, L, H*D]``
    (SD3 MMDiT hands v over as ``[B, L, H, D]``, which the backends read the same way)."""
    if skip_reshape:
        return x
    return x.reshape(x.shape[0], -1, heads, dim_head).transpose(1, 2)


def attention_override(run: JointEditRun, previous: Optional[Callable]) -> Callable:
    """An ``optimized_attention_override`` that edits joint attention through ``run``; ``previous`` is chained."""

    def override(func, q, k, v, heads, *args, transformer_options=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        options = transformer_options or {}

        def backend(q_, k_, v_, **overrides):
            call = dict(kwargs, transformer_options=transformer_options, skip_reshape=skip_reshape,
                        skip_output_reshape=skip_output_reshape)
            call.update(overrides)
            if previous is not None:
                return previous(func, q_, k_, v_, heads, *args, **call)
            return func(q_, k_, v_, heads, *args, **call)

        context = run.context(options, heads)
        length = q.shape[2] if skip_reshape else q.shape[1]
        if context is None or not context.layout.fits(length):
            return backend(q, k, v)

        def attend(q4, k4, v4):
            return backend(q4, k4, v4, skip_reshape=True, skip_output_reshape=True)

        dim_head = q.shape[-1] if skip_reshape else q.shape[-1] // heads
        q4, k4, v4 = (_as_heads(t, heads, dim_head, skip_reshape) for t in (q, k, v))
        if not q4.shape == k4.shape == v4.shape:  # not a self-attention of one sequence: leave it alone
            return backend(q, k, v)
        out = run.controller(q4, k4, v4, context, attend)
        if skip_output_reshape:
            return out
        return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)

    return override


def dit_patched_model(model, run: JointEditRun):
    """A clone of a flow transformer MODEL whose every joint-attention block goes through ``run``.

    ``model`` is untouched. Another node's replace patch on the same block is replaced (with a
    warning in the log), as on UNets; another attention override is chained.
    """
    diffusion_model = model.get_model_object("diffusion_model")
    family = joint_family(model)
    clone = model.clone()
    replaced = clone.model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    for key in joint_blocks(model):
        if key in replaced:
            logging.warning("InvEdit P2P: replacing another node's dit patch at %s", key)
        clone.set_model_patch_replace(block_tag(key), "dit", key[0], key[1])
    transformer_options = clone.model_options.setdefault("transformer_options", {})
    transformer_options["optimized_attention_override"] = attention_override(
        run, transformer_options.get("optimized_attention_override"))
    clone.set_model_unet_function_wrapper(
        layout_wrapper(diffusion_model, family, clone.model_options.get("model_function_wrapper")))
    return clone
