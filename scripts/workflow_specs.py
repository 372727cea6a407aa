"""The example workflows InvEdit ships in workflows/, one small function each.

Import after ComfyUI was booted (like comfy_graph). To add a workflow:

1. write a function that builds a :class:`Graph` inside an :class:`ExampleWorkflow` and register it
   with ``@example("id")`` (the id is how code names it; the file is ``workflows/<card title>.json``,
   the card title starting with ``workflow_layout.NO_DOWNLOAD_PREFIX`` when it loads no model file,
   else with the model's prefix in ``workflow_layout.DOWNLOAD_PREFIXES``);
2. give every node a title that says what it is (``workflow.title_node``), collapse plumbing the
   user need not read (``workflow.collapse``), place every node in a captioned group
   (``workflow.group(caption, column, column, ...)``) and the groups in rows
   (``workflow.row(group, [stacked, groups], ...)``);
3. show what the user should look at: images in titled previews (:meth:`Source.show`), the report of
   every score node in a Preview Any (:func:`show_text`), the source next to every result;
4. run ``python scripts/build_workflows.py``: it refuses a workflow that breaks a rule of
   scripts/workflow_layout.py (too large to read when it opens, overlaps, untitled or duplicate
   titles, a score left unseen, a note naming what is not in the graph, a card title or description
   that does not say what it is) and writes the file; commit it, then make its thumbnail with
   ``python scripts/make_thumbnails.py``.

The parts every inversion workflow starts from (a model, an image, its latent, the text encoder,
source and negative prompts, a decoder) come from :func:`testbed_source` or :func:`checkpoint_source`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from comfy_graph import Graph, NodeRef
from workflow_format import node_definitions, ui_workflow, with_widget_defaults
from workflow_layout import (
    INVEDIT_EXTRA,
    NO_DOWNLOAD_PREFIX,
    Group,
    Layout,
    LayoutError,
    NoteBlock,
    workflow_problems,
)

EXAMPLES: dict[str, Callable[[], "ExampleWorkflow"]] = {}

STEPS = 50  # the reference number of DDIM steps (Prompt-to-Prompt, null-text inversion)
SCHEDULER = "ddim_uniform"  # visits the DDIM timesteps 981, 961, ..., 1
TESTBED_DIGIT_COUNT = 2  # two canvases per test-bed workflow: they fit one above the other in a preview
TESTBED_VIEW_SCALE = 8  # the 16x8 canvases are shown enlarged (nearest; ImageScaleBy allows 8 at most)
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SD15_CHECKPOINT_URL = (
    "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors"
)
EXAMPLE_IMAGE = "example.png"  # ComfyUI ships it in input/
EXAMPLE_IMAGE_PROMPT = "a child's drawing of a girl with yellow hair in a pink dress on a green hill under a blue sky"
PHOTO_PREFIX = "SD1.5 - "

# Node sizes (canvas units) of what the user looks at.
TESTBED_PREVIEW_SIZE = (210, 262)  # two enlarged canvases, one above the other
PHOTO_PREVIEW_SIZE = (210, 262)
PHOTO_LOAD_IMAGE_SIZE = (240, 320)
TEXT_ENCODE_SIZE = (240, 100)  # a short prompt, or one fed by a link
REPORT_SIZE = (240, 100)  # Preview Any of a reconstruction report (its first lines)
NULL_TEXT_REPORT_SIZE = (260, 110)
LOSS_PLOT_SIZE = (300, 262)
WORD_MAPS_SIZE = (500, 262)
NOTE_ABOVE_GROUP_HEIGHT = 330  # the note, when a group is stacked under it
SOURCE_CAPTION = "Source"
COMPARE_CAPTION = "Compare with the source"


@dataclass
class ExampleWorkflow:
    """A shipped workflow: its graph (API format), the Markdown note shown beside it, the card the
    template browser shows (``card_title``, the file name; ``description``, drawn on the
    thumbnail), node titles, sizes and properties by node id, its layout, and the display nodes its
    thumbnail shows (source first), each with the Preview Any of its score or None."""

    graph: Graph
    card_title: str
    description: str
    title: str
    notes: str
    node_titles: dict[str, str] = field(default_factory=dict)
    node_properties: dict[str, dict] = field(default_factory=dict)
    node_sizes: dict[str, tuple[float, float]] = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout)
    thumbnail: list[tuple[NodeRef, NodeRef | None]] = field(default_factory=list)  # (display, its score)

    def title_node(self, ref: NodeRef, title: str) -> NodeRef:
        self.node_titles[ref.node_id] = title
        return ref

    def size(self, ref: NodeRef, size: Sequence[float]) -> NodeRef:
        self.node_sizes[ref.node_id] = (float(size[0]), float(size[1]))
        return ref

    def collapse(self, ref: NodeRef) -> NodeRef:
        """Draw the node as its title only: plumbing the user need not read (decoders, enlargers)."""
        self.layout.collapsed.add(ref.node_id)
        return ref

    def group(self, caption: str, *columns: NodeRef | Sequence[NodeRef]) -> Group:
        """A captioned group of ``columns`` (each a node or a list of nodes, top to bottom)."""
        return Group(caption, [[column.node_id] if isinstance(column, NodeRef) else [ref.node_id for ref in column]
                               for column in columns])

    def row(self, *items: Group | NoteBlock | Sequence[Group | NoteBlock]) -> None:
        """The next row of groups; a list of groups is one item, stacked top to bottom. The note
        opens the first row unless ``note_block()`` places it."""
        self.layout.rows.append(list(items))

    @staticmethod
    def note_block(height: float = NOTE_ABOVE_GROUP_HEIGHT) -> NoteBlock:
        """The note's place in a row (stack groups under it with a list)."""
        return NoteBlock(height)

    def complete(self, definitions: dict | None = None) -> "ExampleWorkflow":
        """Give every widget the graph leaves out its default, so the graph is what the UI runs."""
        self.graph.prompt = with_widget_defaults(self.graph.prompt, definitions)
        return self

    def ui(self, definitions: dict | None = None) -> dict:
        card = {"description": self.description,
                "thumbnail": [[int(display.node_id), int(score.node_id) if score else None]
                              for display, score in self.thumbnail]}
        return ui_workflow(self.graph, title=self.title, notes=self.notes, node_titles=self.node_titles,
                           node_properties=self.node_properties, definitions=definitions, layout=self.layout,
                           node_sizes=self.node_sizes, extra={INVEDIT_EXTRA: {"card": card}})


def example(name: str):
    """Register a workflow function under its id."""

    def register(build: Callable[[], ExampleWorkflow]) -> Callable[[], ExampleWorkflow]:
        if name in EXAMPLES:
            raise ValueError(f"two example workflows have the id {name!r}")
        EXAMPLES[name] = build
        return build

    return register


def build_example(name: str, definitions: dict | None = None) -> ExampleWorkflow:
    """The example ``name`` with every widget value filled in."""
    workflow = EXAMPLES[name]()
    if definitions is None:
        definitions = node_definitions({node["class_type"] for node in workflow.graph.prompt.values()})
    return workflow.complete(definitions)


def checked_ui(name: str, definitions: dict | None = None) -> tuple[str, dict]:
    """The file stem (card title) and UI workflow of example ``name``; LayoutError when it breaks a
    rule of scripts/workflow_layout.py."""
    workflow = build_example(name, definitions)
    ui = workflow.ui(definitions)
    problems = workflow_problems(workflow.card_title, ui)
    if problems:
        raise LayoutError(f"workflow {name!r} ({workflow.card_title}):\n  " + "\n  ".join(problems))
    return workflow.card_title, ui


# ---------------------------------------------------------------------------------------------
# Where an inversion starts: a model, an image, its latent, prompts, and a way back to pixels.


@dataclass(frozen=True)
class Shown:
    """Images on the canvas: the display node the user looks at, and the plumbing before it
    (collapsed enlargers), top to bottom. Plumbing goes with the node that makes the images; the
    display goes in a group with what it is compared with."""

    plumbing: list[NodeRef]
    display: NodeRef


@dataclass(frozen=True)
class Source:
    """The shared start of an inversion workflow (links into ``workflow.graph``)."""

    workflow: ExampleWorkflow
    model: list
    image: list
    latent: list
    positive: NodeRef
    negative: NodeRef
    decoder: Callable[[NodeRef | list], NodeRef]
    text_encoder: list  # the CLIP (or the test-bed's text encoder) the prompts were encoded with
    prompt: str | list  # the source prompt: its text, or a link to it
    nodes: tuple[tuple[NodeRef, ...], ...]  # the columns of the Source group
    view_scale: int = 1  # nearest-neighbour enlargement of the images shown in previews
    preview_size: tuple[float, float] = PHOTO_PREVIEW_SIZE

    def group(self, under_prompts: Sequence[NodeRef] = ()) -> Group:
        """The Source group; ``under_prompts``: nodes placed at the bottom of its last column."""
        columns = [list(column) for column in self.nodes]
        columns[-1] += list(under_prompts)
        return self.workflow.group(SOURCE_CAPTION, *columns)

    def decode(self, samples: NodeRef | list, title: str) -> NodeRef:
        """Pixels of ``samples`` (collapsed: plumbing)."""
        return self.workflow.collapse(self.workflow.title_node(self.decoder(samples), title))

    def show(self, images: NodeRef | list, title: str, short: str, save_prefix: str | None = None) -> Shown:
        """``images`` in a display node titled ``title`` (a Save Image with ``save_prefix``, else a
        Preview Image), enlarged ``view_scale`` times first (that node, collapsed, titled after
        ``short``)."""
        g, workflow = self.workflow.graph, self.workflow
        plumbing: list[NodeRef] = []
        if self.view_scale > 1:
            images = workflow.collapse(workflow.title_node(
                g.node("ImageScaleBy", image=images, upscale_method="nearest-exact", scale_by=float(self.view_scale)),
                f"x{self.view_scale} {short}"))
            plumbing.append(images)
        if save_prefix is None:
            display = g.node("PreviewImage", images=images)
        else:
            display = g.node("SaveImage", images=images, filename_prefix=save_prefix)
        return Shown(plumbing, workflow.size(workflow.title_node(display, title), self.preview_size))


def testbed_source(workflow: ExampleWorkflow, count: int = TESTBED_DIGIT_COUNT, seed: int = 0,
                   loader: str = "InvEditTestbedModelLoader") -> Source:
    """A shipped test-bed model (``loader``: the UNet's or the flow model's) and held-out digits, each with its
    own prompt."""
    g = workflow.graph
    loader = g.node(loader, verify=True)
    digits = workflow.title_node(g.node("InvEditTestbedHeldOutDigits", count=count, seed=seed),
                                 "Held-out digits (source)")
    positive = workflow.size(workflow.title_node(
        g.node("InvEditTestbedTextEncode", text_encoder=loader.out(1), text=digits.out(1)), "Source prompts"),
        TEXT_ENCODE_SIZE)
    negative = workflow.size(workflow.title_node(
        g.node("InvEditTestbedTextEncode", text_encoder=loader.out(1), text=""), "Empty prompt"), TEXT_ENCODE_SIZE)
    latent = workflow.title_node(g.node("InvEditTestbedImageToLatent", image=digits.out(0)), "Image to latent")
    return Source(workflow, loader.out(0), digits.out(0), latent.out(0), positive, negative,
                  lambda samples: g.node("InvEditTestbedLatentToImage", latent=samples, scale=1),
                  loader.out(1), digits.out(1), ((loader, digits), (positive, negative, latent)),
                  view_scale=TESTBED_VIEW_SCALE, preview_size=TESTBED_PREVIEW_SIZE)


def checkpoint_source(workflow: ExampleWorkflow, prompt: str | NodeRef, checkpoint: str = SD15_CHECKPOINT,
                      checkpoint_url: str | None = SD15_CHECKPOINT_URL, image: str = EXAMPLE_IMAGE) -> Source:
    """A Stable Diffusion checkpoint and a photo through ComfyUI's own loader, CLIP and VAE nodes.

    ``prompt``: the source prompt's text, or a node whose STRING output gives it (placed at the top
    of the prompts' column).
    """
    g = workflow.graph
    loader = g.node("CheckpointLoaderSimple", ckpt_name=checkpoint)
    if checkpoint_url:
        workflow.node_properties[loader.node_id] = {
            "models": [{"name": checkpoint, "url": checkpoint_url, "directory": "checkpoints"}]}
    photo = workflow.size(workflow.title_node(g.node("LoadImage", image=image), "Photo (source)"),
                          PHOTO_LOAD_IMAGE_SIZE)
    text = prompt.out(0) if isinstance(prompt, NodeRef) else prompt
    positive = workflow.title_node(g.node("CLIPTextEncode", clip=loader.out(1), text=text), "Source prompt")
    if isinstance(prompt, NodeRef):
        workflow.size(workflow.title_node(positive, "Encode source prompt"), TEXT_ENCODE_SIZE)
    negative = workflow.size(workflow.title_node(g.node("CLIPTextEncode", clip=loader.out(1), text=""),
                                                 "Empty prompt"), TEXT_ENCODE_SIZE)
    latent = workflow.title_node(g.node("VAEEncode", pixels=photo.out(0), vae=loader.out(2)), "Encode photo")
    prompts = ((prompt,) if isinstance(prompt, NodeRef) else ()) + (positive, negative, latent)
    return Source(workflow, loader.out(0), photo.out(0), latent.out(0), positive, negative,
                  lambda samples: g.node("VAEDecode", samples=samples, vae=loader.out(2)), loader.out(1), text,
                  ((loader, photo), prompts))


def testbed_reference(source: Source) -> tuple[list, Shown]:
    """The held-out digits themselves: what a reconstruction is scored against, and their display."""
    return source.image, source.show(source.image, "Source", "source")


def photo_reference(source: Source) -> tuple[NodeRef, Shown]:
    """The photo after a VAE round trip (what a reconstruction is scored against) and its display."""
    reference = source.decode(source.latent, "VAE round trip")
    shown = source.show(reference, "Source (via VAE)", "source")
    return reference, Shown([reference, *shown.plumbing], shown.display)


def show_text(workflow: ExampleWorkflow, value: list, title: str, size: Sequence[float] = REPORT_SIZE) -> NodeRef:
    """A Preview Any titled ``title`` showing a STRING (or number) output on the canvas."""
    return workflow.size(workflow.title_node(workflow.graph.node("PreviewAny", source=value), title), size)


def score(source: Source, reference: NodeRef | list, result: NodeRef | list, short: str,
          what: str | None = None) -> list[NodeRef]:
    """Reconstruction Error of ``result`` against ``reference`` (collapsed, titled after ``short``)
    and its report on the canvas, titled "PSNR ``what``"; returns the two nodes, top to bottom."""
    workflow = source.workflow
    error = workflow.collapse(workflow.title_node(
        workflow.graph.node("InvEditReconstructionError", reference=reference, result=result, heatmap_gain=4.0),
        f"Score {short}"))
    return [error, show_text(workflow, error.out(0), f"PSNR {what or short}")]


def ddim_inversion(source: Source, steps: int = STEPS) -> NodeRef:
    """DDIM-invert the source latent at guidance 1 (the reference timestep rule)."""
    g = source.workflow.graph
    inversion = g.node("InvEditDDIMInversion", model=source.model, positive=source.positive, negative=source.negative,
                       latent=source.latent, steps=steps, inversion_cfg=1.0, scheduler=SCHEDULER, clean_level="zero")
    return source.workflow.title_node(inversion, "DDIM Inversion (cfg 1)")


def reconstruct(source: Source, inversion_link: list, cfg: float, title: str) -> NodeRef:
    rebuilt = source.workflow.graph.node("InvEditReconstruct", model=source.model, positive=source.positive,
                                         negative=source.negative, inversion=inversion_link, cfg=cfg)
    return source.workflow.title_node(rebuilt, title)


# ---------------------------------------------------------------------------------------------
# DDIM inversion and its exact reconstruction

DDIM_NOTES = (
    f"**{{source}}** gives {{what}}. **DDIM Inversion (cfg 1)** runs the sampler backwards ({STEPS} steps, "
    "guidance 1) to the noise that regenerates it; **Reconstruct (cfg 1)** replays that noise. "
    f"**{COMPARE_CAPTION}** shows the image beside its reconstruction with its PSNR (PSNR reconstruction): "
    "{expect}\n\nRaise Reconstruct's cfg to see guidance pull the image away: the gap that null-text, "
    "negative-prompt and direct inversion close (the other workflows).")


def ddim_workflow(workflow: ExampleWorkflow, source: Source, reference: NodeRef | list, reference_shown: Shown,
                  save_prefix: str | None) -> ExampleWorkflow:
    inversion = ddim_inversion(source)
    rebuilt = reconstruct(source, inversion.out(1), 1.0, "Reconstruct (cfg 1)")
    decoded = source.decode(rebuilt, "Decode replay")
    shown = source.show(decoded, "Reconstruction @ cfg 1", "replay", save_prefix)
    scored = score(source, reference, decoded, "replay", "reconstruction")
    workflow.thumbnail = [(reference_shown.display, None), (shown.display, scored[-1])]
    workflow.row(source.group(reference_shown.plumbing), workflow.group("Invert (cfg 1)", inversion),
                 workflow.group("Replay", [rebuilt, decoded, *shown.plumbing]))
    workflow.row(workflow.group(COMPARE_CAPTION, reference_shown.display, [shown.display, *scored]))
    return workflow


@example("testbed_ddim_reconstruction")
def testbed_ddim_reconstruction() -> ExampleWorkflow:
    workflow = ExampleWorkflow(
        Graph(), NO_DOWNLOAD_PREFIX + "invert and reconstruct",
        "Real digits inverted to noise at cfg 1 and regenerated from it", "DDIM inversion on the test-bed model",
        "")
    source = testbed_source(workflow)
    reference, reference_shown = testbed_reference(source)
    workflow.notes = (
        "Runs on InvEdit's shipped test-bed model (no download): it draws two handwritten digits from prompts "
        "like *a photo of three and seven*. "
        + DDIM_NOTES.format(source="Held-out digits (source)", what="real digits the model never saw, with their "
                            "prompts (change `seed` for others)",
                            expect="expect more than 30 dB (identical pixels would be infinite)."))
    return ddim_workflow(workflow, source, reference, reference_shown, None)


@example("ddim_inversion_photo")
def ddim_inversion_photo() -> ExampleWorkflow:
    workflow = ExampleWorkflow(
        Graph(), PHOTO_PREFIX + "invert and reconstruct",
        "Your photo inverted to noise at cfg 1 and regenerated from it", "DDIM inversion of a photo (SD 1.5)",
        "")
    source = checkpoint_source(workflow, EXAMPLE_IMAGE_PROMPT)
    reference, reference_shown = photo_reference(source)
    workflow.notes = (
        f"Needs `{SD15_CHECKPOINT}` in `models/checkpoints` (when it is missing, ComfyUI lists it with a download "
        "link). Load your image in **Photo (source)** and describe it in **Source prompt**: inversion follows "
        "that prompt. "
        + DDIM_NOTES.format(source="Photo (source)", what="the image, encoded by the checkpoint's VAE",
                            expect="the source is the photo after a plain VAE round trip, so the score is the "
                                   "inversion's alone (the VAE's own loss is not counted)."))
    return ddim_workflow(workflow, source, reference, reference_shown, "InvEdit/ddim_reconstruction")


# ---------------------------------------------------------------------------------------------
# Closing the guidance gap: null-text, negative-prompt and direct inversion

EDIT_GUIDANCE = 7.5  # the guidance the references edit with
EXAMPLE_EDIT_PROMPT = "a child's drawing of a girl with red hair in a pink dress on a green hill under a blue sky"
GAP_METHODS = {  # node type, its title, the method's name in titles, that name in collapsed titles
    "null_text": ("InvEditNullTextInversion", "Null-text Inversion", "null-text", "null-text"),
    "negative_prompt": ("InvEditNegativePromptInversion", "Negative-Prompt Inversion", "negative-prompt", "neg. prompt"),
    "direct_inversion": ("InvEditDirectInversion", "Direct Inversion", "direct", "direct"),
}
GAP_NOTES = {
    "null_text": "**Null-text Inversion** optimises the empty prompt's embedding for every step (at most 10 Adam "
                 "steps each) so that sampling at cfg 7.5 retraces the inversion; its node draws the loss per step "
                 "while it works, and **Null-text report** sums it up.",
    "null_text_plot": "**Loss per step (log scale)** is its final plot: the loss each step ended with (blue) "
                      "under the bound that stops it (orange).",
    "negative_prompt": "**Negative-Prompt Inversion** uses the source prompt as the unconditional prompt: no "
                       "optimisation, instant, close to null-text fidelity. `empty_prompt_weight` blends the empty "
                       "prompt back in for stronger edits.",
    "direct_inversion": "**Direct Inversion** puts the source back on the recorded inversion after every step, so "
                        "the reconstruction is exact at any cfg (free). Edited rows run freely; with InvEdit's "
                        "editing nodes they take the source's attention from the true trajectory.",
}


def method_inversion(source: Source, method: str, steps: int = STEPS) -> tuple[NodeRef, NodeRef]:
    """DDIM inversion at guidance 1, then the gap-closing node: returns (DDIM inversion, method node)."""
    g = source.workflow.graph
    inversion = ddim_inversion(source, steps)
    node_type, title, _, _ = GAP_METHODS[method]
    inputs = {"inversion": inversion.out(1)}
    if method == "null_text":
        inputs.update(model=source.model, guidance=EDIT_GUIDANCE)
    closed = source.workflow.title_node(g.node(node_type, **inputs), title)
    return inversion, closed


def null_text_report(source: Source, closed: NodeRef) -> NodeRef:
    """Null-text's report on the canvas (its loss plot is drawn in the node while it runs)."""
    return show_text(source.workflow, closed.out(2), "Null-text report", NULL_TEXT_REPORT_SIZE)


def null_text_panel(source: Source, closed: NodeRef) -> list[NodeRef]:
    """Null-text's final loss plot in a preview of its own, and its report."""
    workflow = source.workflow
    plot = workflow.size(workflow.title_node(workflow.graph.node("PreviewImage", images=closed.out(1)),
                                             "Loss per step (log scale)"), LOSS_PLOT_SIZE)
    return [plot, null_text_report(source, closed)]


@dataclass
class GapParts:
    """What :func:`gap_parts` built, for workflows that add to it."""

    inversion: NodeRef
    closed: NodeRef
    reconstruct_column: list[NodeRef]  # plain DDIM, then the method, at cfg 7.5, each with its plumbing
    compare_columns: list[list[NodeRef]]  # the source, then each reconstruction with its score


def gap_parts(workflow: ExampleWorkflow, method: str, source: Source, reference: NodeRef | list,
              reference_shown: Shown) -> GapParts:
    """Invert at guidance 1, close the gap with ``method``, reconstruct at 7.5 beside plain DDIM."""
    inversion, closed = method_inversion(source, method)
    _, _, label, short = GAP_METHODS[method]
    reconstruct_column, compare_columns = [], [[reference_shown.display]]
    for inversion_link, what, brief in ((inversion.out(1), "plain DDIM", "plain DDIM"), (closed.out(0), label, short)):
        rebuilt = reconstruct(source, inversion_link, EDIT_GUIDANCE, f"Reconstruct {what}")
        decoded = source.decode(rebuilt, f"Decode {brief}")
        shown = source.show(decoded, f"{_capitalised(what)} @ cfg {EDIT_GUIDANCE:g}", brief)
        reconstruct_column += [rebuilt, decoded, *shown.plumbing]
        compare_columns.append([shown.display, *score(source, reference, decoded, brief, what)])
    workflow.thumbnail = [(column[0], column[-1] if len(column) > 1 else None) for column in compare_columns]
    return GapParts(inversion, closed, reconstruct_column, compare_columns)


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def gap_notes(method: str, intro: str) -> str:
    label = GAP_METHODS[method][2]
    return (intro + "\n\n" + GAP_NOTES[method] + "\n\n"
            f"**{COMPARE_CAPTION}**: the source, **Plain DDIM @ cfg {EDIT_GUIDANCE:g}** (the guidance gap the "
            f"method closes) and **{_capitalised(label)} @ cfg {EDIT_GUIDANCE:g}**, each with its PSNR against "
            "the source.")


def gap_workflow(method: str, workflow: ExampleWorkflow, source: Source, reference: NodeRef | list,
                 reference_shown: Shown, intro: str) -> ExampleWorkflow:
    """The guidance-gap workflow of ``method``: invert, close the gap, reconstruct and compare."""
    parts = gap_parts(workflow, method, source, reference, reference_shown)
    workflow.notes = gap_notes(method, intro)
    invert = workflow.group(f"Invert (cfg 1), then {GAP_METHODS[method][2]}", parts.inversion, parts.closed)
    reconstruct_group = workflow.group(f"Reconstruct at cfg {EDIT_GUIDANCE:g}", parts.reconstruct_column)
    compare = workflow.group(COMPARE_CAPTION, *parts.compare_columns)
    workflow.row(source.group(reference_shown.plumbing), invert)
    if method == "null_text":
        workflow.row(reconstruct_group, compare, workflow.group("Null-text", null_text_panel(source, parts.closed)))
    else:
        workflow.row(reconstruct_group, compare)
    return workflow


TESTBED_INTRO = ("Runs on InvEdit's shipped test-bed model (no download): **Held-out digits (source)** gives "
                 "real digits with prompts like *a photo of three and seven*, inverted at guidance 1 "
                 f"({STEPS} steps) and reconstructed at cfg {EDIT_GUIDANCE:g}.")
PHOTO_INTRO = (f"Needs `{SD15_CHECKPOINT}` in `models/checkpoints`. Load your image in **Photo (source)** and "
               f"describe it in **Source prompt**; it is inverted at guidance 1 ({STEPS} steps) and "
               f"reconstructed at cfg {EDIT_GUIDANCE:g}. The source it is scored against is the photo after a "
               "plain VAE round trip, so the scores are the inversion's alone.")
GAP_CARDS = {
    "null_text": ("null-text inversion", "Null-text inversion closes the guidance gap: cfg 7.5 next to plain DDIM"),
    "negative_prompt": ("negative-prompt inversion",
                        "Negative-prompt inversion: instant reconstruction at cfg 7.5 next to plain DDIM"),
    "direct_inversion": ("direct inversion", "Direct inversion: the exact source at cfg 7.5, next to plain DDIM"),
}


def testbed_gap(method: str) -> ExampleWorkflow:
    card, description = GAP_CARDS[method]
    workflow = ExampleWorkflow(Graph(), NO_DOWNLOAD_PREFIX + card, description,
                               f"{GAP_METHODS[method][1]} on the test-bed model", "")
    source = testbed_source(workflow)
    workflow = gap_workflow(method, workflow, source, *testbed_reference(source), TESTBED_INTRO)
    if method == "null_text":
        workflow.notes += "\n\n" + GAP_NOTES["null_text_plot"]
    return workflow


def photo_gap(method: str) -> ExampleWorkflow:
    card, description = GAP_CARDS[method]
    workflow = ExampleWorkflow(Graph(), PHOTO_PREFIX + card, description,
                               f"{GAP_METHODS[method][1]} of a photo (SD 1.5)", "")
    source = checkpoint_source(workflow, EXAMPLE_IMAGE_PROMPT)
    return gap_workflow(method, workflow, source, *photo_reference(source), PHOTO_INTRO)


@example("testbed_null_text")
def testbed_null_text() -> ExampleWorkflow:
    return testbed_gap("null_text")


@example("testbed_negative_prompt")
def testbed_negative_prompt() -> ExampleWorkflow:
    return testbed_gap("negative_prompt")


@example("testbed_direct_inversion")
def testbed_direct_inversion() -> ExampleWorkflow:
    return testbed_gap("direct_inversion")


def sample_again(source: Source, guider: NodeRef, inversion: NodeRef, title: str) -> list[NodeRef]:
    """SamplerCustomAdvanced from the inversion's noise along its sigmas (no noise added, ``ddim``)
    with ``guider``: the sampler's plumbing (collapsed) and the sampler node."""
    workflow, g = source.workflow, source.workflow.graph
    no_noise = workflow.collapse(workflow.title_node(g.node("DisableNoise"), "No noise"))
    sampler = workflow.collapse(workflow.title_node(g.node("KSamplerSelect", sampler_name="ddim"), "Sampler ddim"))
    sampled = workflow.title_node(g.node("SamplerCustomAdvanced", noise=no_noise, guider=guider, sampler=sampler,
                                         sigmas=inversion.out(2), latent_image=inversion.out(0)), title)
    return [no_noise, sampler, sampled]


@example("null_text_photo")
def null_text_photo() -> ExampleWorkflow:
    workflow = ExampleWorkflow(
        Graph(), PHOTO_PREFIX + "null-text inversion, save, edit",
        "Null-text inversion of a photo, saved to a file, then edited by prompt at cfg 7.5",
        "Null-text inversion, saved, then edited (SD 1.5)", "")
    source = checkpoint_source(workflow, EXAMPLE_IMAGE_PROMPT)
    reference, reference_shown = photo_reference(source)
    parts = gap_parts(workflow, "null_text", source, reference, reference_shown)
    g = workflow.graph
    saved = workflow.title_node(g.node("InvEditSaveInversion", inversion=parts.closed.out(0),
                                       file_name="invedit/null_text_example"), "Save Inversion")
    edit_prompt = workflow.size(workflow.title_node(
        g.node("CLIPTextEncode", clip=source.text_encoder, text=EXAMPLE_EDIT_PROMPT), "Edited prompt"),
        TEXT_ENCODE_SIZE)
    guider = workflow.title_node(g.node("InvEditInversionGuider", model=source.model, positive=edit_prompt,
                                        inversion=saved.out(0), cfg=EDIT_GUIDANCE), "Inversion Guider")
    sampling = sample_again(source, guider, parts.inversion, "Sample the edit")
    decoded = source.decode(sampling[-1].out(0), "Decode edit")
    edit_shown = source.show(decoded, "Edit: yellow -> red hair", "edit", "InvEdit/null_text_edit")
    workflow.thumbnail = [(reference_shown.display, None), (edit_shown.display, None)]
    workflow.notes = gap_notes("null_text", PHOTO_INTRO) + (
        "\n\n**Save Inversion** writes the result to ComfyUI's output folder (load it with InvEdit Load Inversion "
        "in another graph, to edit many times). **Sample the edit** samples it again with **Edited prompt** through "
        f"**Inversion Guider** (same noise, same null-text embeddings, cfg {EDIT_GUIDANCE:g}): a plain edit, "
        "without attention control (the Prompt-to-Prompt workflows keep more of the photo).")
    workflow.row([workflow.note_block(), workflow.group("Null-text", null_text_report(source, parts.closed))],
                 source.group(reference_shown.plumbing),
                 workflow.group("Invert (cfg 1), then null-text", parts.inversion, parts.closed))
    workflow.row(workflow.group(f"Reconstruct at cfg {EDIT_GUIDANCE:g}", parts.reconstruct_column),
                 workflow.group(COMPARE_CAPTION, *parts.compare_columns),
                 workflow.group("Save, then edit", [saved, edit_prompt], [guider, *sampling, decoded, *edit_shown.plumbing],
                                edit_shown.display))
    return workflow


@example("negative_prompt_photo")
def negative_prompt_photo() -> ExampleWorkflow:
    return photo_gap("negative_prompt")


@example("direct_inversion_photo")
def direct_inversion_photo() -> ExampleWorkflow:
    return photo_gap("direct_inversion")


# ---------------------------------------------------------------------------------------------
# Prompt-to-Prompt on an inverted image: word swap, refine, reweight and LocalBlend

P2P_PHOTO_DOWNSAMPLE = 4  # P2P's word maps and LocalBlend read the 16x16 layers of a 512 px SD 1.5 image
P2P_TESTBED_DOWNSAMPLE = 2  # the test-bed's word-carrying layers are 4x8, half its 8x16 latent
P2P_TESTBED_SEED = 0  # the held-out canvas "a photo of eight and five"
P2P_TESTBED_SOURCE_PROMPT = "a photo of eight and five"  # what Held-out Digits gives at that seed (tested)
# The test-bed twins fix the settings their tests measure (the P2P acceptance settings); the photo
# workflows take the nodes' defaults.
P2P_TESTBED_SETTINGS = dict(cross_replace=0.8, self_replace=0.5, self_max_pixels=1024,
                            blend_layer_downsample=P2P_TESTBED_DOWNSAMPLE)

P2P_PHOTO_EDITS = {
    "word_swap": dict(mode="word swap", edited_prompts=EXAMPLE_IMAGE_PROMPT.replace("girl", "cat")),
    "refine": dict(mode="refine", edited_prompts=EXAMPLE_IMAGE_PROMPT.replace("yellow hair", "curly yellow hair")),
    "reweight": dict(mode="reweight", edited_prompts=EXAMPLE_IMAGE_PROMPT.replace("yellow hair", "curly yellow hair"),
                     reweight="curly: 2.0"),
    "local_blend": dict(mode="word swap", edited_prompts=EXAMPLE_EDIT_PROMPT, blend_words="hair; hair"),
}
P2P_TESTBED_EDITS = {
    "word_swap": dict(mode="word swap", edited_prompts="a photo of three and five\na photo of eight and zero"),
    "local_blend": dict(mode="word swap", edited_prompts="a photo of three and five", blend_words="eight; three"),
    "reweight": dict(mode="reweight", edited_prompts=P2P_TESTBED_SOURCE_PROMPT, reweight="eight: 2.0"),
}
P2P_EDIT_TITLES = {  # what the edit preview is called
    "word_swap_photo": "Edit: girl -> cat",
    "refine_photo": "Source row, then edit",
    "reweight_photo": "Edit: curly x2",
    "local_blend_photo": "Edit: red hair (blend)",
    "word_swap_testbed": "Edits: 8 -> 3, 5 -> 0",
    "local_blend_testbed": "Edit: 8 -> 3 (blend)",
    "reweight_testbed": "Edit: eight x2",
}
P2P_CARDS = {
    "word_swap_photo": ("P2P word swap", "Prompt-to-Prompt: girl -> cat on the photo, the rest kept"),
    "refine_photo": ("P2P refine, through P2P Guider",
                     "Prompt-to-Prompt refine (adds curly) in SamplerCustomAdvanced"),
    "reweight_photo": ("P2P reweight", "Prompt-to-Prompt reweight: the word curly twice as strong"),
    "local_blend_photo": ("P2P word swap with LocalBlend",
                          "Prompt-to-Prompt: yellow -> red hair, changed only where hair is"),
    "word_swap_testbed": ("P2P word swap", "Prompt-to-Prompt on real digits: eight -> three and five -> zero"),
    "local_blend_testbed": ("P2P word swap with LocalBlend",
                            "Prompt-to-Prompt eight -> three; LocalBlend keeps the other digit"),
    "reweight_testbed": ("P2P reweight", "Prompt-to-Prompt reweight: the word eight twice as strong"),
}

P2P_PHOTO_INTRO = (
    f"Needs `{SD15_CHECKPOINT}` in `models/checkpoints`. Load your image in **Photo (source)** and describe it in "
    "**Source prompt** (one text, used by the inversion and by the edit). It is DDIM-inverted at guidance 1 "
    f"({STEPS} steps); **Null-text Inversion** then makes it reconstruct at cfg {EDIT_GUIDANCE:g} (about a minute "
    "on a GPU, once per image; Negative-Prompt Inversion in its place is instant and a little less faithful). "
    "**P2P Edit** holds the edit; the source and the edited prompt are sampled in one batch, the edited row taking "
    "the source's attention, so what the prompt does not change keeps its layout.")
P2P_TESTBED_INTRO = (
    f"Runs on InvEdit's shipped test-bed model (no download): the held-out canvas *{P2P_TESTBED_SOURCE_PROMPT}* "
    f"(**Held-out digits (source)**, seed {P2P_TESTBED_SEED}; its prompt feeds the inversion and **P2P Edit**), "
    f"DDIM-inverted at guidance 1 ({STEPS} steps). **Negative-Prompt Inversion** makes it reconstruct at cfg "
    f"{EDIT_GUIDANCE:g}: the photo versions use null-text, but on this model negative-prompt inversion is instant "
    "and reconstructs better (38.5 vs 29 dB in the README's guidance-gap benchmark). Another seed gives another "
    "canvas: then write its digits into the edited prompts.")
P2P_COMPARE_NOTE = (
    f"**{COMPARE_CAPTION}**: the source; **Reconstruction**, the source prompt's row of the batch, "
    "with its PSNR; the edit. **Word maps** shows where each word attends (one row per prompt, source first).")
P2P_NOTES = {
    "word_swap_photo": (
        "*Word swap*: *girl* → *cat*. Change words of the edited prompt one for one (same number of words); for a "
        "photo of a cat on a bench: source *a photo of a cat sitting on a bench*, edited *a photo of a dog sitting on "
        "a bench*. Several lines give several edits in one batch. Lower `cross_replace` to let the new word "
        "change the shape more; `word_windows` (e.g. `cat: 0-0.4`) sets it for one word."),
    "refine_photo": (
        "*Refine*: the edited prompt adds (or drops) words: *curly* yellow hair. Tokens are aligned as in the paper, "
        "so the kept words keep their attention. This one runs through **P2P Guider** in **Sample the edit** "
        "(SamplerCustomAdvanced with no noise, the inversion's noise and sigmas, `ddim`): the output batch is the "
        "source row, then the edit. The guider stores no word maps: InvEdit P2P Sample (the other P2P workflows) "
        "shows them."),
    "reweight_photo": (
        "*Reweight*: `reweight` scales the attention of words of the edited prompt: *curly* x2 on the refined prompt "
        "(scales below 1 weaken a word). With the edited prompt equal to the source prompt it reweights a word of the "
        "image itself (e.g. `yellow: 2.0`)."),
    "local_blend_photo": (
        "*LocalBlend*: *yellow* → *red* hair with `blend_words` *hair; hair* (words per prompt, source first): the "
        "edited row changes only where those words attend and keeps the source everywhere else. The null-text photo "
        "workflow makes the same edit without attention control, for comparison. `blend_threshold` widens or "
        "narrows the mask."),
    "word_swap_testbed": (
        "*Word swap*, two edits in one batch: *eight* → *three* (top) and *five* → *zero* (bottom). The swapped digit "
        "takes the new shape; without LocalBlend the other digit drifts a little (the LocalBlend workflow keeps it)."),
    "local_blend_testbed": (
        "*Word swap with LocalBlend*: *eight* → *three* with `blend_words` *eight; three*: only where those words "
        "attend changes, so the right digit stays the source's (about 4x closer to it than the plain word swap)."),
    "reweight_testbed": (
        "*Reweight*: *eight* x2 (`reweight`, edited prompt = source prompt): the left digit gets more attention and "
        "bolder strokes. On this small model large scales can change how the digit reads."),
}


def p2p_edit(source: Source, **settings) -> NodeRef:
    """InvEdit P2P Edit on the source's text encoder and source prompt."""
    edit = source.workflow.graph.node("InvEditP2PEdit", text_encoder=source.text_encoder,
                                      source_prompt=source.prompt, **settings)
    return source.workflow.title_node(edit, "P2P Edit")


@dataclass
class P2PParts:
    """P2P Sample's results: the edit group's columns, the compare group's parts, the word maps."""

    edit_columns: list[list[NodeRef]]
    reference: Shown
    source_row: NodeRef  # its display
    source_row_score: list[NodeRef]
    edited: NodeRef  # its display
    word_maps: NodeRef

    def compare_columns(self) -> list[list[NodeRef]]:
        """Source, source row (its score below it), edit."""
        return [[self.reference.display], [self.source_row, *self.source_row_score], [self.edited]]

    def second_row(self, workflow: ExampleWorkflow) -> None:
        """The edit, what to compare, the word maps."""
        workflow.row(workflow.group("Prompt-to-Prompt edit", *self.edit_columns),
                     workflow.group(COMPARE_CAPTION, *self.compare_columns()),
                     workflow.group("Word maps (source row first)", self.word_maps))


def p2p_sampled(source: Source, inversion_link: list, edit: NodeRef, layer_downsample: int, edit_title: str,
                reference: NodeRef | list, reference_shown: Shown, save_prefix: str | None) -> P2PParts:
    """InvEdit P2P Sample: the source row scored, the edit shown, the word maps shown."""
    workflow, g = source.workflow, source.workflow.graph
    sample = workflow.title_node(g.node("InvEditP2PSample", model=source.model, inversion=inversion_link, edit=edit,
                                        cfg=EDIT_GUIDANCE), "P2P Sample")
    maps = workflow.title_node(g.node("InvEditP2PAttentionMaps", maps=sample.out(2), layer_downsample=layer_downsample),
                               "Attention maps")
    maps_shown = workflow.size(workflow.title_node(g.node("PreviewImage", images=maps), "Word maps"), WORD_MAPS_SIZE)
    source_row = source.decode(sample.out(0), "Decode source row")
    source_row_shown = source.show(source_row, "Reconstruction", "source row")
    edited = source.decode(sample.out(1), "Decode edit")
    edited_shown = source.show(edited, edit_title, "edit", save_prefix)
    workflow.thumbnail = [(reference_shown.display, None), (edited_shown.display, None)]
    plumbing = [source_row, *source_row_shown.plumbing, edited, *edited_shown.plumbing]
    return P2PParts([[edit], [sample, maps, *plumbing]], reference_shown, source_row_shown.display,
                    score(source, reference, source_row, "source row", "reconstruction"), edited_shown.display, maps_shown)


def p2p_photo(edit_name: str, through_guider: bool = False) -> ExampleWorkflow:
    """A photo (SD 1.5) null-text-inverted and edited with Prompt-to-Prompt; the edit is saved."""
    key = f"{edit_name}_photo"
    card, description = P2P_CARDS[key]
    title = P2P_EDIT_TITLES[key]
    workflow = ExampleWorkflow(Graph(), PHOTO_PREFIX + card, description, f"{card} of a photo (SD 1.5)",
                               P2P_PHOTO_INTRO + "\n\n" + P2P_NOTES[key])
    g = workflow.graph
    prompt = workflow.size(workflow.title_node(g.node("PrimitiveStringMultiline", value=EXAMPLE_IMAGE_PROMPT),
                                               "Source prompt"), TEXT_ENCODE_SIZE)
    source = checkpoint_source(workflow, prompt)
    reference, reference_shown = photo_reference(source)
    inversion, closed = method_inversion(source, "null_text")
    edit = p2p_edit(source, **P2P_PHOTO_EDITS[edit_name], blend_layer_downsample=P2P_PHOTO_DOWNSAMPLE)
    save_prefix = f"InvEdit/p2p_{edit_name}"
    first_row = ([workflow.note_block(), workflow.group("Null-text", null_text_report(source, closed))],
                 source.group(reference_shown.plumbing),
                 workflow.group("Invert (cfg 1), then null-text", inversion, closed))
    workflow.row(*first_row)
    if through_guider:
        guider = workflow.title_node(g.node("InvEditP2PGuider", model=source.model, inversion=closed.out(0), edit=edit,
                                            cfg=EDIT_GUIDANCE), "P2P Guider")
        sampling = sample_again(source, guider, inversion, "Sample the edit")
        decoded = source.decode(sampling[-1].out(0), "Decode rows")
        shown = source.show(decoded, title, "rows", save_prefix)
        workflow.thumbnail = [(reference_shown.display, None), (shown.display, None)]
        workflow.notes += f"\n\n**{COMPARE_CAPTION}**: the source, then the sampled batch."
        workflow.row(workflow.group("Prompt-to-Prompt edit", edit, [guider, *sampling, decoded, *shown.plumbing]),
                     workflow.group(COMPARE_CAPTION, reference_shown.display, shown.display))
        return workflow
    parts = p2p_sampled(source, closed.out(0), edit, P2P_PHOTO_DOWNSAMPLE, title, reference, reference_shown,
                        save_prefix)
    workflow.notes += "\n\n" + P2P_COMPARE_NOTE
    parts.second_row(workflow)
    return workflow


def p2p_testbed(edit_name: str) -> ExampleWorkflow:
    """A held-out test-bed canvas, negative-prompt-inverted and edited with Prompt-to-Prompt."""
    key = f"{edit_name}_testbed"
    card, description = P2P_CARDS[key]
    workflow = ExampleWorkflow(Graph(), NO_DOWNLOAD_PREFIX + card, description,
                               f"{card} on the test-bed model",
                               P2P_TESTBED_INTRO + "\n\n" + P2P_NOTES[key] + "\n\n" + P2P_COMPARE_NOTE)
    source = testbed_source(workflow, count=1, seed=P2P_TESTBED_SEED)
    reference, reference_shown = testbed_reference(source)
    inversion, closed = method_inversion(source, "negative_prompt")
    edit = p2p_edit(source, **P2P_TESTBED_SETTINGS, **P2P_TESTBED_EDITS[edit_name])
    parts = p2p_sampled(source, closed.out(0), edit, P2P_TESTBED_DOWNSAMPLE, P2P_EDIT_TITLES[key], reference,
                        reference_shown, None)
    workflow.row(source.group(reference_shown.plumbing),
                 workflow.group("Invert (cfg 1), then negative-prompt", inversion, closed))
    parts.second_row(workflow)
    return workflow


@example("p2p_word_swap_photo")
def p2p_word_swap_photo() -> ExampleWorkflow:
    return p2p_photo("word_swap")


@example("p2p_refine_photo")
def p2p_refine_photo() -> ExampleWorkflow:
    return p2p_photo("refine", through_guider=True)


@example("p2p_reweight_photo")
def p2p_reweight_photo() -> ExampleWorkflow:
    return p2p_photo("reweight")


@example("p2p_local_blend_photo")
def p2p_local_blend_photo() -> ExampleWorkflow:
    return p2p_photo("local_blend")


@example("testbed_p2p_word_swap")
def testbed_p2p_word_swap() -> ExampleWorkflow:
    return p2p_testbed("word_swap")


@example("testbed_p2p_local_blend")
def testbed_p2p_local_blend() -> ExampleWorkflow:
    return p2p_testbed("local_blend")


@example("testbed_p2p_reweight")
def testbed_p2p_reweight() -> ExampleWorkflow:
    return p2p_testbed("reweight")


# ---------------------------------------------------------------------------------------------
# Prompt-to-Prompt on the flow test-bed (joint attention): word swap, reweight, masked edit

FLOW_STEPS = 25  # the flow test-bed's sampling steps (README, "The test-bed model")
FLOW_SCHEDULER = "auto"  # the model's own schedule (simple, ModelSamplingFlux shift 0.5)
FLOW_EDIT_GUIDANCE = 2.0  # the flow test-bed's recommended cfg
TESTBED_CANVAS_SIZE = (16, 8)  # width, height of a test-bed canvas (two 8x8 digits side by side)
FLOW_P2P_SEED = 0  # the held-out canvas "a photo of eight and five", as the UNet twins
FLOW_P2P_EDITS = {
    "word_swap": dict(mode="word swap", edited_prompts="a photo of three and five\na photo of eight and zero"),
    "reweight": dict(mode="reweight", edited_prompts=P2P_TESTBED_SOURCE_PROMPT, reweight="eight: 2.0"),
    "masked": dict(mode="word swap", edited_prompts="a photo of three and five"),
}
FLOW_P2P_CARDS = {
    "word_swap": ("flow P2P word swap", "Joint-attention P2P on the tiny Flux: 8 -> 3 and 5 -> 0"),
    "reweight": ("flow P2P reweight", "Joint-attention P2P reweight: the word eight twice as strong"),
    "masked": ("flow P2P masked edit", "P2P 8 -> 3 inside a mask: the right digit is the reconstruction"),
}
FLOW_P2P_TITLES = {"word_swap": "Edits: 8 -> 3, 5 -> 0", "reweight": "Edit: eight x2", "masked": "Edit: 8 -> 3 (masked)"}
FLOW_P2P_INTRO = (
    "Runs on InvEdit's shipped flow test-bed (a tiny Flux of ComfyUI's own class; no download): the held-out "
    f"canvas *{P2P_TESTBED_SOURCE_PROMPT}* (**Held-out digits (source)**, seed {FLOW_P2P_SEED}), Euler-inverted at "
    f"guidance 1 ({FLOW_STEPS} steps, the model's own schedule), then edited at cfg {FLOW_EDIT_GUIDANCE:g}. Text and "
    "image tokens attend jointly: **P2P Edit**'s `layout_rule` *source image q, k* (Shin et al. 2025) gives the "
    "edited rows the source's image queries and keys during `self_replace`, so the layout stays while the image "
    "reads the edited prompt.")
FLOW_P2P_NOTES = {
    "word_swap": "*Word swap*, two edits in one batch: *eight* → *three* (top) and *five* → *zero* (bottom).",
    "reweight": ("*Reweight*: *eight* x2 (`reweight`, edited prompt = source prompt) scales the word's values in "
                 "the edited row: bolder strokes on the left digit."),
    "masked": ("*Masked edit*: *eight* → *three* with a mask over the left digit (**Mask: left digit**): after "
               "every step the edited row is put back on the source row outside the mask, so the right digit is the "
               "reconstruction's, to float rounding. Paint a mask on your own image the same way (white = edit)."),
}
FLOW_P2P_COMPARE_NOTE = (f"**{COMPARE_CAPTION}**: the source; **Reconstruction**, the source prompt's row of the "
                         "batch, with its PSNR; the edit.")


def left_digit_mask(workflow: ExampleWorkflow) -> list[NodeRef]:
    """A MASK over the left digit of a canvas: an 8x8 white square on a black 16x8 mask (3 nodes)."""
    g = workflow.graph
    canvas = workflow.collapse(workflow.title_node(
        g.node("SolidMask", value=0.0, width=TESTBED_CANVAS_SIZE[0], height=TESTBED_CANVAS_SIZE[1]), "Black canvas"))
    square = workflow.collapse(workflow.title_node(
        g.node("SolidMask", value=1.0, width=TESTBED_CANVAS_SIZE[1], height=TESTBED_CANVAS_SIZE[1]), "White square"))
    mask = workflow.title_node(g.node("MaskComposite", destination=canvas.out(0), source=square.out(0), x=0, y=0,
                                      operation="add"), "Mask: left digit")
    return [canvas, square, mask]


def p2p_flow_testbed(edit_name: str) -> ExampleWorkflow:
    """A held-out canvas Euler-inverted with the flow test-bed and edited with joint-attention P2P."""
    card, description = FLOW_P2P_CARDS[edit_name]
    workflow = ExampleWorkflow(Graph(), NO_DOWNLOAD_PREFIX + card, description, f"{card} (test-bed Flux)",
                               FLOW_P2P_INTRO + "\n\n" + FLOW_P2P_NOTES[edit_name] + "\n\n" + FLOW_P2P_COMPARE_NOTE)
    g = workflow.graph
    source = testbed_source(workflow, count=1, seed=FLOW_P2P_SEED, loader="InvEditTestbedFlowModelLoader")
    reference, reference_shown = testbed_reference(source)
    inversion = workflow.title_node(g.node(
        "InvEditDDIMInversion", model=source.model, positive=source.positive, negative=source.negative,
        latent=source.latent, steps=FLOW_STEPS, inversion_cfg=1.0, scheduler=FLOW_SCHEDULER, clean_level="zero"),
        "Euler Inversion (cfg 1)")
    edit = p2p_edit(source, **FLOW_P2P_EDITS[edit_name])
    masking = left_digit_mask(workflow) if edit_name == "masked" else []
    sample = workflow.title_node(g.node(
        "InvEditP2PSample", model=source.model, inversion=inversion.out(1), edit=edit, cfg=FLOW_EDIT_GUIDANCE,
        map_budget_mib=0, negative=source.negative, **({"mask": masking[-1].out(0)} if masking else {})),
        "P2P Sample")
    source_row = source.decode(sample.out(0), "Decode source row")
    source_row_shown = source.show(source_row, "Reconstruction", "source row")
    edited = source.decode(sample.out(1), "Decode edit")
    edited_shown = source.show(edited, FLOW_P2P_TITLES[edit_name], "edit")
    workflow.thumbnail = [(reference_shown.display, None), (edited_shown.display, None)]
    plumbing = [source_row, *source_row_shown.plumbing, edited, *edited_shown.plumbing]
    first_row = [source.group(reference_shown.plumbing), workflow.group("Invert (Euler, cfg 1)", inversion)]
    if masking:
        first_row.append(workflow.group("Mask", masking))
    workflow.row(*first_row)
    workflow.row(workflow.group("Prompt-to-Prompt edit", [edit], [sample, *plumbing]),
                 workflow.group(COMPARE_CAPTION, [reference_shown.display],
                                [source_row_shown.display, *score(source, reference, source_row, "source row",
                                                                  "reconstruction")],
                                [edited_shown.display]))
    return workflow


@example("testbed_flow_p2p_word_swap")
def testbed_flow_p2p_word_swap() -> ExampleWorkflow:
    return p2p_flow_testbed("word_swap")


@example("testbed_flow_p2p_reweight")
def testbed_flow_p2p_reweight() -> ExampleWorkflow:
    return p2p_flow_testbed("reweight")


@example("testbed_flow_p2p_masked")
def testbed_flow_p2p_masked() -> ExampleWorkflow:
    return p2p_flow_testbed("masked")
