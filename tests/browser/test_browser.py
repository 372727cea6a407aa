"""InvEdit in ComfyUI's own web page, as a new user sees it: a real ComfyUI server with the pack
installed as a custom node, its frontend (1.27.10) in headless Chromium (Debian's chromium,
playwright-core), a fresh user (ComfyUI's default settings), a 1920x1080 window.

One session (tests/browser/comfy_browser.py starts the server, tests/browser/comfy_page.mjs drives
the page) checks the node library and tooltips, reads every card of the pack in the template
browser, opens every workflow in workflows/ from it, measures what the page draws (zoom, text
drawn or not, every node's and group's box, what widgets fed by links show) and runs every
workflow that needs no download with the Run button, then reads every display node. Negative
controls show that each check can fail: an unknown node type, a workflow spread out (text not
drawn), a preview the server refuses to fill.

The rules themselves live in scripts/workflow_layout.py (what the workflow builder enforces);
this test applies them to what the page drew, so any workflow in workflows/ is checked, whoever
built it. Its screenshots and the server log are kept in out/browser/ (scripts/make_thumbnails.py
writes the same pictures into workflows/ and docs/images/).

Needs `bash scripts/browser-deps.sh` once; without Chromium or playwright-core the tests fail and
say so, unless INVEDIT_SKIP_BROWSER=1.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_browser import (  # noqa: E402
    REPO_ROOT,
    BrowserDepsMissing,
    BrowserSession,
    browser_deps,
    runnable,
    run_browser_session,
    write_images,
)
from comfy_browser import workflow_layout as rules  # noqa: E402

OUT_DIR = REPO_ROOT / "out" / "browser"
HELP_DIR = REPO_ROOT / "web" / "docs"
# Settings the page writes for a new user by itself; anything else would mean the session is not
# running with ComfyUI's defaults.
SETTINGS_THE_PAGE_WRITES = {"Comfy.InstalledVersion", "Comfy.TutorialCompleted"}
SCORE_TEXT = re.compile(r"PSNR ([0-9.]+|inf) dB")


def context(session: BrowserSession) -> str:
    """What to read when a check fails: the page's errors, its log, the server log, the pictures."""
    result = session.result
    errors = "\n".join(f"  step {e['step']}: {e['error']}" for e in result.get("errors", [])) or "  none"
    page_errors = [e for e in result.get("console_errors", []) if "pageerror" in e][:5]
    return (
        f"\n--- steps that raised ---\n{errors}"
        f"\n--- page errors (first 5) ---\n" + ("\n".join(page_errors) or "none")
        + f"\n--- page driver log (exit {session.driver_returncode}) ---\n{session.driver_log[-3000:]}"
        f"\n{session.server_log_tail()}"
        f"\nscreenshots: {session.out_dir / 'raw'}; server log: {session.server_log}"
    )


@pytest.fixture(scope="module")
def session() -> BrowserSession:
    if os.environ.get("INVEDIT_SKIP_BROWSER") == "1":
        pytest.skip("INVEDIT_SKIP_BROWSER=1")
    try:
        deps = browser_deps()
    except BrowserDepsMissing as error:
        pytest.fail(str(error), pytrace=False)
    session = run_browser_session(OUT_DIR, deps)
    write_images(session, OUT_DIR / "images" / "workflows", OUT_DIR / "images" / "docs")
    timings = {"session_s": round(session.seconds, 1), "server_start_s": round(session.server_start_seconds, 1),
               **session.result.get("timings", {}),
               "runs_s": {stem: (entry.get("run") or {}).get("seconds")
                          for stem, entry in (session.result.get("steps", {}).get("workflows") or {}).items()}}
    (OUT_DIR / "timings.json").write_text(json.dumps(timings, indent=1), encoding="utf-8")
    print(f"browser session: {timings}")
    return session


def steps(session: BrowserSession, name: str) -> dict:
    value = session.result.get("steps", {}).get(name)
    assert value is not None, f"the page step {name!r} did not finish{context(session)}"
    return value


def opened(session: BrowserSession) -> dict[str, dict]:
    """Per workflow (file stem): what the page saw when it opened it, and after its run."""
    seen = steps(session, "workflows")
    missing = sorted(set(session.workflows) - set(seen))
    assert not missing, f"workflows the page did not open: {missing}{context(session)}"
    failed = {stem: entry["error"].splitlines()[0] for stem, entry in seen.items() if entry.get("error")}
    assert not failed, f"workflows the page could not open or run: {failed}{context(session)}"
    return seen


def page_boxes(state: dict) -> tuple[dict, dict]:
    """Node and group boxes as the page measured them, keyed as workflow_layout keys them."""
    nodes = {f"{node['id']} {node['title']}": node["box"] for node in state["nodes"]}
    groups = {group["title"]: group["box"] for group in state["groups"]}
    return nodes, groups


# ---------------------------------------------------------------------------------------------
# The page, the node library, tooltips


def test_the_page_driver_ran_every_step(session):
    assert session.driver_returncode == 0, f"comfy_page.mjs failed{context(session)}"
    assert not session.result.get("errors"), f"steps raised in the page{context(session)}"


def test_the_page_runs_with_comfyuis_default_settings(session):
    page = steps(session, "open_page")
    assert set(page["settings"]) <= SETTINGS_THE_PAGE_WRITES, page["settings"]
    assert page["first_run_template_dialog"], "a new user is greeted by the template browser"
    assert page["sidebar_templates_button"] == 1, "the side bar has its Templates button (the README's menu path)"
    state = next(iter(opened(session).values()))["opened"]
    assert state["min_font_size_for_lod"] == rules.DEFAULT_MIN_FONT_SIZE_FOR_LOD
    assert tuple(round(v) for v in state["canvas"]) == rules.REFERENCE_CANVAS  # a 1920x1080 window, default UI


def test_every_node_of_the_pack_is_in_the_node_library(session):
    expected = sorted(page.stem for page in HELP_DIR.glob("*.md"))  # one help page per node
    assert session.pack_nodes == expected, (
        f"/object_info lists {session.pack_nodes} from the pack, the pack has {expected}{context(session)}")
    definitions = steps(session, "node_definitions")
    library = steps(session, "node_library")
    unregistered = [node for node in expected if not definitions[node]["registered"]]
    assert not unregistered, f"not registered in the page (LiteGraph): {unregistered}{context(session)}"
    not_found = [node for node in expected if not library["found"].get(node)]
    assert not not_found, f"not found by the node library search: {not_found}{context(session)}"
    outside = [node for node in expected if not definitions[node]["category"].startswith("InvEdit")]
    assert not outside, f"not under the InvEdit category: {outside}"
    names = [definitions[node]["display_name"] for node in expected]
    assert set(names) <= set(library["leaves_for_InvEdit"]), "searching 'InvEdit' does not list every node"


def test_tooltips_reach_the_page_and_show_on_hover(session):
    definitions = steps(session, "node_definitions")
    undocumented = [
        f"{node}.{name}"
        for node, definition in definitions.items()
        for name, spec in definition["inputs"].items()
        if not spec["self_explaining"] and not spec["tooltip"]
    ]
    assert not undocumented, f"inputs without a tooltip in the page's node definitions: {undocumented}"
    no_description = [node for node, definition in definitions.items() if not definition["description"]]
    assert not no_description, f"nodes without a description: {no_description}"

    hover = steps(session, "canvas_tooltips")
    node_inputs = definitions[hover["node"]]["inputs"]
    for kind in ("widget", "input"):
        seen = hover[kind]
        assert seen["shown"], f"hovering the {kind} {seen['name']} of {hover['node']} showed no tooltip{context(session)}"
        assert seen["text"] == node_inputs[seen["name"]]["tooltip"], (seen, node_inputs[seen["name"]])

    library = steps(session, "node_library")
    assert library["preview_shown"], "hovering a node in the library showed no preview"
    description = definitions[hover["node"]]["description"]
    assert description.split(".")[0] in library["preview_text"].replace("\n", " ")


# ---------------------------------------------------------------------------------------------
# The template browser


def test_every_workflow_has_a_readable_card_with_its_thumbnail(session):
    """The card's title is the file name (frontend 1.27.10 reads no other metadata for a custom
    node's template): it must be words, whole (not cut by the card's two-line clamp); the card's
    second line is the same name with '-' and '_' as spaces, so the one-line description is drawn
    on the thumbnail (scripts/workflow_layout.py rule 6 checks it says more than the title)."""
    cards = steps(session, "template_cards")
    assert sorted(cards["names"]) == sorted(session.workflows), (
        f"ComfyUI serves the templates {sorted(cards['names'])}, workflows/ has {sorted(session.workflows)}")
    by_name = {card["testid"].removeprefix("template-workflow-"): card for card in cards["cards"]}
    problems = {}
    for stem in session.workflows:
        card = by_name.get(stem)
        served = cards["thumbnails"].get(stem, {})
        issues = []
        if card is None:
            issues.append("no card in the template browser")
        else:
            if card["title"] != stem:
                issues.append(f"title {card['title']!r}")
            if card["title_clamped"] or card["title_lines"] > 2:
                issues.append(f"title cut by the card ({card['title_lines']} lines)")
            if card["description"] == card["title"]:
                issues.append("description equal to the title")
            if not (card["thumbnail"] or {}).get("loaded"):
                issues.append("thumbnail not shown")
        if served.get("status") != 200 or not (served.get("type") or "").startswith("image/jpeg"):
            issues.append(f"thumbnail not served: {served}")
        issues += rules.card_problems(stem, session.workflows[stem])
        if issues:
            problems[stem] = issues
    assert not problems, (f"unreadable template cards: {json.dumps(problems, indent=1)}; make thumbnails with "
                          f"`python scripts/make_thumbnails.py`{context(session)}")
    order = [card["title"] for card in cards["cards"]]
    print("\ncard order in the template browser (ComfyUI lists a pack's files in directory order):\n  "
          + "\n  ".join(order))


def test_no_download_workflows_are_told_apart_from_photo_workflows(session):
    """Cards start with the no-download prefix exactly when the workflow loads no model file; the
    page asks for the missing checkpoint (with its download link) exactly for the others."""
    seen = opened(session)
    for stem, workflow in session.workflows.items():
        assert stem.startswith(rules.NO_DOWNLOAD_PREFIX) == runnable(workflow), stem
        assert seen[stem]["missing_models_dialog"] == (not runnable(workflow)), (stem, seen[stem]["dialogs"])


# ---------------------------------------------------------------------------------------------
# Every workflow as it opens


def test_every_workflow_opens_from_the_template_browser_without_missing_nodes(session):
    problems = {}
    for stem, entry in opened(session).items():
        issues = []
        if entry.get("missing_nodes_dialog"):
            issues.append(f"missing-nodes dialog: {entry.get('missing_nodes_text', '')!r}")
        if entry.get("unregistered"):
            issues.append(f"unregistered node types {entry['unregistered']}")
        if entry.get("with_errors"):
            issues.append(f"nodes that failed to configure {entry['with_errors']}")
        if entry.get("node_count") != len(session.workflows[stem]["nodes"]):
            issues.append(f"{entry.get('node_count')} nodes on the canvas, the file has {len(session.workflows[stem]['nodes'])}")
        if issues:
            problems[stem] = issues
    assert not problems, f"workflows that did not open cleanly: {json.dumps(problems, indent=1)}{context(session)}"
    control = steps(session, "missing_node_control")
    assert control["detected"], f"a graph with an unknown node type raised no missing-nodes dialog: {control}"


def test_every_workflow_opens_at_a_zoom_where_text_is_drawn(session):
    """The frontend fits a workflow on open; below 8 px / 14 px of zoom it draws no text at all."""
    zooms = {stem: entry["opened"]["scale"] for stem, entry in opened(session).items()}
    print("\nopening zoom: " + ", ".join(f"{stem}: {zoom:.2f}" for stem, zoom in sorted(zooms.items())))
    unreadable = {stem: round(entry["opened"]["scale"], 3) for stem, entry in opened(session).items()
                  if entry["opened"]["low_quality"] or entry["opened"]["scale"] < rules.TEXT_ZOOM_THRESHOLD}
    assert not unreadable, f"workflows that open with their text not drawn: {unreadable}{context(session)}"
    control = steps(session, "layout_controls")["spread"]
    assert control["low_quality"] and control["scale"] < rules.TEXT_ZOOM_THRESHOLD, (
        f"a workflow spread out three times opened with text drawn: {control}")


def test_no_two_nodes_overlap_and_every_node_sits_in_its_group(session):
    """With the sizes the page gave the nodes, on open and (for the runnable ones) after the run,
    when previews have filled."""
    problems = {}
    for stem, entry in opened(session).items():
        for moment in ("opened", "after_run"):
            if moment not in entry:
                continue
            nodes, groups = page_boxes(entry[moment])
            found = rules.geometry_problems(session.workflows[stem], entry[moment]["canvas"], nodes, groups)
            if found:
                problems[f"{stem} ({moment})"] = found
    assert not problems, f"layout problems on the page: {json.dumps(problems, indent=1)}{context(session)}"


def test_every_workflow_keeps_the_rules_of_the_builder(session):
    """Titles, scores wired to display nodes, notes that name only what is in the graph, cards:
    on the shipped files, whoever built them (scripts/workflow_layout.py)."""
    problems = {stem: rules.workflow_problems(stem, workflow) for stem, workflow in session.workflows.items()}
    problems = {stem: found for stem, found in problems.items() if found}
    assert not problems, json.dumps(problems, indent=1)


def test_every_title_is_drawn_whole(session):
    """The frontend cuts a title to the node's width (less two title heights) and a collapsed
    node's to 20 characters: measured with the page's own font."""
    cut = [f"{stem}: {node['title']!r}" for stem, entry in opened(session).items()
           for node in entry["opened"]["nodes"] if not node["title_drawn_whole"]]
    assert not cut, "titles the page cuts:\n" + "\n".join(cut)


def test_no_widget_shows_a_stale_value(session):
    """A widget that a link feeds is drawn greyed with its own value: that value is what the link
    gives (a Primitive's constant) or nothing, never an unrelated default."""
    stale = []
    for stem, entry in opened(session).items():
        for node in entry["opened"]["nodes"]:
            for widget in node.get("linked_widgets", []):
                expected = widget["origin_value"] if widget["origin"] and widget["origin"].startswith("Primitive") else ""
                if widget["value"] not in (expected, None):
                    stale.append(f"{stem}: {node['title']}.{widget['name']} shows {widget['value']!r}, "
                                 f"its link gives {expected or 'another value'!r}")
    assert not stale, "\n".join(stale)


# ---------------------------------------------------------------------------------------------
# Every workflow that needs no download, run with the Run button


def runs(session: BrowserSession) -> dict[str, dict]:
    return {stem: entry for stem, entry in opened(session).items() if runnable(session.workflows[stem])}


def test_every_runnable_workflow_runs_and_fills_every_display_node(session):
    assert runs(session), "no workflow was run"
    problems = {}
    for stem, entry in runs(session).items():
        run = entry.get("run") or {}
        if run.get("outcome") != "execution_success":
            problems[stem] = f"the run ended with {run.get('outcome')}: {run.get('error')}"
            continue
        empty = [title for title, filled in entry["display_content"].items() if not filled]
        if empty:
            problems[stem] = f"display nodes empty after the run: {empty}"
    assert not problems, f"{json.dumps(problems, indent=1)}{context(session)}"
    control = steps(session, "layout_controls")["broken"]
    assert control["outcome"] == "execution_success" and not all(control["display_content"].values()), (
        f"a preview the server refused to fill was not seen empty: {control}")


def test_every_score_is_on_the_canvas_after_the_run(session):
    """Each Reconstruction Error's report shows its PSNR in the Preview Any it is wired to."""
    missing = {}
    for stem, entry in runs(session).items():
        workflow = session.workflows[stem]
        links = {link[0]: link for link in workflow["links"]}
        score_nodes = {node["id"] for node in workflow["nodes"] if node["type"] == "InvEditReconstructionError"}
        shown = [node["id"] for node in workflow["nodes"] if node["type"] == "PreviewAny"
                 and any(links[slot["link"]][1] in score_nodes for slot in node["inputs"] if slot.get("link"))]
        texts = {node["id"]: node.get("text") or "" for node in entry["after_run"]["nodes"]}
        without = [node_id for node_id in shown if not SCORE_TEXT.search(texts.get(node_id, ""))]
        if without or len(shown) != len(score_nodes):
            missing[stem] = {"previews without a PSNR": without, "scores": len(score_nodes), "shown": len(shown)}
    assert not missing, json.dumps(missing, indent=1)


def test_null_text_workflow_shows_source_plain_ddim_and_null_text_side_by_side_with_psnr(session):
    stem = next(stem for stem, workflow in session.workflows.items() if runnable(workflow)
                and any(node["type"] == "InvEditNullTextInversion" for node in workflow["nodes"]))
    state = runs(session)[stem]["after_run"]
    by_title = {node["title"]: node for node in state["nodes"]}
    shown = [by_title[title] for title in ("Source", "Plain DDIM @ cfg 7.5", "Null-text @ cfg 7.5")]
    assert all(node["images"] for node in shown), [node["title"] for node in shown if not node["images"]]
    tops = {round(node["box"][1]) for node in shown}
    lefts = [node["box"][0] for node in shown]
    assert len(tops) == 1 and lefts == sorted(lefts), "source, plain DDIM and null-text are not side by side"
    psnr = {what: float(SCORE_TEXT.search(by_title[f"PSNR {what}"]["text"]).group(1)) for what in ("plain DDIM", "null-text")}
    for what, node in zip(psnr, shown[1:]):
        below = by_title[f"PSNR {what}"]["box"]
        assert abs(below[0] - node["box"][0]) < 1 and below[1] > node["box"][1], f"PSNR {what} is not under its image"
    print(f"\n[{stem}] PSNR at cfg 7.5 on the canvas: {psnr}")
    assert psnr["null-text"] > psnr["plain DDIM"], psnr
