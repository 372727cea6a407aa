"""Make the pictures of InvEdit as ComfyUI's web page shows it, from a real browser session.

    source scripts/env.sh && bash scripts/browser-deps.sh   # once
    python scripts/make_thumbnails.py

It starts ComfyUI with the pack installed (tests/browser/comfy_browser.py), drives the page in
headless Chromium as a new user with ComfyUI's default settings in a 1920x1080 window
(tests/browser/comfy_page.mjs, the same session as tests/browser/test_browser.py), runs every
workflow that needs no download, and writes:

    workflows/<card title>.jpg      the template browser's thumbnail of every workflow: the source
                                    and the result its run showed (labelled, with the PSNR where the
                                    workflow scores it) and the card's one-line description; for a
                                    photo workflow, the photo it loads (512x512, < 100 kB)
    docs/images/workflows/<name>.jpg  every workflow's graph as the page drew it: after its run when
                                    it was run, else as it opened (<name>: the card title in lower
                                    case, words joined by '-')
    docs/images/nodes/<node id>.png every node of the pack alone on the canvas
    docs/images/node_library.png    the node library searched for "InvEdit", with a node preview
    docs/images/templates.jpg       the template browser on the pack's workflows
    docs/images/finished_run.jpg    the window after the null-text test-bed workflow ran

Screenshots at full size, the page's findings (result.json) and the server log are in --out.
When a workflow had no thumbnail yet, a second session is run so that templates.jpg shows all.
Pictures of workflows or nodes that no longer exist are deleted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tests" / "browser"))

from comfy_browser import (  # noqa: E402
    DOCS_IMAGES_DIR,
    WORKFLOWS_DIR,
    BrowserDepsMissing,
    browser_deps,
    run_browser_session,
    write_images,
)


def remove_stale(written: set[str]) -> None:
    """Delete the pictures this script makes that this run did not make (workflows or nodes gone)."""
    made_here = [*WORKFLOWS_DIR.glob("*.jpg"), *(DOCS_IMAGES_DIR / "workflows").glob("*.jpg"),
                 *(DOCS_IMAGES_DIR / "nodes").glob("*.png")]
    for path in made_here:
        if str(path) not in written:
            print(f"make_thumbnails: removing {path.relative_to(REPO_ROOT)} (its workflow or node is gone)",
                  file=sys.stderr)
            path.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "out" / "browser-images",
                        help="where the full-size screenshots and logs go (default: out/browser-images)")
    args = parser.parse_args()
    try:
        deps = browser_deps()
    except BrowserDepsMissing as error:
        print(f"make_thumbnails: {error}", file=sys.stderr)
        return 2
    for attempt in (1, 2):
        session = run_browser_session(args.out, deps)
        written = write_images(session, WORKFLOWS_DIR, DOCS_IMAGES_DIR)
        listed = session.result.get("steps", {}).get("template_cards") or {}
        unserved = [name for name, seen in (listed.get("thumbnails") or {}).items() if seen.get("status") != 200]
        if attempt == 1 and unserved:
            print(f"make_thumbnails: {len(unserved)} workflow(s) had no thumbnail when the template browser "
                  "was pictured; once more so that templates.jpg shows them", file=sys.stderr)
            continue
        break
    remove_stale(set(written))
    for path, size in sorted(written.items()):
        print(f"{size / 1024:7.1f} kB  {Path(path).relative_to(REPO_ROOT)}")
    print(f"{sum(written.values()) / 1024:7.1f} kB in {len(written)} files; session {session.seconds:.0f} s "
          f"(server start {session.server_start_seconds:.0f} s); screenshots and logs in {args.out}")
    errors = session.result.get("errors") or []
    for error in errors:
        print(f"make_thumbnails: the page step {error['step']} failed:\n{error['error']}", file=sys.stderr)
    if session.driver_returncode or not session.result:
        print(f"make_thumbnails: the page driver failed:\n{session.driver_log[-3000:]}", file=sys.stderr)
        return 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
