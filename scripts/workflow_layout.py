"""Lay out an example workflow as a ComfyUI user reads it, and the rules every shipped workflow keeps.

Pure Python (no ComfyUI import): scripts/workflow_format.py places nodes with it when it builds a
workflow, scripts/build_workflows.py refuses a workflow that breaks a rule, and the browser test
(tests/browser) checks the same rules on every file in workflows/ and on what the page draws.

Layout: a workflow is rows of captioned groups (ComfyUI's LGraphGroup, drawn as a titled frame).
A row item is one group or a vertical stack of groups; a group holds columns of nodes, each column
read top to bottom. The Markdown note opens the first row. Nothing is placed by guesswork: a node
that is in no group is an error that names it.

Rules (``workflow_problems``), each checked against ComfyUI frontend 1.27.10 (its sources are in
the source maps of ``comfyui_frontend_package``):

1. Readable at the zoom it opens with. ``app.loadGraphData`` of a workflow without a saved view
   calls ``fitView``: ``DragAndScale.fitToBounds(bounds, zoom=0.75)``, so the scale is
   ``0.75 * min(canvas_w / w, canvas_h / h)``. Text is drawn while the scale is at least
   ``LiteGraph.Canvas.MinFontSizeForLOD / NODE_TEXT_SIZE`` = 8 / 14 (the default setting); below
   that every title and widget is a blank box. The reference window is 1920x1080 with the default
   UI (canvas 1856x1002). At most MAX_WIDTH wide, opening zoom at least MIN_OPENING_ZOOM.
2. No two nodes overlap (title bars included, collapsed nodes as their title pill), no two groups
   overlap, every node but the note lies inside exactly one group.
3. Every node's title is unique in its workflow (no three "Preview Image"), every display node
   (Preview Image, Save Image, Preview Any) has a title of its own, and every title is drawn
   whole (the frontend truncates a title to the node's width, and shows 20 characters of a
   collapsed node's).
4. Scores are visible: the outputs in SHOWN_OUTPUTS (the reports of the score nodes) are wired
   to a display node. (A node that draws a progress preview inside itself, like null-text's loss
   plot, gets the room for it from workflow_format.PROGRESS_PREVIEW_NODES.)
5. The note mentions only what is in the graph: every **bold** phrase in it is the title of a node
   or the caption of a group.
6. Template card: the file name is the card's title in ComfyUI's template browser (frontend
   1.27.10 has no other metadata for custom-node templates): at most CARD_TITLE_MAX_CHARS, words
   rather than an identifier, starting with NO_DOWNLOAD_PREFIX exactly when no node loads a model
   file; ``extra.invedit.card`` holds the one-line description drawn on the thumbnail, which must
   say more than the title.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Frontend geometry (LiteGraphGlobal, LGraphGroup, DragAndScale of frontend 1.27.10).
NODE_TITLE_HEIGHT = 30
NODE_TEXT_SIZE = 14
DEFAULT_MIN_FONT_SIZE_FOR_LOD = 8  # setting LiteGraph.Canvas.MinFontSizeForLOD
TEXT_ZOOM_THRESHOLD = DEFAULT_MIN_FONT_SIZE_FOR_LOD / NODE_TEXT_SIZE  # below it text is not drawn
FIT_VIEW_ZOOM = 0.75  # fitToBounds' default share of the canvas
FIT_VIEW_MIN_EXTENT = 300  # fitToBounds: Math.max(bounds[2], 300)
GROUP_FONT_SIZE = 24  # LiteGraph.DEFAULT_GROUP_FONT
GROUP_TITLE_HEIGHT = round(GROUP_FONT_SIZE * 1.4)  # LGraphGroup.titleHeight
TITLE_CHAR_WIDTH = 8  # a title character at 14 px (sans-serif, measured about 7.7), rounded up
COLLAPSED_TITLE_MAX_CHARS = 20  # LGraphNode.drawTitleText shows only the first 20 of a collapsed node

# The reference screen: 1920x1080, ComfyUI's default UI (top menu 78 px, side bar 64 px).
REFERENCE_CANVAS = (1856, 1002)
MIN_OPENING_ZOOM = 0.62  # above TEXT_ZOOM_THRESHOLD (0.571) with room for larger fonts
MAX_WIDTH = 1900  # canvas units, title bars and groups included

# Layout spacing, canvas units.
GROUP_PADDING = 10
NODE_GAP_X = 24
NODE_GAP_Y = 18
GROUP_GAP = 24
ROW_GAP = 24
NOTE_WIDTH = 480  # the frontend widens a MarkdownNote narrower than about 470

DISPLAY_TYPES = ("PreviewImage", "SaveImage", "PreviewAny")
NOTE_TYPES = ("Note", "MarkdownNote")
# Outputs a user must see on the canvas: they are wired to a display node.
SHOWN_OUTPUTS: dict[str, tuple[str, ...]] = {
    "InvEditReconstructionError": ("report",),
    "InvEditLatentNormality": ("report",),
    "InvEditNullTextInversion": ("report",),  # its loss plot is drawn in the node while it works
}
# Nodes that load a model file the user has to download.
MODEL_FILE_LOADERS = (
    "CheckpointLoaderSimple", "CheckpointLoader", "UNETLoader", "CLIPLoader", "DualCLIPLoader",
    "TripleCLIPLoader", "QuadrupleCLIPLoader", "VAELoader", "LoraLoader", "LoraLoaderModelOnly",
    "UnetLoaderGGUF", "ImageOnlyCheckpointLoader",
)
NO_DOWNLOAD_PREFIX = "Digits - "  # the test-bed workflows: they run on the models that ship with the pack
DOWNLOAD_PREFIXES = ("SD1.5 - ", "SDXL - ", "SD3.5 - ", "Flux - ", "Qwen-Image - ", "Chroma - ")  # the model needed
CARD_TITLE_MAX_CHARS = 40  # two lines of the card's title (text-lg, about 22 characters a line)
CARD_DESCRIPTION_MAX_CHARS = 90  # one line on the thumbnail
FILE_NAME_FORBIDDEN = re.compile(r'[<>:"/\\|?*\x00-\x1f]')  # not allowed in Windows file names
INVEDIT_EXTRA = "invedit"  # key of the pack's metadata in a workflow's ``extra``


class LayoutError(ValueError):
    """A layout that cannot be placed, or a workflow that breaks a rule; the message says what to fix."""


# ---------------------------------------------------------------------------------------------
# Layout


@dataclass
class Group:
    """A captioned frame of nodes: ``columns`` of node ids, each read top to bottom."""

    caption: str
    columns: list[list[str]]
    color: str | None = None


@dataclass(frozen=True)
class NoteBlock:
    """Where the workflow's note goes in a row, ``height`` tall when groups are stacked under it
    (alone in its row item it is stretched to the row's height)."""

    height: float = 320.0


Block = Group | NoteBlock
RowItem = Block | Sequence[Block]  # one block, or blocks stacked top to bottom


@dataclass
class Layout:
    """Rows of groups; the note opens the first row unless a NoteBlock places it."""

    rows: list[list[RowItem]] = field(default_factory=list)
    collapsed: set[str] = field(default_factory=set)

    def groups(self) -> list[Group]:
        return [block for row in self.rows for item in row for block in _stack(item) if isinstance(block, Group)]

    def node_ids(self) -> list[str]:
        return [node_id for group in self.groups() for column in group.columns for node_id in column]

    def has_note_block(self) -> bool:
        return any(isinstance(block, NoteBlock) for row in self.rows for item in row for block in _stack(item))


@dataclass(frozen=True)
class Placement:
    """Where the layout puts things: node body positions (``pos``), group frames, the note's box."""

    positions: dict[str, tuple[float, float]]
    groups: list[tuple[str, tuple[float, float, float, float], str | None]]  # caption, [x, y, w, h], colour
    note_box: tuple[float, float, float, float] | None


def _stack(item: RowItem) -> list[Block]:
    return [item] if isinstance(item, (Group, NoteBlock)) else list(item)


def title_width(title: str) -> float:
    """The width a node needs to draw ``title`` whole: ``drawTitleText`` truncates a title to the
    node's width less two title heights."""
    return TITLE_CHAR_WIDTH * len(title) + 2 * NODE_TITLE_HEIGHT


def collapsed_width(title: str, width: float) -> float:
    """The width of a collapsed node's pill (``LGraphNode.measure``), estimated from its title."""
    return min(width, title_width(title))


def node_box(pos: Sequence[float], size: Sequence[float], collapsed: bool = False,
             title: str = "") -> tuple[float, float, float, float]:
    """``[x, y, w, h]`` a node covers on the canvas, title bar included (``LGraphNode.measure``)."""
    x, y = float(pos[0]), float(pos[1]) - NODE_TITLE_HEIGHT
    if collapsed:
        return x, y, collapsed_width(title, float(size[0])), float(NODE_TITLE_HEIGHT)
    return x, y, float(size[0]), float(size[1]) + NODE_TITLE_HEIGHT


@dataclass(frozen=True)
class _Nodes:
    """What placing needs to know of the nodes: body sizes, titles, which are collapsed."""

    sizes: Mapping[str, Sequence[float]]
    titles: Mapping[str, str]
    collapsed: set[str]

    def width(self, node_id: str) -> float:
        width = float(self.sizes[node_id][0])
        return collapsed_width(self.titles.get(node_id, ""), width) if node_id in self.collapsed else width

    def height(self, node_id: str) -> float:
        """Title bar included."""
        return NODE_TITLE_HEIGHT + (0.0 if node_id in self.collapsed else float(self.sizes[node_id][1]))


def _column_extent(column: list[str], nodes: _Nodes) -> tuple[float, float]:
    """Width and height of a column of nodes, title bars and gaps included."""
    width = max(nodes.width(node_id) for node_id in column)
    return width, sum(nodes.height(node_id) for node_id in column) + NODE_GAP_Y * (len(column) - 1)


def _block_extent(block: Block, nodes: _Nodes, note_width: float) -> tuple[float, float]:
    if isinstance(block, NoteBlock):
        return note_width, NODE_TITLE_HEIGHT + block.height
    extents = [_column_extent(column, nodes) for column in block.columns]
    width = sum(w for w, _ in extents) + NODE_GAP_X * (len(extents) - 1) + 2 * GROUP_PADDING
    height = max(h for _, h in extents) + GROUP_TITLE_HEIGHT + 2 * GROUP_PADDING
    return width, height


def _check_layout(layout: Layout) -> None:
    empty = [group.caption for group in layout.groups() if not group.columns or not all(group.columns)]
    if empty:
        raise LayoutError(f"groups with an empty column or no columns: {empty}")
    seen: dict[str, str] = {}
    for group in layout.groups():
        for node_id in (node_id for column in group.columns for node_id in column):
            if node_id in seen:
                raise LayoutError(f"node {node_id} is placed twice (groups {seen[node_id]!r} and {group.caption!r})")
            seen[node_id] = group.caption


def place(layout: Layout, sizes: Mapping[str, Sequence[float]], note_size: Sequence[float] | None,
          origin: tuple[float, float] = (0.0, 0.0), titles: Mapping[str, str] | None = None) -> Placement:
    """Positions for every node of ``layout`` (``sizes``: node id -> [w, h] of its body; ``titles``
    for the width of collapsed nodes). With ``note_size``, the note goes where a NoteBlock is, else
    it opens the first row."""
    _check_layout(layout)
    nodes = _Nodes(sizes, titles or {}, layout.collapsed)
    rows = [list(row) for row in layout.rows]
    if note_size is not None and not layout.has_note_block():
        rows[0].insert(0, NoteBlock(float(note_size[1])))
    note_width = float(max(note_size[0], NOTE_WIDTH)) if note_size is not None else NOTE_WIDTH
    positions: dict[str, tuple[float, float]] = {}
    frames: list[tuple[str, tuple[float, float, float, float], str | None]] = []
    note_box = None
    y = origin[1]
    for row in rows:
        stacks = [_stack(item) for item in row]
        extents = [[_block_extent(block, nodes, note_width) for block in stack] for stack in stacks]
        row_height = max(sum(h for _, h in stack) + GROUP_GAP * (len(stack) - 1) for stack in extents)
        x = origin[0]
        for stack, stack_extents in zip(stacks, extents):
            top = y
            for block, (width, height) in zip(stack, stack_extents):
                if isinstance(block, NoteBlock):
                    if note_size is None:
                        raise LayoutError("the layout places a note, but the workflow has none")
                    body = (row_height if len(stack) == 1 else height) - NODE_TITLE_HEIGHT
                    note_box = (x, top + NODE_TITLE_HEIGHT, width, body)
                else:
                    frames.append((block.caption, (x, top, width, height), block.color))
                    column_x = x + GROUP_PADDING
                    for column in block.columns:
                        node_top = top + GROUP_TITLE_HEIGHT + GROUP_PADDING
                        for node_id in column:
                            positions[node_id] = (column_x, node_top + NODE_TITLE_HEIGHT)
                            node_top += nodes.height(node_id) + NODE_GAP_Y
                        column_x += _column_extent(column, nodes)[0] + NODE_GAP_X
                top += height + GROUP_GAP
            x += max(width for width, _ in stack_extents) + GROUP_GAP
        y += row_height + ROW_GAP
    return Placement(positions, frames, note_box)


# ---------------------------------------------------------------------------------------------
# What the frontend does on open


def opening_zoom(bounds: Sequence[float], canvas: Sequence[float] = REFERENCE_CANVAS) -> float:
    """The scale ``fitView`` gives a graph of ``bounds`` ([x, y, w, h]) on a canvas of this size."""
    width, height = max(bounds[2], FIT_VIEW_MIN_EXTENT), max(bounds[3], FIT_VIEW_MIN_EXTENT)
    return FIT_VIEW_ZOOM * min(canvas[0] / width, canvas[1] / height)


def union(boxes: Iterable[Sequence[float]]) -> tuple[float, float, float, float]:
    boxes = list(boxes)
    x0, y0 = min(b[0] for b in boxes), min(b[1] for b in boxes)
    x1, y1 = max(b[0] + b[2] for b in boxes), max(b[1] + b[3] for b in boxes)
    return x0, y0, x1 - x0, y1 - y0


def overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def contains(outer: Sequence[float], inner: Sequence[float]) -> bool:
    return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


def overlapping_pairs(boxes: Mapping[str, Sequence[float]]) -> list[tuple[str, str]]:
    names = list(boxes)
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:] if overlaps(boxes[a], boxes[b])]


# ---------------------------------------------------------------------------------------------
# The rules, on a UI-format workflow (what workflows/*.json holds)


def _xy(value: Any) -> tuple[float, float]:
    """A saved ``pos`` / ``size``: a list, or the object form ``{"0": x, "1": y}`` some saves use."""
    if isinstance(value, Mapping):
        return float(value["0"]), float(value["1"])
    return float(value[0]), float(value[1])


def shown_title(node: Mapping) -> str:
    """The title the canvas draws: the saved ``title``, else the node type (a display name the
    builder always saves as a title for display nodes)."""
    return node.get("title") or node["type"]


def saved_node_boxes(workflow: Mapping) -> dict[str, tuple[float, float, float, float]]:
    """``"<id> <title>"`` -> the box each node covers, from the saved positions and sizes."""
    return {f"{node['id']} {shown_title(node)}": node_box(_xy(node["pos"]), _xy(node["size"]),
                                                          bool((node.get("flags") or {}).get("collapsed")),
                                                          shown_title(node))
            for node in workflow["nodes"]}


def _links_by_origin(workflow: Mapping) -> dict[tuple[int, int], list[int]]:
    """(origin node id, origin slot) -> target node ids."""
    out: dict[tuple[int, int], list[int]] = {}
    for link in workflow.get("links", []):
        out.setdefault((int(link[1]), int(link[2])), []).append(int(link[3]))
    return out


def geometry_problems(workflow: Mapping, canvas: Sequence[float] = REFERENCE_CANVAS,
                      node_boxes: Mapping[str, Sequence[float]] | None = None,
                      group_boxes: Mapping[str, Sequence[float]] | None = None) -> list[str]:
    """Rules 1 and 2 on the saved geometry, or on boxes measured in the page."""
    problems = []
    if node_boxes is None:
        node_boxes = saved_node_boxes(workflow)
    if group_boxes is None:
        group_boxes = {group["title"]: tuple(group["bounding"]) for group in workflow.get("groups", [])}
    bounds = union(list(node_boxes.values()) + list(group_boxes.values()))
    if bounds[2] > MAX_WIDTH:
        problems.append(f"{bounds[2]:.0f} canvas units wide, more than {MAX_WIDTH}: put groups in more rows")
    zoom = opening_zoom(union(node_boxes.values()), canvas)
    if zoom < MIN_OPENING_ZOOM:
        problems.append(
            f"opens at zoom {zoom:.2f} on a {canvas[0]:.0f}x{canvas[1]:.0f} canvas, below {MIN_OPENING_ZOOM} "
            f"(text is not drawn below {TEXT_ZOOM_THRESHOLD:.3f}): the graph is {bounds[2]:.0f}x{bounds[3]:.0f}; "
            "make it smaller")
    for a, b in overlapping_pairs(node_boxes):
        problems.append(f"nodes {a!r} and {b!r} overlap")
    for a, b in overlapping_pairs(group_boxes):
        problems.append(f"groups {a!r} and {b!r} overlap")
    notes = {f"{node['id']} {shown_title(node)}" for node in workflow["nodes"] if node["type"] in NOTE_TYPES}
    for name, box in node_boxes.items():
        if name in notes:
            continue
        inside = [caption for caption, frame in group_boxes.items() if contains(frame, box)]
        if len(inside) != 1:
            problems.append(f"node {name!r} lies inside {len(inside)} groups {inside}, not exactly one")
    return problems


def title_problems(workflow: Mapping) -> list[str]:
    """Rule 3, and every title drawn whole."""
    problems = []
    counts: dict[str, int] = {}
    for node in workflow["nodes"]:
        title = shown_title(node)
        counts[title] = counts.get(title, 0) + 1
        if (node.get("flags") or {}).get("collapsed"):
            if len(title) > COLLAPSED_TITLE_MAX_CHARS:
                problems.append(f"collapsed node {node['id']} {title!r}: the frontend shows only its first "
                                f"{COLLAPSED_TITLE_MAX_CHARS} characters")
        elif node.get("title") and title_width(title) > _xy(node["size"])[0]:
            problems.append(f"node {node['id']} {title!r} is too narrow for its title "
                            f"({_xy(node['size'])[0]:.0f} < {title_width(title):.0f})")
        if node["type"] in DISPLAY_TYPES and not node.get("title"):
            problems.append(f"display node {node['id']} ({node['type']}) has no title: say what it shows")
    problems += [f"{count} nodes are titled {title!r}: give each its own title" for title, count in counts.items()
                 if count > 1]
    return problems


def shown_output_problems(workflow: Mapping) -> list[str]:
    """Rule 4."""
    problems = []
    nodes = {int(node["id"]): node for node in workflow["nodes"]}
    targets = _links_by_origin(workflow)
    for node in workflow["nodes"]:
        for slot, output in enumerate(node.get("outputs") or []):
            if output["name"] not in SHOWN_OUTPUTS.get(node["type"], ()):
                continue
            shown = [target for target in targets.get((int(node["id"]), slot), [])
                     if nodes[target]["type"] in DISPLAY_TYPES]
            if not shown:
                problems.append(f"the {output['name']} output of {shown_title(node)!r} is not wired to a display "
                                f"node ({', '.join(DISPLAY_TYPES)}): the user would not see it")
    return problems


BOLD = re.compile(r"\*\*(.+?)\*\*")


def note_problems(workflow: Mapping) -> list[str]:
    """Rule 5."""
    names = {shown_title(node) for node in workflow["nodes"]} | {group["title"] for group in workflow.get("groups", [])}
    problems = []
    for node in workflow["nodes"]:
        if node["type"] not in NOTE_TYPES:
            continue
        for phrase in BOLD.findall(" ".join(str(value) for value in node.get("widgets_values") or [])):
            if phrase not in names:
                problems.append(f"the note names **{phrase}**, which is no node title or group caption here")
    return problems


def needs_download(workflow: Mapping) -> bool:
    return any(node["type"] in MODEL_FILE_LOADERS for node in workflow["nodes"])


def card(workflow: Mapping) -> dict:
    """The pack's template-card metadata of a workflow (``extra.invedit.card``)."""
    return dict(((workflow.get("extra") or {}).get(INVEDIT_EXTRA) or {}).get("card") or {})


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9.]+", text.lower())


def card_problems(file_stem: str, workflow: Mapping) -> list[str]:
    """Rule 6: ``file_stem`` is the card's title."""
    problems = []
    if len(file_stem) > CARD_TITLE_MAX_CHARS:
        problems.append(f"card title {file_stem!r} has {len(file_stem)} characters, more than {CARD_TITLE_MAX_CHARS}")
    if FILE_NAME_FORBIDDEN.search(file_stem) or "_" in file_stem or " " not in file_stem:
        problems.append(f"card title {file_stem!r} must be words (spaces, no underscores or {FILE_NAME_FORBIDDEN.pattern})")
    prefixes = DOWNLOAD_PREFIXES if needs_download(workflow) else (NO_DOWNLOAD_PREFIX,)
    if not file_stem.startswith(prefixes):
        why = "it loads model files" if needs_download(workflow) else "it needs no model file"
        problems.append(f"card title {file_stem!r} must start with {' or '.join(map(repr, prefixes))} ({why})")
    nodes = {int(node["id"]): node for node in workflow["nodes"]}
    panels = card(workflow).get("thumbnail") or []
    if len(panels) < 2:
        problems.append("the card's thumbnail must show the source and at least one result (extra.invedit.card.thumbnail)")
    for display, score in panels:
        if nodes.get(display, {}).get("type") not in DISPLAY_TYPES:
            problems.append(f"thumbnail panel {display} is not a display node")
        if score is not None and nodes.get(score, {}).get("type") != "PreviewAny":
            problems.append(f"thumbnail score {score} is not a Preview Any")
    description = card(workflow).get("description", "")
    if not description or len(description) > CARD_DESCRIPTION_MAX_CHARS:
        problems.append(f"card description {description!r} must be one line of 1 to {CARD_DESCRIPTION_MAX_CHARS} characters")
    elif set(_words(description)) <= set(_words(file_stem)):
        problems.append(f"card description {description!r} only repeats the title {file_stem!r}")
    return problems


def workflow_problems(file_stem: str, workflow: Mapping) -> list[str]:
    """Every rule, on a saved UI workflow named ``file_stem`` (its file name without .json)."""
    return (geometry_problems(workflow) + title_problems(workflow) + shown_output_problems(workflow)
            + note_problems(workflow) + card_problems(file_stem, workflow))
