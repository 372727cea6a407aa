"""Benchmark: what holds the other digit in a Prompt-to-Prompt word swap on the test-bed model.

Runs inside ComfyUI on the shipped test-bed model with the setting of
tests/host/test_p2p_testbed.py: held-out canvases ("a photo of LEFT and RIGHT", seed 11) are
DDIM-inverted (50 steps, guidance 1) and null-text-optimised at guidance 7.5 in one batch, then
each canvas is edited twice, swapping its left word and its right word for the digit 5 further on
(a batch ``[source, left swapped, right swapped]`` per canvas; LocalBlend rows run one swap at a
time, as the paper's local edit). For every setting it prints, over the 2 x count swaps:

- the other digit's mean |error| against the image and against the source row (the null-text
  reconstruction), on the [-1, 1] canvas;
- the rate at which the swapped digit reads as the new digit and the other digit keeps its class
  (the test-bed classifier fitted on the training split);
- the plain regeneration's other-digit error divided by the setting's (above 1: the setting keeps
  the other digit closer than sampling the edited prompt from the same noise).

Settings: the plain regeneration (no injection), the edit node's defaults and each attention
injection on its own (cross replace, self injection windows, self injection on the 4x8 layers
only or on every layer), self injection into the unconditional rows too (the reference code
edits only the conditional half of the CFG batch), LocalBlend, and three diagnostics that are not
P2P settings but say where the other digit's drift travels:

- "attention outputs forced": every attention layer's output on the other digit's half is the
  source row's (every step; conditional and unconditional rows, or conditional rows only): a bound
  for any attention-map injection;
- "GroupNorm statistics from the source row": the edited rows are normalised with the source
  row's per-group mean and variance (forward hooks on the UNet's GroupNorm layers, removed
  afterwards), no injection;
- both together.

    python benchmarks/p2p_testbed.py [--count 8] [--seed 11] [--threads 1] [--out benchmarks/results]

Writes ``p2p_testbed.md`` to the output folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from comfy_headless import boot_with_pack, inversion_options  # noqa: E402
from testbed_swaps import parse_args  # noqa: E402

STEPS = 50
CFG = 7.5
SWAP_OFFSET = 5  # a digit d is swapped for (d + 5) % 10, as in the test
BLEND_DOWNSAMPLE = 2  # the test-bed's word-carrying layers are 4x8, half the 8x16 latent
NULL_TEXT = dict(guidance=CFG, inner_steps=10, learning_rate=0.01, learning_rate_decay=0.01, early_stop=1e-5,
                 early_stop_growth=2e-5, stop_check="before step", start_from="empty prompt")
NODE_DEFAULTS = dict(cross_replace=0.8, self_replace=0.5, self_max_pixels=1024)
NONE = dict(cross_replace=0.0, self_replace=0.0, self_max_pixels=1024)
TESTBED_COARSE_PIXELS = 4 * 8
PLAIN = "plain regeneration (no injection)"


@dataclasses.dataclass(frozen=True)
class Setting:
    """One row of the table: edit-node inputs plus the diagnostic switches.

    Attributes:
        edit: inputs of InvEdit P2P Edit (cross_replace, self_replace, self_max_pixels).
        blend: LocalBlend on the swapped word (one swap per batch).
        uncond_self: self-attention injection also in the unconditional rows.
        forced_outputs: "all" / "cond": attention outputs on the other half forced to the source's.
        source_group_norm: GroupNorm statistics of the edited rows taken from the source row.
    """

    edit: dict
    blend: bool = False
    uncond_self: bool = False
    forced_outputs: str = ""
    source_group_norm: bool = False


SETTINGS = {
    PLAIN: Setting(NONE),
    "P2P node defaults: cross 0.8, self 0.5 (every layer)": Setting(NODE_DEFAULTS),
    "cross replace 0.8 only": Setting({**NONE, "cross_replace": 0.8}),
    "cross replace 1.0 only": Setting({**NONE, "cross_replace": 1.0}),
    "self 0.2 only (every layer)": Setting({**NONE, "self_replace": 0.2}),
    "self 0.5 only (every layer)": Setting({**NONE, "self_replace": 0.5}),
    "self 0.5 only (4x8 layers)": Setting({**NONE, "self_replace": 0.5, "self_max_pixels": TESTBED_COARSE_PIXELS}),
    "self 1.0 only (every layer)": Setting({**NONE, "self_replace": 1.0}),
    "defaults + self injection in uncond rows": Setting(NODE_DEFAULTS, uncond_self=True),
    "self 1.0 (every layer) in cond and uncond rows": Setting({**NONE, "self_replace": 1.0}, uncond_self=True),
    "P2P node defaults + LocalBlend": Setting(NODE_DEFAULTS, blend=True),
    "diagnostic: attention outputs forced, cond + uncond": Setting(NONE, forced_outputs="all"),
    "diagnostic: attention outputs forced, cond rows only": Setting(NONE, forced_outputs="cond"),
    "diagnostic: GroupNorm statistics from the source row": Setting(NONE, source_group_norm=True),
    "diagnostic: GroupNorm statistics + attention outputs forced": Setting(NONE, forced_outputs="all",
                                                                           source_group_norm=True),
}


class ControllerView:
    """A P2P controller with the benchmark's extra behaviour; everything else is the controller's.

    Args:
        controller: the edit's :class:`~invedit.attention.PromptToPrompt`.
        uncond_self: also inject self attention into the unconditional rows (the controller is
            shown every chunk as conditional on self-attention calls).
        forced_outputs: ``"all"`` or ``"cond"``: on the chunks named, each edited row's attention
            output on the other digit's half is the source row's (row 1 swaps the left digit, so
            its other half is the right one; row 2 the reverse). Empty: off.
    """

    def __init__(self, controller, uncond_self: bool = False, forced_outputs: str = "") -> None:
        self.controller = controller
        self.uncond_self = uncond_self
        self.forced_outputs = forced_outputs

    def __getattr__(self, name):
        return getattr(self.controller, name)

    def __call__(self, q, k, v, context):
        from invedit.attention.context import COND

        if self.uncond_self and not context.site.is_cross:
            context = dataclasses.replace(context, chunks=tuple(COND for _ in context.chunks))
        out = self.controller(q, k, v, context)
        return self._forced(out, context) if self.forced_outputs else out

    def _forced(self, out: torch.Tensor, context) -> torch.Tensor:
        from invedit.attention.context import COND

        height, width = context.site.query_shape
        rows = context.rows_per_chunk(out.shape[0])
        grid = out.view(out.shape[0], height, width, -1).clone()
        for chunk, kind in enumerate(context.chunks):
            if self.forced_outputs == "cond" and kind != COND:
                continue
            source = chunk * rows
            for edited in range(1, rows):
                other = slice(width // 2, width) if edited == 1 else slice(0, width // 2)
                grid[source + edited, :, other] = grid[source, :, other]
        return grid.view_as(out)


@contextlib.contextmanager
def source_group_norm(model, rows: int):
    """Normalise every row of each ``rows``-row chunk with the chunk's first row's GroupNorm statistics."""

    def hook(module, inputs, output):
        x = inputs[0]
        if x.shape[0] % rows:
            return output
        grouped = x.float().reshape(x.shape[0] // rows, rows, module.num_groups, -1)
        source = grouped[:, :1]
        mean, var = source.mean(-1, keepdim=True), source.var(-1, unbiased=False, keepdim=True)
        normed = ((grouped - mean) / torch.sqrt(var + module.eps)).reshape_as(x)
        if module.affine:
            normed = normed * module.weight.view(1, -1, 1, 1) + module.bias.view(1, -1, 1, 1)
        return normed.to(output.dtype)

    unet = model.get_model_object("diffusion_model")
    handles = [m.register_forward_hook(hook) for m in unet.modules() if isinstance(m, torch.nn.GroupNorm)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def one_image(record, index: int):
    """The INVERSION of image ``index`` of a batched one (trajectory, null-text contexts, prompt)."""
    context, options = record.positive[0]
    return record.select_images([index]).with_changes(positive=[[context[index:index + 1], options]])


def swapped(prompt: str, position: int) -> str:
    from invedit.testbed import vocabulary

    return vocabulary.shift_digit_word(prompt, position, SWAP_OFFSET)


def edit_rows(model, text_encoder, record, source: str, targets: list[str], setting: Setting,
              blend_words: str = "") -> torch.Tensor:
    """``[1 + len(targets), 1, 8, 16]``: the source row and the edited rows of one P2P run."""
    from invedit.nodes.attention_patches import P2PGuider
    from invedit.nodes.p2p_nodes import P2PEditSettings
    from invedit.nodes.sampling import inversion_noise_latent, replay_sampler, sample_with_guider

    edit = P2PEditSettings.execute(text_encoder=text_encoder, source_prompt=source, edited_prompts="\n".join(targets),
                                   mode="word swap", word_windows="", reweight="", blend_words=blend_words,
                                   blend_start=0.2, blend_threshold=0.3, blend_layer_downsample=BLEND_DOWNSAMPLE,
                                   **setting.edit).result[0]
    controller = ControllerView(edit.controller(), setting.uncond_self, setting.forced_outputs)
    guider = P2PGuider(model, record, edit.conditioning, controller, None, CFG)
    norms = source_group_norm(model, 1 + len(targets)) if setting.source_group_norm else contextlib.nullcontext()
    with norms:
        return sample_with_guider(guider, inversion_noise_latent(model, record), replay_sampler(),
                                       record.sampling_sigmas, preview=False)


FIGURES = ("error vs image", "error vs source row", "swapped digit changed", "other digit kept")
TABLE_COLUMNS = ["error vs image", "error vs source row", "plain / this", "swapped digit changed", "other digit kept"]


def add_swap_figures(figures: dict, image, source_row, edited, targets: list[str], predict) -> None:
    """Append one canvas's figures (each of :data:`FIGURES`) for its edited rows, one swapped side each."""
    from invedit.testbed import data, vocabulary

    digit = data.DIGIT_SIZE
    half = lambda canvas, side: canvas[..., side * digit:(side + 1) * digit]  # noqa: E731
    sides = (vocabulary.LEFT_WORD_POSITION, vocabulary.RIGHT_WORD_POSITION)
    source_labels = predict(image)[0]
    for side, (target, position) in enumerate(zip(targets, sides)):
        other, row = 1 - side, edited[side:side + 1]
        labels = predict(row)[0]
        new_digit = vocabulary.DIGIT_WORDS.index(target.split()[position])
        figures["error vs image"].append(float((half(row, other) - half(image, other)).abs().mean()))
        figures["error vs source row"].append(float((half(row, other) - half(source_row, other)).abs().mean()))
        figures["swapped digit changed"].append(float(int(labels[side]) == new_digit))
        figures["other digit kept"].append(float(int(labels[other]) == int(source_labels[other])))


def table_lines(rows: dict) -> list[str]:
    """The Markdown table of every setting's :data:`TABLE_COLUMNS`."""
    lines = ["| setting | " + " | ".join(TABLE_COLUMNS) + " |", "|---|" + "---|" * len(TABLE_COLUMNS)]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.3f}" if "error" in c else f"{row[c]:.2f}"
                                                   for c in TABLE_COLUMNS) + " |")
    return lines


def measure(nodes_map, count: int, seed: int) -> tuple[dict, dict]:
    """``({setting: {figure: value}}, facts)`` over ``2 * count`` swaps of ``count`` held-out canvases."""
    from invedit.testbed import classifier, data, vocabulary

    model, text_encoder = nodes_map["InvEditTestbedModelLoader"].execute(verify=True).result
    encode = nodes_map["InvEditTestbedTextEncode"]
    canvases, prompts, _ = data.heldout_canvases(count, seed=seed)
    started = time.perf_counter()
    positive = encode.execute(text_encoder=text_encoder, text="\n".join(prompts)).result[0]
    negative = encode.execute(text_encoder=text_encoder, text="").result[0]
    _, record, _ = nodes_map["InvEditDDIMInversion"].execute(
        model=model, positive=positive, negative=negative, latent={"samples": canvases}, steps=STEPS,
        inversion_cfg=1.0, scheduler="ddim_uniform", clean_level="zero", **inversion_options()).result
    record = nodes_map["InvEditNullTextInversion"].execute(model=model, inversion=record, **NULL_TEXT).result[0]
    facts = {"null-text s": time.perf_counter() - started}
    predict = classifier.training_split_classifier().predict_canvases
    sides = (vocabulary.LEFT_WORD_POSITION, vocabulary.RIGHT_WORD_POSITION)
    rows = {}
    for name, setting in SETTINGS.items():
        started = time.perf_counter()
        figures = {key: [] for key in FIGURES}
        for index, prompt in enumerate(prompts):
            single = one_image(record, index)
            targets = [swapped(prompt, position) for position in sides]
            if setting.blend:
                edited = [edit_rows(model, text_encoder, single, prompt, [target], setting,
                                    f"{prompt.split()[position]}; {target.split()[position]}")
                          for target, position in zip(targets, sides)]
                source_row, edited = edited[0][:1], torch.cat([e[1:] for e in edited])
            else:
                result = edit_rows(model, text_encoder, single, prompt, targets, setting)
                source_row, edited = result[:1], result[1:]
            add_swap_figures(figures, canvases[index:index + 1], source_row, edited, targets, predict)
        rows[name] = {key: sum(values) / len(values) for key, values in figures.items()}
        rows[name]["s"] = time.perf_counter() - started
        print(f"{name}: {rows[name]}", flush=True)
    for row in rows.values():
        row["plain / this"] = rows[PLAIN]["error vs image"] / row["error vs image"]
    return rows, facts


def markdown(rows: dict, facts: dict, count: int, seed: int) -> str:
    lines = [
        f"Prompt-to-Prompt word swap on the test-bed: {count} held-out canvases (seed {seed}), {2 * count} swaps "
        f"(each digit word for the digit {SWAP_OFFSET} further on), null-text inversion at guidance {CFG:g}, "
        f"{STEPS} steps (null-text: {facts['null-text s']:.0f} s). Errors: the other digit's mean |error| on the "
        "[-1, 1] canvas; 'plain / this': the plain regeneration's error over the setting's; rates: the test-bed "
        "classifier. 'self' = self-attention injection window, 'cross' = cross-attention replace window "
        "(fractions of the steps from the start). Diagnostic rows are not P2P settings (see the script's docstring).",
        "", *table_lines(rows),
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args(__doc__)
    nodes = boot_with_pack("invedit-bench-")
    with torch.inference_mode():
        rows, facts = measure(nodes.NODE_CLASS_MAPPINGS, args.count, args.seed)
    table = markdown(rows, facts, args.count, args.seed)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "p2p_testbed.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
