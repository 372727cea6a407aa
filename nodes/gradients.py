"""Gradients through a ComfyUI model's own forward pass, without a copy of its weights.

ComfyUI runs every prompt under ``torch.inference_mode()``, so the weights its loaders build are
*inference tensors*: autograd refuses to save them for the backward pass ("Inference tensors
cannot be saved for backward"), and a linear layer whose input needs a gradient must save its
weight. Routing every weight through a weight wrapper that clones it works, but ComfyUI's
``cast_bias_weight`` then copies every weight on every forward pass and autograd keeps those copies
until the backward pass: a whole second model per differentiated forward.

:func:`gradient_ready` instead gives autograd the weights themselves. For the duration of the
block, every inference parameter and buffer of the loaded model is replaced by a normal tensor
that is a view of the *same storage* (``Tensor.set_`` on the parameter's storage: no copy, no
new memory), and every parameter is frozen (``requires_grad`` False: no weight gradients). On
exit (normally, on Cancel, on any error) the original Parameter objects go back in place, so the
model, its clones and the MODEL a caller holds are as they were. The swap touches the module
objects all clones of a MODEL share, so it must only be entered while the model is loaded and
left before ComfyUI unloads or re-patches it: inside a sampler's loop (ComfyUI runs one prompt
at a time, so nothing else uses the model meanwhile).

How it composes with the rest of ComfyUI:

* LoRA and other weight patches: ComfyUI applies them when it loads the model, by replacing the
  patched parameters with patched ones; the block swaps whatever is loaded, so the gradient sees
  the patched weights, and the patched parameters are what it restores.
* float16 / bfloat16 weights: used as they are, in the model's own compute dtype (no float32
  copy); the caller keeps its optimisation state in float32 (see :mod:`..inversion.loss_scaling`).
* Low-VRAM partial loading, ``manual_cast`` models (weights stored in another dtype than the
  compute dtype), weight wrappers and LoRA-in-lowvram (``LowVramPatch``): these modules make a
  fresh weight on every forward pass (``comfy.ops.cast_bias_weight``), which is a normal tensor
  under ``inference_mode(False)``, so gradients flow through them unchanged. Autograd keeps each
  such per-forward weight until the backward pass has gone through its layer, as it would in any
  training loop; the resident weights cost nothing.
* Tensor subclasses (quantised formats of other custom nodes) are left alone; if one of them
  is an inference tensor that autograd must save, the forward raises the RuntimeError above.
* In-place updates: ComfyUI's flow transformers (Flux ``txt += ...``, Chroma ``addcmul_``, MMDiT
  ``x += ...``) and a UNet with a ControlNet (``h += ctrl``) update in place tensors autograd has
  saved, which autograd refuses ("modified by an inplace operation"). With
  ``copy_saved_activations`` autograd saves its own copy of every activation it keeps (never of
  a weight), so those updates no longer reach it. :func:`run_with_gradients` runs a computation
  without the copies and, only if that error comes up, once more with them.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from itertools import chain
from typing import Callable, Iterator, TypeVar

import torch

Result = TypeVar("Result")

IN_PLACE_ERROR = "modified by an inplace operation"
"""What autograd says when a forward pass changed in place a tensor it saved for backward."""

PLAIN_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
"""Only these exact types are swapped; subclasses carry their own meaning (quantisation, ...)."""


@dataclass
class _Swapped:
    """A parameter or buffer slot of a module and the object the block took out of it."""

    slots: dict
    name: str
    original: torch.Tensor


@dataclass
class _Frozen:
    """A normal (non-inference) parameter that required a gradient and was frozen for the block."""

    parameter: torch.Tensor


def autograd_view(tensor: torch.Tensor) -> torch.Tensor:
    """A normal tensor on ``tensor``'s own storage (same data pointer, nothing copied).

    Autograd may save it for backward although ``tensor`` is an inference tensor. A Parameter
    gives a frozen Parameter. Call it outside inference mode.
    """
    view = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    view.set_(tensor.untyped_storage(), tensor.storage_offset(), tensor.size(), tensor.stride())
    if isinstance(tensor, torch.nn.Parameter):
        return torch.nn.Parameter(view, requires_grad=False)
    return view


def _prepare(model: torch.nn.Module, swapped: list[_Swapped], frozen: list[_Frozen]) -> None:
    """Swap inference parameters and buffers for views, freeze normal parameters; log both."""
    views: dict[int, torch.Tensor] = {}  # tied weights stay tied
    for module in model.modules():
        for slots in (module._parameters, module._buffers):
            for name, tensor in list(slots.items()):
                if tensor is None or type(tensor) not in PLAIN_TENSOR_TYPES:
                    continue
                if tensor.is_inference():
                    if id(tensor) not in views:
                        views[id(tensor)] = autograd_view(tensor)
                    swapped.append(_Swapped(slots, name, tensor))
                    slots[name] = views[id(tensor)]
                elif tensor.requires_grad:
                    frozen.append(_Frozen(tensor))
                    tensor.requires_grad_(False)


def _restore(swapped: list[_Swapped], frozen: list[_Frozen]) -> None:
    """Put every original object back and unfreeze what was frozen (in reverse order)."""
    for entry in reversed(swapped):
        entry.slots[entry.name] = entry.original
    for entry in frozen:
        entry.parameter.requires_grad_(True)


class SavedActivationCopier:
    """Autograd saved-tensor hooks: keep a copy of every saved activation, the weights themselves.

    Args:
        model: the module whose parameters and buffers are saved as they are (by storage).
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.weight_storages = {tensor.untyped_storage().data_ptr()
                                for tensor in chain(model.parameters(), model.buffers())}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        if tensor.untyped_storage().data_ptr() in self.weight_storages:
            return tensor
        return tensor.clone()

    @staticmethod
    def unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor


@contextmanager
def gradient_ready(model_patcher, copy_saved_activations: bool = False) -> Iterator[None]:
    """Within the block, ``model_patcher``'s loaded model can be differentiated (see the module docstring).

    Gradients flow to the inputs (a text context), never to the weights. Enter it inside a
    sampler's loop, where ComfyUI has loaded and patched the model; the block runs with
    ``inference_mode(False)`` and grad mode on. Every module is restored on exit, whatever
    ends the block. ``copy_saved_activations``: for models that update saved tensors in place.
    """
    swapped: list[_Swapped] = []
    frozen: list[_Frozen] = []
    try:
        with ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            _prepare(model_patcher.model, swapped, frozen)
            stack.enter_context(torch.enable_grad())
            if copy_saved_activations:
                copier = SavedActivationCopier(model_patcher.model)
                stack.enter_context(torch.autograd.graph.saved_tensors_hooks(copier.pack, copier.unpack))
            yield
    finally:
        _restore(swapped, frozen)


def run_with_gradients(model_patcher, run: Callable[[], Result]) -> Result:
    """``run()`` inside :func:`gradient_ready`; again with copies of saved activations if the model
    updated one in place (the first attempt stops at its first backward pass; ``run`` must start over)."""
    try:
        with gradient_ready(model_patcher):
            return run()
    except RuntimeError as error:
        if IN_PLACE_ERROR not in str(error):
            raise
    with gradient_ready(model_patcher, copy_saved_activations=True):
        return run()


def compute_dtype(model_patcher) -> torch.dtype:
    """The dtype ``model_patcher``'s model computes in (its manual-cast dtype, else its weights')."""
    return model_patcher.get_model_object("manual_cast_dtype") or model_patcher.model.get_dtype()
