"""Build InvEdit's example workflows (ComfyUI UI format) into workflows/ from scripts/workflow_specs.py.

    python scripts/build_workflows.py            # write workflows/<name>.json for every example
    python scripts/build_workflows.py --check    # exit 1, listing the files that are out of date

Run it in the test venv (``source scripts/env.sh``): it boots ComfyUI headless, loads this pack
and reads the node definitions the frontend would get from ``GET /object_info``.
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


def built_workflows() -> dict[str, str]:
    """Every example, built: file name -> text (ComfyUI booted, the pack loaded)."""
    import workflow_specs
    from workflow_format import node_definitions

    definitions = node_definitions()
    return {f"{name}.json": render(workflow_specs.build_example(name, definitions).ui(definitions))
            for name in workflow_specs.EXAMPLES}


def _differs(path: Path, text: str) -> bool:
    return not path.is_file() or path.read_text(encoding="utf-8") != text


def _orphans(directory: Path, built: dict[str, str]) -> list[str]:
    return [f"{path.name} (no example builds it)"
            for path in sorted(directory.glob("*.json")) if path.name not in built]


def stale_workflows(directory: Path = WORKFLOWS_DIR) -> list[str]:
    """Files in ``directory`` that differ from their build, are missing, or have no example."""
    built = built_workflows()
    stale = sorted(name for name, text in built.items() if _differs(directory / name, text))
    return stale + _orphans(directory, built)


def write_workflows(directory: Path = WORKFLOWS_DIR) -> tuple[list[str], list[str]]:
    """Write every example to ``directory``; return the files that changed and the orphans."""
    directory.mkdir(parents=True, exist_ok=True)
    built = built_workflows()
    changed = [name for name, text in built.items() if _differs(directory / name, text)]
    for name in changed:
        (directory / name).write_text(built[name], encoding="utf-8")
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
            print("No example builds these files; delete them if they are leftovers:\n  " + "\n  ".join(orphans))
        return 0
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
