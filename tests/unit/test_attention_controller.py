"""Prompt-to-Prompt controller on random q/k/v against explicit maps computed here.

The reference below follows the paper's formulas literally: ``softmax(Q K^T * scale)`` in float64,
then the edit on the conditional chunk's edited rows, then ``@ V``. The mappers it uses are
written out by hand for the test prompts (not taken from the library).
"""

from __future__ import annotations

import pytest
import torch
from test_attention_tokens import clip_prompt

import invedit.attention.controller as controller_module
import invedit.attention.maps as maps_module
from invedit.attention import (
    AttentionContext,
    AttentionSite,
    CrossMapStore,
    CrossSchedule,
    PromptEdit,
    PromptToPrompt,
    Refine,
    Reweight,
    SelfInjection,
    StepWindow,
    WordSwap,
)

HEADS, DIM_HEAD = 2, 8
N_STEPS = 10
TOLERANCE = 1e-5


def random_qkv(rows: int, n_query: int, n_key: int, dtype=torch.float32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    shape_q, shape_kv = (rows, n_query, HEADS * DIM_HEAD), (rows, n_key, HEADS * DIM_HEAD)
    return tuple(torch.randn(shape, generator=generator, dtype=dtype) for shape in (shape_q, shape_kv, shape_kv))


def site(is_cross: bool, query_shape=(4, 4)) -> AttentionSite:
    return AttentionSite(("input", 4), 0, is_cross, HEADS, query_shape)


def reference(q, k, v, cond_or_uncond, edit_rows):
    """Explicit P2P: maps of every row; ``edit_rows(attn_base [h,p,n], attn_edit [E,h,p,n])``."""
    rows, n_query, _ = q.shape
    batch = rows // len(cond_or_uncond)

    def by_heads(x):
        return x.double().reshape(rows, x.shape[1], HEADS, DIM_HEAD).permute(0, 2, 1, 3)

    qh, kh, vh = by_heads(q), by_heads(k), by_heads(v)
    attn = torch.softmax(qh @ kh.transpose(-1, -2) * DIM_HEAD**-0.5, dim=-1)
    for chunk, kind in enumerate(cond_or_uncond):
        if kind == 0:
            base, edits = attn[chunk * batch], attn[chunk * batch + 1 : (chunk + 1) * batch]
            attn[chunk * batch + 1 : (chunk + 1) * batch] = edit_rows(base, edits.clone())
    return (attn @ vh).permute(0, 2, 1, 3).reshape(rows, n_query, HEADS * DIM_HEAD)


def run_both(edits, q, k, v, context, **options):
    """Outputs of the flat (SDPA) and the explicit-map controller, and their max difference."""
    flat = PromptToPrompt(edits, **options)(q, k, v, context)
    explicit = PromptToPrompt(edits, explicit_maps=True, **options)(q, k, v, context)
    return flat, explicit, float((flat - explicit).abs().max())


def check(edits, q, k, v, context, expected, **options) -> float:
    flat, explicit, gap = run_both(edits, q, k, v, context, **options)
    assert flat.shape == q.shape and flat.dtype == q.dtype
    assert gap < TOLERANCE, gap
    error = float((flat.double() - expected).abs().max())
    assert error < TOLERANCE, error
    assert float((explicit.double() - expected).abs().max()) < TOLERANCE
    return error


SOURCE = "a cat sitting"
HIPPO = "a hippopotamus sitting"
N_KEYS = 12  # the longer prompt has 7 tokens; the rest is padding
# Hand-worked mapper of "a cat sitting" -> "a hippopotamus sitting" ([BOS a cat sitting EOS] ->
# [BOS a hip popo tamus sitting EOS]): cat spreads over three tokens, the rest shifts by two,
# padding keeps its position.
SWAP_MAPPER = torch.zeros(N_KEYS, N_KEYS, dtype=torch.float64)
for _s, _t in [(0, 0), (1, 1), (3, 5), (4, 6)] + [(j, j) for j in range(7, N_KEYS)]:
    SWAP_MAPPER[_s, _t] = 1.0
SWAP_MAPPER[2, 2:5] = 1.0 / 3.0


def swap_edit(default=0.8, words=None) -> PromptEdit:
    source, target = clip_prompt(SOURCE), clip_prompt(HIPPO)
    return PromptEdit(WordSwap.from_prompts(source, target), CrossSchedule.from_words(target, default, words))


@pytest.mark.parametrize("cond_or_uncond", [(1, 0), (0, 1), (0,), (1, 0, 0)])
def test_word_swap_inside_its_window(cond_or_uncond):
    rows = 2 * len(cond_or_uncond)
    q, k, v = random_qkv(rows, 16, N_KEYS)
    context = AttentionContext(site(True), 3, N_STEPS, cond_or_uncond)
    expected = reference(q, k, v, cond_or_uncond, lambda base, edit: torch.einsum("hpw,bwn->bhpn", base, SWAP_MAPPER[None]))
    check([swap_edit()], q, k, v, context, expected)


def test_word_swap_is_plain_attention_after_its_window():
    q, k, v = random_qkv(4, 16, N_KEYS)
    context = AttentionContext(site(True), 8, N_STEPS, (1, 0))  # window [0, 8)
    check([swap_edit()], q, k, v, context, reference(q, k, v, (1, 0), lambda base, edit: edit))


def test_per_word_cross_windows_mix_source_and_edit_per_token():
    # Default window [0, 8); "hippopotamus" (keys 2-4) only [0, 2): at step 5 its tokens keep
    # the edit's own maps while every other token takes the swapped source maps.
    q, k, v = random_qkv(4, 16, N_KEYS, seed=1)
    context = AttentionContext(site(True), 5, N_STEPS, (1, 0))
    alpha = torch.ones(N_KEYS, dtype=torch.float64)
    alpha[2:5] = 0.0

    def edit_rows(base, edit):
        return alpha * torch.einsum("hpw,bwn->bhpn", base, SWAP_MAPPER[None]) + (1 - alpha) * edit

    check([swap_edit(words={"hippopotamus": 0.2})], q, k, v, context, reference(q, k, v, (1, 0), edit_rows))


REFINE_MAPPER = torch.tensor([0, 1, 2, 3, 4, 5, -1, 6, 7, 9, 10, 11])  # "a cat sitting on a car" -> "... red car"
REFINE_ALPHAS = (REFINE_MAPPER != -1).double()


def refine_edit() -> PromptEdit:
    source, target = clip_prompt("a cat sitting on a car"), clip_prompt("a cat sitting on a red car")
    return PromptEdit(Refine.from_prompts(source, target), CrossSchedule.from_words(target, 0.8))


def refine_rows(base, edit):
    return base[:, :, REFINE_MAPPER] * REFINE_ALPHAS + edit * (1 - REFINE_ALPHAS)


def test_refine():
    q, k, v = random_qkv(4, 16, N_KEYS, seed=2)
    context = AttentionContext(site(True), 0, N_STEPS, (1, 0))
    check([refine_edit()], q, k, v, context, reference(q, k, v, (1, 0), refine_rows))


def test_reweight_alone_and_chained_after_a_swap_and_a_refine():
    q, k, v = random_qkv(4, 16, N_KEYS, seed=3)
    context = AttentionContext(site(True), 1, N_STEPS, (1, 0))
    source, hippo = clip_prompt(SOURCE), clip_prompt(HIPPO)
    equalizer = torch.ones(N_KEYS, dtype=torch.float64)
    equalizer[2] = 2.5  # "cat" in the source prompt
    alone = PromptEdit(Reweight.from_words(source, {"cat": 2.5}), CrossSchedule.from_words(source, 0.8))
    check([alone], q, k, v, context, reference(q, k, v, (1, 0), lambda base, edit: base * equalizer))

    equalizer = torch.ones(N_KEYS, dtype=torch.float64)
    equalizer[2:5] = 0.5  # the three hippopotamus tokens
    chained = PromptEdit(Reweight.from_words(hippo, {"hippopotamus": 0.5}, base=swap_edit().cross), swap_edit().schedule)
    expected = reference(q, k, v, (1, 0), lambda base, edit: torch.einsum("hpw,bwn->bhpn", base, SWAP_MAPPER[None]) * equalizer)
    check([chained], q, k, v, context, expected)

    red_car = clip_prompt("a cat sitting on a red car")
    equalizer = torch.ones(N_KEYS, dtype=torch.float64)
    equalizer[6] = -1.0  # "red"
    on_refine = PromptEdit(Reweight.from_words(red_car, {"red": -1.0}, base=refine_edit().cross), refine_edit().schedule)
    check([on_refine], q, k, v, context, reference(q, k, v, (1, 0), lambda base, edit: refine_rows(base, edit) * equalizer))


def test_two_edits_in_one_batch_each_follow_their_own_edit():
    q, k, v = random_qkv(6, 16, N_KEYS, seed=4)  # chunks of [source, swap, refine]
    context = AttentionContext(site(True), 2, N_STEPS, (1, 0))

    def edit_rows(base, edit):
        swapped = torch.einsum("hpw,wn->hpn", base, SWAP_MAPPER)
        return torch.stack([swapped, refine_rows(base, edit[1:])[0]])

    check([swap_edit(), refine_edit()], q, k, v, context, reference(q, k, v, (1, 0), edit_rows))


def test_prompts_longer_than_77_tokens():
    # 100 keys; the swapped word sits at key 85, past the first 77-token chunk.
    words = ["a"] * 84 + ["cat", "sitting"]
    source = clip_prompt(" ".join(words))
    target = clip_prompt(" ".join(words[:84] + ["dog", "sitting"]))
    q, k, v = random_qkv(2, 16, 100, seed=5)
    context = AttentionContext(site(True), 0, N_STEPS, (0,))
    edit = PromptEdit(WordSwap.from_prompts(source, target), CrossSchedule.from_words(target, 0.8))
    # Equal token counts: the mapper is the identity, the edit row attends with the source's maps.
    check([edit], q, k, v, context, reference(q, k, v, (0,), lambda base, edit: base[None]))


def test_self_attention_injection_window_and_layer_limit():
    injection = SelfInjection(StepWindow(0.0, 0.5), max_query_positions=16)
    q, k, v = random_qkv(6, 16, 16, seed=6)
    inside = AttentionContext(site(False), 4, N_STEPS, (1, 0))
    expected = reference(q, k, v, (1, 0), lambda base, edit: base.expand_as(edit))
    check([PromptEdit(), PromptEdit()], q, k, v, inside, expected, self_injection=injection)
    plain = reference(q, k, v, (1, 0), lambda base, edit: edit)
    after = AttentionContext(site(False), 5, N_STEPS, (1, 0))
    check([PromptEdit(), PromptEdit()], q, k, v, after, plain, self_injection=injection)
    q, k, v = random_qkv(6, 25, 25, seed=7)  # a 5x5 layer: above the limit, untouched
    large = AttentionContext(site(False, (5, 5)), 0, N_STEPS, (1, 0))
    plain = reference(q, k, v, (1, 0), lambda base, edit: edit)
    check([PromptEdit(), PromptEdit()], q, k, v, large, plain, self_injection=injection)


def test_float32_upcast_is_honoured():
    q, k, v = (t.to(torch.bfloat16) for t in random_qkv(4, 16, N_KEYS, seed=8))
    context = AttentionContext(site(True), 0, N_STEPS, (1, 0), attn_precision=torch.float32)
    upcast = PromptToPrompt([swap_edit()])(q, k, v, context)
    in_float32 = PromptToPrompt([swap_edit()])(q.float(), k.float(), v.float(), AttentionContext(site(True), 0, N_STEPS, (1, 0)))
    assert upcast.dtype == torch.bfloat16
    assert torch.equal(upcast, in_float32.to(torch.bfloat16))


def test_no_map_is_materialised_without_a_blend_or_store(monkeypatch):
    calls = []

    def counting_maps(q, k):
        calls.append(q.shape)
        return maps_module.attention_maps(q, k)

    monkeypatch.setattr(controller_module, "attention_maps", counting_maps)
    monkeypatch.setattr(maps_module, "attention_maps", counting_maps)
    q, k, v = random_qkv(4, 16, N_KEYS)
    PromptToPrompt([refine_edit()])(q, k, v, AttentionContext(site(True), 0, N_STEPS, (1, 0)))
    q, k, v = random_qkv(4, 16, 16)
    PromptToPrompt([PromptEdit()], self_injection=SelfInjection())(q, k, v, AttentionContext(site(False), 0, N_STEPS, (1, 0)))
    assert calls == []


def test_reweight_moves_a_words_attention_mass_monotonically():
    source = clip_prompt(SOURCE)
    q, k, v = random_qkv(2, 16, N_KEYS, seed=9)
    context = AttentionContext(site(True), 0, N_STEPS, (0,))
    masses = []
    for scale in (0.0, 0.5, 1.0, 2.0, 4.0):
        store = CrossMapStore()
        edit = PromptEdit(Reweight.from_words(source, {"cat": scale}), CrossSchedule.from_words(source, 0.8))
        PromptToPrompt([edit], map_store=store)(q, k, v, context)
        maps = store.layer_maps()[(("input", 4), 0)]  # [rows, 4, 4, keys], head-averaged
        masses.append(float(maps[1, :, :, 2].sum()))
        source_mass = float(maps[0, :, :, 2].sum())
        assert torch.allclose(maps[1, :, :, :2], maps[0, :, :, :2])  # other words keep the source's maps
    assert masses == sorted(masses) and masses[0] == 0.0
    for scale, mass in zip((0.0, 0.5, 1.0, 2.0, 4.0), masses):
        assert mass == pytest.approx(scale * source_mass, rel=1e-6)


def test_bad_batches_are_refused():
    q, k, v = random_qkv(4, 16, N_KEYS)
    controller = PromptToPrompt([swap_edit(), refine_edit()])  # needs chunks of 3 rows
    with pytest.raises(ValueError, match="chunk has 2 rows but this edit needs 3"):
        controller(q, k, v, AttentionContext(site(True), 0, N_STEPS, (1, 0)))
    with pytest.raises(ValueError, match="16 queries but the site's query shape"):
        controller(q, k, v, AttentionContext(site(True, (2, 2)), 0, N_STEPS, (1, 0)))
    # Unconditional-only calls need no particular batch: every row is plain.
    out = controller(q, k, v, AttentionContext(site(True), 0, N_STEPS, (1,)))
    assert float((out.double() - reference(q, k, v, (1,), None)).abs().max()) < TOLERANCE


def test_map_store_keeps_within_its_budget_and_resets():
    q, k, v = random_qkv(2, 16, N_KEYS)
    layer_bytes = 2 * 16 * N_KEYS * 4
    store = CrossMapStore(max_bytes=2 * layer_bytes)
    source, target = clip_prompt(SOURCE), clip_prompt("a dog sitting")
    edit = PromptEdit(WordSwap.from_prompts(source, target), CrossSchedule.from_words(target, 0.8))
    controller = PromptToPrompt([edit], map_store=store)
    for depth in range(3):
        for step in range(2):
            context = AttentionContext(AttentionSite(("output", 3), depth, True, HEADS, (4, 4)), step, N_STEPS, (0,))
            controller(q, k, v, context)
    assert sorted(d for _, d in store.layer_maps()) == [0, 1] and store.refused == {(("output", 3), 2)}
    assert store.used_bytes == 2 * layer_bytes
    maps = store.aggregate((4, 4))
    assert maps.shape == (2, 4, 4, N_KEYS)
    assert torch.allclose(maps.sum(-1), torch.ones(2, 4, 4))  # a 1:1 swap keeps each query's mass 1
    controller.reset()
    assert store.layer_maps() == {} and store.used_bytes == 0
