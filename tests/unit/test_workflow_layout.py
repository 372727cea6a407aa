"""The rules every shipped workflow keeps (scripts/workflow_layout.py), on the files in workflows/,
each beside a broken copy that must fail it; and the layout's placement, computed by hand.

Pure Python: the rules read the saved UI workflows only. tests/browser applies the same rules to
what ComfyUI's page draws."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

import workflow_layout as rules

WORKFLOWS_DIR = Path(__file__).resolve().parents[2] / "workflows"
SHIPPED = {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(WORKFLOWS_DIR.glob("*.json"))}


def test_workflows_are_shipped():
    assert len(SHIPPED) >= 2
    assert any(rules.needs_download(workflow) for workflow in SHIPPED.values())
    assert any(not rules.needs_download(workflow) for workflow in SHIPPED.values())


@pytest.mark.parametrize("stem", sorted(SHIPPED))
def test_shipped_workflow_keeps_every_rule(stem):
    assert rules.workflow_problems(stem, SHIPPED[stem]) == []


def a_workflow() -> tuple[str, dict]:
    """A copy of the first shipped workflow that scores a reconstruction."""
    stem = next(stem for stem, workflow in SHIPPED.items()
                if any(node["type"] == "InvEditReconstructionError" for node in workflow["nodes"]))
    return stem, copy.deepcopy(SHIPPED[stem])


def node_of(workflow: dict, node_type: str) -> dict:
    return next(node for node in workflow["nodes"] if node["type"] == node_type)


def test_a_node_moved_onto_another_overlaps():
    stem, workflow = a_workflow()
    first, second = [node for node in workflow["nodes"] if node["type"] not in rules.NOTE_TYPES
                     and not node.get("flags", {}).get("collapsed")][:2]
    second["pos"] = [first["pos"][0] + 10, first["pos"][1] + 10]
    problems = rules.geometry_problems(workflow)
    assert any("overlap" in problem for problem in problems), problems


def test_a_spread_out_workflow_opens_below_the_text_threshold():
    stem, workflow = a_workflow()
    for node in workflow["nodes"]:
        node["pos"] = [node["pos"][0] * 2, node["pos"][1] * 2]
    workflow["groups"] = []
    problems = rules.geometry_problems(workflow)
    assert any("opens at zoom" in problem for problem in problems), problems
    assert any("wide, more than" in problem for problem in problems), problems
    assert any("inside 0 groups" in problem for problem in problems), problems


def test_opening_zoom_is_what_fit_view_gives():
    """DragAndScale.fitToBounds: 0.75 * min(canvas / bounds), bounds at least 300."""
    assert rules.opening_zoom([0, 0, 1856, 1002]) == pytest.approx(0.75)
    assert rules.opening_zoom([5, 5, 3712, 100]) == pytest.approx(0.375)
    assert rules.opening_zoom([0, 0, 100, 100]) == pytest.approx(0.75 * 1002 / 300)
    assert rules.TEXT_ZOOM_THRESHOLD == pytest.approx(8 / 14)


def test_an_unwired_score_is_not_seen():
    stem, workflow = a_workflow()
    error = node_of(workflow, "InvEditReconstructionError")
    report_links = set(error["outputs"][0]["links"])
    workflow["links"] = [link for link in workflow["links"] if link[0] not in report_links]
    problems = rules.shown_output_problems(workflow)
    assert problems and "report output" in problems[0], problems


def test_untitled_repeated_or_cut_titles_are_found():
    stem, workflow = a_workflow()
    preview = node_of(workflow, "PreviewImage")
    del preview["title"]
    other = next(node for node in workflow["nodes"] if node.get("title") and node is not preview
                 and not node.get("flags", {}).get("collapsed"))
    collapsed = next(node for node in workflow["nodes"] if node.get("flags", {}).get("collapsed"))
    collapsed["title"] = "a collapsed title of more than twenty characters"
    other["title"] = "W" * 60
    problems = rules.title_problems(workflow)
    assert any("has no title" in problem for problem in problems), problems
    assert any("first 20 characters" in problem for problem in problems), problems
    assert any("too narrow for its title" in problem for problem in problems), problems
    twin = copy.deepcopy(SHIPPED[stem])
    titled = [node for node in twin["nodes"] if node.get("title")]
    titled[1]["title"] = titled[0]["title"]
    assert any("nodes are titled" in problem for problem in rules.title_problems(twin))


def test_a_note_naming_a_node_that_is_not_there_is_found():
    stem, workflow = a_workflow()
    note = node_of(workflow, "MarkdownNote")
    note["widgets_values"][0] += " Then **Load Inversion** reads it back."
    assert rules.note_problems(workflow) == [
        "the note names **Load Inversion**, which is no node title or group caption here"]


def test_card_titles_and_descriptions_must_say_what_a_workflow_is():
    stem, workflow = a_workflow()
    assert rules.card_problems(stem, workflow) == []
    assert any("must be words" in problem for problem in rules.card_problems(stem.replace(" ", "_"), workflow))
    assert any("characters, more than" in problem for problem in rules.card_problems(stem + " x" * 20, workflow))
    swapped = ("SD1.5 - " + stem.split(" - ", 1)[1]) if not rules.needs_download(workflow) else "Digits - x y"
    assert any("must start with" in problem for problem in rules.card_problems(swapped, workflow))
    workflow["extra"]["invedit"]["card"]["description"] = stem.lower()
    assert any("only repeats the title" in problem for problem in rules.card_problems(stem, workflow))
    workflow["extra"]["invedit"]["card"]["thumbnail"] = []
    assert any("thumbnail must show" in problem for problem in rules.card_problems(stem, workflow))


def test_place_puts_groups_in_rows_and_nodes_in_columns():
    """Two groups in a row (the second a stack of two), a second row; positions by hand."""
    layout = rules.Layout(rows=[
        [rules.Group("A", [["1", "2"], ["3"]]), [rules.Group("B", [["4"]]), rules.Group("C", [["5"]])]],
        [rules.Group("D", [["6"]])],
    ])
    sizes = {str(i): (100.0, 50.0) for i in range(1, 7)}
    placement = rules.place(layout, sizes, None)
    pad, title, gap_x, gap_y = rules.GROUP_PADDING, rules.NODE_TITLE_HEIGHT, rules.NODE_GAP_X, rules.NODE_GAP_Y
    top = rules.GROUP_TITLE_HEIGHT + pad + title  # the first node body in a group
    assert placement.positions["1"] == (pad, top)
    assert placement.positions["2"] == (pad, top + 50 + gap_y + title)
    assert placement.positions["3"] == (pad + 100 + gap_x, top)
    group_a = dict((caption, box) for caption, box, _ in placement.groups)["A"]
    assert group_a == (0, 0, 2 * pad + 200 + gap_x, rules.GROUP_TITLE_HEIGHT + 2 * pad + 2 * (title + 50) + gap_y)
    b_x = group_a[2] + rules.GROUP_GAP
    assert placement.positions["4"] == (b_x + pad, top)
    group_b = dict((caption, box) for caption, box, _ in placement.groups)["B"]
    assert placement.positions["5"] == (b_x + pad, group_b[3] + rules.GROUP_GAP + top)
    row_height = max(group_a[3], 2 * group_b[3] + rules.GROUP_GAP)
    assert placement.positions["6"] == (pad, row_height + rules.ROW_GAP + top)
    with pytest.raises(rules.LayoutError, match="placed twice"):
        rules.place(rules.Layout(rows=[[rules.Group("A", [["1"]]), rules.Group("B", [["1"]])]]), sizes, None)
