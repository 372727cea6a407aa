"""The example workflows InvEdit ships in workflows/, one small function each.

Import after ComfyUI was booted (like comfy_graph). To add a workflow, write a function that builds
a :class:`Graph` and returns an :class:`ExampleWorkflow`, register it with ``@example("file_name")``,
then run ``python scripts/build_workflows.py`` and commit ``workflows/file_name.json``. The parts
every inversion workflow starts from (a model, an image, its latent, source and negative prompts, a
decoder) come from :func:`testbed_source` or :func:`checkpoint_source`, so a new method is a few
nodes on top of one of them.
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
                  lambda samples: g.node("InvEditTestbedLatentToImage", latent=samples, scale=1))


def checkpoint_source(workflow: ExampleWorkflow, prompt: str, checkpoint: str = SD15_CHECKPOINT,
                      checkpoint_url: str | None = SD15_CHECKPOINT_URL, image: str = EXAMPLE_IMAGE) -> Source:
    """A Stable Diffusion checkpoint and a photo through ComfyUI's own loader, CLIP and VAE nodes."""
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
                  lambda samples: g.node("VAEDecode", samples=samples, vae=loader.out(2)))


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
    workflow.graph.node("PreviewImage", images=result)
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
