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
EXAMPLE_IMAGE_SIZE = 768  # its width and height
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
class InversionStyle:
    """How a workflow's DDIM Inversion node is set: the method's name in titles (``DDIM``, ``FireFlow``, ...), its
    widgets besides the shared ones, and the step count."""

    name: str
    widgets: dict
    steps: int = STEPS


DDIM_STYLE = InversionStyle("DDIM", {"scheduler": SCHEDULER})


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
    style: InversionStyle = DDIM_STYLE

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
                   loader_type: str = "InvEditTestbedModelLoader", style: InversionStyle = DDIM_STYLE) -> Source:
    """A shipped test-bed model (``loader_type``: the digits UNet's or the flow model's loader) and held-out
    digits, each with its own prompt."""
    g = workflow.graph
    loader = g.node(loader_type, verify=True)
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
                  view_scale=TESTBED_VIEW_SCALE, preview_size=TESTBED_PREVIEW_SIZE, style=style)


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


def ddim_inversion(source: Source, steps: int | None = None) -> NodeRef:
    """Invert the source latent at guidance 1 the way ``source.style`` says (DDIM: the reference timestep rule)."""
    g = source.workflow.graph
    style = source.style
    inversion = g.node("InvEditDDIMInversion", model=source.model, positive=source.positive, negative=source.negative,
                       latent=source.latent, steps=steps or style.steps, inversion_cfg=1.0, clean_level="zero",
                       **style.widgets)
    return source.workflow.title_node(inversion, f"{style.name} Inversion (cfg 1)")


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


def method_inversion(source: Source, method: str, steps: int | None = None) -> tuple[NodeRef, NodeRef]:
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


def plain_method(source: Source) -> str:
    """The plain inversion the gap-closing methods are compared with: "plain DDIM", "plain Euler"."""
    return f"plain {source.style.name}"


def gap_parts(workflow: ExampleWorkflow, method: str, source: Source, reference: NodeRef | list,
              reference_shown: Shown, guidance: float = EDIT_GUIDANCE) -> GapParts:
    """Invert at guidance 1, close the gap with ``method``, reconstruct at ``guidance`` beside the plain inversion."""
    inversion, closed = method_inversion(source, method)
    _, _, label, short = GAP_METHODS[method]
    plain = plain_method(source)
    reconstruct_column, compare_columns = [], [[reference_shown.display]]
    for inversion_link, what, brief in ((inversion.out(1), plain, plain), (closed.out(0), label, short)):
        rebuilt = reconstruct(source, inversion_link, guidance, f"Reconstruct {what}")
        decoded = source.decode(rebuilt, f"Decode {brief}")
        shown = source.show(decoded, f"{_capitalised(what)} @ cfg {guidance:g}", brief)
        reconstruct_column += [rebuilt, decoded, *shown.plumbing]
        compare_columns.append([shown.display, *score(source, reference, decoded, brief, what)])
    workflow.thumbnail = [(column[0], column[-1] if len(column) > 1 else None) for column in compare_columns]
    return GapParts(inversion, closed, reconstruct_column, compare_columns)


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def gap_notes(method: str, intro: str, guidance: float = EDIT_GUIDANCE, plain: str = "plain DDIM") -> str:
    label = GAP_METHODS[method][2]
    return (intro + "\n\n" + GAP_NOTES[method] + "\n\n"
            f"**{COMPARE_CAPTION}**: the source, **{_capitalised(plain)} @ cfg {guidance:g}** (the guidance gap the "
            f"method closes) and **{_capitalised(label)} @ cfg {guidance:g}**, each with its PSNR against "
            "the source.")


def gap_workflow(method: str, workflow: ExampleWorkflow, source: Source, reference: NodeRef | list,
                 reference_shown: Shown, intro: str, guidance: float = EDIT_GUIDANCE) -> ExampleWorkflow:
    """The guidance-gap workflow of ``method``: invert, close the gap, reconstruct at ``guidance`` and compare."""
    parts = gap_parts(workflow, method, source, reference, reference_shown, guidance)
    workflow.notes = gap_notes(method, intro, guidance, plain_method(source))
    invert = workflow.group(f"Invert (cfg 1), then {GAP_METHODS[method][2]}", parts.inversion, parts.closed)
    reconstruct_group = workflow.group(f"Reconstruct at cfg {guidance:g}", parts.reconstruct_column)
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
                reference: NodeRef | list, reference_shown: Shown, save_prefix: str | None,
                cfg: float = EDIT_GUIDANCE) -> P2PParts:
    """InvEdit P2P Sample at ``cfg``: the source row scored, the edit shown, the word maps shown."""
    workflow, g = source.workflow, source.workflow.graph
    sample = workflow.title_node(g.node("InvEditP2PSample", model=source.model, inversion=inversion_link, edit=edit,
                                        cfg=cfg), "P2P Sample")
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
# Rectified-flow models: the flow test-bed (a tiny Flux that ships with the pack), Flux dev and SD3.5 photos

FLOW_TESTBED_LOADER = "InvEditTestbedFlowModelLoader"
FLOW_TESTBED_PREFIX = NO_DOWNLOAD_PREFIX + "flow, "  # tells the flow test-bed's cards from the digits UNet's
FLOW_AUTO_SCHEDULER = "auto"  # the scheduler whose sigmas are the model family's reference ones
FIREFLOW_STEPS = 25  # FireFlow at 25 steps (26 calls): 60.7 dB, Euler at 100 steps 50.4 (benchmarks/solvers.py)
FLOW_PHOTO_STEPS = 28  # Flux's and SD3.5's usual sampling steps (FluxPipeline, StableDiffusion3Pipeline)
FIREFLOW_STYLE = InversionStyle("FireFlow", {"scheduler": FLOW_AUTO_SCHEDULER, "solver": "fireflow"}, FIREFLOW_STEPS)
FLOW_PHOTO_STYLE = InversionStyle("FireFlow", {"scheduler": FLOW_AUTO_SCHEDULER, "solver": "fireflow"},
                                  FLOW_PHOTO_STEPS)
EULER_FLOW_STYLE = InversionStyle("Euler", {"scheduler": FLOW_AUTO_SCHEDULER}, STEPS)
FLOW_TESTBED_GAP_GUIDANCE = 4.0  # the flow test-bed's guidance gap: Euler at cfg 1 rebuilt at 4 gives about 17 dB
FLOW_EDIT_SEED = 0  # the held-out canvas "a photo of eight and five"
FLOW_TESTBED_SOURCE_PROMPT = "a photo of eight and five"  # what Held-out Digits gives at that seed (tested)
FLOW_TESTBED_EDIT_PROMPT = "a photo of three and five"
FLOW_EDIT_GUIDANCE = 1.0  # the edit at the inversion's own guidance keeps the unedited digit (README, flow models)
FLUX_EDIT_GUIDANCE = 2.0  # FluxGuidance of the edited prompt: FireFlow's and RF-Solver's editing guidance
FLUX_INVERSION_GUIDANCE = 1.0  # FluxGuidance / distilled_guidance while inverting (RF-Solver, FireFlow, Stable Flow)
FLUX_BASE_SHIFT, FLUX_MAX_SHIFT = 0.5, 1.15  # the ModelSamplingFlux node's defaults (FluxPipeline's)
FLUX_CHECKPOINT = "flux1-dev.safetensors"
SD35_CHECKPOINT = "sd3.5_medium.safetensors"
FLOW_MODEL_FILES = {  # file name: (url, models/ folder), as ComfyUI's own Flux and SD3.5 templates list them
    FLUX_CHECKPOINT: ("https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors",
                      "diffusion_models"),
    "ae.safetensors": ("https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/"
                       "ae.safetensors", "vae"),
    "clip_l.safetensors": ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
                           "text_encoders"),
    "t5xxl_fp16.safetensors": ("https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/"
                               "t5xxl_fp16.safetensors", "text_encoders"),
    "clip_g.safetensors": ("https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/text_encoders/"
                           "clip_g.safetensors", "text_encoders"),
    SD35_CHECKPOINT: ("https://huggingface.co/stabilityai/stable-diffusion-3.5-medium/resolve/main/"
                      "sd3.5_medium.safetensors", "checkpoints"),
}
FLOW_TESTBED_INTRO = (
    "Runs on InvEdit's shipped flow test-bed (no download): a tiny Flux transformer (ComfyUI's own Flux class, "
    "rectified flow, real CFG) trained on the same handwritten digits as the digits UNet, prompts like *a photo of "
    "three and seven*. **Held-out digits (source)** gives real digits it never saw, with their prompts.")


def with_model_files(workflow: ExampleWorkflow, loader: NodeRef, *file_names: str) -> NodeRef:
    """List the files ``loader`` needs with their download links (the frontend offers them when missing)."""
    workflow.node_properties[loader.node_id] = {
        "models": [{"name": name, "url": FLOW_MODEL_FILES[name][0], "directory": FLOW_MODEL_FILES[name][1]}
                   for name in file_names]}
    return loader


def flow_testbed_source(workflow: ExampleWorkflow, style: InversionStyle, count: int = TESTBED_DIGIT_COUNT,
                        seed: int = 0) -> Source:
    """The shipped flow test-bed and held-out digits, inverted the way ``style`` says."""
    return testbed_source(workflow, count, seed, loader_type=FLOW_TESTBED_LOADER, style=style)


@example("testbed_flow_reconstruction")
def testbed_flow_reconstruction() -> ExampleWorkflow:
    workflow = ExampleWorkflow(
        Graph(), FLOW_TESTBED_PREFIX + "invert and reconstruct",
        "Real digits inverted by a flow model with FireFlow and regenerated", "FireFlow inversion on the flow test-bed",
        "")
    source = flow_testbed_source(workflow, FIREFLOW_STYLE)
    reference, reference_shown = testbed_reference(source)
    workflow.notes = (
        FLOW_TESTBED_INTRO + f" **FireFlow Inversion (cfg 1)** runs the flow backwards to the noise at sigma 1 with "
        f"the FireFlow solver ({FIREFLOW_STEPS} steps, {FIREFLOW_STEPS + 1} model calls); **Reconstruct (cfg 1)** "
        f"replays it with FireFlow's own sampler. **{COMPARE_CAPTION}** shows the image beside its reconstruction "
        "with its PSNR (PSNR reconstruction): expect about 60 dB (the plain Euler inversion: 39 dB at 25 steps, "
        "45 dB at 50, 50 dB at 100).\n\n"
        "Set the inversion's `solver` to euler for the plain rectified-flow inversion (one call a step, replayed by "
        "stock euler), or fixed-point; raise Reconstruct's cfg to see the guidance gap.")
    return ddim_workflow(workflow, source, reference, reference_shown, None)


@example("testbed_flow_direct_inversion")
def testbed_flow_direct_inversion() -> ExampleWorkflow:
    guidance = FLOW_TESTBED_GAP_GUIDANCE
    workflow = ExampleWorkflow(Graph(), FLOW_TESTBED_PREFIX + "direct inversion",
                               f"Direct inversion on a flow model: the exact source at cfg {guidance:g}",
                               "Direct inversion on the flow test-bed", "")
    source = flow_testbed_source(workflow, EULER_FLOW_STYLE)
    workflow = gap_workflow("direct_inversion", workflow, source, *testbed_reference(source),
                            FLOW_TESTBED_INTRO, guidance)
    workflow.notes = (
        FLOW_TESTBED_INTRO + f" **Euler Inversion (cfg 1)** inverts them ({STEPS} steps); both are reconstructed "
        f"at cfg {guidance:g}.\n\n**Direct Inversion** puts the source back on the recorded inversion after every "
        "step, so the reconstruction is exact at any cfg (free), on flow models as on UNets.\n\n"
        f"**{COMPARE_CAPTION}**: the source, **Plain Euler @ cfg {guidance:g}** (the guidance gap) and "
        f"**Direct @ cfg {guidance:g}**, each with its PSNR against the source.")
    return workflow


def guided_sampling(source: Source, guider: NodeRef, inversion: NodeRef, title: str) -> list[NodeRef]:
    """SamplerCustomAdvanced from a flow inversion with ``guider``: no noise added, the inversion's noise as the
    latent, its sigmas, and InvEdit Replay Sampler with the inversion's solver (it applies no noise scaling, so it
    starts at sigma 1 from the noise as it is); the plumbing (collapsed), then the sampler node."""
    workflow, g = source.workflow, source.workflow.graph
    solver = source.style.widgets.get("solver", "euler")
    no_noise = workflow.collapse(workflow.title_node(g.node("DisableNoise"), "No noise"))
    sampler = workflow.collapse(workflow.title_node(g.node("InvEditReplaySampler", solver=solver),
                                                    f"Sampler {solver}"))
    sampled = workflow.title_node(g.node("SamplerCustomAdvanced", noise=no_noise, guider=guider, sampler=sampler,
                                         sigmas=inversion.out(2), latent_image=inversion.out(0)), title)
    return [no_noise, sampler, sampled]


@dataclass
class FlowEditParts:
    """An inversion reconstructed and edited through InvEdit Inversion Guider, ready to lay out."""

    inversion: NodeRef
    replay_column: list[NodeRef]  # Reconstruct, its decoder and plumbing
    edit_columns: list[list[NodeRef]]  # the edited prompt and guider, then the sampling
    compare_columns: list[list[NodeRef]]  # source, reconstruction with its score, edit


def flow_edit_parts(source: Source, reference: NodeRef | list, reference_shown: Shown, edited_prompt: NodeRef,
                    edit_guidance: float, edit_title: str, save_prefix: str | None) -> FlowEditParts:
    """Invert at guidance 1 (``source.style``), reconstruct at 1 (scored), edit with ``edited_prompt`` through the
    Inversion Guider at ``edit_guidance`` in SamplerCustomAdvanced."""
    workflow, g = source.workflow, source.workflow.graph
    inversion = ddim_inversion(source)
    rebuilt = reconstruct(source, inversion.out(1), 1.0, "Reconstruct (cfg 1)")
    decoded = source.decode(rebuilt, "Decode replay")
    shown = source.show(decoded, "Reconstruction @ cfg 1", "replay")
    scored = score(source, reference, decoded, "replay", "reconstruction")
    guider = workflow.title_node(g.node("InvEditInversionGuider", model=source.model, positive=edited_prompt,
                                        inversion=inversion.out(1), cfg=edit_guidance), "Inversion Guider")
    sampling = guided_sampling(source, guider, inversion, "Sample the edit")
    edit_decoded = source.decode(sampling[-1].out(0), "Decode edit")
    edit_shown = source.show(edit_decoded, edit_title, "edit", save_prefix)
    workflow.thumbnail = [(reference_shown.display, None), (shown.display, scored[-1]), (edit_shown.display, None)]
    return FlowEditParts(inversion, [rebuilt, decoded, *shown.plumbing],
                         [[edited_prompt, guider], [*sampling, edit_decoded, *edit_shown.plumbing]],
                         [[reference_shown.display], [shown.display, *scored], [edit_shown.display]])


@example("testbed_flow_edit")
def testbed_flow_edit() -> ExampleWorkflow:
    workflow = ExampleWorkflow(Graph(), FLOW_TESTBED_PREFIX + "prompt edit",
                               "A flow model edits real digits by prompt: eight -> three, the five kept",
                               "Prompt edit on the flow test-bed", "")
    source = flow_testbed_source(workflow, FIREFLOW_STYLE, count=1, seed=FLOW_EDIT_SEED)
    reference, reference_shown = testbed_reference(source)
    edited_prompt = workflow.size(workflow.title_node(
        workflow.graph.node("InvEditTestbedTextEncode", text_encoder=source.text_encoder, text=FLOW_TESTBED_EDIT_PROMPT),
        "Edited prompt"), TEXT_ENCODE_SIZE)
    parts = flow_edit_parts(source, reference, reference_shown, edited_prompt, FLOW_EDIT_GUIDANCE, "Edit: 8 -> 3",
                            None)
    workflow.notes = (
        FLOW_TESTBED_INTRO + f" Here the held-out canvas *{FLOW_TESTBED_SOURCE_PROMPT}* (seed {FLOW_EDIT_SEED}) is "
        f"inverted with FireFlow at guidance 1 (**FireFlow Inversion (cfg 1)**, {FIREFLOW_STEPS} steps) and "
        "reconstructed (**Reconstruct (cfg 1)**).\n\n**Sample the edit** samples the same noise again with **Edited "
        f"prompt** (*{FLOW_TESTBED_EDIT_PROMPT}*) through **Inversion Guider** in SamplerCustomAdvanced (no noise, the "
        "inversion's noise and sigmas, InvEdit Replay Sampler with the FireFlow solver): the eight becomes a "
        f"three and the five stays the source's. At cfg {FLOW_EDIT_GUIDANCE:g}, the inversion's own guidance; a "
        "higher cfg pushes harder and moves the rest of the image too (the guidance gap).\n\n"
        f"**{COMPARE_CAPTION}**: the source, the reconstruction with its PSNR, the edit.")
    workflow.row(source.group(reference_shown.plumbing),
                 workflow.group("Invert (FireFlow, cfg 1)", parts.inversion),
                 workflow.group("Replay", parts.replay_column))
    workflow.row(workflow.group("Edit through the Inversion Guider", *parts.edit_columns),
                 workflow.group(COMPARE_CAPTION, *parts.compare_columns))
    return workflow


@dataclass(frozen=True)
class FlowPhotoModel:
    """A flow model's photo workflow: its card prefix, its name in titles, and how the edit is guided."""

    prefix: str
    name: str
    edit_guidance: float  # cfg of the Inversion Guider
    flux_edit_guidance: float | None  # FluxGuidance on the edited prompt (guidance-distilled models), else None


FLUX_DEV = FlowPhotoModel("Flux - ", "Flux dev", 1.0, FLUX_EDIT_GUIDANCE)
SD35 = FlowPhotoModel("SD3.5 - ", "SD3.5 Medium", FLOW_EDIT_GUIDANCE, None)


def prompt_text(workflow: ExampleWorkflow, prompt: str | NodeRef) -> tuple[str | list, tuple[NodeRef, ...]]:
    """``(text or link, nodes to show)`` of a source prompt given as text or as a node whose STRING output gives
    it (one text shared by the inversion's prompt and P2P Edit)."""
    if isinstance(prompt, NodeRef):
        return prompt.out(0), (prompt,)
    return prompt, ()


def flux_dev_source(workflow: ExampleWorkflow, prompt: str | NodeRef,
                    source_guidance: float | None = FLUX_INVERSION_GUIDANCE,
                    style: InversionStyle = FLOW_PHOTO_STYLE) -> Source:
    """Flux dev through ComfyUI's UNETLoader, DualCLIPLoader and VAELoader; ModelSamplingFlux sets the shift for
    the example photo's size, the source prompt gets FluxGuidance ``source_guidance`` (the inversion's; None: no
    FluxGuidance node, for a node that writes the guidance itself, like the FlowEdit Guider's presets)."""
    g = workflow.graph
    text_value, prompt_nodes = prompt_text(workflow, prompt)
    unet = with_model_files(workflow, g.node("UNETLoader", unet_name=FLUX_CHECKPOINT, weight_dtype="default"),
                            FLUX_CHECKPOINT)
    clip = with_model_files(workflow, g.node("DualCLIPLoader", clip_name1="clip_l.safetensors",
                                             clip_name2="t5xxl_fp16.safetensors", type="flux"),
                            "clip_l.safetensors", "t5xxl_fp16.safetensors")
    vae = with_model_files(workflow, g.node("VAELoader", vae_name="ae.safetensors"), "ae.safetensors")
    photo = workflow.size(workflow.title_node(g.node("LoadImage", image=EXAMPLE_IMAGE), "Photo (source)"),
                          PHOTO_LOAD_IMAGE_SIZE)
    model = workflow.title_node(g.node("ModelSamplingFlux", model=unet.out(0), max_shift=FLUX_MAX_SHIFT,
                                       base_shift=FLUX_BASE_SHIFT, width=EXAMPLE_IMAGE_SIZE, height=EXAMPLE_IMAGE_SIZE),
                                "Shift for the photo's size")
    text = workflow.size(workflow.title_node(g.node("CLIPTextEncode", clip=clip.out(0), text=text_value),
                                             "Encode source prompt" if prompt_nodes else "Source prompt"),
                         TEXT_ENCODE_SIZE)
    positive = text
    if source_guidance is not None:
        positive = workflow.title_node(g.node("FluxGuidance", conditioning=text.out(0), guidance=source_guidance),
                                       f"Guidance {source_guidance:g} (source)")
    negative = workflow.collapse(workflow.title_node(g.node("CLIPTextEncode", clip=clip.out(0), text=""),
                                                     "Empty prompt"))
    latent = workflow.title_node(g.node("VAEEncode", pixels=photo.out(0), vae=vae.out(0)), "Encode photo")
    return Source(workflow, model.out(0), photo.out(0), latent.out(0), positive, negative,
                  lambda samples: g.node("VAEDecode", samples=samples, vae=vae.out(0)), clip.out(0), text_value,
                  ((unet, clip, vae), (photo, model),
                   tuple(dict.fromkeys((*prompt_nodes, text, positive, negative, latent)))), style=style)


def sd35_source(workflow: ExampleWorkflow, prompt: str | NodeRef, style: InversionStyle = FLOW_PHOTO_STYLE) -> Source:
    """SD3.5 Medium through ComfyUI's CheckpointLoaderSimple (model, VAE) and TripleCLIPLoader (CLIP-L, CLIP-G, T5)."""
    g = workflow.graph
    text_value, prompt_nodes = prompt_text(workflow, prompt)
    checkpoint = with_model_files(workflow, g.node("CheckpointLoaderSimple", ckpt_name=SD35_CHECKPOINT),
                                  SD35_CHECKPOINT)
    clip = with_model_files(workflow, g.node("TripleCLIPLoader", clip_name1="clip_l.safetensors",
                                             clip_name2="clip_g.safetensors", clip_name3="t5xxl_fp16.safetensors"),
                            "clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors")
    photo = workflow.size(workflow.title_node(g.node("LoadImage", image=EXAMPLE_IMAGE), "Photo (source)"),
                          PHOTO_LOAD_IMAGE_SIZE)
    positive = workflow.size(workflow.title_node(g.node("CLIPTextEncode", clip=clip.out(0), text=text_value),
                                                 "Encode source prompt" if prompt_nodes else "Source prompt"),
                             TEXT_ENCODE_SIZE)
    negative = workflow.size(workflow.title_node(g.node("CLIPTextEncode", clip=clip.out(0), text=""), "Empty prompt"),
                             TEXT_ENCODE_SIZE)
    latent = workflow.title_node(g.node("VAEEncode", pixels=photo.out(0), vae=checkpoint.out(2)), "Encode photo")
    return Source(workflow, checkpoint.out(0), photo.out(0), latent.out(0), positive, negative,
                  lambda samples: g.node("VAEDecode", samples=samples, vae=checkpoint.out(2)), clip.out(0), text_value,
                  ((checkpoint, clip), (photo,), (*prompt_nodes, positive, negative, latent)), style=style)


def flow_photo(model: FlowPhotoModel, source: Source, files_note: str) -> ExampleWorkflow:
    """A photo inverted with FireFlow at guidance 1, reconstructed (scored) and edited through the Inversion Guider."""
    workflow, g = source.workflow, source.workflow.graph
    reference, reference_shown = photo_reference(source)
    edited_prompt = workflow.size(workflow.title_node(
        g.node("CLIPTextEncode", clip=source.text_encoder, text=EXAMPLE_EDIT_PROMPT), "Edited prompt"), TEXT_ENCODE_SIZE)
    edit_column_top = [edited_prompt]
    guidance_note = f"cfg {model.edit_guidance:g}"
    if model.flux_edit_guidance is not None:
        edited_prompt = workflow.title_node(g.node("FluxGuidance", conditioning=edited_prompt.out(0),
                                                   guidance=model.flux_edit_guidance), "Edit guidance")
        edit_column_top.append(edited_prompt)
        guidance_note = f"FluxGuidance {model.flux_edit_guidance:g} (**Edit guidance**), cfg {model.edit_guidance:g}"
    parts = flow_edit_parts(source, reference, reference_shown, edited_prompt, model.edit_guidance,
                            "Edit: yellow -> red hair", f"InvEdit/{model.prefix.split()[0].lower()}_edit")
    parts.edit_columns[0][:1] = edit_column_top
    workflow.notes = (
        files_note + " Load your image in **Photo (source)** and describe it in **Source prompt**.\n\n"
        f"**FireFlow Inversion (cfg 1)** inverts it at guidance 1 with the FireFlow solver ({FLOW_PHOTO_STEPS} steps, "
        f"{FLOW_PHOTO_STEPS + 1} model calls); **Reconstruct (cfg 1)** replays it with FireFlow's sampler, scored "
        "against the photo after a plain VAE round trip (the inversion's error alone). **Sample the edit** samples "
        f"the same noise with **Edited prompt** (*red* hair) through **Inversion Guider** ({guidance_note}) in "
        "SamplerCustomAdvanced (no noise, the inversion's noise and sigmas, InvEdit Replay Sampler with the FireFlow "
        "solver; for stock samplers, InvEdit Inversion Noise gives the NOISE). A plain edit, without attention "
        "control.\n\n"
        f"**{COMPARE_CAPTION}**: the source, the reconstruction with its PSNR, the edit.")
    workflow.row(source.group(reference_shown.plumbing), workflow.group("Invert (FireFlow, cfg 1)", parts.inversion))
    workflow.row(workflow.group("Replay", parts.replay_column),
                 workflow.group("Edit through the Inversion Guider", *parts.edit_columns),
                 workflow.group(COMPARE_CAPTION, *parts.compare_columns))
    return workflow


FLOW_PHOTO_DESCRIPTION = "Your photo inverted with FireFlow, reconstructed, and edited by prompt"


@example("flux_dev_flow_edit")
def flux_dev_flow_edit() -> ExampleWorkflow:
    workflow = ExampleWorkflow(Graph(), FLUX_DEV.prefix + "invert, reconstruct, edit",
                               FLOW_PHOTO_DESCRIPTION + " (Flux dev)", "FireFlow inversion and edit of a photo (Flux dev)",
                               "")
    source = flux_dev_source(workflow, EXAMPLE_IMAGE_PROMPT)
    return flow_photo(FLUX_DEV, source, (
        f"Needs Flux dev: `{FLUX_CHECKPOINT}` (models/diffusion_models), `clip_l.safetensors` and "
        "`t5xxl_fp16.safetensors` (models/text_encoders), `ae.safetensors` (models/vae); when one is missing ComfyUI "
        "lists it with its download link. **Shift for the photo's size** sets Flux's time shift for the image "
        f"size (set its width and height to your photo's; {EXAMPLE_IMAGE_SIZE} for the example); **Guidance 1 (source)** gives the source prompt the guidance the inversion runs at "
        f"({FLUX_INVERSION_GUIDANCE:g}, as RF-Solver, FireFlow and Stable Flow invert Flux dev)."))


@example("sd35_flow_edit")
def sd35_flow_edit() -> ExampleWorkflow:
    workflow = ExampleWorkflow(Graph(), SD35.prefix + "invert, reconstruct, edit",
                               FLOW_PHOTO_DESCRIPTION + " (SD3.5 Medium)",
                               "FireFlow inversion and edit of a photo (SD3.5)", "")
    source = sd35_source(workflow, EXAMPLE_IMAGE_PROMPT)
    return flow_photo(SD35, source, (
        f"Needs SD3.5 Medium: `{SD35_CHECKPOINT}` (models/checkpoints; its model and VAE) and `clip_l.safetensors`, "
        "`clip_g.safetensors`, `t5xxl_fp16.safetensors` (models/text_encoders); when one is missing ComfyUI lists "
        "it with its download link."))


# Prompt-to-Prompt on the joint attention of Flux dev and SD3.5 photos (issue 15)

FLOW_P2P_PHOTO_STYLE = InversionStyle("Fixed-point", {"scheduler": FLOW_AUTO_SCHEDULER, "solver": "fixed-point",
                                                      "fixed_point_iterations": 3}, FLOW_PHOTO_STEPS)
FLOW_P2P_PHOTO_CFG = 1.0  # every row at the inversion's guidance: the source row is the reconstruction
FLOW_P2P_MAP_DOWNSAMPLE = 2  # joint-attention word maps are the image patches: the latent / 2
FLOW_P2P_PHOTO_EDIT = P2P_PHOTO_EDITS["word_swap"]  # girl -> cat, as the SD 1.5 word swap
FLOW_P2P_PHOTO_NOTES = (
    " Load your image in **Photo (source)** and describe it in **Source prompt** (one text, used by the inversion "
    "and by the edit). **Fixed-point Inversion (cfg 1)** inverts it at guidance 1 ({steps} steps, 3 fixed-point "
    "iterations a step: nearly FireFlow's accuracy, and replayed with one model call per step, which "
    "Prompt-to-Prompt needs; it refuses a FireFlow inversion). **P2P Edit** holds the edit, *girl* → *cat*, with "
    "the words found in the text encoder's own tokens ({keys}). **P2P Sample** samples the source and the edited "
    "prompt in one batch at cfg {cfg:g}{guidance}: during `self_replace` the edited row takes the source's image "
    "queries and keys in every joint-attention block (`layout_rule` *source image q, k*, Shin et al. 2025), so the "
    "layout stays while the image follows the edited prompt. Give P2P Sample a MASK to keep the photo exactly "
    "outside it.\n\n**{compare}**: the source (after a plain VAE round trip), **Reconstruction** (the source "
    "prompt's row of the batch) with its PSNR, the edit; **Word maps** shows where each word attends. Not run in "
    "InvEdit's tests: random-weight files of this size do not fit them, so ComfyUI validates the graph with its "
    "real loaders, and P2P Edit is run on these prompts with the real tokenizers (the test-bed versions, *Digits - "
    "flow P2P ...*, run in the tests).")


def flow_p2p_photo(model: FlowPhotoModel, make_source: Callable[[ExampleWorkflow, NodeRef], Source], files_note: str,
                   keys: str, guidance: str) -> ExampleWorkflow:
    """A photo inverted with the fixed-point solver at guidance 1 and edited with joint-attention Prompt-to-Prompt
    (girl -> cat) by P2P Sample; the edit is saved."""
    workflow = ExampleWorkflow(Graph(), model.prefix + "P2P word swap",
                               f"Prompt-to-Prompt on joint attention: girl -> cat, the layout kept ({model.name})",
                               f"P2P word swap of a photo ({model.name})", "")
    g = workflow.graph
    prompt = workflow.size(workflow.title_node(g.node("PrimitiveStringMultiline", value=EXAMPLE_IMAGE_PROMPT),
                                               "Source prompt"), TEXT_ENCODE_SIZE)
    source = make_source(workflow, prompt)
    reference, reference_shown = photo_reference(source)
    inversion = ddim_inversion(source)
    edit = p2p_edit(source, **FLOW_P2P_PHOTO_EDIT)
    parts = p2p_sampled(source, inversion.out(1), edit, FLOW_P2P_MAP_DOWNSAMPLE, P2P_EDIT_TITLES["word_swap_photo"],
                        reference, reference_shown, f"InvEdit/{model.prefix.split()[0].lower()}_p2p_word_swap",
                        cfg=FLOW_P2P_PHOTO_CFG)
    workflow.notes = files_note + FLOW_P2P_PHOTO_NOTES.format(steps=FLOW_PHOTO_STEPS, keys=keys, cfg=FLOW_P2P_PHOTO_CFG,
                                                              guidance=guidance, compare=COMPARE_CAPTION)
    workflow.row(source.group(reference_shown.plumbing), workflow.group("Invert (fixed-point, cfg 1)", inversion))
    parts.second_row(workflow)
    return workflow


@example("flux_dev_p2p_word_swap")
def flux_dev_p2p_word_swap() -> ExampleWorkflow:
    return flow_p2p_photo(FLUX_DEV, lambda workflow, prompt: flux_dev_source(workflow, prompt,
                                                                             style=FLOW_P2P_PHOTO_STYLE), (
        f"Needs Flux dev: `{FLUX_CHECKPOINT}` (models/diffusion_models), `clip_l.safetensors` and "
        "`t5xxl_fp16.safetensors` (models/text_encoders), `ae.safetensors` (models/vae); when one is missing ComfyUI "
        "lists it with its download link. **Shift for the photo's size** sets Flux's time shift for the image size "
        f"(set its width and height to your photo's; {EXAMPLE_IMAGE_SIZE} for the example)."),
        "Flux's text keys are its T5 tokens; CLIP-L gives only the pooled vector",
        f" and every row at the inversion's FluxGuidance ({FLUX_INVERSION_GUIDANCE:g}, **Guidance 1 (source)**)")


@example("sd35_p2p_word_swap")
def sd35_p2p_word_swap() -> ExampleWorkflow:
    return flow_p2p_photo(SD35, lambda workflow, prompt: sd35_source(workflow, prompt, style=FLOW_P2P_PHOTO_STYLE), (
        f"Needs SD3.5 Medium: `{SD35_CHECKPOINT}` (models/checkpoints; its model and VAE) and `clip_l.safetensors`, "
        "`clip_g.safetensors`, `t5xxl_fp16.safetensors` (models/text_encoders); when one is missing ComfyUI lists "
        "it with its download link."),
        "SD3's text keys are its 77 CLIP-L/G tokens, then its T5 tokens: a word is edited in both", "")


# Inversion-free and noise-recording edits (issue 16): FlowEdit on the flow test-bed, edit-friendly
# DDPM inversion on the UNet test-bed and on a photo.

SWAP_TESTBED_SEED = P2P_TESTBED_SEED  # the held-out canvas "a photo of eight and five"
SWAP_TESTBED_TARGET = "a photo of three and five"  # eight -> three, as the P2P LocalBlend workflow
FLOWEDIT_TESTBED_PRESET = "Digits test-bed"
FLOWEDIT_TESTBED_STEPS = 28  # the preset's steps
FLOWEDIT_SCHEDULER = "simple"
DDPM_TESTBED_CFG = 3.5  # measured best on the test-bed (benchmarks/results/ddpm_testbed.md)
DDPM_TESTBED_SKIP = 18  # of 50: the paper's 36 of 100
DDPM_PHOTO_STEPS = 100  # the official code's
DDPM_PHOTO_SOURCE_CFG = 3.5
DDPM_PHOTO_TARGET_CFG = 15.0
DDPM_PHOTO_SKIP = 36


def target_prompt(source: Source, text: str, title: str) -> NodeRef:
    """The edit's prompt, encoded with the source's text encoder (test-bed or CLIP)."""
    workflow, g = source.workflow, source.workflow.graph
    if source.view_scale > 1:  # the test-bed's own text encoder
        node = g.node("InvEditTestbedTextEncode", text_encoder=source.text_encoder, text=text)
    else:
        node = g.node("CLIPTextEncode", clip=source.text_encoder, text=text)
    return workflow.size(workflow.title_node(node, title), TEXT_ENCODE_SIZE)


def custom_sample(source: Source, guider: NodeRef, sampler: NodeRef, sigmas: list, title: str) -> list[NodeRef]:
    """SamplerCustomAdvanced from the source latent, no noise added: its plumbing and the sampler node."""
    workflow, g = source.workflow, source.workflow.graph
    no_noise = workflow.collapse(workflow.title_node(g.node("DisableNoise"), "No noise"))
    sampled = workflow.title_node(g.node("SamplerCustomAdvanced", noise=no_noise, guider=guider, sampler=sampler,
                                         sigmas=sigmas, latent_image=source.latent), title)
    return [no_noise, sampled]


@dataclass(frozen=True)
class FlowEditRun:
    """FlowEdit in SamplerCustomAdvanced: the group's columns (prompt and guider; sampler, sigmas, sampling,
    decoding), the decoded edit and its display."""

    columns: list[list[NodeRef]]
    decoded: NodeRef
    shown: Shown


def flowedit_sampling(source: Source, target: NodeRef, preset: str, scheduler: str, steps: int, edit_title: str,
                      save_prefix: str | None) -> FlowEditRun:
    """FlowEdit Guider (source prompt, ``target``, the negative, ``preset``) and FlowEdit Sampler in
    SamplerCustomAdvanced with no noise, the source latent and ``steps`` SIGMAS of ``scheduler`` (the preset's)."""
    workflow, g = source.workflow, source.workflow.graph
    guider = workflow.title_node(g.node("InvEditFlowEditGuider", model=source.model, source=source.positive,
                                        target=target, preset=preset, negative=source.negative), "FlowEdit Guider")
    sampler = workflow.title_node(g.node("InvEditFlowEditSampler", preset=preset, seed=0), "FlowEdit Sampler")
    sigmas = workflow.collapse(workflow.title_node(
        g.node("BasicScheduler", model=source.model, scheduler=scheduler, steps=steps, denoise=1.0),
        f"{steps} steps"))
    sampling = custom_sample(source, guider, sampler, sigmas.out(0), "Sample the edit")
    decoded = source.decode(sampling[-1].out(0), "Decode edit")
    shown = source.show(decoded, edit_title, "edit", save_prefix)
    return FlowEditRun([[target, guider], [sampler, sigmas, *sampling, decoded, *shown.plumbing]], decoded, shown)


@example("testbed_flowedit")
def testbed_flowedit() -> ExampleWorkflow:
    workflow = ExampleWorkflow(
        Graph(), NO_DOWNLOAD_PREFIX + "FlowEdit digit swap",
        "FlowEdit on the flow test-bed: eight -> three with no inversion",
        "FlowEdit on the flow test-bed model", "")
    source = testbed_source(workflow, count=1, seed=SWAP_TESTBED_SEED, loader_type="InvEditTestbedFlowModelLoader")
    reference, reference_shown = testbed_reference(source)
    target = target_prompt(source, SWAP_TESTBED_TARGET, "Target prompt")
    flowedit = flowedit_sampling(source, target, FLOWEDIT_TESTBED_PRESET, FLOWEDIT_SCHEDULER, FLOWEDIT_TESTBED_STEPS,
                                 "Edit: 8 -> 3", None)
    decoded, shown = flowedit.decoded, flowedit.shown
    scored = score(source, reference, decoded, "edit")
    workflow.thumbnail = [(reference_shown.display, None), (shown.display, scored[-1])]
    workflow.notes = (
        "Runs on InvEdit's shipped flow test-bed (a tiny Flux; no download): the held-out canvas *a photo of eight "
        f"and five* (**Held-out digits (source)**, seed {SWAP_TESTBED_SEED}). **FlowEdit** (Kulikov et al., ICCV "
        "2025) edits it with no inversion: from the source latent, each of the last n_max steps moves the image "
        "along the difference between the **Target prompt**'s velocity and the source prompt's, at noisy states "
        "that share a fresh noise draw. **FlowEdit Guider** holds the two prompts and their CFG, **FlowEdit "
        f"Sampler** the steps to edit and its seed; the preset *{FLOWEDIT_TESTBED_PRESET}* ({FLOWEDIT_TESTBED_STEPS} "
        "steps, n_max 20, CFG 2 / 2) swaps 16 of 16 held-out digits with the other digit's mean error 0.013 "
        "(README). The SD3 and Flux presets are the paper's. **PSNR edit** compares the edit with the source: only "
        "one digit changes.\n\nGive the sampler a MASK to keep the source exactly "
        "outside it.")
    workflow.row(source.group(reference_shown.plumbing), workflow.group("FlowEdit", *flowedit.columns))
    workflow.row(workflow.group(COMPARE_CAPTION, reference_shown.display, [shown.display, *scored]))
    return workflow


FLOWEDIT_PHOTO_NOTES = (
    " Load your image in **Photo (source)** and describe it in **Source prompt**. **FlowEdit** (Kulikov et al., "
    "ICCV 2025) edits it with no inversion: from the encoded photo, each of the last n_max steps moves the image "
    "along the difference between the **Target prompt**'s velocity and the source prompt's (*yellow* -> *red* "
    "hair), at noisy states that share a fresh noise draw. **FlowEdit Guider** holds the two prompts, **FlowEdit "
    "Sampler** the steps to edit and its seed; both take the preset *{preset}* ({settings}); the scheduler is "
    "**{steps} steps** ({scheduler}, the preset's step count; a preset refuses another). SamplerCustomAdvanced adds "
    "no noise (**No noise**) and starts from **Encode photo**. Give the sampler a MASK to keep the photo exactly "
    "outside it.\n\n**{compare}**: the source (after a plain VAE round trip) and the edit. Not run in InvEdit's "
    "tests: random-weight files of this size do not fit them, so ComfyUI only validates the graph with its real "
    "loaders (the test-bed version, *Digits - FlowEdit digit swap*, runs in the tests).")


def flowedit_photo(workflow: ExampleWorkflow, source: Source, files_note: str, preset: str, settings: str,
                   scheduler: str, steps: int, save_prefix: str) -> ExampleWorkflow:
    """The example photo edited by FlowEdit (yellow -> red hair) with ``preset``; the edit is saved."""
    reference, reference_shown = photo_reference(source)
    target = target_prompt(source, EXAMPLE_EDIT_PROMPT, "Target prompt")
    flowedit = flowedit_sampling(source, target, preset, scheduler, steps, "Edit: red hair", save_prefix)
    workflow.thumbnail = [(reference_shown.display, None), (flowedit.shown.display, None)]
    workflow.notes = files_note + FLOWEDIT_PHOTO_NOTES.format(preset=preset, settings=settings, steps=steps,
                                                             scheduler=scheduler, compare=COMPARE_CAPTION)
    workflow.row(source.group(reference_shown.plumbing))
    workflow.row(workflow.group("FlowEdit", *flowedit.columns),
                 workflow.group(COMPARE_CAPTION, reference_shown.display, flowedit.shown.display))
    return workflow


FLOWEDIT_FLUX_PRESET = "Flux (paper)"
FLOWEDIT_FLUX_SCHEDULER = "simple"  # with ModelSamplingFlux: FluxPipeline's levels (tests/host/test_flowedit.py)
FLOWEDIT_FLUX_STEPS = 28  # the preset's
FLOWEDIT_SD3_PRESET = "SD3 (paper)"
FLOWEDIT_SD3_SCHEDULER = "normal"  # diffusers' SD3 levels (tests/host/test_flowedit.py)
FLOWEDIT_SD3_STEPS = 50  # the preset's
FLOWEDIT_PHOTO_DESCRIPTION = "FlowEdit of your photo, no inversion: yellow -> red hair"


@example("flux_dev_flowedit")
def flux_dev_flowedit() -> ExampleWorkflow:
    workflow = ExampleWorkflow(Graph(), FLUX_DEV.prefix + "FlowEdit", FLOWEDIT_PHOTO_DESCRIPTION + " (Flux dev)",
                               "FlowEdit of a photo (Flux dev)", "")
    source = flux_dev_source(workflow, EXAMPLE_IMAGE_PROMPT, source_guidance=None)
    return flowedit_photo(workflow, source, (
        f"Needs Flux dev: `{FLUX_CHECKPOINT}` (models/diffusion_models), `clip_l.safetensors` and "
        "`t5xxl_fp16.safetensors` (models/text_encoders), `ae.safetensors` (models/vae); when one is missing ComfyUI "
        "lists it with its download link. **Shift for the photo's size** sets Flux's time shift for the image size "
        f"(set its width and height to your photo's; {EXAMPLE_IMAGE_SIZE} for the example)."),
        FLOWEDIT_FLUX_PRESET, f"{FLOWEDIT_FLUX_STEPS} steps, n_max 24, distilled guidance 1.5 / 5.5 written into the "
        "two prompts by the guider, CFG 1: **Empty prompt** is not used", FLOWEDIT_FLUX_SCHEDULER, FLOWEDIT_FLUX_STEPS,
        "InvEdit/flux_flowedit")


@example("sd35_flowedit")
def sd35_flowedit() -> ExampleWorkflow:
    workflow = ExampleWorkflow(Graph(), SD35.prefix + "FlowEdit", FLOWEDIT_PHOTO_DESCRIPTION + " (SD3.5 Medium)",
                               "FlowEdit of a photo (SD3.5)", "")
    source = sd35_source(workflow, EXAMPLE_IMAGE_PROMPT)
    return flowedit_photo(workflow, source, (
        f"Needs SD3.5 Medium: `{SD35_CHECKPOINT}` (models/checkpoints; its model and VAE) and `clip_l.safetensors`, "
        "`clip_g.safetensors`, `t5xxl_fp16.safetensors` (models/text_encoders); when one is missing ComfyUI lists "
        "it with its download link."),
        FLOWEDIT_SD3_PRESET, f"{FLOWEDIT_SD3_STEPS} steps, n_max 33, CFG 3.5 / 13.5 against **Empty prompt**",
        FLOWEDIT_SD3_SCHEDULER, FLOWEDIT_SD3_STEPS, "InvEdit/sd35_flowedit")


def ddpm_noise_parts(source: Source, steps: int, source_cfg: float, target: NodeRef, target_cfg: float, skip: int,
                     edit_title: str, save_prefix: str | None) -> dict:
    """Record the noises, reconstruct (exact), and edit through the DDPM Edit Sampler."""
    workflow, g = source.workflow, source.workflow.graph
    inversion = workflow.title_node(g.node("InvEditDDPMNoiseInversion", model=source.model, positive=source.positive,
                                           negative=source.negative, latent=source.latent, steps=steps,
                                           scheduler=SCHEDULER, cfg=source_cfg, seed=0),
                                    "DDPM Noise Inversion")
    rebuilt = reconstruct(source, inversion.out(0), source_cfg, "Reconstruct")
    rebuilt_decoded = source.decode(rebuilt, "Decode rebuilt")
    rebuilt_shown = source.show(rebuilt_decoded, "Reconstruction", "reconstruction")
    guider = workflow.collapse(workflow.title_node(
        g.node("CFGGuider", model=source.model, positive=target, negative=source.negative, cfg=target_cfg),
        f"Guider cfg {target_cfg:g}"))
    sampler = workflow.title_node(g.node("InvEditDDPMEditSampler", inversion=inversion.out(0), skip=skip),
                                  "DDPM Edit Sampler")
    sampling = custom_sample(source, guider, sampler, inversion.out(1), "Sample the edit")
    decoded = source.decode(sampling[-1].out(0), "Decode edit")
    shown = source.show(decoded, edit_title, "edit", save_prefix)
    return {"inversion": inversion, "reconstruct": [rebuilt, rebuilt_decoded, *rebuilt_shown.plumbing],
            "reconstruction": rebuilt_shown.display, "rebuilt_decoded": rebuilt_decoded,
            "edit": [guider, sampler, *sampling, decoded, *shown.plumbing], "edited": shown.display}


DDPM_NOTES = (
    "**DDPM Noise Inversion** (edit-friendly DDPM inversion, Huberman-Spiegelglas et al., CVPR 2024) draws the "
    "image's noisy state at every step independently and records the noise that makes each DDPM step land on the "
    "next one: **Reconstruct** at the inversion's prompt and cfg gives the image back exactly (PSNR far above 60 "
    "dB). **Sample the edit** reuses the recorded noises with the **Target prompt** through **DDPM Edit Sampler** "
    "in SamplerCustomAdvanced, starting `skip` steps in: no second inversion for another edit. Give the sampler a "
    "MASK to keep the source exactly outside it.")


def ddpm_workflow(workflow: ExampleWorkflow, source: Source, reference, reference_shown: Shown, parts: dict,
                  target: NodeRef) -> ExampleWorkflow:
    scored = score(source, reference, parts["rebuilt_decoded"], "reconstruction")
    workflow.thumbnail = [(reference_shown.display, None), (parts["edited"], None)]
    workflow.row(source.group(reference_shown.plumbing),
                 workflow.group("Record the noises", parts["inversion"], parts["reconstruct"]))
    workflow.row(workflow.group("Edit with the recorded noises", target, parts["edit"]),
                 workflow.group(COMPARE_CAPTION, reference_shown.display, [parts["reconstruction"], *scored],
                                parts["edited"]))
    return workflow


@example("testbed_ddpm_noise_edit")
def testbed_ddpm_noise_edit() -> ExampleWorkflow:
    workflow = ExampleWorkflow(
        Graph(), NO_DOWNLOAD_PREFIX + "DDPM noise edit",
        "DDPM noise space: exact reconstruction, then eight -> three",
        "Edit-friendly DDPM inversion on the test-bed model", "")
    source = testbed_source(workflow, count=1, seed=SWAP_TESTBED_SEED)
    reference, reference_shown = testbed_reference(source)
    target = target_prompt(source, SWAP_TESTBED_TARGET, "Target prompt")
    parts = ddpm_noise_parts(source, STEPS, DDPM_TESTBED_CFG, target, DDPM_TESTBED_CFG, DDPM_TESTBED_SKIP,
                             "Edit: 8 -> 3", None)
    workflow.notes = (
        "Runs on InvEdit's shipped test-bed model (no download): the held-out canvas *a photo of eight and five* "
        f"(seed {SWAP_TESTBED_SEED}). " + DDPM_NOTES + f"\n\nOn this model cfg {DDPM_TESTBED_CFG:g} for both and skip "
        f"{DDPM_TESTBED_SKIP} of {STEPS} swap every held-out digit with the other digit's mean error 0.05 (P2P with "
        "LocalBlend: 0.083); the paper's edit cfg 15 is too strong here (0.40).")
    return ddpm_workflow(workflow, source, reference, reference_shown, parts, target)


@example("ddpm_noise_edit_photo")
def ddpm_noise_edit_photo() -> ExampleWorkflow:
    workflow = ExampleWorkflow(
        Graph(), PHOTO_PREFIX + "DDPM noise edit",
        "DDPM noise space of a photo: exact reconstruction, then red hair",
        "Edit-friendly DDPM inversion of a photo (SD 1.5)", "")
    source = checkpoint_source(workflow, EXAMPLE_IMAGE_PROMPT)
    reference, reference_shown = photo_reference(source)
    target = target_prompt(source, EXAMPLE_EDIT_PROMPT, "Target prompt")
    parts = ddpm_noise_parts(source, DDPM_PHOTO_STEPS, DDPM_PHOTO_SOURCE_CFG, target, DDPM_PHOTO_TARGET_CFG,
                             DDPM_PHOTO_SKIP, "Edit: red hair", "InvEdit/ddpm_noise_edit")
    workflow.notes = (
        f"Needs `{SD15_CHECKPOINT}` in `models/checkpoints`. Load your image in **Photo (source)** and describe it in "
        "**Source prompt**. " + DDPM_NOTES + f"\n\nThe settings are the official code's: {DDPM_PHOTO_STEPS} steps, "
        f"source cfg {DDPM_PHOTO_SOURCE_CFG:g}, target cfg {DDPM_PHOTO_TARGET_CFG:g}, skip {DDPM_PHOTO_SKIP}. A "
        "larger skip keeps more of the photo's layout.")
    return ddpm_workflow(workflow, source, reference, reference_shown, parts, target)


# ---------------------------------------------------------------------------------------------
# Prompt-to-Prompt on the flow test-bed (joint attention): word swap, reweight, masked edit

FLOW_P2P_STEPS = 25  # the flow test-bed's sampling steps (README, "The test-bed model")
FLOW_P2P_GUIDANCE = 2.0  # the flow test-bed's recommended cfg
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
    f"guidance 1 ({FLOW_P2P_STEPS} steps, the model's own schedule), then edited at cfg {FLOW_P2P_GUIDANCE:g}. Text and "
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
    source = testbed_source(workflow, count=1, seed=FLOW_P2P_SEED, loader_type=FLOW_TESTBED_LOADER)
    reference, reference_shown = testbed_reference(source)
    inversion = workflow.title_node(g.node(
        "InvEditDDIMInversion", model=source.model, positive=source.positive, negative=source.negative,
        latent=source.latent, steps=FLOW_P2P_STEPS, inversion_cfg=1.0, scheduler=FLOW_AUTO_SCHEDULER, clean_level="zero"),
        "Euler Inversion (cfg 1)")
    edit = p2p_edit(source, **FLOW_P2P_EDITS[edit_name])
    masking = left_digit_mask(workflow) if edit_name == "masked" else []
    sample = workflow.title_node(g.node(
        "InvEditP2PSample", model=source.model, inversion=inversion.out(1), edit=edit, cfg=FLOW_P2P_GUIDANCE,
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
