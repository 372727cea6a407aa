"""Inversion of flow models run with fp8 weights (ComfyUI's cast-on-the-fly layers), as users run Flux and SD3.5.

SD3.5: a tiny MMDiT-X saved with ComfyUI's own state-dict keys in this ComfyUI's models/diffusion_models and
loaded by the stock UNETLoader with weight_dtype fp8_e4m3fn (ComfyUI's detection reads the tiny width from
the weights: MMDiT's width is 64 per block of depth). Flux: ComfyUI's detection cannot take a tiny Flux (it
fixes the width at 3072, 24 heads and a 4096-wide context whatever the weights say), so the tiny Flux's fp8
weights are loaded the way the loader does after detection: the model config set to fp8 weights with a
float32 compute dtype, ``get_model`` (which picks the cast-on-the-fly ops) and ``load_model_weights``.
"""

from __future__ import annotations

import comfy.model_detection
import comfy.model_patcher
import folder_paths
import nodes
import pytest
import torch
import tiny_flow_models as tfm
from safetensors.torch import save_file
from tiny_models import ModelSnapshot

from invedit.nodes.options import option_defaults

FP8 = torch.float8_e4m3fn
STEPS = 28
OPTIONS = option_defaults()
EULER_BOUND = 0.08
"""As in test_flow_inversion.py: a 28-step Euler round trip on the tiny models (measured 0.02-0.07)."""
SAME_WEIGHTS_BOUND = 1e-5
"""fp8 weights cast on the fly against the same values held in float32: float rounding only."""
FP8_ROUNDING_VISIBLE = 1e-3
"""fp8 rounding of the weights moves the inversion by more than this (the negative control)."""
TINY_SD35_FILE = "invedit_tiny_sd35_mmditx.safetensors"


def float32_twin(fp8_model) -> comfy.model_patcher.ModelPatcher:
    """A float32 model of the same config holding the fp8 model's weights, upcast (what cast-on-the-fly computes with)."""
    base = fp8_model.model
    config = type(base.model_config)(base.model_config.unet_config)
    config.set_inference_dtype(torch.float32, None)
    with torch.inference_mode():
        twin = config.get_model({}, device=torch.device("cpu"))
        twin.diffusion_model.load_state_dict({key: value.to(torch.float32)
                                              for key, value in base.diffusion_model.state_dict().items()})
    return comfy.model_patcher.ModelPatcher(twin, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def round_trip(pack_nodes, model, family: str, solver: str = "euler"):
    """(inverted noise, reconstruction, source latent) at cfg 1 (Flux dev at distilled guidance 1)."""
    prompt, latent = tfm.tiny_flow_conditioning(family, 1), tfm.tiny_flow_latent(family, 3)
    sampling_prompt = prompt
    if family == tfm.FLUX_DEV:
        sampling_prompt = nodes.NODE_CLASS_MAPPINGS["FluxGuidance"]().append(prompt, 1.0)[0]
    with torch.inference_mode():
        noise, inversion, _ = pack_nodes["InvEditDDIMInversion"].execute(
            model=model, positive=prompt, negative=prompt, latent=latent,
            **dict(OPTIONS, steps=STEPS, inversion_cfg=1.0, scheduler="auto", clean_level="zero", solver=solver)).result
        back = pack_nodes["InvEditReconstruct"].execute(model=model, positive=sampling_prompt, inversion=inversion,
                                                         cfg=1.0, negative=prompt).result[0]["samples"]
    return noise["samples"], back, latent["samples"]


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    return float((result - reference).abs().max() / reference.std())


def assert_runs_on_fp8_weights(model) -> None:
    weights = model.model.diffusion_model.state_dict()
    matrices = [value for key, value in weights.items() if key.endswith("weight") and value.ndim == 2]
    assert matrices and all(value.dtype == FP8 for value in matrices)
    assert model.model.manual_cast_dtype == torch.float32  # computed in float32, cast layer by layer


@pytest.fixture(scope="module")
def sd35_fp8_via_unet_loader():
    """The tiny SD3.5 saved (bfloat16, ComfyUI's keys) and loaded by UNETLoader with weight_dtype fp8_e4m3fn."""
    source = tfm.build_tiny_flow_model(tfm.SD35, seed=0)
    folder = folder_paths.get_folder_paths("diffusion_models")[0]
    import os

    os.makedirs(folder, exist_ok=True)
    weights = {key: value.to(torch.bfloat16).contiguous()
               for key, value in source.model.diffusion_model.state_dict().items()}
    save_file(weights, os.path.join(folder, TINY_SD35_FILE))
    with torch.inference_mode():
        return nodes.NODE_CLASS_MAPPINGS["UNETLoader"]().load_unet(TINY_SD35_FILE, "fp8_e4m3fn")[0]


def test_an_sd35_loaded_by_unet_loader_in_fp8_inverts_and_reconstructs(pack_nodes, sd35_fp8_via_unet_loader):
    """The stock loader detects the tiny MMDiT-X (SD3 family, x-block self-attention in block 0) and runs it on fp8
    weights; Euler and FireFlow inversions round-trip, equal to the same weights in float32 (rounding), and differ
    from the unrounded weights' inversion (the fp8 rounding is really there)."""
    model = sd35_fp8_via_unet_loader
    assert type(model.model).__name__ == "SD3"
    assert model.model.model_config.unet_config["x_block_self_attn_layers"] == [0]
    assert_runs_on_fp8_weights(model)
    snapshot = ModelSnapshot.take(model)
    noise, back, source = round_trip(pack_nodes, model, tfm.SD35)
    assert bool(torch.isfinite(back).all()) and relative_error(back, source) < EULER_BOUND
    twin_noise, _, _ = round_trip(pack_nodes, float32_twin(model), tfm.SD35)
    assert relative_error(noise, twin_noise) < SAME_WEIGHTS_BOUND
    unrounded_noise, _, _ = round_trip(pack_nodes, tfm.cached_tiny_flow_model(tfm.SD35), tfm.SD35)
    assert relative_error(noise, unrounded_noise) > FP8_ROUNDING_VISIBLE
    _, fireflow_back, _ = round_trip(pack_nodes, model, tfm.SD35, solver="fireflow")
    assert relative_error(fireflow_back, source) < relative_error(back, source)
    snapshot.assert_unchanged(model)


def test_comfyuis_detection_cannot_take_a_tiny_flux():
    """Why the Flux test below loads its fp8 weights without UNETLoader: detection fixes Flux's width."""
    weights = tfm.cached_tiny_flow_model(tfm.FLUX_DEV).model.diffusion_model.state_dict()
    detected = comfy.model_detection.detect_unet_config(weights, "")
    assert detected["image_model"] == "flux" and detected["guidance_embed"] is True
    assert (detected["hidden_size"], detected["num_heads"], detected["context_in_dim"]) == (3072, 24, 4096)
    assert weights["img_in.weight"].shape[0] == tfm.TINY_HIDDEN


def test_a_flux_dev_with_fp8_weights_inverts_and_reconstructs(pack_nodes):
    """Flux dev's fp8 weights through ComfyUI's cast-on-the-fly layers: the round trip holds and equals the same
    weights in float32 (rounding); the unrounded weights give another inversion."""
    source_model = tfm.cached_tiny_flow_model(tfm.FLUX_DEV)
    config = tfm.model_config(tfm.FLUX_DEV, dtype=FP8, manual_cast_dtype=torch.float32)
    with torch.inference_mode():
        base = config.get_model({}, device=torch.device("cpu"))
        base.load_model_weights({f"model.diffusion_model.{key}": value
                                 for key, value in source_model.model.diffusion_model.state_dict().items()},
                                "model.diffusion_model.")
    model = comfy.model_patcher.ModelPatcher(base, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    assert_runs_on_fp8_weights(model)
    noise, back, source = round_trip(pack_nodes, model, tfm.FLUX_DEV)
    assert bool(torch.isfinite(back).all()) and relative_error(back, source) < EULER_BOUND
    twin_noise, _, _ = round_trip(pack_nodes, float32_twin(model), tfm.FLUX_DEV)
    assert relative_error(noise, twin_noise) < SAME_WEIGHTS_BOUND
    unrounded_noise, _, _ = round_trip(pack_nodes, source_model, tfm.FLUX_DEV)
    assert relative_error(noise, unrounded_noise) > FP8_ROUNDING_VISIBLE
