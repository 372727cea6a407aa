"""The example workflows InvEdit ships in workflows/, one small function each.

Import after ComfyUI was booted (like comfy_graph). To add a workflow, write a function that builds
a :class:`Graph` and returns an :class:`ExampleWorkflow`, register it with ``@example("file_name")``,
then run ``python scripts/build_workflows.py`` and commit ``workflows/file_name.json``. The parts
every inversion workflow starts from (a model, an image, its latent, the text encoder, source and
negative prompts, a decoder) come from :func:`testbed_source` or :func:`checkpoint_source`, so a
new method is a few nodes on top of one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from comfy_graph import Graph, NodeRef
from workflow_format import node_definitions, ui_workflow, with_widget_defaults

EXAMPLES: dict[str, Callable[[], "ExampleWorkflow"]] = {}

STEPS = 50  # the reference number of DDIM steps (Prompt-to-Prompt, null-text inversion)
SCHEDULER = "ddim_uniform"  # visits the DDIM timesteps 981, 961, ..., 1
TESTBED_DIGIT_COUNT = 4
TESTBED_VIEW_SCALE = 8  # the 16x8 canvases are shown enlarged; metrics use them as they are
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SD15_CHECKPOINT_URL = (
    "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main/v1-5-pruned-emaonly.safetensors"
)
EXAMPLE_IMAGE = "example.png"  # ComfyUI ships it in input/
EXAMPLE_IMAGE_PROMPT = "a child's drawing of a girl with yellow hair in a pink dress on a green hill under a blue sky"


@dataclass
class ExampleWorkflow:
    """A shipped workflow: its graph (API format), the Markdown note shown beside it, node titles
    and extra node properties by node id."""

    graph: Graph
    title: str
    notes: str
    node_titles: dict[str, str] = field(default_factory=dict)
    node_properties: dict[str, dict] = field(default_factory=dict)

    def title_node(self, ref: NodeRef, title: str) -> NodeRef:
        self.node_titles[ref.node_id] = title
        return ref

    def complete(self, definitions: dict | None = None) -> "ExampleWorkflow":
        """Give every widget the graph leaves out its default, so the graph is what the UI runs."""
        self.graph.prompt = with_widget_defaults(self.graph.prompt, definitions)
        return self

    def ui(self, definitions: dict | None = None) -> dict:
        return ui_workflow(self.graph, title=self.title, notes=self.notes, node_titles=self.node_titles,
                           node_properties=self.node_properties, definitions=definitions)


def example(name: str):
    """Register a workflow function under its file name (workflows/<name>.json)."""

    def register(build: Callable[[], ExampleWorkflow]) -> Callable[[], ExampleWorkflow]:
        if name in EXAMPLES:
            raise ValueError(f"two example workflows are named {name!r}")
        EXAMPLES[name] = build
        return build

    return register


def build_example(name: str, definitions: dict | None = None) -> ExampleWorkflow:
    """The example ``name`` with every widget value filled in."""
    workflow = EXAMPLES[name]()
    if definitions is None:
        definitions = node_definitions({node["class_type"] for node in workflow.graph.prompt.values()})
    return workflow.complete(definitions)


# ---------------------------------------------------------------------------------------------
# Where an inversion starts: a model, an image, its latent, prompts, and a way back to pixels.


@dataclass(frozen=True)
class Source:
    """The shared start of an inversion workflow (links into ``workflow.graph``)."""

    workflow: ExampleWorkflow
    model: list
    image: list
    latent: list
    positive: NodeRef
    negative: NodeRef
    decode: Callable[[NodeRef | list], NodeRef]
    text_encoder: list  # the CLIP (or the test-bed's text encoder) the prompts were encoded with
    prompt: str | list  # the source prompt: its text, or a link to it
    view_scale: int = 1  # nearest-neighbour enlargement of the images shown in Preview Image nodes

    def preview(self, images: NodeRef | list) -> NodeRef:
        """A Preview Image of ``images``, enlarged ``view_scale`` times (metrics keep the true size)."""
        g = self.workflow.graph
        if self.view_scale > 1:
            images = g.node("ImageScaleBy", image=images, upscale_method="nearest-exact", scale_by=float(self.view_scale))
        return g.node("PreviewImage", images=images)


def testbed_source(workflow: ExampleWorkflow, count: int = TESTBED_DIGIT_COUNT, seed: int = 0) -> Source:
    """The shipped test-bed model and held-out digits, each with its own prompt."""
    g = workflow.graph
    loader = g.node("InvEditTestbedModelLoader", verify=True)
    digits = workflow.title_node(g.node("InvEditTestbedHeldOutDigits", count=count, seed=seed),
                                 "Source images (held-out digits)")
    positive = workflow.title_node(
        g.node("InvEditTestbedTextEncode", text_encoder=loader.out(1), text=digits.out(1)), "Source prompts")
    negative = workflow.title_node(g.node("InvEditTestbedTextEncode", text_encoder=loader.out(1), text=""),
                                   "Negative (empty)")
    latent = g.node("InvEditTestbedImageToLatent", image=digits.out(0))
    return Source(workflow, loader.out(0), digits.out(0), latent.out(0), positive, negative,
                  lambda samples: g.node("InvEditTestbedLatentToImage", latent=samples, scale=1),
                  loader.out(1), digits.out(1), view_scale=TESTBED_VIEW_SCALE)


def checkpoint_source(workflow: ExampleWorkflow, prompt: str | list, checkpoint: str = SD15_CHECKPOINT,
                      checkpoint_url: str | None = SD15_CHECKPOINT_URL, image: str = EXAMPLE_IMAGE) -> Source:
    """A Stable Diffusion checkpoint and a photo through ComfyUI's own loader, CLIP and VAE nodes.

    ``prompt``: the source prompt's text, or a link to a STRING output that gives it.
    """
    g = workflow.graph
    loader = g.node("CheckpointLoaderSimple", ckpt_name=checkpoint)
    if checkpoint_url:
        workflow.node_properties[loader.node_id] = {
            "models": [{"name": checkpoint, "url": checkpoint_url, "directory": "checkpoints"}]}
    photo = g.node("LoadImage", image=image)
    positive = workflow.title_node(g.node("CLIPTextEncode", clip=loader.out(1), text=prompt),
                                   "Source prompt (what the image shows)")
    negative = workflow.title_node(g.node("CLIPTextEncode", clip=loader.out(1), text=""), "Negative (empty)")
    latent = g.node("VAEEncode", pixels=photo.out(0), vae=loader.out(2))
    return Source(workflow, loader.out(0), photo.out(0), latent.out(0), positive, negative,
                  lambda samples: g.node("VAEDecode", samples=samples, vae=loader.out(2)), loader.out(1), prompt)


def ddim_reconstruction(source: Source, steps: int = STEPS) -> NodeRef:
    """DDIM-invert the source latent at guidance 1 and replay it: the image back, as pixels."""
    g = source.workflow.graph
    inversion = g.node("InvEditDDIMInversion", model=source.model, positive=source.positive, negative=source.negative,
                       latent=source.latent, steps=steps, inversion_cfg=1.0, scheduler=SCHEDULER, clean_level="zero")
    rebuilt = g.node("InvEditReconstruct", model=source.model, positive=source.positive, negative=source.negative,
                     inversion=inversion.out(1), cfg=1.0)
    return source.workflow.title_node(source.decode(rebuilt), "Reconstruction")


# ---------------------------------------------------------------------------------------------
# The examples


@example("testbed_ddim_reconstruction")
def testbed_ddim_reconstruction() -> ExampleWorkflow:
    workflow = ExampleWorkflow(
        Graph(), "DDIM inversion on the test-bed model (no download)",
        "InvEdit's shipped test-bed model draws two handwritten digits from prompts like *a photo of three "
        "and seven*. **Held-out Digits** gives real digits it never saw, with their prompts.\n\n"
        f"**DDIM Inversion** runs the sampler backwards ({STEPS} steps, guidance 1) to the noise that "
        "regenerates each image; **Reconstruct** replays it. **Reconstruction Error** scores the result "
        "against the source: expect a PSNR above 30 dB. Change `seed` for other digits.",
    )
    source = testbed_source(workflow)
    result = ddim_reconstruction(source)
    source.preview(result)
    workflow.graph.node("InvEditReconstructionError", reference=source.image, result=result, heatmap_gain=4.0)
    return workflow


@example("ddim_inversion_photo")
def ddim_inversion_photo() -> ExampleWorkflow:
    workflow = ExampleWorkflow(
        Graph(), "DDIM inversion of a photo (Stable Diffusion 1.5)",
        f"Needs `{SD15_CHECKPOINT}` in `models/checkpoints` (when it is missing, ComfyUI lists it with a "
        "download link).\n\n"
        "1. Load your image and describe it in **Source prompt**: inversion follows that prompt.\n"
        f"2. **DDIM Inversion** runs {STEPS} steps backwards at guidance 1 to the noise that regenerates "
        "the image; **Reconstruct** replays them at cfg 1 and gives the image back.\n"
        "3. **Reconstruction Error** compares the result with the image after a plain VAE round trip, "
        "so it scores the inversion alone (the VAE's own loss is not counted).\n\n"
        "Raise Reconstruct's cfg to see how guidance pulls the image away: the gap that null-text "
        "inversion closes.",
    )
    source = checkpoint_source(workflow, EXAMPLE_IMAGE_PROMPT)
    result = ddim_reconstruction(source)
    workflow.graph.node("SaveImage", images=result, filename_prefix="InvEdit/ddim_reconstruction")
    reference = workflow.title_node(source.decode(source.latent), "VAE round trip (reference)")
    workflow.graph.node("InvEditReconstructionError", reference=reference, result=result, heatmap_gain=4.0)
    return workflow


# ---------------------------------------------------------------------------------------------
# Closing the guidance gap: null-text, negative-prompt and direct inversion

EDIT_GUIDANCE = 7.5  # the guidance the references edit with
TESTBED_NULL_TEXT_DIGITS = 2  # null-text takes gradients: keep the test-bed example quick on a CPU
EXAMPLE_EDIT_PROMPT = "a child's drawing of a girl with red hair in a pink dress on a green hill under a blue sky"
GAP_METHODS = {
    "null_text": ("InvEditNullTextInversion", "Null-text Inversion"),
    "negative_prompt": ("InvEditNegativePromptInversion", "Negative-Prompt Inversion"),
    "direct_inversion": ("InvEditDirectInversion", "Direct Inversion"),
}
GAP_NOTES = {
    "null_text": "**Null-text Inversion** optimises the empty prompt's embedding for every step (about 10 Adam "
                 "steps each, a progress bar with a live loss plot) so that sampling at cfg 7.5 retraces the "
                 "inversion. Slow once, then **Save Inversion** keeps it: load it with Load Inversion and edit "
                 "many times.",
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
    inversion = g.node("InvEditDDIMInversion", model=source.model, positive=source.positive, negative=source.negative,
                       latent=source.latent, steps=steps, inversion_cfg=1.0, scheduler=SCHEDULER, clean_level="zero")
    node_type, title = GAP_METHODS[method]
    inputs = {"inversion": inversion.out(1)}
    if method == "null_text":
        inputs.update(model=source.model, guidance=EDIT_GUIDANCE)
    closed = source.workflow.title_node(g.node(node_type, **inputs), title)
    return inversion, closed


def guided_reconstruction(source: Source, inversion_link: list, title: str) -> NodeRef:
    """Reconstruct an INVERSION at the editing guidance, decoded."""
    rebuilt = source.workflow.graph.node("InvEditReconstruct", model=source.model, positive=source.positive,
                                         negative=source.negative, inversion=inversion_link, cfg=EDIT_GUIDANCE)
    return source.workflow.title_node(source.decode(rebuilt), title)


def gap_workflow(method: str, source_of: Callable[[ExampleWorkflow], Source], title: str, intro: str,
                 compare_with: Callable[[Source], NodeRef] | None = None) -> ExampleWorkflow:
    """Invert at guidance 1, close the gap with ``method``, reconstruct at 7.5 beside plain DDIM."""
    return gap_workflow_parts(method, source_of, title, intro, compare_with)[0]


def gap_workflow_parts(method: str, source_of: Callable[[ExampleWorkflow], Source], title: str, intro: str,
                       compare_with: Callable[[Source], NodeRef] | None = None
                       ) -> tuple[ExampleWorkflow, Source, NodeRef, NodeRef]:
    """:func:`gap_workflow` and its parts: (workflow, source, DDIM inversion node, method node)."""
    workflow = ExampleWorkflow(
        Graph(), title,
        intro + "\n\n" + GAP_NOTES[method] + "\n\n"
        f"**Plain DDIM at cfg {EDIT_GUIDANCE:g}** shows the guidance gap the method closes; **Reconstruction "
        "Error** scores the method's reconstruction.",
    )
    source = source_of(workflow)
    inversion, closed = method_inversion(source, method)
    g = workflow.graph
    source.preview(guided_reconstruction(source, inversion.out(1), f"Plain DDIM at cfg {EDIT_GUIDANCE:g}"))
    result = guided_reconstruction(source, closed.out(0), f"{GAP_METHODS[method][1]} at cfg {EDIT_GUIDANCE:g}")
    source.preview(result)
    reference = compare_with(source) if compare_with is not None else source.image
    g.node("InvEditReconstructionError", reference=reference, result=result, heatmap_gain=4.0)
    return workflow, source, inversion, closed


TESTBED_INTRO = ("Runs on InvEdit's shipped test-bed model (no download): held-out handwritten digits with prompts "
                 f"like *a photo of three and seven*, inverted at guidance 1 ({STEPS} steps) and reconstructed at "
                 f"cfg {EDIT_GUIDANCE:g}.")
PHOTO_INTRO = (f"Needs `{SD15_CHECKPOINT}` in `models/checkpoints`. Load your image and describe it in **Source "
               f"prompt**; it is inverted at guidance 1 ({STEPS} steps) and reconstructed at cfg {EDIT_GUIDANCE:g}.")


def _testbed(count: int) -> Callable[[ExampleWorkflow], Source]:
    return lambda workflow: testbed_source(workflow, count=count)


def _photo(workflow: ExampleWorkflow) -> Source:
    return checkpoint_source(workflow, EXAMPLE_IMAGE_PROMPT)


def _vae_round_trip(source: Source) -> NodeRef:
    return source.workflow.title_node(source.decode(source.latent), "VAE round trip (reference)")


@example("testbed_null_text")
def testbed_null_text() -> ExampleWorkflow:
    return gap_workflow("null_text", _testbed(TESTBED_NULL_TEXT_DIGITS), "Null-text inversion on the test-bed model",
                        TESTBED_INTRO)


@example("testbed_negative_prompt")
def testbed_negative_prompt() -> ExampleWorkflow:
    return gap_workflow("negative_prompt", _testbed(TESTBED_DIGIT_COUNT),
                        "Negative-prompt inversion on the test-bed model", TESTBED_INTRO)


@example("testbed_direct_inversion")
def testbed_direct_inversion() -> ExampleWorkflow:
    return gap_workflow("direct_inversion", _testbed(TESTBED_DIGIT_COUNT), "Direct inversion on the test-bed model",
                        TESTBED_INTRO)


@example("null_text_photo")
def null_text_photo() -> ExampleWorkflow:
    workflow, source, inversion, closed = gap_workflow_parts(
        "null_text", _photo, "Null-text inversion of a photo, saved, then edited (SD 1.5)",
        PHOTO_INTRO + "\n\nThe last column edits with **Inversion Guider** in SamplerCustomAdvanced: same noise, "
        "same null-text embeddings, an edited prompt (a plain edit: attention control comes with the editing nodes).",
        compare_with=_vae_round_trip)
    g = workflow.graph
    saved = g.node("InvEditSaveInversion", inversion=closed.out(0), file_name="invedit/null_text_example")
    edit_prompt = workflow.title_node(g.node("CLIPTextEncode", clip=source.text_encoder, text=EXAMPLE_EDIT_PROMPT),
                                      "Edited prompt")
    guider = g.node("InvEditInversionGuider", model=source.model, positive=edit_prompt, inversion=saved.out(0),
                    cfg=EDIT_GUIDANCE)
    edited = g.node("SamplerCustomAdvanced", noise=g.node("DisableNoise"), guider=guider,
                    sampler=g.node("KSamplerSelect", sampler_name="ddim"), sigmas=inversion.out(2),
                    latent_image=inversion.out(0))
    decoded = workflow.title_node(source.decode(edited.out(0)), "Edit")
    g.node("SaveImage", images=decoded, filename_prefix="InvEdit/null_text_edit")
    return workflow


@example("negative_prompt_photo")
def negative_prompt_photo() -> ExampleWorkflow:
    return gap_workflow("negative_prompt", _photo, "Negative-prompt inversion of a photo (SD 1.5)", PHOTO_INTRO,
                        compare_with=_vae_round_trip)


@example("direct_inversion_photo")
def direct_inversion_photo() -> ExampleWorkflow:
    return gap_workflow("direct_inversion", _photo, "Direct inversion of a photo (SD 1.5)", PHOTO_INTRO,
                        compare_with=_vae_round_trip)


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

P2P_PHOTO_INTRO = (
    f"Needs `{SD15_CHECKPOINT}` in `models/checkpoints`. Load your image and describe it in **Source prompt** (one "
    f"text, used by the inversion and by the edit). It is DDIM-inverted at guidance 1 ({STEPS} steps); **Null-text "
    f"Inversion** then makes it reconstruct at cfg {EDIT_GUIDANCE:g} (about a minute on a GPU, once per image; "
    "Negative-Prompt Inversion in its place is instant and a little less faithful). **P2P Edit** holds the edit; the "
    "source and the edited prompt are sampled in one batch, the edited row taking the source's attention, so what the "
    "prompt does not change keeps its layout. **Source row** is the reconstruction; **Word maps** shows where each "
    "word attends (one row per prompt, source first).")
P2P_TESTBED_INTRO = (
    f"Runs on InvEdit's shipped test-bed model (no download): the held-out canvas *{P2P_TESTBED_SOURCE_PROMPT}* "
    f"(Held-out Digits, seed {P2P_TESTBED_SEED}; its prompt feeds the inversion and **P2P Edit**), DDIM-inverted at "
    f"guidance 1 ({STEPS} steps). **Negative-Prompt Inversion** makes it reconstruct at cfg {EDIT_GUIDANCE:g}: the "
    "photo versions use null-text, but on this model negative-prompt inversion is instant and reconstructs better "
    "(38.5 vs 29 dB in the README's guidance-gap benchmark). **Reconstruction Error** scores the source row against "
    "the image; **Word maps** shows each word's attention (source row first). Another seed gives another canvas: "
    "then write its digits into the edited prompts.")
P2P_NOTES = {
    "word_swap_photo": (
        "**Word swap**: *girl* → *cat*. Change words of the edited prompt one for one (same number of words); for a "
        "photo of a cat on a bench: source *a photo of a cat sitting on a bench*, edited *a photo of a dog sitting on "
        "a bench*. Several lines give several edits in one batch. Lower `cross_replace` to let the new word "
        "change the shape more; `word_windows` (e.g. `cat: 0-0.4`) sets it for one word."),
    "refine_photo": (
        "**Refine**: the edited prompt adds (or drops) words: *curly* yellow hair. Tokens are aligned as in the paper, "
        "so the kept words keep their attention. This one runs through **P2P Guider** in **SamplerCustomAdvanced** "
        "(Disable Noise, the inversion's noise and sigmas, `ddim`): the output batch is the source row, then the edit. "
        "The guider stores no word maps: InvEdit P2P Sample (the other P2P workflows) shows them."),
    "reweight_photo": (
        "**Reweight**: `reweight` scales the attention of words of the edited prompt: *curly* x2 on the refined prompt "
        "(scales below 1 weaken a word). With the edited prompt equal to the source prompt it reweights a word of the "
        "image itself (e.g. `yellow: 2.0`)."),
    "local_blend_photo": (
        "**LocalBlend**: *yellow* → *red* hair with `blend_words` *hair; hair* (words per prompt, source first): the "
        "edited row changes only where those words attend and keeps the source everywhere else. null_text_photo makes "
        "the same edit without attention control, for comparison. `blend_threshold` widens or narrows the mask."),
    "word_swap_testbed": (
        "**Word swap**, two edits in one batch: *eight* → *three* (left) and *five* → *zero* (right). The swapped digit "
        "takes the new shape; without LocalBlend the other digit drifts a little (testbed_p2p_local_blend keeps it)."),
    "local_blend_testbed": (
        "**Word swap with LocalBlend**: *eight* → *three* with `blend_words` *eight; three*: only where those words "
        "attend changes, so the right digit stays the source's (about 4x closer to it than the plain word swap)."),
    "reweight_testbed": (
        "**Reweight**: *eight* x2 (`reweight`, edited prompt = source prompt): the left digit gets more attention and "
        "bolder strokes. On this small model large scales can change how the digit reads."),
}


def p2p_edit(source: Source, **settings) -> NodeRef:
    """InvEdit P2P Edit on the source's text encoder and source prompt."""
    edit = source.workflow.graph.node("InvEditP2PEdit", text_encoder=source.text_encoder,
                                      source_prompt=source.prompt, **settings)
    return source.workflow.title_node(edit, "P2P Edit (prompts)")


def p2p_sampled(source: Source, inversion_link: list, edit: NodeRef, layer_downsample: int) -> tuple[NodeRef, NodeRef]:
    """InvEdit P2P Sample with its word maps shown: returns the decoded (source row, edited rows)."""
    g = source.workflow.graph
    sample = g.node("InvEditP2PSample", model=source.model, inversion=inversion_link, edit=edit, cfg=EDIT_GUIDANCE)
    maps = g.node("InvEditP2PAttentionMaps", maps=sample.out(2), layer_downsample=layer_downsample)
    g.node("PreviewImage", images=source.workflow.title_node(maps, "Word maps"))
    source_row = source.workflow.title_node(source.decode(sample.out(0)), "Source row (reconstruction)")
    source.preview(source_row)
    return source_row, source.workflow.title_node(source.decode(sample.out(1)), "Edit")


def p2p_guided(source: Source, inversion: NodeRef, closed: NodeRef, edit: NodeRef) -> NodeRef:
    """InvEdit P2P Guider in SamplerCustomAdvanced: returns the decoded batch (source row, then the edits)."""
    g = source.workflow.graph
    guider = g.node("InvEditP2PGuider", model=source.model, inversion=closed.out(0), edit=edit, cfg=EDIT_GUIDANCE)
    rows = g.node("SamplerCustomAdvanced", noise=g.node("DisableNoise"), guider=guider,
                  sampler=g.node("KSamplerSelect", sampler_name="ddim"), sigmas=inversion.out(2),
                  latent_image=inversion.out(0))
    return source.workflow.title_node(source.decode(rows.out(0)), "Source row, then the edit")


def p2p_photo(edit_name: str, title: str, through_guider: bool = False) -> ExampleWorkflow:
    """A photo (SD 1.5) null-text-inverted and edited with Prompt-to-Prompt; the edit is saved."""
    workflow = ExampleWorkflow(Graph(), title, P2P_PHOTO_INTRO + "\n\n" + P2P_NOTES[f"{edit_name}_photo"])
    prompt = workflow.title_node(workflow.graph.node("PrimitiveStringMultiline", value=EXAMPLE_IMAGE_PROMPT),
                                 "Source prompt (what the image shows)")
    source = checkpoint_source(workflow, prompt.out(0))
    workflow.title_node(source.positive, "Encode source prompt")
    inversion, closed = method_inversion(source, "null_text")
    edit = p2p_edit(source, **P2P_PHOTO_EDITS[edit_name], blend_layer_downsample=P2P_PHOTO_DOWNSAMPLE)
    if through_guider:
        edited = p2p_guided(source, inversion, closed, edit)
    else:
        edited = p2p_sampled(source, closed.out(0), edit, P2P_PHOTO_DOWNSAMPLE)[1]
    workflow.graph.node("SaveImage", images=edited, filename_prefix=f"InvEdit/p2p_{edit_name}")
    return workflow


def p2p_testbed(edit_name: str, title: str) -> ExampleWorkflow:
    """A held-out test-bed canvas, negative-prompt-inverted and edited with Prompt-to-Prompt."""
    workflow = ExampleWorkflow(Graph(), title, P2P_TESTBED_INTRO + "\n\n" + P2P_NOTES[f"{edit_name}_testbed"])
    source = testbed_source(workflow, count=1, seed=P2P_TESTBED_SEED)
    _, closed = method_inversion(source, "negative_prompt")
    edit = p2p_edit(source, **P2P_TESTBED_SETTINGS, **P2P_TESTBED_EDITS[edit_name])
    source_row, edited = p2p_sampled(source, closed.out(0), edit, P2P_TESTBED_DOWNSAMPLE)
    source.preview(edited)
    workflow.graph.node("InvEditReconstructionError", reference=source.image, result=source_row, heatmap_gain=4.0)
    return workflow


@example("p2p_word_swap_photo")
def p2p_word_swap_photo() -> ExampleWorkflow:
    return p2p_photo("word_swap", "Prompt-to-Prompt word swap of a photo (SD 1.5)")


@example("p2p_refine_photo")
def p2p_refine_photo() -> ExampleWorkflow:
    return p2p_photo("refine", "Prompt-to-Prompt refine of a photo, through P2P Guider (SD 1.5)", through_guider=True)


@example("p2p_reweight_photo")
def p2p_reweight_photo() -> ExampleWorkflow:
    return p2p_photo("reweight", "Prompt-to-Prompt reweight of a photo (SD 1.5)")


@example("p2p_local_blend_photo")
def p2p_local_blend_photo() -> ExampleWorkflow:
    return p2p_photo("local_blend", "Prompt-to-Prompt word swap with LocalBlend on a photo (SD 1.5)")


@example("testbed_p2p_word_swap")
def testbed_p2p_word_swap() -> ExampleWorkflow:
    return p2p_testbed("word_swap", "Prompt-to-Prompt word swap on the test-bed model")


@example("testbed_p2p_local_blend")
def testbed_p2p_local_blend() -> ExampleWorkflow:
    return p2p_testbed("local_blend", "Prompt-to-Prompt word swap with LocalBlend on the test-bed model")


@example("testbed_p2p_reweight")
def testbed_p2p_reweight() -> ExampleWorkflow:
    return p2p_testbed("reweight", "Prompt-to-Prompt reweight on the test-bed model")
