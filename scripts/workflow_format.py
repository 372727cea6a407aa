"""ComfyUI's UI ("litegraph") workflow format: build it from a :class:`Graph`, turn it back into a prompt.

Import this only after ComfyUI was booted (scripts/comfy_headless.py), like comfy_graph:

    from workflow_format import node_definitions, ui_workflow, api_prompt
    workflow = ui_workflow(graph, title="DDIM reconstruction", notes="What this shows ...")
    prompt = api_prompt(workflow)            # {"1": {"class_type": ..., "inputs": {...}}}

What the format is, checked against the sources of the ComfyUI frontend that ComfyUI v0.3.64 pins
(``comfyui-frontend-package==1.27.10``; its TypeScript sources are embedded in the source maps
``static/assets/*.js.map`` of the installed package) and against the templates of
``comfyui-workflow-templates==0.1.95``, which that frontend saved:

- Top level, schema 0.4 (``src/platform/workflow/validation/schemas/workflowSchema.ts`` zComfyWorkflow;
  ``LGraph.serialize``): ``last_node_id, last_link_id, nodes, links, groups, config, extra, version``;
  a link is ``[id, origin node, origin slot, target node, target slot, type]`` (zComfyLink) and its
  type is ``input.type || output.type`` (``LGraphNode.connectSlots``).
- Inputs (``litegraphService.ts`` ``#addInputs``): first a socket for every input whose type has
  no widget constructor (or that has ``forceInput``), then, for every widget input, its widget and a
  socket carrying ``widget: {name}``; order by ``input_order`` required, then optional, then the
  rest (``nodeDefOrderingUtil.ts``). Optional sockets have ``shape: 7`` (RenderShape.HollowCircle).
  On save, widget sockets without a link are dropped and link target slots renumbered
  (``compressWidgetInputSlots`` in ``utils/litegraphUtil.ts``, called by ``graphToPrompt``), so a
  saved node lists every plain socket and only the widget sockets that a link feeds.
- ``widgets_values`` (``LGraphNode.serialize``): one value per widget in creation order, linked
  widgets included. An INT widget gets a control widget right after it when its spec has
  ``control_after_generate`` or, when that key is absent, when it is named ``seed`` or ``noise_seed``
  (``useIntWidget.ts``); a COMBO with ``control_after_generate`` gets the control and a filter string
  (``addValueControlWidgets`` in ``scripts/widgets.ts``). The first required combo with
  ``image_upload`` / ``video_upload`` / ``animated_image_upload`` gets an ``upload`` input
  (``extensions/core/uploadImage.ts``) whose button widget stores ``"image"``
  (``useImageUploadWidget.ts``). Default values: ``useIntWidget`` / ``useFloatWidget`` (0),
  ``useBooleanWidget`` (false), ``useStringWidget`` (""), ``useComboWidget`` (a truthy default, else
  the first option).
- Prompt (``utils/executionUtil.ts`` ``graphToPrompt``): virtual nodes (Note, MarkdownNote) and
  nodes in mode NEVER (2) or BYPASS (4) are left out; every widget whose options do not say
  ``serialize: false`` (the control, filter and upload widgets do) gives ``inputs[name] = value``
  (lists wrapped as ``{"__value__": [...]}``), then every linked socket ``[origin id, slot]``; a link
  out of a bypassed node goes on to that node's input of the same slot and type, else the first
  input of the same type (``ExecutableNodeDTO`` ``#getBypassSlotIndex``); inputs whose origin is
  left out are dropped.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import folder_paths
import nodes
from comfy_api.internal import _ComfyNodeInternal

from comfy_graph import Graph
from workflow_layout import GROUP_FONT_SIZE, NOTE_WIDTH, Layout, collapsed_width, place, title_width

SCHEMA_VERSION = 0.4
FRONTEND_VERSION_CHECKED = "1.27.10"

# Input types the frontend draws as widgets (ComfyWidgets in src/scripts/widgets.ts).
WIDGET_TYPES = frozenset({
    "INT", "FLOAT", "BOOLEAN", "STRING", "MARKDOWN", "COMBO", "IMAGEUPLOAD", "FILEUPLOAD", "COLOR",
    "IMAGECOMPARE", "TREESELECT", "MULTISELECT", "CHART", "GALLERIA", "SELECTBUTTON", "TEXTAREA",
})
LEGACY_SEED_NAMES = ("seed", "noise_seed")
CONTROL_AFTER_GENERATE = "control_after_generate"
CONTROL_FILTER_LIST = "control_filter_list"
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
CONTROL_FIXED = "fixed"
UPLOAD_FLAGS = ("image_upload", "video_upload", "animated_image_upload")
UPLOAD_INPUT = "upload"
UPLOAD_TYPE = "IMAGEUPLOAD"
UPLOAD_WIDGET_VALUE = "image"
SHAPE_HOLLOW_CIRCLE = 7  # RenderShape.HollowCircle: how the frontend marks optional sockets
MODE_ALWAYS, MODE_NEVER, MODE_BYPASS = 0, 2, 4
NOTE_TYPES = ("Note", "MarkdownNote")
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"  # LGraphCanvas.node_colors.yellow, as the Note nodes use
GROUP_COLOR = "#3f789e"  # LGraphCanvas.node_colors.pale_blue.groupcolor, the frontend's default for new groups
WRAPPED_LIST_KEY = "__value__"

# Auto-layout, in canvas pixels (LiteGraphGlobal: NODE_TITLE_HEIGHT 30, NODE_SLOT_HEIGHT 20,
# NODE_WIDGET_HEIGHT 20 plus 4 between widgets). Sizes are estimates; the frontend keeps them.
TITLE_HEIGHT = 30
SLOT_HEIGHT = 20
WIDGET_ROW_HEIGHT = 24
NODE_PADDING_WITH_WIDGETS = 14
NODE_PADDING_PLAIN = 6
WIDTH_WITH_WIDGETS = 240
WIDTH_PLAIN = 200
CHAR_WIDTH = 7
MULTILINE_EXTRA_HEIGHT = 80
IMAGE_PREVIEW_HEIGHT = 236  # ImagePreviewWidget: minHeight 220, plus its gaps; a node with an image is never smaller
IMAGE_NODE_TYPES = ("PreviewImage", "SaveImage", "LoadImage")
# Nodes that draw a progress preview inside themselves while they run (ImagePreviewWidget,
# minHeight 220): room is kept for it, or it would be drawn over the nodes below.
PROGRESS_PREVIEW_NODES = ("InvEditNullTextInversion",)
PROGRESS_PREVIEW_HEIGHT = 226
COLLAPSED_SAVED_HEIGHT = 26  # the body height saved for a collapsed node (it draws its title only)
NOTE_SIZE = (NOTE_WIDTH, 320)
COLUMN_GAP = 60
ROW_GAP = 40
ORIGIN = (0.0, 0.0)


class WorkflowFormatError(ValueError):
    """A graph or a UI workflow that cannot be converted; the message says what to fix."""


# ---------------------------------------------------------------------------------------------
# Node definitions (GET /object_info)


def _legacy_node_info(class_type: str) -> dict:
    """``node_info`` of server.py (ComfyUI v0.3.64, PromptServer.__init__) for a V1 node class.

    A faithful copy: the original is a closure inside ``PromptServer.__init__``, reachable only by
    building a server (web app, user and frontend managers) and replacing PromptServer.instance.
    tests/host/test_workflow_format.py compares it with the real route handler for every node.
    """
    obj_class = nodes.NODE_CLASS_MAPPINGS[class_type]
    info: dict[str, Any] = {}
    info["input"] = obj_class.INPUT_TYPES()
    info["input_order"] = {key: list(value.keys()) for (key, value) in obj_class.INPUT_TYPES().items()}
    info["output"] = obj_class.RETURN_TYPES
    info["output_is_list"] = getattr(obj_class, "OUTPUT_IS_LIST", [False] * len(obj_class.RETURN_TYPES))
    info["output_name"] = getattr(obj_class, "RETURN_NAMES", info["output"])
    info["name"] = class_type
    info["display_name"] = nodes.NODE_DISPLAY_NAME_MAPPINGS.get(class_type, class_type)
    info["description"] = getattr(obj_class, "DESCRIPTION", "")
    info["python_module"] = getattr(obj_class, "RELATIVE_PYTHON_MODULE", "nodes")
    info["category"] = "sd"
    info["output_node"] = hasattr(obj_class, "OUTPUT_NODE") and obj_class.OUTPUT_NODE == True  # noqa: E712
    if hasattr(obj_class, "CATEGORY"):
        info["category"] = obj_class.CATEGORY
    if hasattr(obj_class, "OUTPUT_TOOLTIPS"):
        info["output_tooltips"] = obj_class.OUTPUT_TOOLTIPS
    if getattr(obj_class, "DEPRECATED", False):
        info["deprecated"] = True
    if getattr(obj_class, "EXPERIMENTAL", False):
        info["experimental"] = True
    if hasattr(obj_class, "API_NODE"):
        info["api_node"] = obj_class.API_NODE
    return info


def node_definitions(class_types: Iterable[str] | None = None) -> dict[str, dict]:
    """What ComfyUI's ``GET /object_info`` returns for these registered node types (all when None).

    V3 nodes (``comfy_api.latest.io.ComfyNode``) answer with ComfyUI's own ``GET_NODE_INFO_V1()``,
    exactly as server.py calls it; V1 nodes through a copy of server.py's ``node_info``. The result
    goes through JSON as the HTTP answer does (tuples become lists).
    """
    names = list(nodes.NODE_CLASS_MAPPINGS) if class_types is None else list(dict.fromkeys(class_types))
    unknown = [name for name in names if name not in nodes.NODE_CLASS_MAPPINGS]
    if unknown:
        raise WorkflowFormatError(f"no node type {unknown} is registered in this ComfyUI (missing custom node pack?)")
    definitions = {}
    with folder_paths.cache_helper:  # as GET /object_info does
        for name in names:
            node_class = nodes.NODE_CLASS_MAPPINGS[name]
            if issubclass(node_class, _ComfyNodeInternal):
                info = node_class.GET_NODE_INFO_V1()
            else:
                info = _legacy_node_info(name)
            definitions[name] = json.loads(json.dumps(info))
    return definitions


# ---------------------------------------------------------------------------------------------
# What the frontend builds for a node definition: its input slots and its widgets


@dataclass(frozen=True)
class InputSlot:
    """An input socket of a frontend node; ``widget`` when it belongs to a widget input."""

    name: str
    type: str
    optional: bool
    widget: bool


@dataclass(frozen=True)
class Widget:
    """A widget of a frontend node. ``input_name`` is the prompt input its value is sent as, None
    for frontend-only widgets (control_after_generate, its filter list, the upload button)."""

    name: str
    input_name: str | None
    default: Any
    kind: str = ""  # the input type (INT, STRING, COMBO, ...)


@dataclass(frozen=True)
class NodeLayout:
    """Input slots (sockets, then widget sockets), widgets in order, outputs as (name, type)."""

    inputs: tuple[InputSlot, ...]
    widgets: tuple[Widget, ...]
    outputs: tuple[tuple[str, str], ...]

    def value_widgets(self) -> dict[str, Widget]:
        return {widget.input_name: widget for widget in self.widgets if widget.input_name is not None}


@dataclass(frozen=True)
class _InputSpec:
    name: str
    type: str
    options: dict
    optional: bool


def _spec_type(spec: list) -> str:
    """``getInputSpecType``: a list of choices is a COMBO."""
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _ordered_input_specs(definition: dict) -> list[_InputSpec]:
    """Required then optional inputs in ``input_order`` (``getOrderedInputSpecs``), then the rest,
    with the upload input that ``Comfy.UploadImage`` adds to an upload combo."""
    sections = definition.get("input", {})
    specs: dict[str, _InputSpec] = {}
    for section, optional in (("required", False), ("optional", True)):
        for name, spec in (sections.get(section) or {}).items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if isinstance(spec[0], list):
                options = {**options, "options": spec[0]}
            specs[name] = _InputSpec(name, _spec_type(spec), options, optional)
    upload = next((spec for spec in specs.values() if not spec.optional and spec.type == "COMBO"
                   and any(spec.options.get(flag) is True for flag in UPLOAD_FLAGS)), None)
    if upload is not None:
        options = {**upload.options, "imageInputName": upload.name}
        specs[UPLOAD_INPUT] = _InputSpec(UPLOAD_INPUT, UPLOAD_TYPE, options, False)

    order = definition.get("input_order")
    if not order:
        return list(specs.values())
    ordered = [specs[name] for name in order.get("required", []) if name in specs and not specs[name].optional]
    ordered += [specs[name] for name in order.get("optional", []) if name in specs and specs[name].optional]
    done = {spec.name for spec in ordered}
    return ordered + [spec for spec in specs.values() if spec.name not in done]


def _is_widget(spec: _InputSpec) -> bool:
    return spec.options.get("widgetType", spec.type) in WIDGET_TYPES and not spec.options.get("forceInput")


def _widget_default(spec: _InputSpec) -> Any:
    """The value a new widget starts with (the frontend's widget constructors)."""
    default = spec.options.get("default")
    kind = spec.options.get("widgetType", spec.type)
    if kind == "COMBO":
        choices = spec.options.get("options") or []
        return default if default else (choices[0] if choices else None)
    if kind == UPLOAD_TYPE:
        return UPLOAD_WIDGET_VALUE
    fallbacks = {"INT": 0, "FLOAT": 0, "BOOLEAN": False, "STRING": "", "MARKDOWN": "", "TEXTAREA": ""}
    return default if default is not None else fallbacks.get(kind)


def _control_widgets(spec: _InputSpec) -> list[Widget]:
    """The frontend-only widgets that follow a value widget (useIntWidget, useComboWidget)."""
    flag = spec.options.get(CONTROL_AFTER_GENERATE)
    if spec.type == "INT":
        if flag is None:
            flag = spec.name in LEGACY_SEED_NAMES
        return [Widget(CONTROL_AFTER_GENERATE, None, CONTROL_FIXED)] if flag else []
    if spec.type == "COMBO" and flag:
        return [Widget(CONTROL_AFTER_GENERATE, None, CONTROL_FIXED), Widget(CONTROL_FILTER_LIST, None, "")]
    return []


def node_layout(definition: dict) -> NodeLayout:
    """The input slots, widgets and outputs the frontend gives a node of this definition."""
    specs = _ordered_input_specs(definition)
    sockets = [InputSlot(spec.name, spec.type, spec.optional, False) for spec in specs if not _is_widget(spec)]
    widget_sockets, widgets = [], []
    for spec in filter(_is_widget, specs):
        widget_sockets.append(InputSlot(spec.name, spec.type, spec.optional, True))
        input_name = None if spec.type == UPLOAD_TYPE else spec.name
        widgets.append(Widget(spec.name, input_name, _widget_default(spec), spec.type))
        widgets.extend(_control_widgets(spec))
    names = definition.get("output_name") or []
    outputs = tuple(
        (names[index] if index < len(names) and names[index] else f"output_{index}",
         "COMBO" if isinstance(kind, list) else kind)
        for index, kind in enumerate(definition.get("output") or [])
    )
    return NodeLayout(tuple(sockets + widget_sockets), tuple(widgets), outputs)


# ---------------------------------------------------------------------------------------------
# Graph (API format) -> UI workflow


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def with_widget_defaults(prompt: dict[str, dict], definitions: Mapping[str, dict] | None = None) -> dict[str, dict]:
    """A copy of an API-format prompt in which every widget input it leaves out has the value a
    new widget starts with in the frontend: what the prompt of its UI workflow is."""
    if definitions is None:
        definitions = node_definitions({node["class_type"] for node in prompt.values()})
    completed = copy.deepcopy(prompt)
    for node in completed.values():
        for name, widget in node_layout(definitions[node["class_type"]]).value_widgets().items():
            if name not in node["inputs"]:
                default = copy.deepcopy(widget.default)
                node["inputs"][name] = {WRAPPED_LIST_KEY: default} if isinstance(default, list) else default
    return completed


def _depths(prompt: dict[str, dict]) -> dict[str, int]:
    """Column of each node: 0 without linked inputs, else one more than its deepest source."""
    depths: dict[str, int] = {}

    def depth(node_id: str, path: tuple[str, ...]) -> int:
        if node_id in path:
            raise WorkflowFormatError(f"the graph has a cycle through node {node_id}")
        if node_id not in depths:
            sources = [value[0] for value in prompt[node_id]["inputs"].values() if _is_link(value)]
            depths[node_id] = 1 + max((depth(source, path + (node_id,)) for source in sources), default=-1)
        return depths[node_id]

    for node_id in prompt:
        depth(node_id, ())
    return depths


def _node_size(class_type: str, layout: NodeLayout, definition: dict, title: str) -> list[float]:
    """An estimate of the size the frontend gives a new node (LGraphNode.computeSize)."""
    rows = max(sum(not slot.widget for slot in layout.inputs), len(layout.outputs), 1)
    label_width = max((len(slot.name) for slot in layout.inputs if not slot.widget), default=0)
    label_width += max((len(name) for name, _ in layout.outputs), default=0)
    width = max(WIDTH_WITH_WIDGETS if layout.widgets else WIDTH_PLAIN, CHAR_WIDTH * (label_width + 8),
                title_width(title))
    height = rows * SLOT_HEIGHT + len(layout.widgets) * WIDGET_ROW_HEIGHT
    height += NODE_PADDING_WITH_WIDGETS if layout.widgets else NODE_PADDING_PLAIN
    sections = definition.get("input", {})
    multiline = [name for section in ("required", "optional") for name, spec in (sections.get(section) or {}).items()
                 if len(spec) > 1 and isinstance(spec[1], dict) and spec[1].get("multiline")]
    height += MULTILINE_EXTRA_HEIGHT * len(multiline)
    if class_type in IMAGE_NODE_TYPES:
        height += IMAGE_PREVIEW_HEIGHT
    if class_type in PROGRESS_PREVIEW_NODES:
        height += PROGRESS_PREVIEW_HEIGHT
    return [float(width), float(height)]


def _chosen_size(class_type: str, chosen: Sequence[float], estimate: list[float]) -> list[float]:
    """A size a workflow chose for a node; never narrower than the estimate (the frontend widens a
    node to its title) and, for nodes that draw an image inside themselves, never shorter (the
    frontend would grow them over their neighbours when the image arrives)."""
    width, height = max(float(chosen[0]), estimate[0]), float(chosen[1])
    if class_type in IMAGE_NODE_TYPES or class_type in PROGRESS_PREVIEW_NODES:
        height = max(height, estimate[1])
    return [width, height]


def _check_node_ids(prompt: dict[str, dict]) -> None:
    bad = [node_id for node_id in prompt
           if not (isinstance(node_id, str) and node_id.isdigit() and node_id == str(int(node_id)))]
    if bad:
        raise WorkflowFormatError(f"UI workflows number their nodes; these node ids are not positive integers: {bad}")


def _check_graph(prompt: dict[str, dict], layouts: dict[str, NodeLayout]) -> None:
    """Every input name exists on its node and every link points at an existing output."""
    for node_id, node in prompt.items():
        known = {slot.name for slot in layouts[node_id].inputs} | set(layouts[node_id].value_widgets())
        unknown = [name for name in node["inputs"] if name not in known]
        if unknown:
            raise WorkflowFormatError(
                f"node {node_id} ({node['class_type']}) has no input {unknown}; it has {sorted(known)}")
        for name, value in node["inputs"].items():
            if _is_link(value) and (value[0] not in prompt or value[1] >= len(layouts[value[0]].outputs)):
                raise WorkflowFormatError(f"node {node_id} input {name!r} links to a missing output {value}")


def _ui_inputs(node_id: str, node: dict, layouts: dict[str, NodeLayout], links: list[list]) -> list[dict]:
    """A node's saved input slots; appends the links that feed them to ``links``."""
    inputs = []
    for slot in layouts[node_id].inputs:
        value = node["inputs"].get(slot.name)
        link_id = None
        if _is_link(value):
            source, source_slot = value
            link_id = len(links) + 1
            links.append([link_id, int(source), source_slot, int(node_id), len(inputs),
                          slot.type or layouts[source].outputs[source_slot][1]])
        elif slot.widget:
            continue  # compressWidgetInputSlots: unlinked widget sockets are not saved
        entry: dict[str, Any] = {"name": slot.name, "type": slot.type}
        if slot.optional:
            entry["shape"] = SHAPE_HOLLOW_CIRCLE
        if slot.widget:
            entry["widget"] = {"name": slot.name}
        entry["link"] = link_id
        inputs.append(entry)
    return inputs


PRIMITIVE_PREFIX = "Primitive"  # PrimitiveInt, PrimitiveStringMultiline, ...: a constant in a "value" widget


def _linked_widget_value(link: list, widget: Widget, prompt: Mapping[str, dict]) -> Any:
    """What a widget fed by ``link`` shows (greyed) in the page: the constant of a Primitive node,
    else nothing for text (the frontend would show a stale default that the run does not use)."""
    source = prompt[link[0]]
    constant = source["inputs"].get("value")
    if source["class_type"].startswith(PRIMITIVE_PREFIX) and constant is not None and not _is_link(constant):
        return constant
    return "" if widget.kind == "STRING" else widget.default


def _widgets_values(node: dict, layout: NodeLayout, prompt: Mapping[str, dict]) -> list:
    """One value per widget; a widget that a link feeds shows the value it gets (or nothing), one
    the frontend alone uses keeps its default."""
    values = []
    for widget in layout.widgets:
        value = node["inputs"].get(widget.input_name, widget.default) if widget.input_name else widget.default
        if _is_link(value):
            value = _linked_widget_value(value, widget, prompt)
        elif isinstance(value, dict) and set(value) == {WRAPPED_LIST_KEY}:
            value = value[WRAPPED_LIST_KEY]
        values.append(copy.deepcopy(value))
    return values


def _place_in_columns(prompt: dict[str, dict], ui_nodes: dict[str, dict], left: float,
                      depths: Mapping[str, int]) -> None:
    """Set each node's ``pos``: a column per depth from ``left``, each column ordered by where the
    node's sources sit, so that links mostly run straight."""
    centre_y: dict[str, float] = {}

    def source_centre(node_id: str) -> float:
        sources = [value[0] for value in prompt[node_id]["inputs"].values() if _is_link(value)]
        return sum(centre_y[source] for source in sources) / len(sources) if sources else 0.0

    x = left
    for depth in range(max(depths.values(), default=-1) + 1):
        column = sorted((node_id for node_id in prompt if depths[node_id] == depth),
                        key=lambda node_id: (source_centre(node_id), int(node_id)))
        y = ORIGIN[1] + TITLE_HEIGHT
        for node_id in column:
            ui_nodes[node_id]["pos"] = [x, y]
            centre_y[node_id] = y + ui_nodes[node_id]["size"][1] / 2
            y += ui_nodes[node_id]["size"][1] + TITLE_HEIGHT + ROW_GAP
        x += max(ui_nodes[node_id]["size"][0] for node_id in column) + COLUMN_GAP


def _note_node(node_id: int, title: str | None, notes: str | None) -> dict:
    """A MarkdownNote as the frontend saves one (extensions/core/noteNode.ts)."""
    return {
        "id": node_id, "type": "MarkdownNote", "pos": [ORIGIN[0], ORIGIN[1] + TITLE_HEIGHT],
        "size": [float(size) for size in NOTE_SIZE], "flags": {}, "order": 0, "mode": MODE_ALWAYS,
        "inputs": [], "outputs": [], "title": title or "Notes", "properties": {},
        "widgets_values": [notes or title], "color": NOTE_COLOR, "bgcolor": NOTE_BGCOLOR,
    }


def ui_workflow(
    graph: Graph | dict,
    *,
    title: str | None = None,
    notes: str | None = None,
    node_titles: Mapping[str, str] | None = None,
    node_properties: Mapping[str, dict] | None = None,
    definitions: Mapping[str, dict] | None = None,
    layout: Layout | None = None,
    node_sizes: Mapping[str, Sequence[float]] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict:
    """The UI-format workflow (schema 0.4, as frontend 1.27 saves it) of an API-format graph.

    ``graph``: a :class:`Graph` or its ``prompt`` (node ids "1", "2", ... become the UI ids).
    ``title`` and ``notes`` (Markdown): a MarkdownNote with that title and text, left of the graph.
    ``node_titles`` / ``node_properties``: by node id, a title shown instead of the display name and
    extra node properties (e.g. ``{"models": [{"name", "url", "directory"}]}`` for the frontend's
    missing-model download). Widget inputs the graph leaves out get the widget's default value, as
    in a node added by hand; a widget that a link feeds shows what it gets (a Primitive's constant)
    or nothing. ``layout``: captioned groups in rows (scripts/workflow_layout.py), every node placed
    by it; without one, nodes go in columns by their depth in the graph. ``node_sizes``: by node id,
    a size instead of the estimate. ``extra``: merged into the workflow's ``extra``.
    """
    prompt = graph.prompt if isinstance(graph, Graph) else graph
    _check_node_ids(prompt)
    class_types = [node["class_type"] for node in prompt.values()]
    if definitions is None:
        definitions = node_definitions(class_types)
    missing = sorted({kind for kind in class_types if kind not in definitions})
    if missing:
        raise WorkflowFormatError(f"no node definition for {missing}")
    extra_ids = sorted(set(node_titles or {}).union(node_properties or {}, node_sizes or {}) - set(prompt))
    if extra_ids:
        raise WorkflowFormatError(f"titles, properties or sizes for nodes that are not in the graph: {extra_ids}")
    layouts = {node_id: node_layout(definitions[node["class_type"]]) for node_id, node in prompt.items()}
    _check_graph(prompt, layouts)

    links: list[list] = []
    ui_nodes: dict[str, dict] = {}
    for node_id, node in sorted(prompt.items(), key=lambda item: int(item[0])):
        class_type, layout_of_node = node["class_type"], layouts[node_id]
        ui_title = (node_titles or {}).get(node_id)
        shown_title = ui_title or definitions[class_type].get("display_name") or class_type
        size = _node_size(class_type, layout_of_node, definitions[class_type], shown_title)
        if node_id in (node_sizes or {}):
            size = _chosen_size(class_type, node_sizes[node_id], size)
        collapsed = layout is not None and node_id in layout.collapsed
        if collapsed:
            # Saved as the pill it is drawn as; on load the frontend gives every node at least its
            # computed size, so expanding it shows the whole node.
            size = [collapsed_width(shown_title, size[0]), float(COLLAPSED_SAVED_HEIGHT)]
        ui_node: dict[str, Any] = {
            "id": int(node_id), "type": class_type, "pos": [0.0, 0.0], "size": size,
            "flags": {"collapsed": True} if collapsed else {},
            "order": 0, "mode": MODE_ALWAYS,
            "inputs": _ui_inputs(node_id, node, layouts, links), "outputs": [],
        }
        if ui_title is not None:
            ui_node["title"] = ui_title
        properties = copy.deepcopy((node_properties or {}).get(node_id, {}))
        ui_node["properties"] = {"Node name for S&R": class_type, **properties}
        ui_node["widgets_values"] = _widgets_values(node, layout_of_node, prompt)
        ui_nodes[node_id] = ui_node
    for node_id, ui_node in ui_nodes.items():
        ui_node["outputs"] = [
            {"name": name, "type": kind, "slot_index": index,
             "links": [link[0] for link in links if link[1] == int(node_id) and link[2] == index] or None}
            for index, (name, kind) in enumerate(layouts[node_id].outputs)
        ]

    note = None
    if title or notes:
        note = _note_node(max((int(node_id) for node_id in prompt), default=0) + 1, title, notes)
    groups: list[dict] = []
    depths = _depths(prompt)
    if layout is None:
        _place_in_columns(prompt, ui_nodes, ORIGIN[0] + (NOTE_SIZE[0] + COLUMN_GAP if note else 0), depths)
    else:
        groups = _place_in_groups(layout, ui_nodes, note)
    # Execution order (LGraph.computeExecutionOrder): sources first.
    executed = sorted(ui_nodes, key=lambda node_id: (depths[node_id], int(node_id)))
    all_nodes = ([note] if note else []) + [ui_nodes[node_id] for node_id in executed]
    for order, ui_node in enumerate(all_nodes):
        ui_node["order"] = order
    return {
        "last_node_id": max((ui_node["id"] for ui_node in all_nodes), default=0),
        "last_link_id": len(links),
        "nodes": sorted(all_nodes, key=lambda ui_node: ui_node["id"]),
        "links": links,
        "groups": groups,
        "config": {},
        "extra": copy.deepcopy(dict(extra or {})),
        "version": SCHEMA_VERSION,
    }


def _place_in_groups(layout: Layout, ui_nodes: dict[str, dict], note: dict | None) -> list[dict]:
    """Set every node's ``pos`` (and the note's box) from ``layout``; return the saved groups."""
    unplaced = sorted((node_id for node_id in ui_nodes if node_id not in set(layout.node_ids())), key=int)
    if unplaced:
        described = [f"{node_id} ({ui_nodes[node_id]['type']} {ui_nodes[node_id].get('title', '')!r})"
                     for node_id in unplaced]
        raise WorkflowFormatError(f"nodes in no group of the layout: {', '.join(described)}")
    unknown = sorted(set(layout.node_ids()) - set(ui_nodes))
    if unknown:
        raise WorkflowFormatError(f"the layout places nodes that are not in the graph: {unknown}")
    placement = place(layout, {node_id: node["size"] for node_id, node in ui_nodes.items()},
                      note["size"] if note else None, ORIGIN,
                      {node_id: node.get("title") or node["type"] for node_id, node in ui_nodes.items()})
    for node_id, position in placement.positions.items():
        ui_nodes[node_id]["pos"] = [float(position[0]), float(position[1])]
    if note is not None and placement.note_box is not None:
        x, y, width, height = placement.note_box
        note["pos"], note["size"] = [x, y], [width, height]
    return [{"id": index + 1, "title": caption, "bounding": [float(v) for v in box],
             "color": color or GROUP_COLOR, "font_size": GROUP_FONT_SIZE, "flags": {}}
            for index, (caption, box, color) in enumerate(placement.groups)]


# ---------------------------------------------------------------------------------------------
# UI workflow -> API format


def _widget_values_by_name(node: dict, layout: NodeLayout, strict: bool) -> dict[str, Any]:
    """widgets_values of a saved node, by prompt input name (frontend-only widgets dropped).

    ``strict``: a count that differs from the definition's widgets is an error. Otherwise do what
    ``LGraphNode.configure`` does: assign by position, keep defaults for missing values, drop extras.
    """
    values = node.get("widgets_values")
    if values is None:
        values = []
    if isinstance(values, dict):  # zWidgetValues also allows a record by widget name
        return {widget.input_name: values.get(widget.name, widget.default) for widget in layout.widgets
                if widget.input_name is not None}
    if strict and len(values) != len(layout.widgets):
        expected = [widget.name for widget in layout.widgets]
        raise WorkflowFormatError(
            f"node {node['id']} ({node['type']}) has {len(values)} widget values, its definition has "
            f"{len(expected)} widgets {expected}: the workflow was saved for another version of the node "
            "(load it in ComfyUI and save it again, or rebuild it)"
        )
    values = list(values[:len(layout.widgets)]) + [widget.default for widget in layout.widgets[len(values):]]
    return {widget.input_name: value for widget, value in zip(layout.widgets, values) if widget.input_name is not None}


REMOVED = object()  # api_prompt: an input whose origin is left out of the prompt


def _types_match(first: str, second: str) -> bool:
    """LiteGraph.isValidConnection: equal, a wildcard, or comma-separated lists that share a type."""
    if first == second or "*" in (first, second) or not first or not second:
        return True
    return bool(set(str(first).upper().split(",")) & set(str(second).upper().split(",")))


def _bypass_input_index(node: dict, slot: int, wanted_type: str) -> int:
    """Which input of a bypassed node stands in for its output ``slot`` (``#getBypassSlotIndex``):
    the input of the same slot when its type fits, else the first input of exactly the wanted
    type, else the first that fits; -1 when none. (The frontend counts slots in the node's full
    input list; saved workflows list the same plain sockets first, so they agree on those.)"""
    inputs = node.get("inputs") or []
    if wanted_type in ("*", ""):
        return slot if len(inputs) > slot else 0
    output_type = (node.get("outputs") or [])[slot]["type"]
    same_slot = inputs[slot]["type"] if slot < len(inputs) else None
    if same_slot is not None and _types_match(same_slot, output_type) and _types_match(same_slot, wanted_type):
        return slot
    exact = next((index for index, entry in enumerate(inputs) if entry["type"] == wanted_type), -1)
    if exact >= 0:
        return exact
    return next((index for index, entry in enumerate(inputs) if _types_match(entry["type"], wanted_type)), -1)


def api_prompt(workflow: dict, definitions: Mapping[str, dict] | None = None, *,
               strict: bool = True) -> dict[str, dict]:
    """The API-format prompt ``{id: {"class_type", "inputs"}}`` that the frontend queues for a UI workflow.

    Note / MarkdownNote and muted (mode 2) or bypassed (mode 4) nodes are left out; links through a
    bypassed node go on to its matching input. Widget values map back to input names (the
    control_after_generate, filter and upload widgets are not sent); linked inputs become
    ``[origin id, slot]``. ``strict`` (default): a node whose number of widget values does not
    match its definition is an error (a stale workflow); otherwise values go by position as the
    frontend assigns them.
    """
    ui_nodes = {str(node["id"]): node for node in workflow["nodes"]}
    runnable = {node_id: node for node_id, node in ui_nodes.items() if node["type"] not in NOTE_TYPES}
    if definitions is None:
        definitions = node_definitions({node["type"] for node in runnable.values()})
    missing = sorted({node["type"] for node in runnable.values() if node["type"] not in definitions})
    if missing:
        raise WorkflowFormatError(
            f"no node definition for {missing} (a frontend-only node? only Note and MarkdownNote are known)")
    links = {link[0]: link for link in workflow.get("links", [])}

    def resolve(link_id: int, wanted_type: str, visited: frozenset = frozenset()) -> list | None | object:
        """``[origin id, slot]`` of the node that provides this link's value; None when nothing
        does (a widget keeps its own value); REMOVED when the origin is muted (the frontend then
        drops the input altogether)."""
        link = links.get(link_id)
        if link is None:
            raise WorkflowFormatError(f"link {link_id} is used by a node but not listed in links")
        origin, origin_slot = str(link[1]), int(link[2])
        node = ui_nodes.get(origin)
        if node is None:
            raise WorkflowFormatError(f"link {link_id} comes from node {origin}, which is not in the workflow")
        if node["type"] in NOTE_TYPES or node.get("mode", MODE_ALWAYS) == MODE_NEVER:
            return REMOVED
        if node.get("mode", MODE_ALWAYS) != MODE_BYPASS:
            return [origin, origin_slot]
        if origin in visited:
            raise WorkflowFormatError(f"bypassed nodes form a loop at node {origin}")
        index = _bypass_input_index(node, origin_slot, wanted_type)
        if index < 0 or node["inputs"][index].get("link") is None:
            return None
        return resolve(node["inputs"][index]["link"], wanted_type, visited | {origin})

    prompt: dict[str, dict] = {}
    for node_id, node in runnable.items():
        if node.get("mode", MODE_ALWAYS) in (MODE_NEVER, MODE_BYPASS):
            continue
        layout = node_layout(definitions[node["type"]])
        inputs: dict[str, Any] = {}
        for name, value in _widget_values_by_name(node, layout, strict).items():
            value = copy.deepcopy(value)
            inputs[name] = {WRAPPED_LIST_KEY: value} if isinstance(value, list) else value
        for slot in node.get("inputs") or []:
            if slot.get("link") is None:
                continue
            source = resolve(slot["link"], slot["type"])
            if source is REMOVED:
                inputs.pop(slot["name"], None)
            elif source is not None:
                inputs[slot["name"]] = source
        prompt[node_id] = {"class_type": node["type"], "inputs": inputs}
    return prompt
