"""InvEdit in ComfyUI's own web page: a real ComfyUI server with the pack installed as a custom
node, its frontend driven in headless Chromium (Debian's chromium, playwright-core).

One session (tests/browser/comfy_browser.py starts the server, tests/browser/comfy_page.mjs drives
the page) checks that every node of the pack is in the node library with its tooltips, that every
workflow in workflows/ opens from ComfyUI's template browser with no missing node types and with
its thumbnail, and that the test-bed workflow queued with the Run button completes. Its
screenshots and the server log are kept in out/browser/ (scripts/make_thumbnails.py writes the
same pictures into workflows/ and docs/images/).

Needs `bash scripts/browser-deps.sh` once; without Chromium or playwright-core the tests fail and
say so, unless INVEDIT_SKIP_BROWSER=1.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_browser import (  # noqa: E402
    PACK_MODULE,
    REPO_ROOT,
    RUN_WORKFLOW,
    BrowserDepsMissing,
    BrowserSession,
    browser_deps,
    run_browser_session,
    write_images,
)

OUT_DIR = REPO_ROOT / "out" / "browser"
HELP_DIR = REPO_ROOT / "web" / "docs"


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
               **session.result.get("timings", {})}
    (OUT_DIR / "timings.json").write_text(json.dumps(timings, indent=1), encoding="utf-8")
    print(f"browser session: {timings}")
    return session


def steps(session: BrowserSession, name: str) -> dict:
    value = session.result.get("steps", {}).get(name)
    assert value is not None, f"the page step {name!r} did not finish{context(session)}"
    return value


def test_the_page_driver_ran_every_step(session):
    assert session.driver_returncode == 0, f"comfy_page.mjs failed{context(session)}"
    assert not session.result.get("errors"), f"steps raised in the page{context(session)}"


def test_every_node_of_the_pack_is_in_the_node_library(session):
    expected = sorted(page.stem for page in HELP_DIR.glob("*.md"))  # one help page per node
    assert session.pack_nodes == expected, (
        f"/object_info lists {session.pack_nodes} from custom_nodes.{PACK_MODULE}, the pack has {expected}"
        f"{context(session)}")
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


def test_every_workflow_opens_from_the_template_browser_without_missing_nodes(session):
    listed = steps(session, "templates_listed")
    assert sorted(listed["names"]) == sorted(session.workflows), (
        f"ComfyUI serves the templates {sorted(listed['names'])}, workflows/ has {sorted(session.workflows)}")
    opened = steps(session, "workflows")
    problems = {}
    for name, node_count in session.workflows.items():
        entry = opened.get(name, {"error": "not opened"})
        issues = []
        if entry.get("error"):
            issues.append(entry["error"].splitlines()[0])
        if entry.get("missing_nodes_dialog"):
            issues.append(f"missing-nodes dialog: {entry.get('missing_nodes_text', '')!r}")
        if entry.get("unregistered"):
            issues.append(f"unregistered node types {entry['unregistered']}")
        if entry.get("with_errors"):
            issues.append(f"nodes that failed to configure {entry['with_errors']}")
        if entry.get("node_count") != node_count:
            issues.append(f"{entry.get('node_count')} nodes on the canvas, the file has {node_count}")
        if issues:
            problems[name] = issues
    assert not problems, f"workflows that did not open cleanly: {json.dumps(problems, indent=1)}{context(session)}"
    control = steps(session, "missing_node_control")
    assert control["detected"], f"a graph with an unknown node type raised no missing-nodes dialog: {control}"


def test_every_workflow_shows_its_thumbnail_in_the_template_browser(session):
    listed = steps(session, "templates_listed")
    opened = steps(session, "workflows")
    missing = {
        name: listed["thumbnails"].get(name)
        for name in session.workflows
        if listed["thumbnails"].get(name, {}).get("status") != 200
        or not (listed["thumbnails"][name].get("type") or "").startswith("image/jpeg")
        or not opened.get(name, {}).get("thumbnail_shown")
    }
    assert not missing, (
        f"templates whose <name>.jpg ComfyUI does not serve or the card does not show: {missing}; "
        "make them with `python scripts/make_thumbnails.py`")


def test_a_workflow_queued_from_the_page_completes_on_the_test_bed(session):
    run = steps(session, "queue_run")
    assert run["workflow"] == RUN_WORKFLOW
    assert run["outcome"] == "execution_success", f"the run ended with {run['outcome']}: {run.get('error')}{context(session)}"
    status = session.history.get("status", {})
    assert status.get("completed") and status.get("status_str") == "success", status
    assert session.output_files, f"the run produced no image: {session.history.get('outputs')}"
    missing = [str(path) for path in session.output_files if not Path(path).is_file()]
    assert not missing, f"images in the history but not on disk: {missing}"
    images_seen_by_page = [image for output in run["executed"].values() for image in output.get("images", [])]
    assert len(images_seen_by_page) == len(session.output_files), "the page did not receive every output image"
