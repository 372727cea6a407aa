"""Host tier: run nodes inside a real ComfyUI (the pinned checkout), headless, on the CPU.

When pytest loads this file it boots ComfyUI in process, the way ``main.py`` does minus the
server: CLI args with ``cpu`` and a temporary ``base_directory``, ComfyUI's core extra nodes
(``comfy_extras``, no API nodes, no other custom nodes), then this pack through ComfyUI's own
loader (``nodes.load_custom_node``), then the test-only helper nodes below (ids ``InvEditTest*``).
Doing it at import time lets test modules use ``nodes.NODE_CLASS_MAPPINGS`` while collecting.

Fixtures (see each docstring):
    graph                  a new :class:`Graph`, to build an API-format prompt
    run_graph(g)           validate + execute with ComfyUI's PromptExecutor -> captured values
    tiny_model(arch, seed=0, fresh=False)            -> MODEL (ModelPatcher)
    tiny_conditioning(arch, seed=0, tokens=8)        -> CONDITIONING
    tiny_latent(arch, seed=0, batch=1, height=16, width=16) -> LATENT
    comfy_host             facts about the booted host (paths, pack load result)
    pack_loaded            the pack's node ids (fails if ComfyUI could not load the pack)
    pack_nodes             {node id: node class} as ComfyUI registered them

The pack is imported twice in this tier: as ``invedit`` (tests/conftest.py) and by ComfyUI's
loader under its folder path. Classes from the two copies are different objects, so take node
classes from ``pack_nodes`` (what graphs run), not from ``invedit.nodes``.
"""

from __future__ import annotations

import asyncio
import atexit
import copy
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HOST_TESTS_DIR = Path(__file__).resolve().parent
PACK_NODE_PREFIX = "InvEdit"
TEST_NODE_PREFIX = "InvEditTest"
CLIENT_ID = "invedit-tests"


def _comfyui_path() -> Path:
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        raise pytest.UsageError(
            "COMFYUI_PATH is not set: the tests in tests/host run inside a ComfyUI checkout. "
            "Run them with `bash scripts/run-tests.sh` (it finds or clones ComfyUI at the pinned "
            "commit and sets COMFYUI_PATH), or set COMFYUI_PATH to a ComfyUI checkout yourself."
        )
    path = Path(value).resolve()
    if not (path / "nodes.py").is_file() or not (path / "execution.py").is_file():
        raise pytest.UsageError(f"COMFYUI_PATH={value} is not a ComfyUI checkout (no nodes.py / execution.py)")
    return path


COMFYUI_PATH = _comfyui_path()
# A private base directory: models, input, output, temp and user folders of this ComfyUI.
COMFYUI_BASE_DIR = Path(tempfile.mkdtemp(prefix="invedit-comfyui-"))
atexit.register(shutil.rmtree, COMFYUI_BASE_DIR, ignore_errors=True)

sys.path.insert(0, str(COMFYUI_PATH))
if str(HOST_TESTS_DIR) not in sys.path:
    sys.path.insert(1, str(HOST_TESTS_DIR))

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing(False)
from comfy.cli_args import args as comfy_args  # noqa: E402

comfy_args.cpu = True
comfy_args.base_directory = str(COMFYUI_BASE_DIR)
comfy_args.output_directory = str(COMFYUI_BASE_DIR / "output")
comfy_args.temp_directory = str(COMFYUI_BASE_DIR / "temp")
comfy_args.input_directory = str(COMFYUI_BASE_DIR / "input")

# ComfyUI's `utils` package must be imported before `nodes`: nodes.py puts comfy/ first on
# sys.path, after which `import utils` finds comfy/utils.py (main.py imports utils first too).
import utils.extra_config  # noqa: E402,F401
import folder_paths  # noqa: E402

folder_paths.set_output_directory(comfy_args.output_directory)
folder_paths.set_temp_directory(comfy_args.temp_directory)
folder_paths.set_input_directory(comfy_args.input_directory)

import execution  # noqa: E402
import nodes  # noqa: E402
import server  # noqa: E402

import tiny_models  # noqa: E402


class ServerStub:
    """Stands in for ComfyUI's PromptServer: records what the executor sends."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict = {}
        self.messages: list[tuple[Any, Any]] = []
        self.progress_texts: list[tuple[str, Any]] = []

    def send_sync(self, event, data, sid=None) -> None:
        self.messages.append((event, data))

    def send_progress_text(self, text, node_id, sid=None) -> None:
        self.progress_texts.append((text, node_id))

    def queue_updated(self) -> None:
        pass


SERVER = ServerStub()
if getattr(server.PromptServer, "instance", None) is None:
    # Nodes that report progress text reach the server through PromptServer.instance.
    server.PromptServer.instance = SERVER


# ---------------------------------------------------------------------------------------------
# Test-only nodes (V1 style), registered under ids starting with InvEditTest.


class AnyType(str):
    """A socket type that matches every other type (ComfyUI compares types with ``!=``)."""

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


ANY = AnyType("*")
ARCH_INPUT = (list(tiny_models.ARCHS), {"default": "sd15"})
SEED_INPUT = ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})
TEST_CATEGORY = "InvEdit/testing"

# Values received by InvEditTestCapture nodes during the current run_graph call, by key.
_CAPTURED: dict[str, Any] = {}


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


class InvEditTestCapture:
    """Output node: hands its input to the test (run_graph's result, under ``key``)."""

    CATEGORY = TEST_CATEGORY
    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (ANY,), "key": ("STRING", {"default": "value"})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def capture(self, value, key):
        if key in _CAPTURED:
            raise ValueError(f"two InvEditTestCapture nodes use the key {key!r}")
        _CAPTURED[key] = value
        return ()


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
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    pack_load_ok = asyncio.run(nodes.load_custom_node(str(REPO_ROOT)))
    pack_node_ids = sorted(
        node_id
        for node_id in nodes.NODE_CLASS_MAPPINGS
        if node_id.startswith(PACK_NODE_PREFIX) and not node_id.startswith(TEST_NODE_PREFIX)
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


@dataclass(frozen=True)
class NodeRef:
    """A node of a :class:`Graph`; ``ref.out(i)`` (or ``ref[i]``) is a link to its output i."""

    node_id: str

    def out(self, index: int = 0) -> list:
        return [self.node_id, index]

    def __getitem__(self, index: int) -> list:
        return self.out(index)


class Graph:
    """Builds an API-format prompt ``{"1": {"class_type": ..., "inputs": {...}}}``.

    ``g.node(class_type, **inputs)`` adds a node and returns its :class:`NodeRef`; an input that
    is a NodeRef links to that node's output 0, ``ref.out(i)`` to output i; anything else is a
    widget value. ``g.capture(key, value)`` adds an InvEditTestCapture node whose value
    ``run_graph`` returns under ``key``. Input names that are not Python identifiers:
    ``g.node("X", **{"class": 1})``.
    """

    def __init__(self) -> None:
        self.prompt: dict[str, dict] = {}

    def node(self, class_type: str, /, **inputs: Any) -> NodeRef:
        node_id = str(len(self.prompt) + 1)
        self.prompt[node_id] = {
            "class_type": class_type,
            "inputs": {name: value.out(0) if isinstance(value, NodeRef) else value for name, value in inputs.items()},
        }
        return NodeRef(node_id)

    def capture(self, key: str, value: NodeRef | list) -> NodeRef:
        return self.node("InvEditTestCapture", key=key, value=value)


class GraphResult(dict):
    """Captured values by key, plus ``messages`` (what the executor sent) and ``ui`` outputs."""

    def __init__(self, captured: dict, messages: list, ui: dict) -> None:
        super().__init__(captured)
        self.messages = messages
        self.ui = ui


class GraphValidationError(AssertionError):
    """ComfyUI refused the prompt (``execution.validate_prompt``)."""


class GraphExecutionError(AssertionError):
    """A node raised while ComfyUI executed the prompt."""

    def __init__(self, message: str, details: dict) -> None:
        super().__init__(message)
        self.details = details
        self.node_type = details.get("node_type")
        self.exception_type = details.get("exception_type")
        self.exception_message = details.get("exception_message")


def _validation_message(error: dict, node_errors: dict) -> str:
    lines = [f"ComfyUI rejected the prompt: {error['message'] if error else 'node errors'}"]
    if error and error.get("details"):
        lines.append(str(error["details"]))
    for node_id, info in node_errors.items():
        for reason in info["errors"]:
            lines.append(f"  node {node_id} ({info['class_type']}): {reason['message']}: {reason.get('details', '')}")
    return "\n".join(lines)


def run_prompt(prompt: Graph | dict, server_stub: ServerStub = SERVER) -> GraphResult:
    """Validate and execute an API-format prompt with a fresh ``PromptExecutor`` (no cache).

    Raises GraphValidationError / GraphExecutionError (both AssertionErrors) carrying
    ComfyUI's own message; returns the values the InvEditTestCapture nodes received.
    """
    if isinstance(prompt, Graph):
        prompt = prompt.prompt
    prompt = copy.deepcopy(prompt)
    prompt_id = uuid.uuid4().hex
    valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not valid or node_errors:
        raise GraphValidationError(_validation_message(error, node_errors))

    _CAPTURED.clear()
    server_stub.messages.clear()
    server_stub.progress_texts.clear()
    executor = execution.PromptExecutor(server_stub, cache_type=execution.CacheType.CLASSIC)
    try:
        executor.execute(prompt, prompt_id, {"client_id": CLIENT_ID}, outputs)
    finally:
        server_stub.client_id = None
    events = {event: data for event, data in executor.status_messages}
    if "execution_error" in events or "execution_interrupted" in events or "execution_success" not in events:
        details = events.get("execution_error") or events.get("execution_interrupted") or {}
        message = (
            f"node {details.get('node_id')} ({details.get('node_type')}) failed: "
            f"{details.get('exception_type')}: {details.get('exception_message')}\n"
            + "".join(details.get("traceback") or [])
        )
        raise GraphExecutionError(message, details)
    captured = dict(_CAPTURED)
    _CAPTURED.clear()
    return GraphResult(captured, list(server_stub.messages), executor.history_result["outputs"])


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
