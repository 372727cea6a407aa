"""Start a real ComfyUI server with InvEdit installed, drive its web page in headless Chromium.

Used by tests/browser/test_browser.py and scripts/make_thumbnails.py:

    from comfy_browser import browser_deps, run_browser_session, write_images
    deps = browser_deps()                   # raises BrowserDepsMissing naming scripts/browser-deps.sh
    session = run_browser_session(out_dir)  # server + page; result of comfy_page.mjs
    write_images(session, workflows_dir=..., docs_dir=...)  # thumbnails and README pictures

The server is ComfyUI's own ``main.py`` from ``$COMFYUI_PATH`` (scripts/env.sh sets it), run with
the test venv's Python on the CPU, on a free loopback port, with a fresh base directory whose
``custom_nodes/invedit`` is a symlink to this repository (so ComfyUI loads the pack, serves its
``web/`` folder and its ``workflows/`` as templates exactly as for an installed pack). The test-bed
model ships inside the pack (models/), where the test-bed loader reads it. The user is new: no
settings file, so the page runs with ComfyUI's default settings, in a 1920x1080 window. The
server's output goes to ``<out>/server.log``; the server is stopped when the session ends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import workflow_layout  # noqa: E402  (pure Python: the rules every shipped workflow keeps)

REPO_ROOT = Path(__file__).resolve().parents[2]
BROWSER_TESTS_DIR = Path(__file__).resolve().parent
DRIVER = BROWSER_TESTS_DIR / "comfy_page.mjs"
WORKFLOWS_DIR = REPO_ROOT / "workflows"
DOCS_IMAGES_DIR = REPO_ROOT / "docs" / "images"
DEPS_SCRIPT = "scripts/browser-deps.sh"
PACK_MODULE = "invedit"  # the custom_nodes folder name: ComfyUI's template module name
PACK_PYTHON_MODULE = f"custom_nodes.{PACK_MODULE}"
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "invedit"
PLAYWRIGHT_DIR = CACHE_DIR / "browser"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
# Sockets whose meaning the type and the node description give; as tests/host/test_node_docs.py.
SELF_EXPLAINING_TYPES = ["MODEL", "IMAGE", "LATENT", "CONDITIONING", "MASK", "INVERSION", "INVEDIT_TESTBED_TEXT"]
TOOLTIP_NODE, TOOLTIP_WIDGET, TOOLTIP_INPUT = "InvEditDDIMInversion", "steps", "positive"
# The frontend reads custom-node template thumbnails as <workflow>.jpg (useTemplateWorkflows in
# comfyui-frontend-package 1.27.10: mediaSubtype "jpg", no index suffix for custom nodes).
THUMBNAIL_SUFFIX = ".jpg"
THUMBNAIL_SIZE = (512, 512)  # the page's card shows it in a 256 x 256 box
WORKFLOW_PICTURE_MAX_WIDTH = 1280
THUMBNAIL_MAX_BYTES = 100_000
NODE_PICTURE_MAX_WIDTH = 640  # nodes are drawn at zoom 1; only a very wide one is scaled down
SERVER_START_TIMEOUT_S = 180
RUN_TIMEOUT_S = 900  # one workflow run (null-text on the test-bed takes about 3 minutes on 2 CPU cores)
DRIVER_TIMEOUT_S = 3600
# The control run: an enlarger set above ImageScaleBy's maximum, which the server refuses.
CONTROL_BROKEN_SCALE = 12.0


class BrowserDepsMissing(RuntimeError):
    """Chromium, Node.js or playwright-core is not installed."""


@dataclass
class BrowserDeps:
    chromium: str
    node: str
    playwright_dir: Path


def browser_deps() -> BrowserDeps:
    """Chromium, node and playwright-core where scripts/browser-deps.sh puts them (or raise)."""
    chromium = os.environ.get("INVEDIT_CHROMIUM") or DEFAULT_CHROMIUM
    node = shutil.which("node")
    playwright = PLAYWRIGHT_DIR / "node_modules" / "playwright-core" / "package.json"
    missing = []
    if not (Path(chromium).is_file() and os.access(chromium, os.X_OK)):
        missing.append(f"Chromium ({chromium})")
    if not node:
        missing.append("Node.js (node on PATH)")
    if not playwright.is_file():
        missing.append(f"playwright-core ({playwright.parent})")
    if missing:
        raise BrowserDepsMissing(
            f"the browser test needs {', '.join(missing)}: run `bash {DEPS_SCRIPT}` once "
            "(apt-get chromium, npm playwright-core into the cache), or set INVEDIT_SKIP_BROWSER=1 to skip it"
        )
    return BrowserDeps(chromium, node, PLAYWRIGHT_DIR)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def comfyui_path() -> Path:
    value = os.environ.get("COMFYUI_PATH")
    if not value or not (Path(value) / "main.py").is_file():
        raise RuntimeError("COMFYUI_PATH is not set to a ComfyUI checkout: run through scripts/run-tests.sh "
                           "(or `source scripts/env.sh` first)")
    return Path(value).resolve()


class ComfyServer:
    """ComfyUI's main.py in a subprocess with a fresh base directory holding the pack."""

    def __init__(self, log_path: Path, python: str = sys.executable):
        self.log_path = log_path
        self.python = python
        self.base_dir = Path(tempfile.mkdtemp(prefix="invedit-browser-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.start_seconds = 0.0

    def _prepare_base_dir(self) -> None:
        custom_nodes = self.base_dir / "custom_nodes"
        custom_nodes.mkdir()
        (custom_nodes / PACK_MODULE).symlink_to(REPO_ROOT, target_is_directory=True)
        for name in ("models", "input", "output", "temp"):
            (self.base_dir / name).mkdir()
        # ComfyUI's example.png, which the photo workflows load, as in a fresh install.
        example = comfyui_path() / "input" / "example.png"
        if example.is_file():
            shutil.copy2(example, self.base_dir / "input" / "example.png")
        (self.base_dir / "user").mkdir()  # a new user: ComfyUI writes its default settings itself

    def start(self) -> None:
        self._prepare_base_dir()
        comfy = comfyui_path()
        command = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--database-url", "sqlite:///:memory:",
            "--disable-api-nodes", "--log-stdout",
        ]
        env = dict(os.environ)
        threads = env.get("INVEDIT_TEST_THREADS") or "1"
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, PYTHONUNBUFFERED="1")
        env.pop("PYTHONSAFEPATH", None)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w", encoding="utf-8")
        log.write(f"$ cd {comfy} && {' '.join(command)}\n")
        log.flush()
        t0 = time.monotonic()
        self.process = subprocess.Popen(command, cwd=comfy, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = t0 + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with code {self.process.returncode} while starting\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/api/system_stats", timeout=2) as response:
                    if response.status == 200:
                        self.start_seconds = time.monotonic() - t0
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {SERVER_START_TIMEOUT_S} s\n{self.log_tail()}")

    def get_json(self, route: str):
        with urllib.request.urlopen(f"{self.url}{route}", timeout=30) as response:
            return json.loads(response.read())

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return f"--- last {min(lines, len(text))} lines of {self.log_path} ---\n" + "\n".join(text[-lines:])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=15)
        shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "ComfyServer":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class BrowserSession:
    """What one run saw: the page's result.json plus the server's answers."""

    out_dir: Path
    server_log: Path
    object_info: dict
    pack_nodes: list[str]
    workflows: dict[str, dict]  # file stem -> the saved UI workflow
    result: dict
    run_outputs: dict[str, dict[str, list[Path]]] = field(default_factory=dict)  # stem -> node id -> image files
    server_start_seconds: float = 0.0
    seconds: float = 0.0
    driver_returncode: int = 0
    driver_log: str = ""

    def server_log_tail(self, lines: int = 60) -> str:
        try:
            text = self.server_log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return f"--- last {min(lines, len(text))} lines of {self.server_log} ---\n" + "\n".join(text[-lines:])


def workflow_files(workflows_dir: Path = WORKFLOWS_DIR) -> list[Path]:
    return sorted(workflows_dir.glob("*.json"))


def load_workflows(workflows_dir: Path = WORKFLOWS_DIR) -> dict[str, dict]:
    """Every shipped workflow by file stem (the card title)."""
    return {path.stem: json.loads(path.read_text(encoding="utf-8")) for path in workflow_files(workflows_dir)}


def runnable(workflow: dict) -> bool:
    """Whether the browser session runs it: it needs no model file the test machine lacks."""
    return not workflow_layout.needs_download(workflow)


def control_workflow(workflows: dict[str, dict]) -> dict:
    """The smallest runnable workflow with an enlarger (ImageScaleBy), for the broken-preview control."""
    candidates = [(len(workflow["nodes"]), stem) for stem, workflow in workflows.items()
                  if runnable(workflow) and any(node["type"] == "ImageScaleBy" for node in workflow["nodes"])]
    if not candidates:
        raise RuntimeError("no runnable workflow with an ImageScaleBy node for the broken-preview control")
    stem = min(candidates)[1]
    workflow = workflows[stem]
    enlarger = next(node["id"] for node in workflow["nodes"] if node["type"] == "ImageScaleBy")
    return {"stem": stem, "json": workflow, "broken_node": enlarger, "broken_scale": CONTROL_BROKEN_SCALE}


def _copy_run_outputs(server: ComfyServer, out_dir: Path, stem: str, executed: dict) -> dict[str, list[Path]]:
    """The images a run showed (from its ``executed`` messages), copied out of the server's folders."""
    copied: dict[str, list[Path]] = {}
    for node_id, output in executed.items():
        for index, image in enumerate(output.get("images") or []):
            source = server.base_dir / image.get("type", "output") / image.get("subfolder", "") / image["filename"]
            if source.is_file():
                target = out_dir / "run_outputs" / stem / f"{node_id}_{index}{source.suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
                copied.setdefault(str(node_id), []).append(target)
    return copied


def run_browser_session(out_dir: Path, deps: BrowserDeps | None = None,
                        timeout_s: int = DRIVER_TIMEOUT_S) -> BrowserSession:
    """Start ComfyUI, run comfy_page.mjs against it, gather what it saw; stop the server."""
    deps = deps or browser_deps()
    t0 = time.monotonic()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    workflows = load_workflows()
    server_log = out_dir / "server.log"
    with ComfyServer(server_log) as server:
        object_info = server.get_json("/api/object_info")
        pack_nodes = sorted(k for k, v in object_info.items() if v.get("python_module") == PACK_PYTHON_MODULE)
        job = {
            "url": server.url, "out": str(out_dir), "chromium": deps.chromium, "playwright": str(deps.playwright_dir),
            "pack_module": PACK_MODULE, "pack_nodes": pack_nodes, "self_explaining_types": SELF_EXPLAINING_TYPES,
            "workflows": {stem: {"nodes": len(workflow["nodes"]), "run": runnable(workflow)}
                          for stem, workflow in workflows.items()},
            "display_types": list(workflow_layout.DISPLAY_TYPES), "control_workflow": control_workflow(workflows),
            "tooltip_node": TOOLTIP_NODE, "tooltip_widget": TOOLTIP_WIDGET, "tooltip_input": TOOLTIP_INPUT,
            "run_timeout_ms": RUN_TIMEOUT_S * 1000,
        }
        driver = subprocess.run([deps.node, str(DRIVER), json.dumps(job)], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=timeout_s)
        (out_dir / "page.log").write_text(driver.stdout + driver.stderr, encoding="utf-8")
        result_file = out_dir / "result.json"
        result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else {}
        session = BrowserSession(out_dir, server_log, object_info, pack_nodes, workflows, result,
                                 server_start_seconds=server.start_seconds, driver_returncode=driver.returncode,
                                 driver_log=driver.stdout + driver.stderr)
        for stem, entry in (result.get("steps", {}).get("workflows") or {}).items():
            executed = (entry.get("run") or {}).get("executed") or {}
            session.run_outputs[stem] = _copy_run_outputs(server, out_dir, stem, executed)
    session.seconds = time.monotonic() - t0
    return session


# ---------------------------------------------------------------------------------------------
# Pictures: thumbnails beside the workflows, node pictures and screenshots for the README


THUMBNAIL_BACKGROUND, THUMBNAIL_TEXT, THUMBNAIL_MUTED = "#202020", "#eeeeee", "#9e9e9e"
THUMBNAIL_MARGIN = 16
THUMBNAIL_LABEL_SIZE = 24
THUMBNAIL_DESCRIPTION_SIZE = 26
THUMBNAIL_PLACEHOLDERS = {  # the result of a workflow the session cannot run, by the model its card title names
    "SD1.5": "needs an SD1.5 checkpoint",
    "Flux": "needs Flux dev's model files",
    "SD3.5": "needs SD3.5 Medium's model files",
}


def thumbnail_placeholder(stem: str) -> str:
    """What a thumbnail shows in place of a result the browser session cannot make: the model it needs (the card
    title's prefix, ``workflow_layout.DOWNLOAD_PREFIXES``)."""
    model = stem.split(" - ", 1)[0]
    return THUMBNAIL_PLACEHOLDERS.get(model, f"needs the {model} model files")
THUMBNAIL_ARROW_WIDTH = 28
THUMBNAIL_LABELS_HEIGHT = 2 * (THUMBNAIL_LABEL_SIZE + 4) + 8  # room for two lines of a panel's label
EXAMPLE_IMAGE = "example.png"  # what the photo workflows load; ComfyUI ships it in input/
FINISHED_RUN_TYPE = "InvEditNullTextInversion"  # the finished-run picture: the runnable workflow with this node
PSNR_TEXT = re.compile(r"PSNR ([0-9.]+|inf)")


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow older than 10.1
        return ImageFont.load_default()


def _arrow(draw, x: float, y: float, width: float) -> None:
    """A right-pointing arrow from (x, y), ``width`` long."""
    head = width / 3
    draw.line([(x, y), (x + width - head, y)], fill=THUMBNAIL_MUTED, width=3)
    draw.polygon([(x + width - head, y - head / 2), (x + width, y), (x + width - head, y + head / 2)],
                 fill=THUMBNAIL_MUTED)


def _wrapped(draw, text: str, font, width: float) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + ([line] if line else [])


@dataclass
class Panel:
    """One image of a thumbnail: what it is (a display node's title), its images (a batch is shown
    top to bottom), and a score to print under it."""

    label: str
    images: list[Path]
    score: str = ""


def _stacked(paths: list[Path]):
    """The images of a batch one above the other, 4 px apart."""
    from PIL import Image

    pictures = [Image.open(path).convert("RGB") for path in paths]
    gap = 4
    stacked = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures) + gap * (len(pictures) - 1)),
                        THUMBNAIL_BACKGROUND)
    top = 0
    for picture in pictures:
        stacked.paste(picture, (0, top))
        top += picture.height + gap
    return stacked


def _centred_text(draw, text: str, font, left: float, width: float, top: float, fill: str) -> None:
    draw.text((left + (width - draw.textlength(text, font=font)) / 2, top), text, fill=fill, font=font)


def _draw_panel(canvas, draw, panel: Panel, box: tuple[int, int, int, int], label_font, placeholder: str) -> None:
    """One panel in ``box`` (left, label top, width, image bottom): its label lines, its images
    fitted below them (nearest when enlarged: the test-bed's pixels stay sharp), its score under them;
    a framed placeholder when it has no images."""
    from PIL import Image

    left, top, width, image_bottom = box
    lines = _wrapped(draw, panel.label, label_font, width)
    for index, line in enumerate(lines):
        _centred_text(draw, line, label_font, left, width, top + index * (THUMBNAIL_LABEL_SIZE + 4), THUMBNAIL_TEXT)
    image_top = top + THUMBNAIL_LABELS_HEIGHT
    if panel.images:
        stacked = _stacked(panel.images)
        scale = min(width / stacked.width, (image_bottom - image_top) / stacked.height)
        resample = Image.NEAREST if scale >= 1 else Image.LANCZOS
        shown = stacked.resize((max(1, round(stacked.width * scale)), max(1, round(stacked.height * scale))), resample)
        shown_top = image_top + (image_bottom - image_top - shown.height) // 2
        canvas.paste(shown, (left + (width - shown.width) // 2, shown_top))
        below = shown_top + shown.height
    else:
        draw.rectangle([left + 8, image_top + 8, left + width - 8, image_bottom - 8], outline=THUMBNAIL_MUTED, width=2)
        middle = (image_top + image_bottom) / 2 - THUMBNAIL_LABEL_SIZE
        for index, line in enumerate(_wrapped(draw, placeholder, label_font, width - 32)):
            draw.text((left + 16, middle + index * (THUMBNAIL_LABEL_SIZE + 4)), line, fill=THUMBNAIL_MUTED, font=label_font)
        below = image_bottom
    if panel.score:
        _centred_text(draw, panel.score, label_font, left, width, below + 6, THUMBNAIL_TEXT)


def compose_thumbnail(panels: list[Panel], description: str, target: Path, placeholder: str) -> int:
    """A template-browser thumbnail: the panels side by side with arrows between them, each
    labelled (``placeholder`` framed in a panel without images), the card's one-line description below;
    a JPEG under THUMBNAIL_MAX_BYTES. Returns its size."""
    from PIL import Image, ImageDraw

    width, height = THUMBNAIL_SIZE
    canvas = Image.new("RGB", (width, height), THUMBNAIL_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    label_font, text_font = _font(THUMBNAIL_LABEL_SIZE), _font(THUMBNAIL_DESCRIPTION_SIZE)
    description_lines = _wrapped(draw, description, text_font, width - 2 * THUMBNAIL_MARGIN)
    description_top = height - THUMBNAIL_MARGIN - len(description_lines) * (THUMBNAIL_DESCRIPTION_SIZE + 6)
    panel_width = (width - 2 * THUMBNAIL_MARGIN - THUMBNAIL_ARROW_WIDTH * (len(panels) - 1)) // len(panels)
    score_room = THUMBNAIL_LABEL_SIZE + 8 if any(panel.score for panel in panels) else 0
    image_bottom = description_top - THUMBNAIL_MARGIN - score_room
    for index, panel in enumerate(panels):
        left = THUMBNAIL_MARGIN + index * (panel_width + THUMBNAIL_ARROW_WIDTH)
        _draw_panel(canvas, draw, panel, (left, THUMBNAIL_MARGIN, panel_width, image_bottom), label_font, placeholder)
        if index < len(panels) - 1:
            middle = (THUMBNAIL_MARGIN + THUMBNAIL_LABELS_HEIGHT + image_bottom) / 2
            _arrow(draw, left + panel_width + 4, middle, THUMBNAIL_ARROW_WIDTH - 8)
    for index, line in enumerate(description_lines):
        draw.text((THUMBNAIL_MARGIN, description_top + index * (THUMBNAIL_DESCRIPTION_SIZE + 6)), line,
                  fill=THUMBNAIL_TEXT, font=text_font)
    target.parent.mkdir(parents=True, exist_ok=True)
    for quality in (88, 80, 70, 60, 50):
        canvas.save(target, "JPEG", quality=quality, optimize=True, progressive=True)
        if target.stat().st_size <= THUMBNAIL_MAX_BYTES:
            break
    return target.stat().st_size


def thumbnail_panels(session: BrowserSession, stem: str) -> list[Panel]:
    """The panels of a workflow's thumbnail (its card metadata names the display nodes and the
    score nodes beside them): the run's images, or for a workflow not run, the photo it loads."""
    workflow = session.workflows[stem]
    titles = {str(node["id"]): node.get("title") or node["type"] for node in workflow["nodes"]}
    entry = (session.result.get("steps", {}).get("workflows") or {}).get(stem) or {}
    texts = {str(node["id"]): node.get("text") or "" for node in (entry.get("after_run") or {}).get("nodes", [])}
    outputs = session.run_outputs.get(stem, {})
    example = comfyui_path() / "input" / EXAMPLE_IMAGE
    panels = []
    for index, (display, score_node) in enumerate(workflow_layout.card(workflow).get("thumbnail", [])):
        images = outputs.get(str(display), [])
        if not images and index == 0 and not runnable(workflow) and example.is_file():
            images = [example]
        found = PSNR_TEXT.search(texts.get(str(score_node), "")) if score_node is not None else None
        panels.append(Panel(titles[str(display)], images, f"{float(found.group(1)):.1f} dB" if found else ""))
    return panels


def picture_name(stem: str) -> str:
    """A file name for a workflow's README picture: its card title, lower case, words joined by '-'."""
    return re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")


def save_png(source: Path, target: Path, max_width: int | None = None, colors: int | None = None) -> int:
    from PIL import Image

    with Image.open(source) as image:
        image = image.convert("RGB")
        if max_width and image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
        if colors:
            image = image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, "PNG", optimize=True)
    return target.stat().st_size


def save_jpeg(source: Path, target: Path, max_width: int, quality: int = 82) -> int:
    from PIL import Image

    with Image.open(source) as image:
        image = image.convert("RGB")
        if image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        image.save(target, "JPEG", quality=quality, optimize=True, progressive=True)
    return target.stat().st_size


def _clipped(source: Path, clip: dict | None, target: Path, max_width: int) -> int:
    """``source`` cut to ``clip`` (page pixels) as a JPEG at most ``max_width`` wide."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        if clip:
            image = image.crop((round(clip["x"]), round(clip["y"]), round(clip["x"] + clip["width"]),
                                round(clip["y"] + clip["height"])))
        cropped = target.with_suffix(".crop.png")
        image.save(cropped)
    try:
        return save_jpeg(cropped, target, max_width, quality=82)
    finally:
        cropped.unlink()


def write_images(session: BrowserSession, workflows_dir: Path, docs_dir: Path) -> dict[str, int]:
    """Thumbnails ``<workflow>.jpg`` into workflows_dir; node pictures and screenshots into docs_dir.

    Every picture comes from this session's page (ComfyUI's default settings): a workflow's README
    picture is its graph as it opened, or after its run when it was run; its thumbnail is composed
    from the images its run showed."""
    written: dict[str, int] = {}
    steps = session.result.get("steps", {})
    for stem, entry in (steps.get("workflows") or {}).items():
        if stem not in session.workflows:
            continue
        description = workflow_layout.card(session.workflows[stem]).get("description", "")
        target = workflows_dir / f"{stem}{THUMBNAIL_SUFFIX}"
        written[str(target)] = compose_thumbnail(thumbnail_panels(session, stem), description, target,
                                                 thumbnail_placeholder(stem))
        shot, clip = entry.get("after_run_screenshot"), entry.get("after_run_clip")
        if not shot:
            shot, clip = entry.get("opened_screenshot"), entry.get("opened_clip")
        if shot and Path(shot).is_file():
            target = docs_dir / "workflows" / f"{picture_name(stem)}.jpg"
            written[str(target)] = _clipped(Path(shot), clip, target, WORKFLOW_PICTURE_MAX_WIDTH)
        if entry.get("after_run_screenshot") and any(node["type"] == FINISHED_RUN_TYPE
                                                     for node in session.workflows[stem]["nodes"]):
            target = docs_dir / "finished_run.jpg"
            written[str(target)] = save_jpeg(Path(entry["after_run_screenshot"]), target, WORKFLOW_PICTURE_MAX_WIDTH)
    for node_id, shot in (steps.get("node_pictures") or {}).items():
        target = docs_dir / "nodes" / f"{node_id}.png"
        written[str(target)] = save_png(Path(shot["file"]), target, NODE_PICTURE_MAX_WIDTH, colors=128)
    raw = session.out_dir / "raw"
    if (raw / "node_library.png").is_file():
        target = docs_dir / "node_library.png"
        written[str(target)] = save_png(raw / "node_library.png", target, 1200, colors=128)
    if (raw / "templates.png").is_file():
        target = docs_dir / "templates.jpg"
        written[str(target)] = save_jpeg(raw / "templates.png", target, 1200)
    return written
