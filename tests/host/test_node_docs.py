"""Every node of the pack is documented where ComfyUI shows it: a help page and input tooltips."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
HELP_DIR = REPO_ROOT / "web" / "docs"
# Inputs whose meaning the socket type and node description already give (a MODEL or IMAGE in).
SELF_EXPLAINING_TYPES = {"MODEL", "IMAGE", "LATENT", "CONDITIONING", "MASK", "INVERSION", "INVEDIT_TESTBED_TEXT"}


def test_every_node_has_a_help_page(pack_nodes):
    missing = [node_id for node_id in pack_nodes if not (HELP_DIR / f"{node_id}.md").is_file()]
    assert not missing, f"no web/docs/<id>.md for {missing}"
    orphans = [page.stem for page in HELP_DIR.glob("*.md") if page.stem not in pack_nodes]
    assert not orphans, f"help pages for nodes that do not exist: {orphans}"


def test_comfyui_serves_the_help_pages(pack_loaded):
    import nodes

    assert any(Path(path).resolve() == (REPO_ROOT / "web").resolve() for path in nodes.EXTENSION_WEB_DIRS.values())


def test_every_widget_input_has_a_tooltip(pack_nodes):
    undocumented = []
    for node_id, node in pack_nodes.items():
        schema = node.GET_SCHEMA()
        assert schema.description, f"{node_id} has no description"
        for widget in schema.inputs:
            if widget.get_io_type() in SELF_EXPLAINING_TYPES:
                continue
            if not widget.tooltip:
                undocumented.append(f"{node_id}.{widget.id}")
    assert not undocumented, f"inputs without a tooltip: {undocumented}"
