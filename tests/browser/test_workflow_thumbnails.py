"""Every example workflow has the thumbnail ComfyUI's template browser shows, and every node of the
pack its picture for the README (no browser needed: this checks the files that
scripts/make_thumbnails.py writes)."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_browser import (  # noqa: E402
    DOCS_IMAGES_DIR,
    REPO_ROOT,
    THUMBNAIL_MAX_BYTES,
    THUMBNAIL_SIZE,
    THUMBNAIL_SUFFIX,
    WORKFLOWS_DIR,
    picture_name,
    workflow_files,
)

REMAKE = "run `python scripts/make_thumbnails.py` (after `source scripts/env.sh` and `bash scripts/browser-deps.sh`)"


def test_every_workflow_has_a_thumbnail_beside_it():
    workflows = workflow_files()
    assert workflows, f"no workflows in {WORKFLOWS_DIR}"
    missing = [path.name for path in workflows if not path.with_suffix(THUMBNAIL_SUFFIX).is_file()]
    assert not missing, f"workflows without their {THUMBNAIL_SUFFIX} thumbnail: {missing}; {REMAKE}"
    stems = {path.stem for path in workflows}
    orphans = [path.name for path in WORKFLOWS_DIR.glob(f"*{THUMBNAIL_SUFFIX}") if path.stem not in stems]
    assert not orphans, f"thumbnails of workflows that do not exist: {orphans}"


def test_thumbnails_are_small_jpegs():
    for path in workflow_files():
        thumbnail = path.with_suffix(THUMBNAIL_SUFFIX)
        if not thumbnail.is_file():
            continue  # reported by the test above
        with Image.open(thumbnail) as image:
            assert image.format == "JPEG", f"{thumbnail.name} is {image.format}, the template browser asks for a JPEG"
            assert image.size == THUMBNAIL_SIZE, (thumbnail.name, image.size)
        assert thumbnail.stat().st_size <= THUMBNAIL_MAX_BYTES, f"{thumbnail.name}: {thumbnail.stat().st_size} bytes"


def test_every_workflow_has_its_picture_for_the_readme():
    pictures = DOCS_IMAGES_DIR / "workflows"
    stems = {picture_name(path.stem) for path in workflow_files()}
    missing = sorted(stem for stem in stems if not (pictures / f"{stem}.jpg").is_file())
    assert not missing, f"workflows without docs/images/workflows/<picture name>.jpg: {missing}; {REMAKE}"
    orphans = sorted(path.name for path in pictures.glob("*.jpg") if path.stem not in stems)
    assert not orphans, f"pictures of workflows that do not exist: {orphans}"


def test_every_node_has_its_picture():
    nodes = sorted(page.stem for page in (REPO_ROOT / "web" / "docs").glob("*.md"))
    missing = [node for node in nodes if not (DOCS_IMAGES_DIR / "nodes" / f"{node}.png").is_file()]
    assert not missing, f"nodes without docs/images/nodes/<id>.png: {missing}; {REMAKE}"
    orphans = [path.name for path in (DOCS_IMAGES_DIR / "nodes").glob("*.png") if path.stem not in nodes]
    assert not orphans, f"pictures of nodes that do not exist: {orphans}"
