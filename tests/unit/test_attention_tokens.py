"""Prompt-to-Prompt's pure token logic: word positions, alignment, mappers, windows, errors."""

from __future__ import annotations

import pytest
import torch

from invedit.attention import (
    CrossSchedule,
    PromptEditError,
    Refine,
    Reweight,
    StepWindow,
    TokenizedPrompt,
    WordSwap,
    align_tokens,
    swapped_word_indices,
    word_token_positions,
)

BOS, EOS = 49406, 49407
# A made-up CLIP-like vocabulary: each word is one or more BPE pieces ("</w>" ends a word).
PIECES = {
    "a": ["a</w>"],
    "cat": ["cat</w>"],
    "dog": ["dog</w>"],
    "sitting": ["sitting</w>"],
    "on": ["on</w>"],
    "car": ["car</w>"],
    "car.": ["car</w>", ".</w>"],
    "red": ["red</w>"],
    "hippopotamus": ["hip", "popo", "tamus</w>"],
}
IDS = {piece: 1000 + i for i, piece in enumerate(sorted({p for pieces in PIECES.values() for p in pieces}))}


def clip_prompt(text: str, padding: int = 0) -> TokenizedPrompt:
    """Tokens as a CLIP tokenizer lays them out: start, the words' pieces, end, padding."""
    pieces: list[str | None] = [None]
    for word in text.split():
        pieces.extend(PIECES[word])
    pieces.extend([None] * (1 + padding))
    ids = [BOS] + [IDS[p] for p in pieces[1:] if p is not None] + [EOS] * (1 + padding)
    return TokenizedPrompt.from_pieces(text, ids, pieces)


# --- token alignment (Needleman-Wunsch: gap 0, match +1, mismatch -1) ---------------------------


def test_refine_alignment_of_an_added_word():
    # "a cat sitting on a car" -> "a cat sitting on a red car": "red" is new, everything else
    # copies its source token, the tokens after it shifted by one.
    source = clip_prompt("a cat sitting on a car")
    target = clip_prompt("a cat sitting on a red car")
    assert align_tokens(source.token_ids, target.token_ids) == (0, 1, 2, 3, 4, 5, -1, 6, 7)
    assert Refine.from_prompts(source, target).mapper == (0, 1, 2, 3, 4, 5, -1, 6, 7)


def test_alignment_of_a_removed_and_of_a_substituted_word():
    # [BOS a red car EOS] -> [BOS a car EOS]: "red" (source 2) is skipped.
    assert align_tokens([BOS, 1, 2, 3, EOS], [BOS, 1, 3, EOS]) == (0, 1, 3, 4)
    # A substitution never pairs different tokens (a mismatch costs 1, two gaps cost 0).
    assert align_tokens([BOS, 1, 2, EOS], [BOS, 1, 9, EOS]) == (0, 1, -1, 3)
    assert align_tokens([1, 2, 3], []) == ()
    assert align_tokens([], [1, 2]) == (-1, -1)


def test_alignment_breaks_ties_like_the_reference():
    # Source [7, 5], target [5, 5]: both target tokens could pair with source 1. The score table
    # ends in a tie between "new target token" and "pair" at (2, 2); the reference prefers the new
    # token, so the last target token is new and the first pairs with source 1.
    assert align_tokens([7, 5], [5, 5]) == (1, -1)
    # Source [5, 5], target [5]: the target token pairs with the first source token.
    assert align_tokens([5, 5], [5]) == (0,)


# --- words to token positions ---------------------------------------------------------------------


def test_word_positions_from_clip_pieces():
    words = ["a", "sunflower-field,", "at", "Dawn"]
    pieces = [None, "a</w>", "sunflower</w>", "-</w>", "field</w>", ",</w>", "at</w>", "da", "wn</w>", None, None]
    assert word_token_positions(words, pieces) == [(1,), (2, 3, 4, 5), (6,), (7, 8)]


def test_word_positions_from_sentencepiece_pieces():
    assert word_token_positions(["A", "cats"], ["\u2581A", "\u2581cat", "s", None]) == [(0,), (1, 2)]


def test_word_positions_refuse_pieces_of_another_prompt():
    with pytest.raises(PromptEditError, match="'cat' came out as 'dog'"):
        word_token_positions(["a", "cat"], [None, "a</w>", "dog</w>", None])
    with pytest.raises(PromptEditError, match="left over"):
        word_token_positions(["a"], [None, "a</w>", "cat</w>", None])
    with pytest.raises(PromptEditError):
        word_token_positions(["a", "cat"], [None, "a</w>", None])


def test_positions_of_words_phrases_and_punctuated_words():
    prompt = clip_prompt("a cat sitting on a car.")
    # [BOS a cat sitting on a car . EOS]
    assert prompt.positions_of("a") == (1, 5)  # every occurrence
    assert prompt.positions_of("Cat") == (2,)  # case is ignored
    assert prompt.positions_of("on a") == (4, 5)  # consecutive words
    assert prompt.positions_of("car") == (6,)  # "car." matches "car" without its "." token
    assert prompt.positions_of("car.") == (6, 7)
    assert prompt.content_length == 9


def test_content_length_ignores_padding():
    assert clip_prompt("a cat", padding=5).content_length == 4
    assert len(clip_prompt("a cat", padding=5).token_ids) == 9


def test_a_missing_word_says_which_words_there_are():
    prompt = clip_prompt("a cat sitting")
    with pytest.raises(PromptEditError) as error:
        prompt.positions_of("dog")
    assert isinstance(error.value, ValueError)
    assert "'dog' is not a word of the prompt 'a cat sitting' (its words: a, cat, sitting)" in str(error.value)


# --- word swap mapper -----------------------------------------------------------------------------


def test_word_swap_with_equal_token_counts_is_one_to_one():
    swap = WordSwap.from_prompts(clip_prompt("a cat sitting"), clip_prompt("a dog sitting"))
    mapper, edit_scale = swap.replacement(7)
    assert torch.equal(mapper, torch.eye(7, dtype=torch.float64))
    assert torch.equal(edit_scale, torch.zeros(7, dtype=torch.float64))


def test_word_swap_spreads_a_word_over_more_tokens():
    # [BOS a cat sitting EOS] -> [BOS a hip popo tamus sitting EOS], 9 keys.
    swap = WordSwap.from_prompts(clip_prompt("a cat sitting"), clip_prompt("a hippopotamus sitting"))
    expected = torch.zeros(9, 9, dtype=torch.float64)
    expected[0, 0] = expected[1, 1] = 1.0
    expected[2, 2] = expected[2, 3] = expected[2, 4] = 1.0 / 3.0  # cat -> hip, popo, tamus
    expected[3, 5] = expected[4, 6] = 1.0  # sitting, EOS shifted by two
    expected[7, 7] = expected[8, 8] = 1.0  # padding keeps its own position
    assert torch.equal(swap.replacement(9)[0], expected)


def test_word_swap_gathers_a_word_from_more_tokens():
    # The reverse swap: "cat" takes the sum of the three hippopotamus tokens' maps (1 / 1 each).
    swap = WordSwap.from_prompts(clip_prompt("a hippopotamus sitting"), clip_prompt("a cat sitting"))
    mapper = swap.replacement(8)[0]
    assert mapper[:, 2].tolist() == [0, 0, 1, 1, 1, 0, 0, 0]
    assert mapper[5, 3] == 1 and mapper[6, 4] == 1  # sitting and EOS shifted back by two
    assert torch.equal(mapper[5:, 5:], torch.eye(3, dtype=torch.float64))  # tail: identity


def test_word_swap_errors_say_what_to_change():
    with pytest.raises(PromptEditError, match="same number of words.*has 3.*has 4.*Refine"):
        WordSwap.from_prompts(clip_prompt("a cat sitting"), clip_prompt("a red cat sitting"))
    source = clip_prompt("a cat sitting")
    retokenized = TokenizedPrompt.from_pieces(
        "a dog sitting", [BOS, IDS["a</w>"], IDS["dog</w>"], 77, EOS], [None, "a</w>", "dog</w>", "sitting</w>", None]
    )
    with pytest.raises(PromptEditError, match="tokenize differently.*'sitting'"):
        WordSwap.from_prompts(source, retokenized)
    # A chunk boundary (end and start tokens) inside one prompt only.
    chunked = TokenizedPrompt.from_pieces(
        "a dog sitting",
        [BOS, IDS["a</w>"], IDS["dog</w>"], EOS, BOS, IDS["sitting</w>"], EOS],
        [None, "a</w>", "dog</w>", None, None, "sitting</w>", None],
    )
    with pytest.raises(PromptEditError, match="non-text token 49407 at key position 3"):
        WordSwap.from_prompts(source, chunked)
    assert swapped_word_indices("a cat on a car", "a dog on a bus") == (1, 4)


def test_mappers_refuse_more_tokens_than_keys():
    swap = WordSwap.from_prompts(clip_prompt("a cat sitting"), clip_prompt("a hippopotamus sitting"))
    with pytest.raises(ValueError, match="only 5 keys"):
        swap.replacement(5)


# --- refine and reweight as (C, d) ----------------------------------------------------------------


def test_refine_replacement_gathers_aligned_tokens_and_keeps_new_ones():
    refine = Refine.from_prompts(clip_prompt("a cat sitting on a car"), clip_prompt("a cat sitting on a red car"))
    gather, edit_scale = refine.replacement(11)
    mapper = [0, 1, 2, 3, 4, 5, -1, 6, 7, 9, 10]  # hand-worked, padding keeps its position
    for target, source in enumerate(mapper):
        column = torch.zeros(11, dtype=torch.float64)
        if source >= 0:
            column[source] = 1.0
        assert torch.equal(gather[:, target], column), target
    assert edit_scale.tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]


def test_reweight_scales_columns_after_its_base():
    source, target = clip_prompt("a cat sitting"), clip_prompt("a hippopotamus sitting")
    swap = WordSwap.from_prompts(source, target)
    reweight = Reweight.from_words(target, {"hippopotamus": 2.0, "sitting": 0.5}, base=swap)
    assert reweight.equalizer(8).tolist() == [1, 1, 2, 2, 2, 0.5, 1, 1]
    mapper, edit_scale = reweight.replacement(8)
    assert torch.equal(mapper, swap.replacement(8)[0] * reweight.equalizer(8))
    assert not edit_scale.any()
    alone = Reweight.from_words(source, {"cat": 3.0}).replacement(6)[0]
    assert torch.equal(alone, torch.diag(torch.tensor([1, 1, 3, 1, 1, 1], dtype=torch.float64)))
    with pytest.raises(PromptEditError, match="'fluffy' is not a word"):
        Reweight.from_words(target, {"fluffy": 2.0})
    with pytest.raises(PromptEditError, match="at least one word"):
        Reweight.from_words(target, {})


# --- step windows ---------------------------------------------------------------------------------


def test_step_windows():
    window = StepWindow.of(0.8)
    assert (window.start, window.end) == (0.0, 0.8)
    assert window.contains(39, 50) and not window.contains(40, 50)
    assert StepWindow.of((0.2, 0.5)).contains(2, 10) and not StepWindow.of((0.2, 0.5)).contains(1, 10)
    # 0.29 * 100 is 28.999... in floating point; the window still ends at step 29.
    assert StepWindow(0.0, 0.29).contains(28, 100) and not StepWindow(0.0, 0.29).contains(29, 100)
    with pytest.raises(ValueError, match="0 <= start <= end <= 1"):
        StepWindow(0.6, 0.4)


def test_per_word_cross_windows():
    target = clip_prompt("a cat sitting on a red car")  # red: key 6, car: key 7
    schedule = CrossSchedule.from_words(target, default=0.8, words={"red": (0.1, 0.3), "car": 1.0})
    alphas = torch.stack([schedule.alphas(step, 10, 10) for step in range(10)])
    assert alphas[:, 0].tolist() == [1, 1, 1, 1, 1, 1, 1, 1, 0, 0]  # default window [0, 8)
    assert alphas[:, 6].tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]  # red: [1, 3)
    assert alphas[:, 7].tolist() == [1] * 10  # car: every step
    assert torch.equal(alphas[:, 9], alphas[:, 0])  # padding follows the default
    with pytest.raises(PromptEditError):
        CrossSchedule.from_words(target, words={"blue": 0.5})


# --- T5 pieces and several tokenizations in one key sequence (Flux, Chroma, SD3) ----------------

T5_EOS, T5_PAD = 1, 0
# T5's SentencePiece pieces as ComfyUI's T5 tokenizer gives them: "a" is a bare "▁" then "a".
T5_PIECES = {"a": ["\u2581", "a"], "cat": ["\u2581cat"], "dog": ["\u2581dog"], "red": ["\u2581red"],
             "on": ["\u2581on"], "car": ["\u2581car"], "car.": ["\u2581car", "."],
             "hippopotamus": ["\u2581hip", "pop", "otamus"]}
T5_IDS = {piece: 100 + i for i, piece in enumerate(sorted({p for ps in T5_PIECES.values() for p in ps}))}


def t5_tokens(text: str, length: int) -> tuple[list[int], list[str | None]]:
    """T5 tokens of ``text``: the words' pieces, the end token, padding to ``length`` (no start token)."""
    pieces: list[str | None] = [piece for word in text.split() for piece in T5_PIECES[word]]
    ids = [T5_IDS[p] for p in pieces] + [T5_EOS] + [T5_PAD] * (length - len(pieces) - 1)
    return ids, pieces + [None] * (length - len(pieces))


def clip_tokens(text: str, length: int) -> tuple[list[int], list[str | None]]:
    prompt = clip_prompt(text, padding=length - len(clip_prompt(text).token_ids))
    return list(prompt.token_ids), list(prompt.pieces)


def test_a_bare_sentencepiece_marker_belongs_to_the_next_word():
    # Written out: "a" = [▁, a] (positions 0, 1), "red" = [▁red] (2), "car." = [▁car, .] (3, 4).
    pieces = ["\u2581", "a", "\u2581red", "\u2581car", ".", None, None]
    assert word_token_positions(["a", "red", "car."], pieces) == [(0, 1), (2,), (3, 4)]
    # A trailing bare marker is not text: nothing is left over; a wrong word still fails.
    assert word_token_positions(["a"], ["\u2581", "a", "\u2581"]) == [(0, 1)]
    with pytest.raises(PromptEditError, match="do not spell"):
        word_token_positions(["a", "dog"], pieces)


def test_two_tokenizations_record_each_word_in_both():
    # SD3's text keys: 8 CLIP rows (start, words, end, padding), then 6 T5 rows.
    clip, t5 = clip_tokens("a red car.", 8), t5_tokens("a red car.", 6)
    prompt = TokenizedPrompt.from_segments("a red car.", [clip, t5])
    assert prompt.segment_starts == (0, 8)
    assert prompt.token_ids == tuple(clip[0] + t5[0])
    # CLIP: a=1, red=2, car.=(3, 4); T5 after the 8 CLIP rows: a=(8, 9), red=10, car.=(11, 12).
    assert prompt.word_positions == ((1, 8, 9), (2, 10), (3, 4, 11, 12))
    assert prompt.positions_of("car") == (3, 11)  # the punctuation's tokens left out in both tokenizations
    assert prompt.positions_of("red car.") == (2, 3, 4, 10, 11, 12)
    assert [(start, part.word_positions) for start, part in prompt.segments()] == [
        (0, ((1,), (2,), (3, 4))), (8, ((0, 1), (2,), (3, 4)))]
    assert prompt.content_length == 14  # through the T5 end token
    with pytest.raises(ValueError, match="at least one"):
        TokenizedPrompt.from_segments("a red car.", [])


def test_word_swap_over_two_tokenizations_maps_each_and_keeps_the_padding_between():
    # "a cat on a car" -> "a hippopotamus on a car": 1 CLIP token -> 3, 1 T5 token -> 3.
    source_text, target_text = "a cat on a car", "a hippopotamus on a car"
    source = TokenizedPrompt.from_segments(source_text, [clip_tokens(source_text, 10), t5_tokens(source_text, 12)])
    target = TokenizedPrompt.from_segments(target_text, [clip_tokens(target_text, 10), t5_tokens(target_text, 12)])
    mapper, _ = WordSwap.from_prompts(source, target).replacement(22)
    expected = torch.zeros(22, 22, dtype=torch.float64)
    # CLIP part: start, a, cat -> hip popo tamus (1/3 each), on, a, car, end; its padding (9) to itself.
    for s, t in [(0, 0), (1, 1), (3, 5), (4, 6), (5, 7), (6, 8), (9, 9)]:
        expected[s, t] = 1.0
    expected[2, 2:5] = 1.0 / 3.0
    # T5 part from key 10: ▁ a, ▁cat -> ▁hip pop otamus, ▁on, ▁ a, ▁car, end; the edited prompt's padding
    # (20, 21) to itself.
    for s, t in [(10, 10), (11, 11), (13, 15), (14, 16), (15, 17), (16, 18), (17, 19), (20, 20), (21, 21)]:
        expected[s, t] = 1.0
    expected[12, 12:15] = 1.0 / 3.0
    assert torch.equal(mapper, expected)
    # Negative control: the same keys read as one tokenization are refused (the CLIP padding sits where
    # the edited prompt has its T5 words), rather than mapped wrongly.
    flat = [TokenizedPrompt.from_pieces(text, prompt.token_ids, prompt.pieces[:10] + (None,) * 12)
            for text, prompt in ((source_text, source), (target_text, target))]
    assert not torch.equal(WordSwap.from_prompts(*flat).replacement(22)[0], expected)


def test_refine_over_two_tokenizations_aligns_each():
    # "a car" -> "a red car": "red" is new in both tokenizations.
    source = TokenizedPrompt.from_segments("a car", [clip_tokens("a car", 6), t5_tokens("a car", 5)])
    target = TokenizedPrompt.from_segments("a red car", [clip_tokens("a red car", 6), t5_tokens("a red car", 5)])
    # CLIP [start a car end pad pad] -> [start a red car end pad]; T5 from 6: [▁ a ▁car end pad] ->
    # [▁ a ▁red ▁car end]. The CLIP padding after the edited prompt's end maps to itself.
    assert Refine.from_prompts(source, target).mapper == (0, 1, -1, 2, 3, 5, 6, 7, -1, 8, 9)
    longer = TokenizedPrompt.from_segments("a red car", [clip_tokens("a red car", 7), t5_tokens("a red car", 5)])
    with pytest.raises(PromptEditError, match="another token chunk"):
        Refine.from_prompts(source, longer)
