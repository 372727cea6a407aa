"""InvEdit's headless demo: invert real images inside ComfyUI, close the guidance gap, edit by prompt.

    bash scripts/run-demo.sh                          # both shipped test-bed models, held-out digits
    bash scripts/run-demo.sh --checkpoint sd15.safetensors --image photo.png \\
        --prompt "a cat sitting on a sofa" --edit "a dog sitting on a sofa" --blend-words "cat; dog"

With no arguments it loads the two test-bed models that ship with the pack (no download): a UNet
(EPS, like SD1.x) and a Flux transformer (rectified flow), and takes held-out handwritten digits
they never saw, each with its prompt ("a photo of eight and five"). For each model it

1. inverts them with DDIM at guidance 1 and reconstructs them at guidance 1 (the image back), and
   at 7.5, where plain inversion drifts (the guidance gap);
2. closes the gap with negative-prompt inversion (and, on the UNet, null-text inversion with
   ``--null-text``: slower, it takes gradients) and reconstructs at 7.5 again;
3. edits each image by prompt at 7.5, the left digit's word swapped ("eight" -> "three"): on the
   UNet with Prompt-to-Prompt, then the same swap with LocalBlend, which changes only where the
   swapped words attend (a masked edit); on the flow model, which Prompt-to-Prompt does not take
   yet, as a plain edit through InvEdit Inversion Guider;

and writes ``out/demo/demo.png``, a section per model, one row per image under labelled columns,
and prints the figures: PSNR of every reconstruction against the source, and for every edit what
a digit classifier reads in the edited image and how far the kept digit moved. With a Stable
Diffusion checkpoint and an image it does the same on that photo through ComfyUI's own
CheckpointLoaderSimple, CLIPTextEncode, VAEEncode and VAEDecode (``--edit``: the edited prompt,
word for word; ``--blend-words``: the words of the source and edited prompt whose region may change).

Every step is a ComfyUI node run by ComfyUI's prompt executor, exactly as in the UI.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_headless import (  # noqa: E402
    REPO_ROOT,
    boot_comfyui,
    comfyui_path_from_env,
    import_pack_as_package,
    inversion_options,
    load_pack,
)

STEPS = 50
EDIT_CFG = 7.5  # the guidance the references edit with
SWAP_OFFSET = 5  # the left digit d becomes (d + 5) % 10: eight -> three, as in the test-bed workflows
# Prompt-to-Prompt on the test-bed UNet: the settings its tests and workflows use.
TESTBED_P2P = dict(cross_replace=0.8, self_replace=0.5, self_max_pixels=1024, blend_layer_downsample=2)
PHOTO_P2P = dict(blend_layer_downsample=4)  # the 16x16 attention layers of a 512 px SD 1.5 image
TESTBED_TILE_SCALE = 12  # the 16x8 canvases enlarged (nearest) in the figure
PHOTO_TILE_WIDTH = 256
FIGURE_GAP = 6
FIGURE_FONT_SIZE = 15
LINE_HEIGHT = FIGURE_FONT_SIZE + 4
ROW_LABEL_WIDTH = 190
WHITE, INK = (255, 255, 255), (20, 20, 20)


@dataclass(frozen=True)
class Column:
    """A column of the figure: a capture key (without the subject's prefix) and its header."""

    key: str
    header: str


@dataclass(frozen=True)
class Reconstruction:
    """A reconstruction the demo makes: which inversion, at which guidance."""

    key: str
    header: str
    method: str | None  # None: plain DDIM; else the node that closes the gap
    cfg: float


PLAIN_INVERSION = "DDIM"  # the plain inversion's name in the headers; Family.header names the family's own
RECONSTRUCTIONS = (
    Reconstruction("ddim_1", f"reconstruction\n{PLAIN_INVERSION}, cfg 1", None, 1.0),
    Reconstruction("ddim_gap", f"{PLAIN_INVERSION}, cfg {EDIT_CFG:g}\n(the guidance gap)", None, EDIT_CFG),
    Reconstruction("negative_prompt", f"negative-prompt\ninversion, cfg {EDIT_CFG:g}", "InvEditNegativePromptInversion",
                   EDIT_CFG),
)
NULL_TEXT = Reconstruction("null_text", f"null-text\ninversion, cfg {EDIT_CFG:g}", "InvEditNullTextInversion", EDIT_CFG)
P2P_EDITS = (Column("swap", "edit: word swap\n(Prompt-to-Prompt)"), Column("blend", "edit: word swap\n+ LocalBlend"))
PLAIN_EDIT = Column("plain", "edit: word swap\n(Inversion Guider)")


@dataclass(frozen=True)
class Family:
    """How the demo treats a kind of model: its scheduler and sampler, and whether Prompt-to-Prompt
    and null-text inversion take it (else its edit is a plain one through the Inversion Guider)."""

    key: str
    title: str
    scheduler: str
    sampler: str
    attention_control: bool
    inversion: str = PLAIN_INVERSION  # what the plain inversion is called for this family (column headers)

    def header(self, item: "Reconstruction") -> str:
        """``item``'s column header, naming this family's plain inversion."""
        return item.header.replace(PLAIN_INVERSION, self.inversion)


UNET = Family("unet", "Test-bed UNet (EPS, like SD1.x): InvEditTestbedModelLoader", "ddim_uniform", "ddim", True)
FLOW = Family("flow", "Test-bed Flux transformer (rectified flow): InvEditTestbedFlowModelLoader", "simple", "euler",
              False, "Euler")
PHOTO = Family("photo", "Stable Diffusion checkpoint", "ddim_uniform", "ddim", True)
TESTBED_LOADERS = {UNET.key: "InvEditTestbedModelLoader", FLOW.key: "InvEditTestbedFlowModelLoader"}
TESTBED_FAMILIES = {family.key: family for family in (UNET, FLOW)}


@dataclass(frozen=True)
class Subject:
    """What the demo inverts and edits with one model, as links into the graph plus its prompts."""

    family: Family
    model: list
    text_encoder: list
    images: list  # IMAGE batch
    prompts: list[str]  # one per image
    edits: list[str]  # the edited prompt of each image
    blend_words: list[str]  # "source word; edited word" per image, "" for no LocalBlend
    encode_text: Callable[[str | list], object]
    encode_image: Callable[[list], object]
    decode: Callable[[list], object]
    pick: Callable[[int], list]  # image i of the batch, as a batch of one
    p2p_settings: dict

    def key(self, name: str) -> str:
        """A capture key of this subject's (one graph holds every model's)."""
        return f"{self.family.key}:{name}"

    def edit_columns(self) -> tuple[Column, ...]:
        return P2P_EDITS if self.family.attention_control else (PLAIN_EDIT,)


def invert(graph, subject: Subject, positive, negative, latent, steps: int):
    """DDIM inversion at guidance 1 with the family's scheduler."""
    return graph.node("InvEditDDIMInversion", model=subject.model, positive=positive, negative=negative, latent=latent,
                      steps=steps, inversion_cfg=1.0, scheduler=subject.family.scheduler, clean_level="zero",
                      distilled_guidance=1.0, **inversion_options())


def reconstructions(graph, subject: Subject, with_null_text: bool, steps: int) -> tuple[Reconstruction, ...]:
    """Invert the whole batch at guidance 1; reconstruct it each way; score each against the source."""
    chosen = RECONSTRUCTIONS + ((NULL_TEXT,) if with_null_text and subject.family.attention_control else ())
    positive = subject.encode_text("\n".join(subject.prompts))
    negative = subject.encode_text("")
    inversion = invert(graph, subject, positive, negative, subject.encode_image(subject.images), steps)
    for item in chosen:
        record = inversion.out(1)
        if item.method == "InvEditNullTextInversion":
            record = graph.node(item.method, model=subject.model, inversion=record, guidance=item.cfg).out(0)
        elif item.method is not None:
            record = graph.node(item.method, inversion=record).out(0)
        rebuilt = graph.node("InvEditReconstruct", model=subject.model, positive=positive, negative=negative,
                             inversion=record, cfg=item.cfg)
        result = subject.decode(rebuilt)
        graph.capture(subject.key(item.key), result)
        error = graph.node("InvEditReconstructionError", reference=subject.images, result=result, heatmap_gain=4.0)
        graph.capture(subject.key(f"{item.key}|psnr"), error.out(2))
    graph.capture(subject.key("source"), subject.images)
    return chosen


def p2p_edits(graph, subject: Subject, index: int, closed) -> None:
    """Prompt-to-Prompt at 7.5 on image ``index``: the word swap, then with LocalBlend (when words are given)."""
    for column, words in zip(P2P_EDITS, ("", subject.blend_words[index])):
        if column.key == "blend" and not words:
            continue
        edit = graph.node("InvEditP2PEdit", text_encoder=subject.text_encoder, source_prompt=subject.prompts[index],
                          edited_prompts=subject.edits[index], mode="word swap", blend_words=words,
                          **subject.p2p_settings)
        sample = graph.node("InvEditP2PSample", model=subject.model, inversion=closed.out(0), edit=edit, cfg=EDIT_CFG)
        graph.capture(subject.key(f"{column.key}|{index}"), subject.decode(sample.out(1)))
        graph.capture(subject.key(f"{column.key}_latent|{index}"), sample.out(1))


def plain_edit(graph, subject: Subject, index: int, inversion, closed) -> None:
    """The edited prompt sampled at 7.5 from the inverted noise through InvEdit Inversion Guider in
    SamplerCustomAdvanced (no noise added, the inversion's sigmas): no attention control."""
    guider = graph.node("InvEditInversionGuider", model=subject.model, positive=subject.encode_text(subject.edits[index]),
                        inversion=closed.out(0), cfg=EDIT_CFG)
    sampled = graph.node("SamplerCustomAdvanced", noise=graph.node("DisableNoise"), guider=guider,
                         sampler=graph.node("KSamplerSelect", sampler_name=subject.family.sampler),
                         sigmas=inversion.out(2), latent_image=inversion.out(0))
    graph.capture(subject.key(f"{PLAIN_EDIT.key}|{index}"), subject.decode(sampled.out(0)))
    graph.capture(subject.key(f"{PLAIN_EDIT.key}_latent|{index}"), sampled.out(0))


def edits(graph, subject: Subject, steps: int) -> None:
    """Per image: invert it alone, close the gap (negative-prompt inversion), then edit it at 7.5."""
    for index, prompt in enumerate(subject.prompts):
        image = subject.pick(index)
        inversion = invert(graph, subject, subject.encode_text(prompt), subject.encode_text(""),
                           subject.encode_image(image), steps)
        closed = graph.node("InvEditNegativePromptInversion", inversion=inversion.out(1))
        if subject.family.attention_control:
            p2p_edits(graph, subject, index, closed)
        else:
            plain_edit(graph, subject, index, inversion, closed)


def left_digit_swap(prompt: str) -> tuple[str, str]:
    """``(edited prompt, blend words)`` of the test-bed's word swap: the left digit's word shifted."""
    from invedit.testbed import vocabulary

    position = vocabulary.LEFT_WORD_POSITION
    edited = vocabulary.shift_digit_word(prompt, position, SWAP_OFFSET)
    return edited, f"{prompt.split()[position]}; {edited.split()[position]}"


def testbed_subject(graph, family: Family, count: int, seed: int) -> Subject:
    """Held-out digits on a shipped test-bed model; the prompts are the ones Held-out Digits gives."""
    from invedit.testbed import data

    loader = graph.node(TESTBED_LOADERS[family.key], verify=True)
    digits = graph.node("InvEditTestbedHeldOutDigits", count=count, seed=seed)
    graph.capture(f"{family.key}:prompts", digits.out(1))  # checked against the prompts below after the run
    prompts = data.heldout_canvases(count, seed)[1]
    swaps = [left_digit_swap(prompt) for prompt in prompts]
    return Subject(
        family, loader.out(0), loader.out(1), digits.out(0), prompts, [edited for edited, _ in swaps],
        [words for _, words in swaps],
        lambda text: graph.node("InvEditTestbedTextEncode", text_encoder=loader.out(1), text=text),
        lambda image: graph.node("InvEditTestbedImageToLatent", image=image),
        lambda latent: graph.node("InvEditTestbedLatentToImage", latent=latent, scale=1),
        lambda index: graph.node("ImageFromBatch", image=digits.out(0), batch_index=index, length=1).out(0),
        TESTBED_P2P)


def checkpoint_subject(graph, checkpoint: str, image_name: str, prompt: str, edit: str, blend_words: str) -> Subject:
    """A photo through ComfyUI's own checkpoint loader, CLIP and VAE."""
    loader = graph.node("CheckpointLoaderSimple", ckpt_name=checkpoint)
    image = graph.node("LoadImage", image=image_name).out(0)
    return Subject(
        PHOTO, loader.out(0), loader.out(1), image, [prompt], [edit], [blend_words],
        lambda text: graph.node("CLIPTextEncode", clip=loader.out(1), text=text),
        lambda pixels: graph.node("VAEEncode", pixels=pixels, vae=loader.out(2)),
        lambda latent: graph.node("VAEDecode", samples=latent, vae=loader.out(2)),
        lambda index: image, PHOTO_P2P)


def build_graph(graph, subject: Subject, with_null_text: bool = False, steps: int = STEPS) -> tuple[Reconstruction, ...]:
    """One model's part of the demo added to the ComfyUI prompt ``graph`` (every widget it leaves
    out at the node's default, as in a node added by hand); returns the reconstructions it makes."""
    from workflow_format import with_widget_defaults

    chosen = reconstructions(graph, subject, with_null_text, steps)
    edits(graph, subject, steps)
    graph.prompt = with_widget_defaults(graph.prompt)
    return chosen


# ---------------------------------------------------------------------------------------------
# The figure and the printed figures


def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=FIGURE_FONT_SIZE)
    except TypeError:  # Pillow older than 10.1
        return ImageFont.load_default()


def _tile(image, scale: int | None, width: int | None):
    """An IMAGE ``[H, W, 3]`` as a PIL image, enlarged ``scale`` times (nearest) or to ``width``."""
    from PIL import Image

    tile = Image.fromarray(np.asarray(image.clamp(0, 1).numpy() * 255, dtype=np.uint8))
    if scale:
        return tile.resize((tile.width * scale, tile.height * scale), Image.NEAREST)
    return tile.resize((width, round(tile.height * width / tile.width)), Image.LANCZOS)


@dataclass(frozen=True)
class Section:
    """One model's block of the figure: its title, its columns, one row label per image."""

    subject: Subject
    columns: list[Column]
    row_labels: list[str]


def figure_columns(subject: Subject, chosen: tuple[Reconstruction, ...], result: dict) -> list[Column]:
    columns = [Column("source", "source")] + [Column(item.key, subject.family.header(item)) for item in chosen]
    return columns + [column for column in subject.edit_columns() if subject.key(f"{column.key}|0") in result]


def row_images(result: dict, section: Section, index: int) -> list:
    """Image ``index`` of every column (batched columns by index, edits by their own key)."""
    subject, edit_keys = section.subject, {column.key for column in section.subject.edit_columns()}
    return [result[subject.key(f"{column.key}|{index}")][0] if column.key in edit_keys
            else result[subject.key(column.key)][index] for column in section.columns]


def save_figure(result: dict, sections: list[Section], path: Path, scale: int | None, width: int | None) -> tuple[int, int]:
    """Each section: its title, a header over every column, then one row per image named on its
    left (its prompt and edit). Returns the figure's size."""
    from PIL import Image, ImageDraw

    blocks = [[[_tile(image, scale, width) for image in row_images(result, section, index)]
               for index in range(len(section.row_labels))] for section in sections]
    tile_w, tile_h = blocks[0][0][0].size
    header_h = LINE_HEIGHT + 2 * LINE_HEIGHT + FIGURE_GAP  # the section's title, two lines of column headers
    most_columns = max(len(section.columns) for section in sections)
    figure = Image.new("RGB", (ROW_LABEL_WIDTH + most_columns * (tile_w + FIGURE_GAP),
                               sum(header_h + len(rows) * (tile_h + FIGURE_GAP) + FIGURE_GAP for rows in blocks)), WHITE)
    draw = ImageDraw.Draw(figure)
    font = _font()
    top = 0
    for section, rows in zip(sections, blocks):
        draw.text((0, top), section.subject.family.title, fill=INK, font=font)
        for column_index, column in enumerate(section.columns):
            x = ROW_LABEL_WIDTH + column_index * (tile_w + FIGURE_GAP)
            for line_index, line in enumerate(column.header.split("\n")):
                draw.text((x, top + (1 + line_index) * LINE_HEIGHT), line, fill=INK, font=font)
        for row_index, (tiles, label) in enumerate(zip(rows, section.row_labels)):
            y = top + header_h + row_index * (tile_h + FIGURE_GAP)
            for line_index, line in enumerate(label.split("\n")):
                draw.text((0, y + line_index * LINE_HEIGHT), line, fill=INK, font=font)
            for column_index, tile in enumerate(tiles):
                figure.paste(tile, (ROW_LABEL_WIDTH + column_index * (tile_w + FIGURE_GAP), y))
        top += header_h + len(rows) * (tile_h + FIGURE_GAP) + FIGURE_GAP
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)
    return figure.size


def testbed_row_label(prompt: str, edited: str) -> str:
    """``"eight and five\\n-> three and five"``: the digits named, then the edit."""
    return f"{' '.join(prompt.split()[3:])}\n-> {' '.join(edited.split()[3:])}"


def reconstruction_report(result: dict, subject: Subject, chosen: tuple[Reconstruction, ...]) -> str:
    lines = [f"{subject.family.title}: mean PSNR against the source over {len(subject.prompts)} image(s)",
             "| reconstruction | cfg | PSNR dB |", "|---|---|---|"]
    for item in chosen:
        psnr = result[subject.key(f"{item.key}|psnr")]
        lines.append(f"| {subject.family.header(item).replace(chr(10), ' ')} | {item.cfg:g} | {psnr:.2f} |")
    return "\n".join(lines)


def testbed_edit_report(result: dict, subject: Subject) -> str:
    """What a digit classifier (fitted on the training split) reads in each edited canvas, and the
    mean |change| of the digit whose word the edit kept (canvas units, [-1, 1])."""
    from invedit.testbed import classifier, data, vocabulary

    reader = classifier.training_split_classifier()
    source = data.image_to_canvas(result[subject.key("source")])
    kept = slice(data.DIGIT_SIZE, 2 * data.DIGIT_SIZE)  # the right digit: the swap names the left one
    columns = subject.edit_columns()
    header = " | ".join(f"{column.header.replace(chr(10), ' ')} reads as | kept digit moved" for column in columns)
    lines = [f"{subject.family.title}: edits at cfg {EDIT_CFG:g} from negative-prompt inversion; 'reads as' is a "
             "digit classifier's reading, 'kept digit moved' the mean |change| of the right digit",
             f"| source prompt | edited prompt | {header} |", "|---" * (2 + 2 * len(columns)) + "|"]
    for index, (prompt, edited) in enumerate(zip(subject.prompts, subject.edits)):
        cells = [prompt, edited]
        for column in columns:
            latent = result[subject.key(f"{column.key}_latent|{index}")]["samples"]
            left, right = reader.predict_canvases(latent)[0].tolist()
            moved = float((latent[..., kept] - source[index:index + 1][..., kept]).abs().mean())
            cells += [f"{vocabulary.digit_word(left)} and {vocabulary.digit_word(right)}", f"{moved:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="InvEdit headless demo")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "demo", help="output folder")
    parser.add_argument("--count", type=int, default=4, help="held-out digit canvases to invert and edit")
    parser.add_argument("--seed", type=int, default=0, help="which held-out canvases")
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--models", choices=("both", *TESTBED_FAMILIES), default="both",
                        help="which test-bed model(s): the UNet, the flow transformer, or both")
    parser.add_argument("--null-text", action="store_true",
                        help="also close the gap with null-text inversion (takes gradients: minutes on a CPU)")
    parser.add_argument("--checkpoint", type=Path, help="a Stable Diffusion checkpoint (.safetensors)")
    parser.add_argument("--image", type=Path, help="the photo to invert (with --checkpoint)")
    parser.add_argument("--prompt", default="", help="what the photo shows (with --checkpoint)")
    parser.add_argument("--edit", default="", help="the edited prompt, word for word (with --checkpoint)")
    parser.add_argument("--blend-words", default="",
                        help='LocalBlend words of the source and edited prompt, e.g. "cat; dog" (with --checkpoint)')
    args = parser.parse_args()
    if (args.checkpoint is None) != (args.image is None):
        parser.error("--checkpoint and --image go together")
    if args.checkpoint is not None and not (args.prompt and args.edit):
        parser.error("with --checkpoint, give --prompt (what the photo shows) and --edit (the edited prompt)")

    base_dir = Path(tempfile.mkdtemp(prefix="invedit-demo-"))
    nodes = boot_comfyui(comfyui_path_from_env(), base_dir)
    if not load_pack(nodes):
        raise SystemExit("ComfyUI could not load InvEdit; see the log above.")
    import_pack_as_package()
    import comfy_graph
    import folder_paths

    comfy_graph.register_capture_node(nodes)
    graph = comfy_graph.Graph()
    if args.checkpoint is None:
        families = list(TESTBED_FAMILIES.values()) if args.models == "both" else [TESTBED_FAMILIES[args.models]]
        subjects = [testbed_subject(graph, family, args.count, args.seed) for family in families]
        scale, width = TESTBED_TILE_SCALE, None
    else:
        folder_paths.add_model_folder_path("checkpoints", str(args.checkpoint.resolve().parent))
        shutil.copy(args.image, Path(folder_paths.get_input_directory()) / args.image.name)
        subjects = [checkpoint_subject(graph, args.checkpoint.name, args.image.name, args.prompt, args.edit,
                                       args.blend_words)]
        scale, width = None, PHOTO_TILE_WIDTH
    chosen = [build_graph(graph, subject, args.null_text, args.steps) for subject in subjects]
    result = comfy_graph.run_prompt(graph)
    sections = []
    for subject, made in zip(subjects, chosen):
        if args.checkpoint is None:
            if result[subject.key("prompts")].splitlines() != subject.prompts:
                raise SystemExit("Held-out Digits gave other prompts than the test-bed library: the demo is out of date")
            labels = [testbed_row_label(prompt, edited) for prompt, edited in zip(subject.prompts, subject.edits)]
        else:
            labels = [f"{args.image.name}\n-> {args.edit}"]
        sections.append(Section(subject, figure_columns(subject, made, result), labels))
        print("\n" + reconstruction_report(result, subject, made))
        if args.checkpoint is None:
            print("\n" + testbed_edit_report(result, subject))
    figure_path = args.out / "demo.png"
    size = save_figure(result, sections, figure_path, scale, width)
    print(f"\nFigure written to {figure_path} ({size[0]}x{size[1]}): per model, "
          + "; ".join(", ".join(column.header.replace("\n", " ") for column in section.columns) for section in sections)
          + ".")
    shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
