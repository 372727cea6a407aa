"""Text encoders and an SD2.x-layout model for the Prompt-to-Prompt host tests (tiny, seeded, CPU).

* :func:`tiny_clip` - a real ``comfy.sd.CLIP``: ComfyUI's SD1 tokenizer (the real CLIP BPE
  vocabulary shipped with ComfyUI, 75-token chunks) and a 1-layer CLIP text model of width 64,
  the tiny SD1.x/SD2.x models' context width.
* :class:`SeededClip` - a real ComfyUI tokenizer with a seeded per-token embedding;
  :class:`FakeSDXLClip` is ComfyUI's SDXL tokenizer (clip_g and clip_l) with width 2048 and a
  pooled output of 1280 (what CLIPTextEncode gives SDXL), without the 800M-parameter encoders.
* :func:`tiny_sd2_model` - the SD2.x attention layout: linear projections in the transformers,
  heads of fixed width, attention in float32, v-prediction.

Import after the host conftest has booted ComfyUI.
"""

from __future__ import annotations

import math

import torch

import comfy.model_base
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.sdxl_clip
import comfy.supported_models
import tiny_models

TINY_CLIP_CONFIG = {
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 49407,
    "hidden_act": "quick_gelu",
    "hidden_size": tiny_models.SD15_CONTEXT_DIM,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 2 * tiny_models.SD15_CONTEXT_DIM,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 2,
    "num_hidden_layers": 1,
    "pad_token_id": 1,
    "projection_dim": tiny_models.SD15_CONTEXT_DIM,
    "torch_dtype": "float32",
    "vocab_size": 49408,
}


class _TinyClipModel(comfy.sd1_clip.SDClipModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        super().__init__(device=device, dtype=dtype, model_options=model_options,
                         textmodel_json_config=TINY_CLIP_CONFIG, return_projected_pooled=False)


def _tiny_clip_model(device="cpu", dtype=None, model_options={}, **kwargs):
    return comfy.sd1_clip.SD1ClipModel(device=device, dtype=dtype,
                                       model_options={**model_options, "clip_l_class": _TinyClipModel}, **kwargs)


class _TinyClipTarget:
    params: dict = {}
    clip = staticmethod(_tiny_clip_model)
    tokenizer = comfy.sd1_clip.SD1Tokenizer


_CLIP_CACHE: dict[int, comfy.sd.CLIP] = {}


def tiny_clip(seed: int = 0) -> comfy.sd.CLIP:
    """A real ComfyUI CLIP (SD1 tokenizer, 1-layer width-64 text model) with seeded weights."""
    if seed not in _CLIP_CACHE:
        with torch.inference_mode():
            clip = comfy.sd.CLIP(_TinyClipTarget(), model_options={"dtype": torch.float32,
                                                                   "load_device": torch.device("cpu"),
                                                                   "offload_device": torch.device("cpu")})
            tiny_models._init_parameters(clip.cond_stage_model, seed)
        _CLIP_CACHE[seed] = clip
    return _CLIP_CACHE[seed]


class SeededClip:
    """A real ComfyUI tokenizer with a seeded per-token embedding instead of the text model.

    ``encode_from_tokens_scheduled`` gives ``[1, 77 * chunks, width]`` (row ``p`` from the token and
    its position in its chunk) and, with ``pooled_width``, a ``pooled_output`` ``[1, pooled_width]``.
    """

    def __init__(self, tokenizer, width: int, pooled_width: int | None = None, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.width = width
        self.pooled_width = pooled_width
        self.seed = seed

    def tokenize(self, text, return_word_ids=False, **kwargs):
        return self.tokenizer.tokenize_with_weights(text, return_word_ids, **kwargs)

    def _embedding(self, token: int, position: int, width: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + token * 131 + position)
        return torch.randn(width, generator=generator)

    def encode_from_tokens_scheduled(self, tokens, **kwargs):
        flat = [int(entry[0]) for chunk in next(iter(tokens.values())) for entry in chunk]
        context = torch.stack([self._embedding(t, p % 77, self.width) for p, t in enumerate(flat)])[None]
        options = {}
        if self.pooled_width is not None:
            options["pooled_output"] = self._embedding(sum(flat), 0, self.pooled_width)[None]
        return [[context, options]]


class FakeSDXLClip(SeededClip):
    """ComfyUI's SDXL tokenizer (clip_g and clip_l) with a seeded embedding of width 2048 and pooled 1280."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(comfy.sdxl_clip.SDXLTokenizer(), tiny_models.SDXL_CONTEXT_DIM, tiny_models.SDXL_POOLED_DIM,
                         seed)


SD2_HEAD_CHANNELS = 16


class TinySD2(comfy.supported_models.SD20):
    """SD2.x model config with a tiny UNet: linear transformer projections, 16-wide heads, float32 attention."""

    unet_config = {**tiny_models.SD15_UNET_CONFIG, "use_linear_in_transformer": True}
    unet_extra_config = {"num_heads": -1, "num_head_channels": SD2_HEAD_CHANNELS, "attn_precision": torch.float32}


def tiny_sd2_model(seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A v-prediction tiny model of the SD2.x layout (random weights, output scaled to std 0.1)."""
    with torch.inference_mode():
        config = TinySD2(dict(TinySD2.unet_config))
        config.set_inference_dtype(torch.float32, None)
        model = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.V_PREDICTION,
                                           device=torch.device("cpu"))
        tiny_models._init_parameters(model.diffusion_model, seed)
        out = model.diffusion_model.out[-1]
        out.weight.mul_(tiny_models.V_OUTPUT_STD / math.sqrt(out.weight[0].numel()))
        model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
