"""Host tier: run nodes inside a real ComfyUI (the pinned checkout), headless, on the CPU.

When pytest loads this file it boots ComfyUI in process, the way ``main.py`` does minus the
server: CLI args with ``cpu`` and a temporary ``base_directory``, ComfyUI's core extra nodes
(``comfy_extras``, no API nodes, no other custom nodes), then this pack through ComfyUI's own
loader (``nodes.load_custom_node``), then the test-only helper nodes below (ids ``InvEditTest*``).
Doing it at import time lets test modules use ``nodes.NODE_CLASS_MAPPINGS`` while collecting.

Graph building and running live in comfy_graph.py (``from comfy_graph import Graph,
GraphExecutionError, GraphValidationError``); never ``from conftest import ...``: tests/unit has
a conftest too, and the name is ambiguous.

Fixtures (see each docstring):
    graph                  a new :class:`Graph`, to build an API-format prompt
    run_graph(g)           validate + execute with ComfyUI's PromptExecutor -> captured values
    tiny_model(arch, seed=0, fresh=False)            -> MODEL (ModelPatcher)
    tiny_conditioning(arch, seed=0, tokens=8)        -> CONDITIONING
    tiny_latent(arch, seed=0, batch=1, height=16, width=16) -> LATENT
    photo_inputs           what the *_photo workflows load (an SD1.5 checkpoint of random weights, a photo)
    comfy_host             facts about the booted host (paths, pack load result)
    pack_loaded            the pack's node ids (fails if ComfyUI could not load the pack)
    pack_nodes             {node id: node class} as ComfyUI registered them

The pack is imported twice in this tier: as ``invedit`` (tests/conftest.py) and by ComfyUI's
loader under its folder path. Classes from the two copies are different objects, so take node
classes from ``pack_nodes`` (what graphs run), not from ``invedit.nodes``.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_TESTS_DIR = Path(__file__).resolve().parent
PACK_NODE_PREFIX = "InvEdit"


SCRIPTS_DIR = REPO_ROOT / "scripts"
for _entry in (SCRIPTS_DIR, HOST_TESTS_DIR):
    if str(_entry) not in sys.path:
        sys.path.insert(0, str(_entry))

from comfy_headless import boot_comfyui, comfyui_path_from_env, load_pack  # noqa: E402

try:
    COMFYUI_PATH = comfyui_path_from_env()
except RuntimeError as _error:
    raise pytest.UsageError(str(_error)) from None
# A private base directory: models, input, output, temp and user folders of this ComfyUI.
COMFYUI_BASE_DIR = Path(tempfile.mkdtemp(prefix="invedit-comfyui-"))
atexit.register(shutil.rmtree, COMFYUI_BASE_DIR, ignore_errors=True)
nodes = boot_comfyui(COMFYUI_PATH, COMFYUI_BASE_DIR)

import random_checkpoints  # noqa: E402
import tiny_models  # noqa: E402
from comfy_graph import SERVER, Graph, GraphResult, InvEditTestCapture, ServerStub, run_prompt  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Test-only nodes (V1 style), registered under ids starting with InvEditTest.


ARCH_INPUT = (list(tiny_models.ARCHS), {"default": "sd15"})
SEED_INPUT = ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})
TEST_CATEGORY = "InvEdit/testing"

class InvEditTestTinyModel:
    """MODEL: a tiny real model (cached per arch and seed, shared by every graph)."""

    CATEGORY = TEST_CATEGORY
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"arch": ARCH_INPUT, "seed": SEED_INPUT}}

    def build(self, arch, seed):
        return (tiny_models.cached_tiny_model(arch, seed),)


class InvEditTestConditioning:
    """CONDITIONING: a seeded random context [1, tokens, context_dim] (+ SDXL pooled/sizes)."""

    CATEGORY = TEST_CATEGORY
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "arch": ARCH_INPUT,
                "seed": SEED_INPUT,
                "tokens": ("INT", {"default": 8, "min": 1, "max": 1024}),
            }
        }

    def build(self, arch, seed, tokens):
        return (tiny_models.tiny_conditioning(arch, seed, tokens),)


class InvEditTestLatent:
    """LATENT: a seeded smooth random latent in raw VAE units; sizes in latent pixels."""

    CATEGORY = TEST_CATEGORY
    RETURN_TYPES = ("LATENT",)
    FUNCTION = "build"

    @classmethod
    def INPUT_TYPES(cls):
        size = {"default": 16, "min": 1, "max": 512}
        return {
            "required": {
                "arch": ARCH_INPUT,
                "seed": SEED_INPUT,
                "batch": ("INT", {"default": 1, "min": 1, "max": 64}),
                "height": ("INT", size),
                "width": ("INT", size),
            }
        }

    def build(self, arch, seed, batch, height, width):
        return (tiny_models.tiny_latent(arch, seed, batch, height, width),)


TEST_NODES = {
    cls.__name__: cls
    for cls in (InvEditTestTinyModel, InvEditTestConditioning, InvEditTestLatent, InvEditTestCapture)
}


# ---------------------------------------------------------------------------------------------
# Boot: core extra nodes, the pack through ComfyUI's loader, the test nodes.


@dataclass
class ComfyHost:
    """What the booted in-process ComfyUI looks like."""

    comfyui_path: Path
    base_dir: Path
    server: ServerStub
    pack_load_ok: bool
    pack_node_ids: list[str] = field(default_factory=list)


def _boot() -> ComfyHost:
    pack_load_ok = load_pack(nodes)
    pack_node_ids = sorted(
        node_id
        for node_id in nodes.NODE_CLASS_MAPPINGS
        if node_id.startswith(PACK_NODE_PREFIX) and node_id not in TEST_NODES
    )
    for node_id, cls in TEST_NODES.items():
        nodes.NODE_CLASS_MAPPINGS[node_id] = cls
        nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] = node_id
    return ComfyHost(COMFYUI_PATH, COMFYUI_BASE_DIR, SERVER, pack_load_ok, pack_node_ids)


HOST = _boot()


@pytest.fixture(scope="session")
def comfy_host() -> ComfyHost:
    """The in-process ComfyUI: its path, base directory, server stub and the pack's load result."""
    return HOST


@pytest.fixture(scope="session")
def pack_loaded(comfy_host: ComfyHost) -> list[str]:
    """Ids of the pack's nodes registered by ``nodes.load_custom_node``; fails if loading failed."""
    assert comfy_host.pack_load_ok, (
        f"ComfyUI could not load the pack from {REPO_ROOT} (nodes.load_custom_node returned False; "
        "its warning with the traceback is in the captured log)"
    )
    return comfy_host.pack_node_ids


@pytest.fixture(scope="session")
def pack_nodes(pack_loaded: list[str]) -> dict[str, type]:
    """The pack's node classes as ComfyUI registered them, by node id."""
    return {node_id: nodes.NODE_CLASS_MAPPINGS[node_id] for node_id in pack_loaded}


# ---------------------------------------------------------------------------------------------
# Building and running API-format prompts.


@pytest.fixture
def graph() -> Graph:
    """A new empty :class:`Graph`."""
    return Graph()


@pytest.fixture
def run_graph() -> Callable[[Graph | dict], GraphResult]:
    """``run_graph(graph_or_prompt) -> GraphResult``: run through ComfyUI, return captured values."""
    return run_prompt


# ---------------------------------------------------------------------------------------------
# Direct access to the tiny models, and a guard that no test leaves a shared model changed.


@pytest.fixture
def tiny_model() -> Callable[..., Any]:
    """``tiny_model(arch, seed=0, fresh=False) -> ModelPatcher``.

    Without ``fresh`` it is the shared cached model that InvEditTestTinyModel outputs (do not
    patch it: clone first); ``fresh=True`` builds a private one.
    """

    def get(arch: str, seed: int = 0, fresh: bool = False):
        return tiny_models.build_tiny_model(arch, seed) if fresh else tiny_models.cached_tiny_model(arch, seed)

    return get


@pytest.fixture
def tiny_conditioning() -> Callable[..., list]:
    """``tiny_conditioning(arch, seed=0, tokens=8) -> CONDITIONING`` (what InvEditTestConditioning gives)."""
    return tiny_models.tiny_conditioning


@pytest.fixture
def tiny_latent() -> Callable[..., dict]:
    """``tiny_latent(arch, seed=0, batch=1, height=16, width=16) -> LATENT`` (as InvEditTestLatent)."""
    return tiny_models.tiny_latent


@pytest.fixture(autouse=True)
def shared_models_unchanged():
    """After each test, fail it if it changed a cached tiny model (the model is then rebuilt)."""
    yield
    changed = tiny_models.evict_changed_cached_models()
    if changed:
        pytest.fail("the test changed shared tiny models (patch a clone instead):\n" + "\n".join(changed))


# ---------------------------------------------------------------------------------------------
# The inputs of the shipped photo workflows: an SD1.5 checkpoint of random weights and a photo.

PHOTO_SIZE = 128  # pixels: a 16x16 latent (2x2 at the deepest level; SD1.5 takes 64 px and up)


@dataclass(frozen=True)
class PhotoInputs:
    """Where :func:`photo_inputs` put things: checkpoint and image by the names the workflows load."""

    checkpoint: random_checkpoints.BuiltCheckpoint
    checkpoint_name: str
    image_name: str
    image_size: int


def make_test_picture(size: int):
    """A fixed RGB picture (PIL image): colour ramps, a disc and a stripe."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    disc = ((x - 0.35) ** 2 + (y - 0.4) ** 2) < 0.06
    red = np.where(disc, 0.9, 0.2 + 0.6 * x)
    green = np.where(disc, 0.8, 0.3 + 0.5 * y)
    blue = np.where(np.abs(x + y - 1.3) < 0.08, 0.1, 0.5 + 0.4 * np.sin(6.0 * x * y))
    pixels = np.stack([red, green, blue], axis=-1)
    return Image.fromarray(np.round(pixels * 255).astype(np.uint8), "RGB")


@pytest.fixture(scope="session")
def photo_inputs() -> PhotoInputs:
    """The shipped *_photo workflows' inputs, in place in this ComfyUI: ``models/checkpoints/<
    workflow_specs.SD15_CHECKPOINT>`` links to the cached SD1.5 checkpoint of random weights
    (random_checkpoints.py: built on first use, about 45 s and 2.1 GB, then reused) and
    ``input/<workflow_specs.EXAMPLE_IMAGE>`` is a PHOTO_SIZE x PHOTO_SIZE test picture."""
    import folder_paths
    import workflow_specs

    built = random_checkpoints.ensure_checkpoint()
    if built.built:
        print(f"\nbuilt {built.path} ({built.reason}) in {built.build_seconds:.1f} s")
    checkpoints = Path(folder_paths.get_folder_paths("checkpoints")[0])
    checkpoints.mkdir(parents=True, exist_ok=True)
    link = checkpoints / workflow_specs.SD15_CHECKPOINT
    link.unlink(missing_ok=True)
    link.symlink_to(built.path)
    assert Path(folder_paths.get_full_path_or_raise("checkpoints", link.name)).resolve() == built.path.resolve()
    image = Path(folder_paths.get_input_directory()) / workflow_specs.EXAMPLE_IMAGE
    image.parent.mkdir(parents=True, exist_ok=True)
    make_test_picture(PHOTO_SIZE).save(image)
    return PhotoInputs(built, link.name, image.name, PHOTO_SIZE)
