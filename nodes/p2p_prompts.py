"""Prompts of a Prompt-to-Prompt edit, tokenized by the model's own text encoder, and the edit plan.

Two text encoders are understood: a ComfyUI CLIP and the test-bed's own encoder
(``INVEDIT_TESTBED_TEXT``). Each gives, per prompt, the token ids as they sit in the model's text
keys, the decoded piece of every token (``None`` for start/end/padding tokens) and the encoded
CONDITIONING; the pure library (:class:`~invedit.attention.TokenizedPrompt`) maps words to key
positions from those. Which of a CLIP's tokenizations become the text keys is one rule per text
encoder (:func:`text_key_tokenizations`): SD1.x / SD2.x / SDXL cross attention reads the CLIP
tokens (75-token chunks); Flux's joint attention the T5 tokens (CLIP-L gives only the pooled
vector); Chroma's the T5 tokens; SD3's the CLIP-L/G tokens, then the T5 tokens.

:class:`EditPlan` bundles what the sampling nodes need: the prompts, one conditioning row per
batch row and the controller settings; :func:`build_edit_plan` makes one from node inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from ..attention import (
    CrossMapStore,
    CrossSchedule,
    LocalBlend,
    PromptEdit,
    PromptEditError,
    PromptToPrompt,
    Refine,
    Reweight,
    SelfInjection,
    StepWindow,
    TokenizedPrompt,
    WordSwap,
)
from ..attention.joint import LAYOUT_RULES, LAYOUT_SOURCE_QK, JointPromptToPrompt, LayoutInjection
from .errors import InvEditInputError

JOINT_MAP_DOWNSAMPLE = 2
"""Flux, Chroma, SD3 and Qwen-Image patch the latent 2x2: their word maps are the latent / 2."""
MODE_SWAP = "word swap"
MODE_REFINE = "refine"
MODE_REWEIGHT = "reweight"
MODES = (MODE_SWAP, MODE_REFINE, MODE_REWEIGHT)

NEUTRAL_WEIGHT = 1.0
"""ComfyUI's token weight without (word:weight) emphasis."""
NON_WORD_ID = 0
"""ComfyUI's word id of start, end and padding tokens."""


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt as the model sees it: tokens, pieces and its one-row CONDITIONING."""

    prompt: TokenizedPrompt
    context: torch.Tensor
    options: dict


def _edit_error(error: PromptEditError) -> InvEditInputError:
    return InvEditInputError(str(error))


def _is_testbed_encoder(text_encoder) -> bool:
    return hasattr(text_encoder, "token_embedding") and hasattr(text_encoder, "encode")


def _is_clip(text_encoder) -> bool:
    return all(hasattr(text_encoder, name) for name in ("tokenize", "encode_from_tokens_scheduled", "tokenizer"))


def encode_testbed(text_encoder, text: str) -> EncodedPrompt:
    """A prompt through the test-bed's closed-vocabulary tokenizer and embedding."""
    from ..testbed import vocabulary

    try:
        token_ids = vocabulary.tokenize(text)
    except vocabulary.UnknownWordError as error:
        raise InvEditInputError(str(error)) from error
    pieces = [None if token == vocabulary.PAD_ID else vocabulary.VOCABULARY[token] for token in token_ids]
    with torch.no_grad():
        context = text_encoder(torch.tensor([token_ids], device=text_encoder.token_embedding.device))
    try:
        prompt = TokenizedPrompt.from_pieces(text, token_ids, pieces)
    except PromptEditError as error:
        raise _edit_error(error) from error
    context = context.detach().float().cpu()
    pool = getattr(text_encoder, "pool", None)  # the flow test-bed's encoder adds Flux's pooled vector
    return EncodedPrompt(prompt, context, {} if pool is None else {"pooled_output": pool(context)})


T5_TOKENS = "t5xxl"
"""ComfyUI's name of the T5-XXL tokenization (Flux, SD3, Chroma)."""
CLIP_TOKENS = ("l", "g")
"""ComfyUI's names of the CLIP-L and CLIP-G tokenizations, in SD3's channel order."""
T5_MIN_LENGTH_OPTION = T5_TOKENS + "_min_length"
"""The tokenizer option that pads the T5 tokens to at least this many (ComfyUI's T5 tokenizers)."""


def _sub_tokenizer(clip, name: str):
    """The tokenizer of one tokenization (``clip_l`` for ``"l"``, ``t5xxl``...) inside ComfyUI's composite."""
    tokenizer = clip.tokenizer
    return getattr(tokenizer, f"clip_{name}", None) or getattr(tokenizer, name, None) or tokenizer


def _encoder_loaded(clip, name: str) -> bool:
    """False only when the CLIP says it has no encoder for tokenization ``name`` (SD3 without T5)."""
    model = getattr(clip, "cond_stage_model", None)
    for attribute in (f"clip_{name}", name):
        if hasattr(model, attribute):
            return getattr(model, attribute) is not None
    return True


def text_key_tokenizations(clip, names) -> tuple[tuple[str, ...], ...]:
    """The tokenizations whose tokens are the model's text keys, in key order, grouped by layout.

    Each group is tokenizations that share one token layout and give one key row per token
    together (SDXL's CLIP-L and CLIP-G rows are concatenated along the channels).

    Raises:
        InvEditInputError: the text encoder is one whose key layout is not known here.
    """
    names = frozenset(names)
    if T5_TOKENS not in names:
        return (tuple(sorted(names)),)  # SD1.x, SD2.x, SDXL: the CLIP tokens, every tokenization alike
    if names in ({"l", T5_TOKENS}, {T5_TOKENS}):
        return ((T5_TOKENS,),)  # Flux (CLIP-L only gives the pooled vector), Chroma, PixArt
    if names == {*CLIP_TOKENS, T5_TOKENS}:  # SD3: the CLIP-L/G rows, then the T5 rows (those loaded)
        clip_names = tuple(name for name in CLIP_TOKENS if _encoder_loaded(clip, name))
        groups = ((clip_names,) if clip_names else ()) + (((T5_TOKENS,),) if _encoder_loaded(clip, T5_TOKENS) else ())
        return groups or ((T5_TOKENS,),)
    raise InvEditInputError(
        f"Prompt-to-Prompt reads word positions from CLIP and T5 tokenizers (SD1.x, SD2.x, SDXL, Flux, SD3.5, "
        f"Chroma); this text encoder tokenizes into {sorted(names)}. Use one of those models' text encoders."
    )


def _clip_piece(tokenizer, token: int) -> str:
    """The decoded vocabulary entry of one token (``"cat</w>"``, ``"▁cat"``)."""
    return tokenizer.untokenize([(token, NEUTRAL_WEIGHT)])[0][1]


def _plain_words(text: str, entries: list) -> None:
    """Refuse embeddings and (word:weight) emphasis, which Prompt-to-Prompt cannot place."""
    if any(not isinstance(entry[0], int) for entry in entries):
        raise InvEditInputError(
            f"The prompt {text!r} uses a textual-inversion embedding; Prompt-to-Prompt needs plain words so it "
            "can find each word's tokens. Write the words out instead of embedding:name."
        )
    if any(float(entry[1]) != NEUTRAL_WEIGHT for entry in entries):
        raise InvEditInputError(
            f"The prompt {text!r} uses (word:weight) emphasis or brackets. Prompt-to-Prompt finds words by "
            "their tokens and reweights attention itself: remove the brackets and use the edit's reweight input."
        )


def _key_tokenization(clip, text: str, tokens: dict, group: tuple[str, ...]) -> tuple[list[int], list]:
    """``(token ids, pieces)`` of one group of tokenizations that share a layout."""
    flat = {name: [entry for chunk in tokens[name] for entry in chunk] for name in group}
    for entries in flat.values():
        _plain_words(text, entries)
    first = group[0]
    layout = [entry[2] != NON_WORD_ID for entry in flat[first]]
    for name in group[1:]:
        if [entry[2] != NON_WORD_ID for entry in flat[name]] != layout:
            raise InvEditInputError(
                f"The text encoder's tokenizers {first!r} and {name!r} place the words of {text!r} at different "
                "key positions; Prompt-to-Prompt needs one token layout per key row."
            )
    token_ids = [int(entry[0]) for entry in flat[first]]
    tokenizer = _sub_tokenizer(clip, first)
    return token_ids, [_clip_piece(tokenizer, token) if is_word else None for token, is_word in zip(token_ids, layout)]


@dataclass(frozen=True)
class ClipTokens:
    """A prompt tokenized by a ComfyUI CLIP: its text keys and the tokens to encode."""

    prompt: TokenizedPrompt
    tokens: dict

    @property
    def t5_length(self) -> int:
        """T5 tokens of the prompt (0: none)."""
        return sum(len(chunk) for chunk in self.tokens.get(T5_TOKENS, ()))


def tokenize_clip(clip, text: str, t5_min_length: int | None = None) -> ClipTokens:
    """A prompt's text keys under a ComfyUI CLIP (:func:`text_key_tokenizations`).

    Raises:
        InvEditInputError: the prompt uses emphasis or an embedding, the text encoder's tokenizers
            disagree about the positions, or ComfyUI's tokenizer rewrote the prompt.
    """
    options = {} if t5_min_length is None else {"tokenizer_options": {T5_MIN_LENGTH_OPTION: t5_min_length}}
    tokens = clip.tokenize(text, return_word_ids=True, **options)
    segments = [_key_tokenization(clip, text, tokens, group) for group in text_key_tokenizations(clip, tokens)]
    try:
        prompt = TokenizedPrompt.from_segments(text, segments)
    except PromptEditError as error:
        raise InvEditInputError(
            f"{error} (ComfyUI's tokenizer rewrote the prompt {text!r}: write it without special characters.)"
        ) from error
    return ClipTokens(prompt, tokens)


def encode_clip_tokens(clip, tokenized: ClipTokens) -> EncodedPrompt:
    """Encode a tokenized prompt; its context has one row per text key.

    Raises:
        InvEditInputError: the CLIP carries scheduled hooks, or its context rows are not the keys
            the tokenizations say.
    """
    conditioning = clip.encode_from_tokens_scheduled(tokenized.tokens)
    if len(conditioning) != 1:
        raise InvEditInputError(
            "The CLIP carries scheduled hooks (several conditionings per prompt); Prompt-to-Prompt needs one: "
            "remove the CLIP hook nodes."
        )
    context, options = conditioning[0]
    prompt = tokenized.prompt
    if context.shape[1] != len(prompt.token_ids):
        raise InvEditInputError(
            f"The text encoder gave {context.shape[1]} context rows for the {len(prompt.token_ids)} text-key tokens "
            f"of {prompt.text!r}; Prompt-to-Prompt needs one context row per token (the text encoders of SD1.x, "
            "SD2.x, SDXL, Flux, SD3.5 or Chroma)."
        )
    return EncodedPrompt(prompt, context, dict(options))


def encode_clip(clip, text: str) -> EncodedPrompt:
    """A prompt through a ComfyUI CLIP: its tokens as they sit in the model's text keys, and its encoding."""
    return encode_clip_tokens(clip, tokenize_clip(clip, text))


def encode_clip_prompts(clip, texts: Sequence[str]) -> list[EncodedPrompt]:
    """Prompts (source first) through a ComfyUI CLIP, edited prompts' T5 tokens padded to the source's.

    Flux pads T5 to 256 tokens and SD3 to 77; Chroma's T5 does not pad, so a shorter edited prompt
    gets the T5 tokenizer's padding up to the source's length (and batches with it). The source is
    never re-tokenized: it must encode as it did for the inversion.

    Raises:
        InvEditInputError: an edited prompt takes more T5 tokens than the source prompt.
    """
    tokenized = [tokenize_clip(clip, text) for text in texts]
    source_length = tokenized[0].t5_length
    for text, tokens in zip(texts[1:], tokenized[1:]):
        if tokens.t5_length > source_length:
            raise InvEditInputError(
                f"The edited prompt {text!r} takes {tokens.t5_length} T5 tokens, the source prompt {texts[0]!r} "
                f"{source_length}; the rows batch only at one length. Shorten the edited prompt, or pad the source: "
                f"put ComfyUI's T5TokenizerOptions (t5xxl min_length >= {tokens.t5_length}) on the CLIP that feeds "
                "both the inversion's prompt and P2P Edit."
            )
    tokenized = [tokenized[0], *(tokenize_clip(clip, text, t5_min_length=source_length) if t.t5_length < source_length
                                 else t for text, t in zip(texts[1:], tokenized[1:]))]
    return [encode_clip_tokens(clip, t) for t in tokenized]


def encode_prompts(text_encoder, texts: Sequence[str]) -> list[EncodedPrompt]:
    """Tokenize and encode ``texts`` (source first) with a ComfyUI CLIP or the test-bed text encoder."""
    if _is_testbed_encoder(text_encoder):
        return [encode_testbed(text_encoder, text) for text in texts]
    if _is_clip(text_encoder):
        return encode_clip_prompts(text_encoder, texts)
    raise InvEditInputError(
        f"Expected a CLIP (Load Checkpoint) or the test-bed's text encoder, got {type(text_encoder).__name__}."
    )


def batch_conditioning(encoded: Sequence[EncodedPrompt]) -> list:
    """One CONDITIONING whose context (and pooled output) has one row per prompt, source first.

    Raises:
        InvEditInputError: the prompts encode to contexts of different lengths or widths.
    """
    shapes = [tuple(e.context.shape[1:]) for e in encoded]
    if len(set(shapes)) != 1:
        lengths = ", ".join(f"{e.prompt.text!r}: {e.context.shape[1]} tokens" for e in encoded)
        raise InvEditInputError(
            f"The prompts encode to contexts of different lengths ({lengths}). A prompt longer than 75 tokens takes "
            "another 77-token chunk: shorten the longer prompt or lengthen the shorter one so that all prompts "
            "take the same number of chunks."
        )
    context = torch.cat([e.context for e in encoded])
    options = dict(encoded[0].options)
    pooled = [e.options.get("pooled_output") for e in encoded]
    if all(p is not None for p in pooled):
        options["pooled_output"] = torch.cat(pooled)
    return [[context, options]]


# --------------------------------------------------------------------------------------------
# Word lists written in node inputs


def parse_word_values(text: str, what: str, example: str) -> dict[str, str]:
    """``"word: value, two words: value"`` -> ``{word: value}`` (entries separated by commas)."""
    values: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        word, sep, value = entry.rpartition(":")
        if not sep or not word.strip() or not value.strip():
            raise InvEditInputError(f"Could not read {entry!r} in the {what}: write entries like {example!r}.")
        values[word.strip()] = value.strip()
    return values


def parse_reweight(text: str) -> dict[str, float]:
    """``"fluffy: 2, red: 0.5"`` -> scales per word."""
    values = parse_word_values(text, "reweight words", "fluffy: 2.0, red: 0.5")
    try:
        return {word: float(value) for word, value in values.items()}
    except ValueError as error:
        raise InvEditInputError(f"A reweight scale is not a number ({error}): write e.g. 'fluffy: 2.0'.") from error


def parse_windows(text: str) -> dict[str, tuple[float, float]]:
    """``"tiger: 0-0.4, hat: 0.2-1"`` -> per-word step windows (fractions of the run)."""
    windows = {}
    for word, value in parse_word_values(text, "word windows", "tiger: 0-0.4").items():
        start, sep, end = value.partition("-")
        try:
            windows[word] = (float(start), float(end)) if sep else (0.0, float(start))
        except ValueError as error:
            raise InvEditInputError(
                f"The window {value!r} of {word!r} is not 'start-end' (fractions of the steps, e.g. 0-0.4)."
            ) from error
        if not 0.0 <= windows[word][0] <= windows[word][1] <= 1.0:
            raise InvEditInputError(f"The window of {word!r} must satisfy 0 <= start <= end <= 1; got {value!r}.")
    return windows


BLOCK_KINDS = {"double": "double_block", "single": "single_block"}
ALL_BLOCKS = ""


def parse_blocks(text: str) -> Optional[frozenset[tuple[str, int]]]:
    """``"double 0-3, single 5"`` -> joint-attention block keys (``""``: every block, None)."""
    if not text.strip():
        return None
    keys = set()
    for part in text.split(","):
        kind, _, indices = part.strip().partition(" ")
        start, sep, end = indices.strip().partition("-")
        try:
            first, last = int(start), int(end) if sep else int(start)
        except ValueError:
            first, last = -1, -1
        if kind not in BLOCK_KINDS or not 0 <= first <= last:
            raise InvEditInputError(
                f"Layout blocks are 'double' or 'single' with an index or a range, separated by commas (e.g. "
                f"'double 0-3, single 5'); empty means every block. Could not read {part.strip()!r}.")
        keys.update((BLOCK_KINDS[kind], index) for index in range(first, last + 1))
    return frozenset(keys)


def parse_blend_words(text: str, rows: int) -> Optional[list[list[str]]]:
    """``"cat; tiger"`` -> blend words per prompt (source first); one group applies to every prompt."""
    if not text.strip():
        return None
    groups = [[w.strip() for w in group.split(",") if w.strip()] for group in text.split(";")]
    if len(groups) == 1:
        groups = groups * rows
    if len(groups) != rows or not all(groups):
        raise InvEditInputError(
            f"Give the blend words as one group per prompt, source first, separated by ';' (e.g. 'cat; tiger'), "
            f"or a single group for all prompts; got {len(groups)} group(s) for {rows} prompts."
        )
    return groups


# --------------------------------------------------------------------------------------------
# The edit plan


@dataclass(frozen=True)
class BlendSettings:
    """LocalBlend settings: words per prompt (source first) and the mask rule."""

    words: tuple[tuple[str, ...], ...]
    start: float
    threshold: float
    layer_downsample: int


@dataclass(frozen=True)
class EditPlan:
    """A Prompt-to-Prompt edit ready to sample (the ``INVEDIT_P2P_EDIT`` value).

    Attributes:
        prompts: source first, then one per edited row.
        conditioning: CONDITIONING with one context row per prompt (``[1+E, L, D]``).
        edits: per edited row, its cross-attention edit and schedule.
        self_injection: self-attention injection, or None.
        blend: LocalBlend settings, or None.
        settings: the node inputs it was made from (JSON-able).
    """

    prompts: tuple[TokenizedPrompt, ...]
    conditioning: list
    edits: tuple[PromptEdit, ...]
    self_injection: Optional[SelfInjection]
    blend: Optional[BlendSettings]
    settings: dict[str, Any] = field(default_factory=dict)
    layout: Optional[LayoutInjection] = None

    @property
    def rows(self) -> int:
        """Batch rows: the source and one per edited prompt."""
        return len(self.prompts)

    def controller(self, map_store: Optional[CrossMapStore] = None) -> PromptToPrompt:
        """A fresh controller for one sampling run (its LocalBlend and store start empty)."""
        local_blend = None
        if self.blend is not None:
            local_blend = LocalBlend.from_words(self.prompts, [list(w) for w in self.blend.words],
                                                start=self.blend.start, threshold=self.blend.threshold,
                                                layer_downsample=self.blend.layer_downsample)
        return PromptToPrompt(self.edits, self_injection=self.self_injection, local_blend=local_blend,
                              map_store=map_store)

    def joint_controller(self, map_store: Optional[CrossMapStore] = None) -> JointPromptToPrompt:
        """A fresh controller for the joint attention of a flow transformer (one sampling run).

        LocalBlend reads the blend words' text-query maps over the image patches, which are the latent
        / :data:`JOINT_MAP_DOWNSAMPLE` in every family (``blend_layer_downsample`` is for UNets).
        """
        local_blend = None
        if self.blend is not None:
            local_blend = LocalBlend.from_words(self.prompts, [list(w) for w in self.blend.words],
                                                start=self.blend.start, threshold=self.blend.threshold,
                                                layer_downsample=JOINT_MAP_DOWNSAMPLE)
        return JointPromptToPrompt(self.edits, layout=self.layout, local_blend=local_blend, map_store=map_store)


def _cross_edit(mode: str, source: TokenizedPrompt, target: TokenizedPrompt, scales: Mapping[str, float]):
    if mode == MODE_SWAP:
        base = WordSwap.from_prompts(source, target)
    elif mode == MODE_REFINE:
        base = Refine.from_prompts(source, target)
    elif mode == MODE_REWEIGHT:
        if not scales:
            raise PromptEditError("Reweight mode needs reweight words with their scales, e.g. 'seven: 2.0'.")
        base = None if source.token_ids == target.token_ids else Refine.from_prompts(source, target)
    else:
        raise InvEditInputError(f"Unknown mode {mode!r}; pick one of {MODES}.")
    return Reweight.from_words(target, scales, base) if scales else base


def build_edit_plan(text_encoder, source_prompt: str, target_prompts: str, mode: str, cross_replace: float,
                    self_replace: float, self_max_queries: int, word_windows: str = "", reweight: str = "",
                    blend_words: str = "", blend_start: float = 0.2, blend_threshold: float = 0.3,
                    blend_layer_downsample: int = 4, layout_rule: str = LAYOUT_SOURCE_QK,
                    layout_blocks: str = ALL_BLOCKS) -> EditPlan:
    """An :class:`EditPlan` from the edit node's inputs (see the node's tooltips).

    Raises:
        InvEditInputError: with a message that says what to change (word counts of a swap, words
            missing from a prompt, prompts that tokenize differently, contexts of different lengths).
    """
    targets = [line.strip() for line in target_prompts.splitlines() if line.strip()]
    if not source_prompt.strip() or not targets:
        raise InvEditInputError("Write the source prompt and at least one edited prompt (one per line).")
    encoded = encode_prompts(text_encoder, [source_prompt.strip(), *targets])
    source = encoded[0].prompt
    scales = parse_reweight(reweight)
    windows = parse_windows(word_windows)
    try:
        edits = tuple(
            PromptEdit(_cross_edit(mode, source, e.prompt, scales),
                       CrossSchedule.from_words(e.prompt, StepWindow(0.0, cross_replace), windows))
            for e in encoded[1:]
        )
        groups = parse_blend_words(blend_words, len(encoded))
        blend = None
        if groups is not None:
            blend = BlendSettings(tuple(tuple(g) for g in groups), blend_start, blend_threshold, blend_layer_downsample)
            LocalBlend.from_words([e.prompt for e in encoded], groups)  # checks the words now, not while sampling
    except PromptEditError as error:
        raise _edit_error(error) from error
    self_injection, layout = None, None
    if layout_rule not in LAYOUT_RULES:
        raise InvEditInputError(f"Unknown layout rule {layout_rule!r}; pick one of {LAYOUT_RULES}.")
    if self_replace > 0.0:
        self_injection = SelfInjection(StepWindow(0.0, self_replace), self_max_queries)
        layout = LayoutInjection(layout_rule, StepWindow(0.0, self_replace), parse_blocks(layout_blocks))
    settings = {"source_prompt": source_prompt, "target_prompts": targets, "mode": mode,
                "cross_replace": cross_replace, "self_replace": self_replace, "self_max_queries": self_max_queries,
                "word_windows": word_windows, "reweight": reweight, "blend_words": blend_words,
                "blend_start": blend_start, "blend_threshold": blend_threshold,
                "blend_layer_downsample": blend_layer_downsample, "layout_rule": layout_rule,
                "layout_blocks": layout_blocks}
    return EditPlan(tuple(e.prompt for e in encoded), batch_conditioning(encoded), edits, self_injection, blend,
                    settings, layout)
