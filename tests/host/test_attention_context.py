"""Reading ComfyUI's attention replace-patch options into the library's AttentionContext."""

from __future__ import annotations

import pytest
import torch

from invedit.attention import AttentionContext, AttentionSite
from invedit.nodes.attention_patches import context_from_extra_options


def test_context_from_comfyui_extra_options():
    extra = {
        "block": ("output", 4),
        "block_index": 1,
        "n_heads": 8,
        "cond_or_uncond": [1, 0],
        "activations_shape": [4, 640, 16, 24],
        "original_shape": [2, 4, 64, 96],
        "attn_precision": torch.float32,
    }
    context = context_from_extra_options(extra, is_cross=True, step=3, n_steps=50)
    assert context == AttentionContext(
        AttentionSite(("output", 4), 1, True, 8, (16, 24)), 3, 50, (1, 0), (64, 96), torch.float32
    )
    assert context.site.query_positions == 384
    assert context.rows_per_chunk(6) == 3 and context.cond_chunk_starts(6) == [3]
    with pytest.raises(ValueError, match="do not split into 2 chunks"):
        context.rows_per_chunk(5)
    with pytest.raises(ValueError, match="step index"):
        AttentionContext(context.site, 50, 50, (0,))
