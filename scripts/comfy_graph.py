"""Build API-format prompts and run them through the in-process ComfyUI's prompt executor.

Import this only after ComfyUI was booted (scripts/comfy_headless.py; tests/host's conftest does it):

    from comfy_graph import Graph, GraphExecutionError, GraphValidationError

The ``graph`` and ``run_graph`` fixtures hand out :class:`Graph` and :func:`run_prompt`.
"""

from __future__ import annotations

import asyncio
import copy
import uuid
from dataclasses import dataclass
from typing import Any

import comfy.model_management
import comfy.utils
import execution
import server
from comfy_execution.progress import get_progress_state
from comfy_execution.utils import get_executing_context
from protocol import BinaryEventTypes

CLIENT_ID = "invedit-tests"
CAPTURE_NODE = "InvEditTestCapture"

# Values received by InvEditTestCapture nodes during the current run_prompt call, by key.
CAPTURED: dict[str, Any] = {}


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


def _progress_hook(value, total, preview_image, prompt_id=None, node_id=None):
    """What ComfyUI's main.py (hijack_progress) installs for comfy.utils.ProgressBar: check for
    interruption, update the progress state, send a "progress" message (and the preview)."""
    context = get_executing_context()
    if prompt_id is None and context is not None:
        prompt_id = context.prompt_id
    if node_id is None and context is not None:
        node_id = context.node_id
    comfy.model_management.throw_exception_if_processing_interrupted()
    prompt_id = SERVER.last_prompt_id if prompt_id is None else prompt_id
    node_id = SERVER.last_node_id if node_id is None else node_id
    get_progress_state().update_progress(node_id, value, total, preview_image)
    SERVER.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id}, SERVER.client_id)
    if preview_image is not None:
        SERVER.send_sync(BinaryEventTypes.UNENCODED_PREVIEW_IMAGE, preview_image, SERVER.client_id)


comfy.utils.set_progress_bar_global_hook(_progress_hook)


class AnyType(str):
    """A socket type that matches every other type (ComfyUI compares types with ``!=``)."""

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = str.__hash__


class InvEditTestCapture:
    """Output node (registered by :func:`register_capture_node`): hands its input to the caller
    of :func:`run_prompt`, under ``key``."""

    CATEGORY = "InvEdit/testing"
    RETURN_TYPES = ()
    FUNCTION = "capture"
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (AnyType("*"),), "key": ("STRING", {"default": "value"})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")

    def capture(self, value, key):
        if key in CAPTURED:
            raise ValueError(f"two InvEditTestCapture nodes use the key {key!r}")
        CAPTURED[key] = value
        return ()


def register_capture_node(nodes_module) -> None:
    """Make ``InvEditTestCapture`` available to graphs run in this process."""
    nodes_module.NODE_CLASS_MAPPINGS[CAPTURE_NODE] = InvEditTestCapture
    nodes_module.NODE_DISPLAY_NAME_MAPPINGS[CAPTURE_NODE] = CAPTURE_NODE


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
        return self.node(CAPTURE_NODE, key=key, value=value)


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


def new_executor() -> execution.PromptExecutor:
    """A ``PromptExecutor`` with ComfyUI's default (CLASSIC) cache, reporting to the server stub."""
    return execution.PromptExecutor(SERVER, cache_type=execution.CacheType.CLASSIC)


def run_prompt(prompt: Graph | dict, executor: execution.PromptExecutor | None = None) -> GraphResult:
    """Validate and execute an API-format prompt with a fresh ``PromptExecutor`` (no cache), or
    with ``executor``: one kept across prompts caches node outputs between them as ComfyUI's
    server does (a loader node with the same inputs runs once).

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

    CAPTURED.clear()
    SERVER.messages.clear()
    SERVER.progress_texts.clear()
    SERVER.last_prompt_id = prompt_id
    executor = new_executor() if executor is None else executor
    try:
        executor.execute(prompt, prompt_id, {"client_id": CLIENT_ID}, outputs)
    finally:
        SERVER.client_id = None
    events = {event: data for event, data in executor.status_messages}
    if "execution_error" in events or "execution_interrupted" in events or "execution_success" not in events:
        details = events.get("execution_error") or events.get("execution_interrupted") or {}
        message = (
            f"node {details.get('node_id')} ({details.get('node_type')}) failed: "
            f"{details.get('exception_type')}: {details.get('exception_message')}\n"
            + "".join(details.get("traceback") or [])
        )
        raise GraphExecutionError(message, details)
    captured = dict(CAPTURED)
    CAPTURED.clear()
    return GraphResult(captured, list(SERVER.messages), executor.history_result["outputs"])
