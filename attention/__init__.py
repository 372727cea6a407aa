"""Pure-torch attention controllers of InvEdit (Prompt-to-Prompt; no ComfyUI imports).

Hertz et al., "Prompt-to-Prompt Image Editing with Cross Attention Control" (ICLR 2023), on real
images as in Mokady et al., "Null-text Inversion for Editing Real Images using Guided Diffusion
Models" (CVPR 2023).

Typical use (an adapter turns ComfyUI's replace-patch arguments into an :class:`AttentionContext`)::

    source = TokenizedPrompt.from_pieces(text, token_ids, pieces)        # per prompt
    edit = PromptEdit(WordSwap.from_prompts(source, target), CrossSchedule.from_words(target, 0.8))
    controller = PromptToPrompt([edit], self_injection=SelfInjection(),
                                local_blend=LocalBlend.from_words([source, target], (["cat"], ["tiger"])))
    out = controller(q, k, v, context)          # in every attention layer
    x = controller.blend(x, step, n_steps)      # after every sampling step
    controller.reset()                          # before the next run
"""

from .blend import (
    DEFAULT_BLEND_LAYER_DOWNSAMPLE,
    DEFAULT_BLEND_POOL_SIZE,
    DEFAULT_BLEND_START,
    DEFAULT_BLEND_THRESHOLD,
    DEFAULT_SUBTRACT_THRESHOLD,
    LocalBlend,
    layer_shape,
)
from .context import COND, UNCOND, AttentionContext, AttentionSite
from .controller import (
    DEFAULT_SELF_REPLACE_FRACTION,
    SELF_MAX_QUERY_POSITIONS_NULL_TEXT,
    SELF_MAX_QUERY_POSITIONS_PTP,
    PromptEdit,
    PromptToPrompt,
    SelfInjection,
)
from .edits import DEFAULT_CROSS_REPLACE_FRACTION, CrossEdit, CrossSchedule, Refine, Reweight, StepWindow, WordSwap
from .store import DEFAULT_MAP_STORE_BYTES, CrossMapStore
from .tokens import (
    NEW_TOKEN,
    PromptEditError,
    TokenizedPrompt,
    align_tokens,
    prompt_words,
    swapped_word_indices,
    word_token_positions,
)

__all__ = [
    "COND",
    "DEFAULT_BLEND_LAYER_DOWNSAMPLE",
    "DEFAULT_BLEND_POOL_SIZE",
    "DEFAULT_BLEND_START",
    "DEFAULT_BLEND_THRESHOLD",
    "DEFAULT_CROSS_REPLACE_FRACTION",
    "DEFAULT_MAP_STORE_BYTES",
    "DEFAULT_SELF_REPLACE_FRACTION",
    "DEFAULT_SUBTRACT_THRESHOLD",
    "NEW_TOKEN",
    "SELF_MAX_QUERY_POSITIONS_NULL_TEXT",
    "SELF_MAX_QUERY_POSITIONS_PTP",
    "UNCOND",
    "AttentionContext",
    "AttentionSite",
    "CrossEdit",
    "CrossMapStore",
    "CrossSchedule",
    "LocalBlend",
    "PromptEdit",
    "PromptEditError",
    "PromptToPrompt",
    "Refine",
    "Reweight",
    "SelfInjection",
    "StepWindow",
    "TokenizedPrompt",
    "WordSwap",
    "align_tokens",
    "layer_shape",
    "prompt_words",
    "word_token_positions",
]
