"""LocalBlend: hand-worked masks, the null-text code's rule on random maps, and a controller run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_attention_tokens import clip_prompt

from invedit.attention import (
    AttentionContext,
    AttentionSite,
    CrossSchedule,
    LocalBlend,
    PromptEdit,
    PromptEditError,
    PromptToPrompt,
    WordSwap,
    layer_shape,
)

LAYER = AttentionSite(("input", 7), 0, True, 2, (4, 4))  # 4x4 maps of a 16x16 latent: downsample 4
LATENT = (16, 16)


def spot_maps(rows: int, keys: int, spots) -> torch.Tensor:
    """``[rows, 16, keys]`` maps (a 4x4 layer), zero except ``(row, key, y, x, value)`` spots."""
    maps = torch.zeros(rows, 4, 4, keys)
    for row, key, y, x, value in spots:
        maps[row, y, x, key] = value
    return maps.view(rows, 16, keys)


def test_hand_worked_mask_and_blend():
    # Source word (key 2): a peak 1 at (0, 0) and 0.2 at (3, 3); edit word (key 3): a peak at (3, 3).
    blend = LocalBlend([(2,), (3,)], start=0.0)
    blend.accumulate(LAYER, spot_maps(2, 5, [(0, 2, 0, 0, 1.0), (0, 2, 3, 3, 0.2), (1, 3, 3, 3, 1.0)]))
    mask = blend.mask(LATENT)
    # 3x3 max-pool spreads each peak over a 2x2 corner of the 4x4 map, which is 8x8 latent pixels;
    # the source's 0.2 is below 0.3 of its maximum. The edit's mask joins the source's.
    source_mask, edit_mask = torch.zeros(16, 16), torch.zeros(16, 16)
    source_mask[:8, :8] = 1.0
    edit_mask[:8, :8] = edit_mask[8:, 8:] = 1.0
    assert torch.equal(mask[:, 0], torch.stack([source_mask, edit_mask]))
    x = torch.stack([torch.zeros(4, 16, 16), torch.ones(4, 16, 16)])
    blended = blend.apply(x, step=0, n_steps=10)
    assert torch.equal(blended[0], x[0]) and torch.equal(blended[1], edit_mask.expand(4, 16, 16))


def test_subtract_words_cut_their_region_without_pooling():
    blend = LocalBlend([(2,), (3,)], subtract=[(), (4,)], start=0.0)
    spots = [(0, 2, 0, 0, 1.0), (1, 3, 3, 3, 1.0), (1, 4, 0, 1, 1.0)]  # subtract word at (0, 1)
    blend.accumulate(LAYER, spot_maps(2, 5, spots))
    edit_mask = torch.zeros(16, 16)
    edit_mask[:8, :8] = edit_mask[8:, 8:] = 1.0
    edit_mask[:4, 4:8] = 0.0  # one 4x4 latent cell, not widened by the pool
    assert torch.equal(blend.mask(LATENT)[1, 0], edit_mask)


def test_blend_starts_at_its_step_and_resets():
    blend = LocalBlend([(1,), (1,)])  # default start: int(0.2 * n_steps)
    x = torch.randn(2, 4, 16, 16)
    assert blend.apply(x, 3, 10) is x  # no maps yet
    blend.accumulate(LAYER, spot_maps(2, 3, [(0, 1, 1, 1, 1.0)]))
    assert blend.apply(x, 1, 10) is x
    assert not torch.equal(blend.apply(x, 2, 10), x)
    blend.reset()
    assert blend.layers_seen == 0 and blend.mask(LATENT) is None and blend.apply(x, 5, 10) is x


def null_text_mask(maps, alpha_layers, threshold, pool, latent_shape):
    """The null-text code's ``get_mask``: maps ``[rows, layers * heads, h, w, keys]``."""
    maps = (maps * alpha_layers[:, None, None, None, :]).sum(-1).mean(1)[:, None]
    if pool:
        maps = F.max_pool2d(maps, (3, 3), (1, 1), padding=(1, 1))
    mask = F.interpolate(maps, size=latent_shape)
    mask = mask / mask.max(2, keepdim=True)[0].max(3, keepdim=True)[0]
    mask = mask.gt(threshold)
    return mask[:1] + mask


def test_mask_matches_the_null_text_rule_on_random_maps():
    generator = torch.Generator().manual_seed(0)
    layers, heads, keys = 5, 2, 7
    maps = torch.softmax(3 * torch.randn(2, layers, heads, 16, keys, generator=generator), dim=-1)
    words, subtract = [(2, 3), (4,)], [(5,), (6,)]
    blend = LocalBlend(words, subtract, start=0.0)
    for layer in range(layers):
        blend.accumulate(LAYER, maps[:, layer].mean(1))
    grid = maps.view(2, layers * heads, 4, 4, keys)
    alpha, alpha_subtract = torch.zeros(2, keys), torch.zeros(2, keys)
    for row in range(2):
        alpha[row, list(words[row])] = 1.0
        alpha_subtract[row, list(subtract[row])] = 1.0
    expected = null_text_mask(grid, alpha, 0.3, True, LATENT) & ~null_text_mask(grid, alpha_subtract, 0.3, False, LATENT)
    mask = blend.mask(LATENT)
    assert torch.equal(mask.bool(), expected)
    assert 0 < int(mask.sum()) < mask.numel()  # a real partial mask, not a trivial one


def test_controller_feeds_only_the_blend_layers():
    source, target = clip_prompt("a cat sitting"), clip_prompt("a dog sitting")
    edit = PromptEdit(WordSwap.from_prompts(source, target), CrossSchedule.from_words(target, 1.0))
    blend = LocalBlend.from_words([source, target], (["cat"], ["dog"]), start=0.0)
    controller = PromptToPrompt([edit], local_blend=blend)
    generator = torch.Generator().manual_seed(1)
    keys, heads, dim = 8, 2, 4
    expected_sum = torch.zeros(2, 4, 4)
    for step in range(2):
        for query_shape in [(4, 4), (8, 8), (4, 4)]:  # the 8x8 layer is not a blend layer
            site = AttentionSite(("output", 4), 0, True, heads, query_shape)
            n_query = query_shape[0] * query_shape[1]
            q = torch.randn(4, n_query, heads * dim, generator=generator)
            k, v = torch.randn(2, 4, keys, heads * dim, generator=generator)
            controller(q, k, v, AttentionContext(site, step, 2, (1, 0), latent_shape=LATENT))
            if query_shape == (4, 4):
                qh = q[2].view(n_query, heads, dim).transpose(0, 1)
                kh = k[2].view(keys, heads, dim).transpose(0, 1)
                source_maps = torch.softmax(qh @ kh.transpose(-1, -2) * dim**-0.5, -1).mean(0)
                # The dog row takes the source's maps (1:1 swap, window on): both rows see "cat".
                expected_sum += source_maps[:, 2].view(4, 4)
    assert blend.layers_seen == 4
    expected = torch.zeros(2, 1, 16, 16, dtype=torch.bool)
    pooled = F.max_pool2d(expected_sum[:, None] / 4, 3, 1, 1)
    resized = F.interpolate(pooled, size=LATENT)
    expected = resized / resized.amax((2, 3), keepdim=True) > 0.3
    assert torch.equal(blend.mask(LATENT).bool(), expected | expected[:1])
    controller.reset()
    assert blend.layers_seen == 0


def test_blend_set_up_errors():
    source, target = clip_prompt("a cat sitting"), clip_prompt("a dog sitting")
    with pytest.raises(PromptEditError, match="'tiger' is not a word of the prompt 'a dog sitting'"):
        LocalBlend.from_words([source, target], (["cat"], ["tiger"]))
    with pytest.raises(PromptEditError, match="for each of the 2 prompts"):
        LocalBlend.from_words([source, target], (["cat"],))
    blend = LocalBlend.from_words([source, target], ("cat", "dog"), subtract_words=([], ["sitting"]))
    assert blend.words == ((2,), (2,)) and blend.subtract == ((), (3,))
    with pytest.raises(ValueError, match="words for 2 rows but the edit has 3"):
        PromptToPrompt([PromptEdit(), PromptEdit()], local_blend=blend)
    with pytest.raises(ValueError, match="latent_shape"):
        blend.uses(LAYER, None)


def test_layers_of_odd_latents_are_found_and_a_blend_without_layers_is_refused():
    # A stride-2 convolution rounds up: 13x11 -> 7x6 -> 4x3 (round(13 / 4) = 3 would miss the 4x3 layer).
    assert layer_shape((13, 11), 2) == (7, 6) and layer_shape((13, 11), 4) == (4, 3)
    assert layer_shape((16, 16), 4) == (4, 4)
    deep = AttentionSite(("input", 7), 0, True, 2, (4, 3))
    assert LocalBlend([(2,), (3,)], layer_downsample=4).uses(deep, (13, 11))
    blend = LocalBlend([(2,), (3,)], layer_downsample=1)
    controller = PromptToPrompt([PromptEdit()], local_blend=blend)
    x = torch.zeros(2, 4, 13, 11)
    assert controller.blend(x, 5, 10) is x  # no attention layer ran yet: nothing to say
    for shape in [(7, 6), (4, 3)]:
        assert not blend.uses(AttentionSite(("input", 4), 0, True, 2, shape), (13, 11))
    with pytest.raises(ValueError, match="no cross-attention layer at 1/1 of the 13x11 latent.*7x6, 4x3.*one of 2, 4"):
        controller.blend(x, 5, 10)
    blend.reset()
    assert controller.blend(x, 5, 10) is x
