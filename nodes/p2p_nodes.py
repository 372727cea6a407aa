"""Nodes: Prompt-to-Prompt editing of an inverted image (edit settings, sampler, guider, word maps).

Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control" (ICLR 2023), on real
images through an INVERSION (null-text, negative-prompt or direct inversion). The source and the
edited prompts run as one batch ``[source, edit_1, ...]``; edited rows take the source's attention.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..attention import (
    DEFAULT_BLEND_LAYER_DOWNSAMPLE,
    DEFAULT_BLEND_START,
    DEFAULT_BLEND_THRESHOLD,
    DEFAULT_CROSS_REPLACE_FRACTION,
    DEFAULT_MAP_STORE_BYTES,
    DEFAULT_SELF_REPLACE_FRACTION,
    SELF_MAX_QUERY_POSITIONS_NULL_TEXT,
    CrossMapStore,
)
from ..attention.joint import LAYOUT_RULES, LAYOUT_SOURCE_QK
from ..inversion.masks import DEFAULT_FEATHER
from ..inversion.null_text import REFERENCE_GUIDANCE
from .attention_patches import P2PGuider
from .errors import InvEditInputError
from .masks import edit_mask, mask_inputs
from .model_info import is_flow_model
from .p2p_prompts import MODE_SWAP, MODES, build_edit_plan
from .sampling import inversion_noise_latent, replay_sampler, sample_with_guider
from .sockets import CATEGORY_EDITING, MAX_CFG, AttentionMapsType, Inversion, P2PEdit, TestbedText
from .word_maps import AttentionMaps, word_map_grid

MEBIBYTE = 2**20
DEFAULT_MAP_BUDGET_MIB = DEFAULT_MAP_STORE_BYTES // MEBIBYTE
MAX_MAP_BUDGET_MIB = 16384
MAX_SELF_QUERIES = 2**20
MAX_DOWNSAMPLE = 64
DEFAULT_CELL_HEIGHT = 96
MAX_CELL_HEIGHT = 1024


class P2PEditSettings(io.ComfyNode):
    """The edit: source and edited prompts tokenized by the model's text encoder, and how to edit."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditP2PEdit",
            display_name="InvEdit P2P Edit (prompts)",
            category=CATEGORY_EDITING,
            description=(
                "Prompt-to-Prompt edit settings (Hertz et al. 2023). Encodes the source prompt (what the inverted "
                "image shows) and one or more edited prompts with the model's own text encoder, and finds every word's "
                "tokens so the edited rows can take the source's attention. Feed it to InvEdit P2P Sample or "
                "InvEdit P2P Guider."
            ),
            inputs=[
                io.MultiType.Input("text_encoder", types=[io.Clip, TestbedText],
                                   tooltip="The CLIP of the checkpoint (or the test-bed's text encoder): tokens must "
                                           "match the model's own tokenizer."),
                io.String.Input("source_prompt", default="a photo of three and seven",
                                tooltip="The prompt the image was inverted with (what it shows)."),
                io.String.Input("edited_prompts", multiline=True, default="a photo of three and one",
                                tooltip="The edited prompt; several lines give several edits, sampled in one batch."),
                io.Combo.Input("mode", options=list(MODES), default=MODE_SWAP,
                               tooltip="word swap: replace words one for one (same word count). refine: add or remove "
                                       "words (tokens aligned). reweight: scale the reweight words' attention (the "
                                       "edited prompt may equal the source)."),
                io.Float.Input("cross_replace", default=DEFAULT_CROSS_REPLACE_FRACTION, min=0.0, max=1.0, step=0.05,
                               round=0.001,
                               tooltip="Fraction of the steps (from the start) in which edited rows take the source's "
                                       "cross-attention maps. Lower lets the edit change the shape more."),
                io.Float.Input("self_replace", default=DEFAULT_SELF_REPLACE_FRACTION, min=0.0, max=1.0, step=0.05,
                               round=0.001,
                               tooltip="Fraction of the steps in which edited rows take the source's self-attention "
                                       "maps (keeps the layout). 0 turns self-attention injection off."),
                io.Int.Input("self_max_pixels", default=SELF_MAX_QUERY_POSITIONS_NULL_TEXT, min=1, max=MAX_SELF_QUERIES,
                             tooltip="Self-attention is injected only in layers with at most this many pixels: 256 "
                                     "(16x16, Prompt-to-Prompt) or 1024 (32x32, the null-text code)."),
                io.String.Input("word_windows", default="",
                                tooltip="Per-word cross-replace windows of the edited prompt, e.g. 'one: 0-0.4' (start-"
                                        "end as fractions of the steps); other words use cross_replace."),
                io.String.Input("reweight", default="",
                                tooltip="Words of the edited prompt with attention scales, e.g. 'seven: 2.0, three: "
                                        "0.5'. Combines with word swap and refine."),
                io.String.Input("blend_words", default="",
                                tooltip="LocalBlend: words per prompt, source first, separated by ';' (e.g. 'seven; "
                                        "one'). Edited rows then change only where these words attend. Empty: off."),
                io.Float.Input("blend_start", default=DEFAULT_BLEND_START, min=0.0, max=1.0, step=0.05, round=0.001,
                               tooltip="LocalBlend starts after this fraction of the steps."),
                io.Float.Input("blend_threshold", default=DEFAULT_BLEND_THRESHOLD, min=0.0, max=1.0, step=0.01,
                               round=0.001, tooltip="LocalBlend mask threshold on the max-normalised word maps."),
                io.Int.Input("blend_layer_downsample", default=DEFAULT_BLEND_LAYER_DOWNSAMPLE, min=1,
                             max=MAX_DOWNSAMPLE,
                             tooltip="LocalBlend reads the layers at latent size / this (4: 16x16 maps of a 512 px "
                                     "SD1.5 image; 2 for the test-bed model)."),
                io.Combo.Input("layout_rule", options=list(LAYOUT_RULES), default=LAYOUT_SOURCE_QK, optional=True,
                               tooltip="Flow transformers (Flux, SD3.5, Qwen-Image, Chroma): how edited rows keep the "
                                       "source's layout during self_replace. 'source image q, k' (Shin et al. 2025): "
                                       "their image queries and keys are the source's. 'source maps': their image "
                                       "queries take the source's attention maps (word maps as the UNet edit). "
                                       "'source image q, k, v': the image values too, so what the prompt does not "
                                       "name stays closer (use a longer self_replace, e.g. 0.75)."),
                io.String.Input("layout_blocks", default="", optional=True,
                                tooltip="Flow transformers: blocks that keep the layout, e.g. 'double 0-3, single 5'. "
                                        "Empty: every block."),
            ],
            outputs=[P2PEdit.Output(display_name="edit",
                                    tooltip="Prompts, per-row conditioning and edit settings.")],
        )

    @classmethod
    def execute(cls, text_encoder, source_prompt, edited_prompts, mode, cross_replace, self_replace, self_max_pixels,
                word_windows, reweight, blend_words, blend_start, blend_threshold,
                blend_layer_downsample, layout_rule=LAYOUT_SOURCE_QK, layout_blocks="") -> io.NodeOutput:
        return io.NodeOutput(build_edit_plan(
            text_encoder, source_prompt, edited_prompts, mode, cross_replace, self_replace, self_max_pixels,
            word_windows, reweight, blend_words, blend_start, blend_threshold, blend_layer_downsample, layout_rule,
            layout_blocks))


def _edit_inputs() -> list:
    return [
        io.Model.Input("model", tooltip="The model the image was inverted with."),
        Inversion.Input("inversion", tooltip="One inverted image (DDIM, null-text, negative-prompt or direct "
                                             "inversion)."),
        P2PEdit.Input("edit", tooltip="From InvEdit P2P Edit (prompts)."),
        io.Float.Input("cfg", default=REFERENCE_GUIDANCE, min=0.0, max=MAX_CFG, step=0.1, round=0.01,
                       tooltip="Guidance; with null-text, the guidance its embeddings were optimised for."),
    ]


def controller_for(model, edit, store=None):
    """The edit's controller for this model: cross attention (UNets) or joint attention (flow transformers)."""
    return edit.joint_controller(store) if is_flow_model(model) else edit.controller(store)


def p2p_mask(mask, inversion, edit, feather: int, what: str):
    """The feathered latent-size mask of a P2P edit (one for all edited prompts, or one per edit), or None."""
    return edit_mask(mask, inversion.trajectory.noise.shape, len(edit.prompts) - 1, feather, what)


def _negative_input() -> io.Conditioning.Input:
    return io.Conditioning.Input("negative", optional=True,
                                 tooltip="Only used when the inversion has no null-text / negative-prompt "
                                         "unconditioning (then it takes its place).")


class P2PSample(io.ComfyNode):
    """Sample the source and the edits of an INVERSION in one batch (deterministic DDIM)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditP2PSample",
            display_name="InvEdit P2P Sample",
            category=CATEGORY_EDITING,
            description=(
                "Prompt-to-Prompt edit of an inverted image: replays the inversion's schedule with deterministic DDIM "
                "for the source row and one row per edited prompt in one batch; edited rows take the source's "
                "attention maps. The source row is the reconstruction; with direct inversion it is pinned to the "
                "image. With a mask, edited rows equal the source row outside it. Also returns the cross-attention maps of every word."
            ),
            inputs=[
                *_edit_inputs(),
                io.Int.Input("map_budget_mib", default=DEFAULT_MAP_BUDGET_MIB, min=0, max=MAX_MAP_BUDGET_MIB,
                             tooltip="Most memory (MiB) for the stored cross-attention maps shown by InvEdit P2P "
                                     "Attention Maps; layers beyond it are not stored. 0 stores none."),
                _negative_input(),
                *mask_inputs(),
            ],
            outputs=[
                io.Latent.Output(display_name="source", tooltip="The source row (the reconstruction)."),
                io.Latent.Output(display_name="edited", tooltip="One row per edited prompt."),
                AttentionMapsType.Output(display_name="maps",
                                         tooltip="Cross-attention maps per word, for InvEdit P2P Attention Maps."),
            ],
        )

    @classmethod
    def execute(cls, model, inversion, edit, cfg, map_budget_mib, negative=None, mask=None,
                mask_feather=DEFAULT_FEATHER) -> io.NodeOutput:
        noise_raw = inversion_noise_latent(model, inversion)
        store = CrossMapStore(max_bytes=map_budget_mib * MEBIBYTE) if map_budget_mib > 0 else None
        guider = P2PGuider(model, inversion, edit.conditioning, controller_for(model, edit, store), negative, cfg,
                           p2p_mask(mask, inversion, edit, mask_feather, "InvEdit P2P Sample"))
        samples = sample_with_guider(guider, noise_raw, replay_sampler(), inversion.sampling_sigmas)
        maps = AttentionMaps.from_store(store if store is not None else CrossMapStore(0), edit.prompts,
                                        noise_raw.shape[-2:])
        return io.NodeOutput({"samples": samples[:1]}, {"samples": samples[1:]}, maps)


class P2PGuiderNode(io.ComfyNode):
    """A GUIDER that runs a P2P edit inside SamplerCustomAdvanced, with any deterministic sampler."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditP2PGuider",
            display_name="InvEdit P2P Guider",
            category=CATEGORY_EDITING,
            description=(
                "Prompt-to-Prompt edit as a GUIDER for SamplerCustomAdvanced: connect Disable Noise, the inversion's "
                "SIGMAS, its noise LATENT and a deterministic sampler (ddim, euler, InvEdit Replay Sampler). The "
                "output batch is the source row followed by one row per edited prompt. LocalBlend and direct "
                "inversion act on each step's result and are exact with one model call per step; so does the mask "
                "(outside it, edited rows equal the source row)."
            ),
            inputs=[*_edit_inputs(), _negative_input(), *mask_inputs()],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, inversion, edit, cfg, negative=None, mask=None, mask_feather=DEFAULT_FEATHER) -> io.NodeOutput:
        return io.NodeOutput(P2PGuider(model, inversion, edit.conditioning, controller_for(model, edit), negative, cfg,
                                       p2p_mask(mask, inversion, edit, mask_feather, "InvEdit P2P Guider")))


class P2PAttentionMaps(io.ComfyNode):
    """Each word's cross-attention map as an image grid (rows: prompts, columns: words)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InvEditP2PAttentionMaps",
            display_name="InvEdit P2P Attention Maps",
            category=CATEGORY_EDITING,
            description=(
                "Renders where each word attends during a Prompt-to-Prompt edit: the cross-attention maps stored by "
                "InvEdit P2P Sample, averaged over heads, steps and the layers of one size, one cell per word "
                "(brightest = most attention), one row per prompt (source first)."
            ),
            inputs=[
                AttentionMapsType.Input("maps", tooltip="From InvEdit P2P Sample."),
                io.Int.Input("layer_downsample", default=DEFAULT_BLEND_LAYER_DOWNSAMPLE, min=0, max=MAX_DOWNSAMPLE,
                             tooltip="Show the layers at latent size / this (4: 16x16 maps of a 512 px SD1.5 image, "
                                     "2 for the test-bed). 0 averages every stored layer."),
                io.Int.Input("cell_height", default=DEFAULT_CELL_HEIGHT, min=8, max=MAX_CELL_HEIGHT,
                             tooltip="Height in pixels of each word's cell."),
                io.Boolean.Input("labels", default=True, tooltip="Write each word under its map."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, maps: AttentionMaps, layer_downsample, cell_height, labels) -> io.NodeOutput:
        if not maps.sizes():
            raise InvEditInputError(
                "No attention maps were stored: raise InvEdit P2P Sample's map_budget_mib above 0.")
        aggregated = maps.aggregate(layer_downsample)
        if aggregated is None:
            sizes = ", ".join(f"{h}x{w}" for h, w in maps.sizes()) or "none"
            raise InvEditInputError(
                f"No cross-attention maps of that size were stored (stored layer sizes: {sizes}; latent "
                f"{maps.latent_shape[0]}x{maps.latent_shape[1]}). Pick another layer_downsample (0 = all layers), or "
                "raise map_budget_mib on InvEdit P2P Sample."
            )
        return io.NodeOutput(word_map_grid(maps.prompts, aggregated, cell_height, labels)[None])


NODES = [P2PEditSettings, P2PSample, P2PGuiderNode, P2PAttentionMaps]
