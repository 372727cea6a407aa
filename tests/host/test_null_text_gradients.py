"""Null-text through the MODEL's own forward pass without copies of its weights (issue 18).

:func:`invedit.nodes.gradients.gradient_ready` hands autograd views of the weights' own storage;
these tests check that it copies nothing, that every module gets its original objects back
whatever ends the run, that the gradient sees LoRA-patched weights (resident or cast per forward
as in low-VRAM loading), and that the contexts are those of the weight-copy mechanism it replaced.
"""

from __future__ import annotations

from itertools import chain

import pytest
import torch

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.weight_adapter
from invedit.nodes.gradients import IN_PLACE_ERROR, SavedActivationCopier, gradient_ready
from invedit.nodes.options import option_defaults
from null_text_models import TINY_FLUX, build_flux, flux_conditioning, flux_latent, weight_copying_clone
from tiny_models import ModelSnapshot, build_tiny_model, tiny_conditioning, tiny_latent

STEPS = 6
SETTINGS = dict(guidance=7.5, inner_steps=3, learning_rate=0.01, learning_rate_decay=0.01, early_stop=1e-5,
                early_stop_growth=2e-5, stop_check="after step", start_from="empty prompt")
CONTEXT_TOLERANCE = 1e-6  # float32: the same arithmetic, whatever holds the weights
LORA_RANK, LORA_ALPHA, LORA_STRENGTH = 4, 2.0, 0.7
LORA_LAYERS = ("attn2.to_k.weight", "attn2.to_v.weight", "ff.net.2.weight")
FLUX_TOKENS, FLUX_STEPS = 8, 4


def model_objects(patcher) -> dict[str, tuple[int, bool, bool]]:
    """``name -> (id, is_inference, requires_grad)`` of every parameter and buffer object of the model."""
    tensors = chain(patcher.model.named_parameters(remove_duplicate=False),
                    patcher.model.named_buffers(remove_duplicate=False))
    return {name: (id(tensor), tensor.is_inference(), tensor.requires_grad) for name, tensor in tensors}


def invert(pack_nodes, model, positive=None, batch: int = 1):
    positive = positive or tiny_conditioning("sd15", 1, 8)
    with torch.inference_mode():
        return pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=positive, negative=tiny_conditioning("sd15", 2, 8),
            latent=tiny_latent("sd15", 3, batch, 16, 16), steps=STEPS, inversion_cfg=1.0, scheduler="ddim_uniform",
            clean_level="zero", **option_defaults()).result[1]


def null_text(pack_nodes, model, record, **overrides):
    with torch.inference_mode():
        return pack_nodes["InvEditNullTextInversion"].execute(model=model, inversion=record,
                                                              **dict(SETTINGS, **overrides)).result[0]


def contexts_of(record) -> torch.Tensor:
    return record.unconditioning.step_contexts


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------------------------
# The mechanism


def test_the_block_gives_autograd_the_weights_own_storage_and_puts_every_object_back(tiny_model):
    model = tiny_model("sd15")
    before = model_objects(model)
    originals = {name: tensor for name, tensor in model.model.named_parameters()}
    x = tiny_latent("sd15", 3)["samples"] * 0.18215
    sigma = torch.tensor([2.0])
    with torch.inference_mode():
        comfy.model_management.load_models_gpu([model])
        with torch.inference_mode(False), torch.enable_grad():
            context = torch.randn(1, 8, 64, requires_grad=True)
            # Without the block: ComfyUI's inference-tensor weights cannot be saved for backward.
            with pytest.raises(RuntimeError, match="[Ii]nference tensors cannot be saved for backward"):
                model.model.apply_model(x, sigma, c_crossattn=context)
        with gradient_ready(model):
            inside = dict(model.model.named_parameters())
            context = torch.randn(1, 8, 64, requires_grad=True)
            out = model.model.apply_model(x, sigma, c_crossattn=context)
            out.square().mean().backward()
    for name, parameter in inside.items():
        assert parameter is not originals[name]
        assert parameter.data_ptr() == originals[name].data_ptr()  # the same storage: nothing copied
        assert not parameter.is_inference() and not parameter.requires_grad
        assert parameter.grad is None
    assert bool(torch.isfinite(context.grad).all()) and float(context.grad.abs().max()) > 0
    assert model_objects(model) == before


class CancelAt:
    """A UNet wrapper that counts model calls and presses Cancel during call ``at``."""

    def __init__(self, at: int) -> None:
        self.at, self.calls = at, 0

    def __call__(self, apply_model, args):
        self.calls += 1
        if self.calls == self.at:
            comfy.model_management.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])


class FailInside:
    """A cross-attention replacement that raises inside the UNet's forward pass on call ``at``;
    it notes whether the weights it saw were the gradient-ready views."""

    def __init__(self, model, at: int) -> None:
        self.model, self.at, self.calls, self.saw_views = model, at, 0, None

    def __call__(self, q, k, v, extra_options):
        self.calls += 1
        if self.calls == self.at:
            self.saw_views = not any(p.is_inference() for p in self.model.model.parameters())
            raise RuntimeError("a failure inside the model")
        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"])


@pytest.mark.parametrize("ending", ["normal", "cancel", "error"])
def test_the_model_is_untouched_after_a_run_a_cancel_and_an_error(pack_nodes, tiny_model, ending):
    base = tiny_model("sd15")
    record = invert(pack_nodes, base)
    model = base.clone()
    # UNet call 7 is the first differentiated forward pass of the second sampling step (step 0: the
    # source prompt's pass, 3 Adam evaluations, the pass that takes the step; step 1: the source prompt's).
    failure, cancel = FailInside(model, at=7), CancelAt(at=7)
    if ending == "cancel":
        model.set_model_unet_function_wrapper(cancel)
    if ending == "error":
        model.set_model_attn2_replace(failure, "middle", 0, 0)
    snapshot, objects = ModelSnapshot.take(model), model_objects(model)
    if ending == "normal":
        null_text(pack_nodes, model, record)
    elif ending == "cancel":
        try:
            with pytest.raises(comfy.model_management.InterruptProcessingException):
                null_text(pack_nodes, model, record)
        finally:
            comfy.model_management.interrupt_current_processing(False)
        assert cancel.calls == cancel.at  # stopped before the backward pass of the evaluation under way
    else:
        with pytest.raises(RuntimeError, match="a failure inside the model"):
            null_text(pack_nodes, model, record)
        assert failure.saw_views  # it failed inside a differentiated forward pass
    assert model_objects(model) == objects  # the same Parameter objects, inference tensors again
    assert model_objects(base) == objects
    snapshot.assert_unchanged(model)


# ---------------------------------------------------------------------------------------------
# LoRA, low-VRAM loading and the weight-copy mechanism give the same contexts


def lora_patches(model, seed: int = 7) -> dict:
    """Seeded LoRA adapters (up ``[out, r]``, down ``[r, in]``) on some cross-attention and MLP weights."""
    generator = torch.Generator().manual_seed(seed)
    patches = {}
    for name, weight in model.model.state_dict().items():
        if name.startswith("diffusion_model.") and name.endswith(LORA_LAYERS):
            up = torch.randn(weight.shape[0], LORA_RANK, generator=generator) * 0.3
            down = torch.randn(LORA_RANK, weight.shape[1:].numel(), generator=generator) * 0.3
            patches[name] = comfy.weight_adapter.LoRAAdapter(set(), (up, down, LORA_ALPHA, None, None, None))
    return patches


def merged_model(patches: dict):
    """A fresh tiny model with ``W + strength * alpha / rank * up @ down`` written into its weights."""
    merged = build_tiny_model("sd15", 0)
    state = merged.model.state_dict()
    with torch.inference_mode():
        for name, adapter in patches.items():
            up, down = adapter.weights[0], adapter.weights[1]
            delta = (LORA_STRENGTH * LORA_ALPHA / LORA_RANK) * (up @ down)
            state[name] += delta.reshape(state[name].shape)
    return merged


def lora_model(base, patches: dict):
    patched = base.clone()
    assert len(patched.add_patches(patches, LORA_STRENGTH)) == len(patches)
    return patched


def offload_half_on_load(patcher, device_to, lowvram_model_memory, force_patch_weights, full_load) -> None:
    """ON_LOAD callback: ComfyUI's own partial unload of half the model, as on a card short of memory.

    Offloaded modules cast their weights per forward pass and patch them there (LowVramPatch).
    """
    patcher.partially_unload(patcher.offload_device, patcher.model_size() // 2)


@pytest.mark.parametrize("loading", ["full", "low-VRAM"])
def test_a_lora_patched_model_gives_the_contexts_of_its_merged_weights(pack_nodes, tiny_model, loading):
    base = tiny_model("sd15")
    record = invert(pack_nodes, base)
    patches = lora_patches(base)
    patched = lora_model(base, patches)
    if loading == "low-VRAM":
        patched.add_callback(comfy.patcher_extension.CallbacksMP.ON_LOAD, offload_half_on_load)
    # ComfyUI itself re-wraps the parameters it patches (comfy.utils.set_attr_param); the others keep their objects.
    objects = {name: value for name, value in model_objects(base).items() if name not in patches}
    try:
        with_lora = contexts_of(null_text(pack_nodes, patched, record))
        if loading == "low-VRAM":
            offloaded = [m for m in patched.model.modules()
                         if any(isinstance(f, comfy.model_patcher.LowVramPatch) for f in getattr(m, "weight_function", []))]
            resident = [m for m in patched.model.modules() if getattr(m, "comfy_patched_weights", False)]
            assert offloaded and resident  # LoRA patched per forward pass in some layers, merged in others
    finally:
        comfy.model_management.unload_all_models()
    merged = contexts_of(null_text(pack_nodes, merged_model(patches), record))
    plain = contexts_of(null_text(pack_nodes, base, record))
    assert max_difference(with_lora, merged) < CONTEXT_TOLERANCE
    assert max_difference(with_lora, plain) > 1e-3  # the LoRA changes the contexts: the test can fail
    assert {name: value for name, value in model_objects(base).items() if name not in patches} == objects


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_contexts_equal_those_of_the_weight_copying_mechanism(pack_nodes, tiny_model, tiny_conditioning, arch):
    model = tiny_model(arch)
    with torch.inference_mode():
        record = pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=tiny_conditioning(arch, 1, 8), negative=tiny_conditioning(arch, 2, 8),
            latent=tiny_latent(arch, 3, 2, 16, 16), steps=STEPS, inversion_cfg=1.0, scheduler="ddim_uniform",
            clean_level="zero", **option_defaults()).result[1]
    views = contexts_of(null_text(pack_nodes, model, record))
    copies = contexts_of(null_text(pack_nodes, weight_copying_clone(model), record))
    assert max_difference(views, copies) < CONTEXT_TOLERANCE
    shifted = contexts_of(null_text(pack_nodes, model, record, guidance=SETTINGS["guidance"] + 0.5))
    assert max_difference(views, shifted) > 1e-4  # another guidance, other contexts: the band can fail


# ---------------------------------------------------------------------------------------------
# Flow transformers


def test_copies_of_saved_activations_make_flux_differentiable_and_never_copy_a_weight():
    model = build_flux(TINY_FLUX)
    x = flux_latent(8, 3)["samples"]
    context = torch.randn(1, FLUX_TOKENS, 4096)
    extras = {"y": torch.randn(1, 768), "guidance": torch.tensor([3.5])}

    def context_gradient() -> torch.Tensor:
        text = context.clone().requires_grad_(True)
        model.model.apply_model(x, torch.tensor([0.8]), c_crossattn=text, **extras).square().mean().backward()
        return text.grad

    with torch.inference_mode():
        comfy.model_management.load_models_gpu([model])
        # ComfyUI's Flux blocks add to residual streams autograd saved, in place (txt += ..., x += ...).
        with gradient_ready(model), pytest.raises(RuntimeError, match=IN_PLACE_ERROR):
            context_gradient()
        with gradient_ready(model, copy_saved_activations=True):
            gradient = context_gradient()
            copier = SavedActivationCopier(model.model)
            weight = model.model.diffusion_model.txt_in.weight
            activation = torch.randn(3, 4)
            assert copier.pack(weight) is weight and copier.pack(weight.t()).data_ptr() == weight.data_ptr()
            copy = copier.pack(activation)
            assert copy is not activation and torch.equal(copy, activation)
    assert bool(torch.isfinite(gradient).all()) and float(gradient.abs().max()) > 0


def test_a_flux_transformer_is_differentiated_through_comfyuis_own_forward(pack_nodes):
    model = build_flux(TINY_FLUX)
    positive, negative = flux_conditioning(FLUX_TOKENS, 1), flux_conditioning(FLUX_TOKENS, 2)
    with torch.inference_mode():
        record = pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=positive, negative=negative, latent=flux_latent(8, 3), steps=FLUX_STEPS,
            inversion_cfg=1.0, scheduler="simple", clean_level="zero", **option_defaults()).result[1]
    assert record.settings["process"] == "rectified-flow"
    objects = model_objects(model)
    views = null_text(pack_nodes, model, record, negative=negative)
    copies = null_text(pack_nodes, weight_copying_clone(model), record, negative=negative)
    assert max_difference(contexts_of(views), contexts_of(copies)) < CONTEXT_TOLERANCE
    assert max_difference(contexts_of(views)[-1, 0], negative[0][0][0]) > 1e-3  # the contexts moved
    assert sum(views.unconditioning.report["gradient_steps"]) > 0
    assert model_objects(model) == objects
