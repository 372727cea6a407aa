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
model ships inside the pack (models/), where the test-bed loader reads it. The server's output
goes to ``<out>/server.log``; the server is stopped when the session ends.
"""

from __future__ import annotations

import json
import os
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
RUN_WORKFLOW = "testbed_ddim_reconstruction"  # the cheapest test-bed workflow (about 4 s on a CPU)
RUN_FOCUS_TYPE = "InvEditDDIMInversion"  # the finished-run picture shows the graph from this node on
TOOLTIP_NODE, TOOLTIP_WIDGET, TOOLTIP_INPUT = "InvEditDDIMInversion", "steps", "positive"
# The frontend reads custom-node template thumbnails as <workflow>.jpg (useTemplateWorkflows in
# comfyui-frontend-package 1.27.10: mediaSubtype "jpg", no index suffix for custom nodes).
THUMBNAIL_SUFFIX = ".jpg"
THUMBNAIL_SIZE = (512, 384)  # at most; the page's card shows it in a 256 x 256 box
WORKFLOW_PICTURE_MAX_WIDTH = 1280
THUMBNAIL_MAX_BYTES = 100_000
NODE_PICTURE_MAX_WIDTH = 640  # nodes are drawn at zoom 1; only a very wide one is scaled down
SERVER_START_TIMEOUT_S = 180
# Settings of the fresh ComfyUI user: no first-run template dialog, and pictures without the
# minimap, canvas info, source badges or workflow tabs.
USER_SETTINGS = {
    "Comfy.TutorialCompleted": True,
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "Comfy.Workflow.ShowMissingNodesWarning": True,
    # The photo workflows name SD1.5, which the test-bed has not: no missing-models dialog (it
    # would also ask huggingface.co for the file size).
    "Comfy.Workflow.ShowMissingModelsWarning": False,
    "Comfy.Canvas.NavigationMode": "legacy",
    "Comfy.EnableTooltips": True,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,  # full detail at every zoom (the pictures are zoomed out)
    "Comfy.NodeBadge.NodeSourceBadgeMode": "None",
    "Comfy.Workflow.WorkflowTabsPosition": "Sidebar",
    "Comfy.Canvas.SelectionToolbox": False,
}


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
        user = self.base_dir / "user" / "default"
        user.mkdir(parents=True)
        (user / "comfy.settings.json").write_text(json.dumps(USER_SETTINGS, indent=1), encoding="utf-8")

    def start(self) -> None:
        self._prepare_base_dir()
        comfy = comfyui_path()
        command = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--base-directory", str(self.base_dir), "--database-url", "sqlite:///:memory:",
            "--disable-api-nodes", "--preview-method", "none", "--log-stdout",
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
    workflows: dict[str, int]
    result: dict
    history: dict = field(default_factory=dict)
    output_files: list[Path] = field(default_factory=list)
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


def run_browser_session(out_dir: Path, deps: BrowserDeps | None = None, timeout_s: int = 600) -> BrowserSession:
    """Start ComfyUI, run comfy_page.mjs against it, gather what it saw; stop the server."""
    deps = deps or browser_deps()
    t0 = time.monotonic()
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    workflows = {path.stem: len(json.loads(path.read_text(encoding="utf-8"))["nodes"]) for path in workflow_files()}
    server_log = out_dir / "server.log"
    with ComfyServer(server_log) as server:
        object_info = server.get_json("/api/object_info")
        pack_nodes = sorted(k for k, v in object_info.items() if v.get("python_module") == PACK_PYTHON_MODULE)
        job = {
            "url": server.url, "out": str(out_dir), "chromium": deps.chromium, "playwright": str(deps.playwright_dir),
            "pack_module": PACK_MODULE, "pack_nodes": pack_nodes, "self_explaining_types": SELF_EXPLAINING_TYPES,
            "workflows": workflows, "run_workflow": RUN_WORKFLOW, "run_focus_type": RUN_FOCUS_TYPE, "tooltip_node": TOOLTIP_NODE,
            "tooltip_widget": TOOLTIP_WIDGET, "tooltip_input": TOOLTIP_INPUT, "run_timeout_ms": 180000,
        }
        driver = subprocess.run([deps.node, str(DRIVER), json.dumps(job)], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=timeout_s)
        (out_dir / "page.log").write_text(driver.stdout + driver.stderr, encoding="utf-8")
        result_file = out_dir / "result.json"
        result = json.loads(result_file.read_text(encoding="utf-8")) if result_file.is_file() else {}
        session = BrowserSession(out_dir, server_log, object_info, pack_nodes, workflows, result,
                                 server_start_seconds=server.start_seconds, driver_returncode=driver.returncode,
                                 driver_log=driver.stdout + driver.stderr)
        prompt_id = (result.get("steps", {}).get("queue_run") or {}).get("prompt_id")
        if prompt_id:
            session.history = server.get_json(f"/api/history/{prompt_id}").get(prompt_id, {})
            for output in session.history.get("outputs", {}).values():
                for image in output.get("images", []):
                    folder = server.base_dir / image.get("type", "output") / image.get("subfolder", "")
                    path = folder / image["filename"]
                    if path.is_file():
                        kept = out_dir / "run_outputs" / image["filename"]
                        kept.parent.mkdir(exist_ok=True)
                        shutil.copy2(path, kept)
                        session.output_files.append(kept)
                    else:
                        session.output_files.append(path)  # reported missing by the test
    session.seconds = time.monotonic() - t0
    return session


# ---------------------------------------------------------------------------------------------
# Pictures: thumbnails beside the workflows, node pictures and screenshots for the README


def make_thumbnail(screenshot: Path, target: Path) -> int:
    """The graph screenshot (4:3) as a small JPEG under THUMBNAIL_MAX_BYTES; returns its size."""
    from PIL import Image

    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(screenshot) as image:
        image = image.convert("RGB")
        image.thumbnail(THUMBNAIL_SIZE, Image.LANCZOS)
        for quality in (85, 75, 65, 55, 45):
            image.save(target, "JPEG", quality=quality, optimize=True, progressive=True)
            if target.stat().st_size <= THUMBNAIL_MAX_BYTES:
                break
    return target.stat().st_size


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


def write_images(session: BrowserSession, workflows_dir: Path, docs_dir: Path) -> dict[str, int]:
    """Thumbnails ``<workflow>.jpg`` into workflows_dir; node pictures and screenshots into docs_dir."""
    written: dict[str, int] = {}
    steps = session.result.get("steps", {})
    for name, entry in (steps.get("workflows") or {}).items():
        shot = entry.get("thumbnail_screenshot")
        if shot and Path(shot).is_file():
            target = workflows_dir / f"{name}{THUMBNAIL_SUFFIX}"
            written[str(target)] = make_thumbnail(Path(shot), target)
        shot = entry.get("screenshot")
        if shot and Path(shot).is_file():
            target = docs_dir / "workflows" / f"{name}.jpg"
            written[str(target)] = save_jpeg(Path(shot), target, WORKFLOW_PICTURE_MAX_WIDTH, quality=80)
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
    if (raw / "finished_run.png").is_file():
        target = docs_dir / "finished_run.jpg"
        written[str(target)] = save_jpeg(raw / "finished_run.png", target, 1280)
    return written
