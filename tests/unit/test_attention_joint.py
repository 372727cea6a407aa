"""Joint-attention Prompt-to-Prompt (attention/joint.py) on random q/k/v against explicit maps computed here.

The references follow the equations literally in float64: ``softmax(Q K^T / sqrt(d))`` over the joint
sequence ``[text | image | references]``; for "source image q, k" (Shin et al. 2025) the edited row's image
queries and keys are the source's before the softmax (and its image values with "source image q, k, v"); for "source maps" the edited row's image-query maps
are ``attn_src @ C + attn_edit * d`` with ``C`` the block matrix written out here (text block: the word
swap's mapper, worked by hand in test_attention_controller; image block: identity) and ``d`` zero on the
injected keys. Source rows and unconditional chunks must come out bit for bit as plain attention.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_attention_controller import HIPPO, N_KEYS, SOURCE, SWAP_MAPPER
from test_attention_tokens import clip_prompt

from invedit.attention import AttentionContext, AttentionSite, CrossSchedule, PromptEdit, Reweight, StepWindow, WordSwap
from invedit.attention.joint import (
    FAMILY_CHROMA,
    FAMILY_FLUX,
    FAMILY_QWEN_IMAGE,
    FAMILY_SD3,
    LAYOUT_SOURCE_MAPS,
    LAYOUT_SOURCE_QK,
    LAYOUT_SOURCE_QKV,
    JointContext,
    JointPromptToPrompt,
    LayoutInjection,
    TokenLayout,
    token_layout,
)

HEADS, DIM = 2, 8
IMAGE = 6
REFERENCES = 2  # Kontext-style reference tokens after the image
N_STEPS = 10
TOLERANCE = 1e-5
BLOCK = ("double_block", 1)


def attend(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def qkv(rows: int, length: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(rows, HEADS, length, DIM, generator=generator) for _ in range(3))


def context(chunks, layout: TokenLayout, step: int = 2) -> JointContext:
    site = AttentionSite(BLOCK, 0, True, HEADS, (2, 3))
    return JointContext(AttentionContext(site, step, N_STEPS, tuple(chunks)), layout)


def swap_edit(window=1.0) -> PromptEdit:
    source, target = clip_prompt(SOURCE), clip_prompt(HIPPO)
    return PromptEdit(WordSwap.from_prompts(source, target), CrossSchedule.from_words(target, window))


def explicit_maps(q, k):
    return torch.softmax(q.double() @ k.double().transpose(-1, -2) * DIM**-0.5, dim=-1)


@pytest.mark.parametrize("family, registers, offset", [
    (FAMILY_FLUX, 0, 0), (FAMILY_CHROMA, 0, 0), (FAMILY_QWEN_IMAGE, 0, 0), (FAMILY_SD3, 3, 3)])
def test_each_family_puts_the_text_first_and_sd3_registers_before_the_prompt(family, registers, offset):
    layout = token_layout(family, prompt_tokens=5, image_tokens=IMAGE, register_tokens=registers)
    assert layout.prompt == slice(offset, offset + 5)
    assert layout.image == slice(5 + registers, 5 + registers + IMAGE)
    assert layout.fits(5 + registers + IMAGE + REFERENCES) and not layout.fits(IMAGE)  # image-only attention


def test_unknown_families_and_misplaced_registers_are_refused():
    with pytest.raises(ValueError, match="No token layout rule"):
        token_layout("unet", 5, IMAGE)
    with pytest.raises(ValueError, match="no register tokens"):
        token_layout(FAMILY_FLUX, 5, IMAGE, register_tokens=2)


@pytest.mark.parametrize("chunks", [(1, 0), (0, 1), (0,)])
def test_source_qk_gives_the_edited_rows_the_source_image_to_image_logits(chunks):
    layout = token_layout(FAMILY_FLUX, N_KEYS, IMAGE)
    length = N_KEYS + IMAGE + REFERENCES
    rows = 2 * len(chunks)
    q, k, v = qkv(rows, length)
    controller = JointPromptToPrompt([swap_edit()], layout=LayoutInjection(LAYOUT_SOURCE_QK, StepWindow(0.0, 0.5)))
    out = controller(q, k, v, context(chunks, layout), attend)
    plain = attend(q, k, v)
    expected = plain.double().clone()
    image = layout.image
    for chunk, kind in enumerate(chunks):
        source, edited = 2 * chunk, 2 * chunk + 1
        if kind == 0:
            q_e, k_e = q[edited].clone(), k[edited].clone()
            q_e[:, image], k_e[:, image] = q[source][:, image], k[source][:, image]
            maps = explicit_maps(q_e, k_e)
            expected[edited] = maps @ v[edited].double()
            # The image-to-image logits are the source's (the softmax still spans the edited row's text keys).
            assert torch.equal(q_e[:, image] @ k_e[:, image].transpose(-1, -2),
                               q[source][:, image] @ k[source][:, image].transpose(-1, -2))
        assert torch.equal(out[source], plain[source])
        if kind == 1:
            assert torch.equal(out[edited], plain[edited])  # unconditional rows untouched
    assert torch.allclose(out.double(), expected, atol=TOLERANCE)
    # Control: outside the window (step 6 of 10 > 0.5) the edited rows are plain attention.
    late = controller(q, k, v, context(chunks, layout, step=6), attend)
    assert torch.equal(late, plain)


def test_source_qkv_gives_the_edited_rows_the_source_image_to_image_output():
    """With the source's image values as well, the edited row's image-query output is the source's image-to-image
    attention plus its own text keys and values, written out with the explicit softmax; q, k alone (the control)
    keeps the edited row's own image values and differs."""
    layout = token_layout(FAMILY_FLUX, N_KEYS, IMAGE)
    q, k, v = qkv(2, N_KEYS + IMAGE + REFERENCES)
    window = StepWindow(0.0, 0.5)
    out = JointPromptToPrompt([swap_edit()], layout=LayoutInjection(LAYOUT_SOURCE_QKV, window))(
        q, k, v, context((0,), layout), attend)
    image = layout.image
    q_e, k_e, v_e = q[1].clone(), k[1].clone(), v[1].clone()
    q_e[:, image], k_e[:, image], v_e[:, image] = q[0][:, image], k[0][:, image], v[0][:, image]
    expected = explicit_maps(q_e, k_e) @ v_e.double()
    assert torch.equal(out[0], attend(q, k, v)[0])
    assert torch.allclose(out[1].double(), expected, atol=TOLERANCE)
    keys_only = JointPromptToPrompt([swap_edit()], layout=LayoutInjection(LAYOUT_SOURCE_QK, window))(
        q, k, v, context((0,), layout), attend)
    assert not torch.allclose(keys_only[1].double(), expected, atol=1e-2)
    assert torch.equal(v[1], qkv(2, N_KEYS + IMAGE + REFERENCES)[2][1])  # the caller's values are not changed


def joint_block_map(layout: TokenLayout, length: int, inject: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(C [L, L], d [L])`` written out: text block = the hand-worked swap mapper, image block = identity
    (injected, d = 0) or zero (own, d = 1), references own."""
    mapper = torch.zeros(length, length, dtype=torch.float64)
    scale = torch.ones(length, dtype=torch.float64)
    mapper[layout.prompt, layout.prompt] = SWAP_MAPPER
    scale[layout.prompt] = 0.0
    if inject:
        mapper[layout.image, layout.image] = torch.eye(layout.image_tokens, dtype=torch.float64)
        scale[layout.image] = 0.0
    return mapper, scale


@pytest.mark.parametrize("step, inject", [(2, True), (7, False)])
def test_source_maps_is_the_block_linear_map_on_the_edited_image_queries(step, inject):
    layout = token_layout(FAMILY_FLUX, N_KEYS, IMAGE)
    length = N_KEYS + IMAGE + REFERENCES
    q, k, v = qkv(4, length, seed=1)
    chunks = (1, 0)
    controller = JointPromptToPrompt([swap_edit()], layout=LayoutInjection(LAYOUT_SOURCE_MAPS, StepWindow(0.0, 0.5)))
    out = controller(q, k, v, context(chunks, layout, step), attend)
    maps = explicit_maps(q, k)
    mapper, scale = joint_block_map(layout, length, inject)
    edited_maps = maps[3].clone()
    edited_maps[:, layout.image] = maps[2][:, layout.image] @ mapper + maps[3][:, layout.image] * scale
    expected = (maps @ v.double())
    expected[3] = edited_maps @ v[3].double()
    assert torch.allclose(out.double(), expected, atol=TOLERANCE)
    assert torch.equal(out[:3], attend(q, k, v)[:3])
    # Control: the mapper transposed (values mixed the wrong way) misses the reference.
    wrong = maps[3].clone()
    wrong[:, layout.image] = maps[2][:, layout.image] @ mapper.T + maps[3][:, layout.image] * scale
    assert not torch.allclose(out[3].double(), wrong @ v[3].double(), atol=1e-3)


def test_reweight_scales_the_words_attention_without_renormalising():
    layout = token_layout(FAMILY_FLUX, N_KEYS, IMAGE)
    q, k, v = qkv(2, N_KEYS + IMAGE, seed=2)
    prompt = clip_prompt(SOURCE)
    edit = PromptEdit(Reweight.from_words(prompt, {"cat": 3.0}), CrossSchedule.from_words(prompt, 1.0))
    controller = JointPromptToPrompt([edit], layout=None)
    out = controller(q, k, v, context((0,), layout), attend)
    maps = explicit_maps(q, k)
    equalizer = torch.ones(N_KEYS + IMAGE, dtype=torch.float64)
    equalizer[prompt.positions_of("cat")] = 3.0
    assert torch.allclose(out[1].double(), (maps[1] * equalizer) @ v[1].double(), atol=TOLERANCE)
    assert torch.equal(out[0], attend(q, k, v)[0])
    assert not torch.allclose(out[1], attend(q, k, v)[1], atol=1e-3)  # control: the reweight does act


def test_a_chunk_of_the_wrong_size_is_refused():
    layout = token_layout(FAMILY_FLUX, N_KEYS, IMAGE)
    q, k, v = qkv(3, N_KEYS + IMAGE)
    controller = JointPromptToPrompt([swap_edit()], layout=LayoutInjection())
    with pytest.raises(ValueError, match="source followed by one row per edited prompt"):
        controller(q, k, v, context((0,), layout), attend)


def test_text_to_image_maps_are_the_words_softmax_over_the_joint_keys_restricted_to_the_image():
    from invedit.attention.joint import text_to_image_maps

    layout = token_layout(FAMILY_SD3, prompt_tokens=4, image_tokens=IMAGE, register_tokens=2)
    q, k, _ = qkv(2, layout.text_tokens + IMAGE + REFERENCES, seed=3)
    maps = text_to_image_maps(q, k, layout)
    expected = explicit_maps(q, k)[:, :, 2:6, 6:6 + IMAGE].mean(dim=1).transpose(1, 2)  # words 2..5, image keys 6..
    assert maps.shape == (2, IMAGE, 4)
    assert torch.allclose(maps.double(), expected, atol=TOLERANCE)
    # Control: the image queries' maps over the text keys (the UNet's cross-map direction) differ.
    assert not torch.allclose(maps.double(), explicit_maps(q, k)[:, :, 6:6 + IMAGE, 2:6].mean(dim=1), atol=1e-3)
