"""Text encoders and an SD2.x-layout model for the Prompt-to-Prompt host tests (tiny, seeded, CPU).

* :func:`tiny_clip` - a real ``comfy.sd.CLIP``: ComfyUI's SD1 tokenizer (the real CLIP BPE
  vocabulary shipped with ComfyUI, 75-token chunks) and a 1-layer CLIP text model of width 64,
  the tiny SD1.x/SD2.x models' context width.
* :class:`SeededClip` - a real ComfyUI tokenizer with a seeded per-token embedding;
  :class:`FakeSDXLClip` is ComfyUI's SDXL tokenizer (clip_g and clip_l) with width 2048 and a
  pooled output of 1280 (what CLIPTextEncode gives SDXL), without the 800M-parameter encoders.
* :func:`probe_clip` / :func:`family_clip` (:data:`PROBES`) - real ComfyUI CLIPs of Flux, SD3 and Chroma: ComfyUI's own tokenizers
  and composite text models (whose encode orders and concatenates the encoders' outputs), each encoder
  stood in for by a seeded embedding per token id (:func:`token_embedding`), so a context row names its token.
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
import comfy.text_encoders.flux
import comfy.text_encoders.pixart_t5
import comfy.text_encoders.sd3_clip
import tiny_flow_models as tfm
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


# ---------------------------------------------------------------------------------------------
# Flux, SD3 and Chroma text encoders: ComfyUI's tokenizers and composite models over seeded token embeddings

CLIP_L_WIDTH, CLIP_G_WIDTH = 768, 1280
ENCODER_SEEDS = {"l": 1, "g": 2, "t5xxl": 3}  # one embedding table per encoder: equal ids in two vocabularies differ
SEED_STRIDE = 1_000_003


def token_embedding(name: str, token: int, width: int) -> torch.Tensor:
    """The stand-in encoder ``name``'s row for ``token``: seeded, so a row names its token."""
    generator = torch.Generator().manual_seed(ENCODER_SEEDS[name] * SEED_STRIDE + token)
    return torch.randn(width, generator=generator)


class SeededTokenEncoder(torch.nn.Module):
    """Stands in for one text encoder (CLIP-L, CLIP-G, T5-XXL): one seeded row per token, in token order."""

    def __init__(self, name: str, width: int, pooled_width: int | None = None) -> None:
        super().__init__()
        self.name, self.width, self.pooled_width = name, width, pooled_width

    def set_clip_options(self, options) -> None:
        pass

    def reset_clip_options(self) -> None:
        pass

    def encode_token_weights(self, token_weight_pairs):
        tokens = [int(entry[0]) for chunk in token_weight_pairs for entry in chunk]
        rows = torch.stack([token_embedding(self.name, token, self.width) for token in tokens])[None]
        pooled = None if self.pooled_width is None else torch.full((1, self.pooled_width), float(len(tokens)) / 100)
        return rows, pooled


class ProbeFluxClipModel(comfy.text_encoders.flux.FluxClipModel):
    """ComfyUI's FluxClipModel (its encode orders the outputs) over stand-in CLIP-L and T5-XXL."""

    def __init__(self, device="cpu", dtype=None, model_options={}):
        torch.nn.Module.__init__(self)
        self.clip_l = SeededTokenEncoder("l", CLIP_L_WIDTH, CLIP_L_WIDTH)
        self.t5xxl = SeededTokenEncoder("t5xxl", tfm.T5_WIDTH)
        self.dtypes = {torch.float32}


def probe_sd3_model(clip_l: bool = True, clip_g: bool = True, t5: bool = True):
    class ProbeSD3ClipModel(comfy.text_encoders.sd3_clip.SD3ClipModel):
        """ComfyUI's SD3ClipModel over stand-in CLIP-L, CLIP-G and T5-XXL (those loaded)."""

        def __init__(self, device="cpu", dtype=None, model_options={}):
            torch.nn.Module.__init__(self)
            self.clip_l = SeededTokenEncoder("l", CLIP_L_WIDTH, CLIP_L_WIDTH) if clip_l else None
            self.clip_g = SeededTokenEncoder("g", CLIP_G_WIDTH, CLIP_G_WIDTH) if clip_g else None
            self.t5xxl = SeededTokenEncoder("t5xxl", tfm.T5_WIDTH) if t5 else None
            self.t5_attention_mask = False
            self.dtypes = {torch.float32}

    return ProbeSD3ClipModel


class ProbeChromaClipModel(comfy.text_encoders.pixart_t5.PixArtT5XXL):
    """ComfyUI's PixArtT5XXL (Chroma's text model) over a stand-in T5-XXL."""

    def __init__(self, device="cpu", dtype=None, model_options={}):
        torch.nn.Module.__init__(self)
        self.clip_name = self.clip = "t5xxl"
        self.t5xxl = SeededTokenEncoder("t5xxl", tfm.T5_WIDTH)
        self.dtypes = {torch.float32}


PROBES = {  # family: (text model, ComfyUI tokenizer, the tiny flow model of that family)
    "flux": (ProbeFluxClipModel, comfy.text_encoders.flux.FluxTokenizer, tfm.FLUX_DEV),
    "sd35": (probe_sd3_model(), comfy.text_encoders.sd3_clip.SD3Tokenizer, tfm.SD35),
    "chroma": (ProbeChromaClipModel, comfy.text_encoders.pixart_t5.PixArtTokenizer, tfm.CHROMA),
}


def probe_clip(text_model, tokenizer) -> comfy.sd.CLIP:
    """A real ``comfy.sd.CLIP`` of ``text_model`` (one of the probe models above) and a ComfyUI ``tokenizer``."""
    target = type("ProbeTarget", (), {"params": {}, "clip": text_model, "tokenizer": tokenizer})
    cpu = torch.device("cpu")
    return comfy.sd.CLIP(target, model_options={"dtype": torch.float32, "load_device": cpu, "offload_device": cpu})


def family_clip(family: str) -> comfy.sd.CLIP:
    """The probe CLIP of ``family`` (a key of :data:`PROBES`)."""
    return probe_clip(*PROBES[family][:2])
