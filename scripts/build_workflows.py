"""Build InvEdit's example workflows (ComfyUI UI format) into workflows/ from scripts/workflow_specs.py.

    python scripts/build_workflows.py            # write workflows/<card title>.json for every example
    python scripts/build_workflows.py --check    # exit 1, listing the files that are out of date

Run it in the test venv (``source scripts/env.sh``): it boots ComfyUI headless, loads this pack
and reads the node definitions the frontend would get from ``GET /object_info``. A workflow that
breaks a rule of scripts/workflow_layout.py (readable at the zoom it opens with, no overlaps,
titled nodes, scores shown, a note naming only what is in the graph, a card that says what it
does) is not written: the error says what to change.

Each file is named after its card title, which ComfyUI's template browser shows (frontend 1.27.10
reads nothing else for a custom node's template); code names a workflow by its example id
(``workflow_file("testbed_null_text")``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_headless import REPO_ROOT, boot_comfyui, comfyui_path_from_env, load_pack  # noqa: E402

WORKFLOWS_DIR = REPO_ROOT / "workflows"


def render(workflow: dict) -> str:
    """The file text of a workflow: indented JSON, keys in the frontend's order, a final newline."""
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def built_workflows() -> dict[str, tuple[str, str]]:
    """Every example, built and checked: example id -> (file name, text). ComfyUI booted, the pack loaded."""
    import workflow_specs
    from workflow_format import node_definitions

    definitions = node_definitions()
    built = {}
    for name in workflow_specs.EXAMPLES:
        stem, workflow = workflow_specs.checked_ui(name, definitions)
        built[name] = (f"{stem}.json", render(workflow))
    files = [file for file, _ in built.values()]
    if len(set(files)) != len(files):
        raise ValueError(f"two examples have the same card title: {sorted(files)}")
    return built


def workflow_file(name: str, directory: Path = WORKFLOWS_DIR) -> Path:
    """The shipped file of example ``name`` (ComfyUI booted, the pack loaded)."""
    import workflow_specs

    return directory / f"{workflow_specs.EXAMPLES[name]().card_title}.json"


def _differs(path: Path, text: str) -> bool:
    return not path.is_file() or path.read_text(encoding="utf-8") != text


def _orphans(directory: Path, built: dict[str, tuple[str, str]]) -> list[str]:
    names = {file for file, _ in built.values()}
    return [f"{path.name} (no example builds it)" for path in sorted(directory.glob("*.json")) if path.name not in names]


def stale_workflows(directory: Path = WORKFLOWS_DIR) -> list[str]:
    """Files in ``directory`` that differ from their build, are missing, or have no example."""
    built = built_workflows()
    stale = sorted(file for file, text in built.values() if _differs(directory / file, text))
    return stale + _orphans(directory, built)


def write_workflows(directory: Path = WORKFLOWS_DIR) -> tuple[list[str], list[str]]:
    """Write every example to ``directory``; return the files that changed and the orphans."""
    directory.mkdir(parents=True, exist_ok=True)
    built = built_workflows()
    changed = [file for file, text in built.values() if _differs(directory / file, text)]
    for file, text in built.values():
        if file in changed:
            (directory / file).write_text(text, encoding="utf-8")
    return changed, _orphans(directory, built)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the files are up to date")
    parser.add_argument("--out", type=Path, default=WORKFLOWS_DIR, help="the workflows folder")
    args = parser.parse_args(argv)

    base_dir = Path(tempfile.mkdtemp(prefix="invedit-workflows-"))
    try:
        nodes = boot_comfyui(comfyui_path_from_env(), base_dir)
        if not load_pack(nodes):
            print("ComfyUI could not load InvEdit; see the log above.", file=sys.stderr)
            return 2
        if args.check:
            stale = stale_workflows(args.out)
            if stale:
                print("Out of date (run python scripts/build_workflows.py):\n  " + "\n  ".join(stale), file=sys.stderr)
                return 1
            print(f"All example workflows in {args.out} are up to date.")
            return 0
        changed, orphans = write_workflows(args.out)
        print(f"Wrote {', '.join(changed)}." if changed else "Nothing to write: every workflow was up to date.")
        if orphans:
            print("No example builds these files; delete them if they are leftovers (and their .jpg "
                  "thumbnails):\n  " + "\n  ".join(orphans))
        return 0
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
