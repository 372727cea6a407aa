"""The pack as the Comfy Registry, ComfyUI-Manager and pip see it.

Three things are checked against the rules their tools apply:

* pyproject.toml: the fields ``comfy node publish`` sends and the registry validates
  (https://docs.comfy.org/registry/specifications; Comfy-Org/registry-backend ``mapper/node.go``
  and ``mapper/publisher.go``; comfy-cli ``registry/config_parser.py``), and ComfyUI's own reading of
  them (``comfy_config.config_parser``, the copy ComfyUI's loader uses).
* requirements.txt: what ComfyUI-Manager runs through ``pip install <line>`` line by line, and a git
  install through ``pip install -r``. In the ComfyUI environment it resolves without installing,
  upgrading or depending on torch.
* The archive ``comfy node publish`` uploads: the git-tracked files minus ``.comfyignore`` patterns
  plus ``[tool.comfy].includes`` (comfy-cli ``file_utils.zip_files``). It holds everything the nodes
  need, and ComfyUI loads the pack from it in a fresh ``custom_nodes`` folder.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS_DIR = REPO_ROOT / "scripts"
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
TOOL_COMFY = PYPROJECT["tool"]["comfy"]

# Registry node id (docs: < 100 characters; letters, digits, '-', '_', '.'; no two special
# characters in a row; starts with a letter; registry-backend IsValidNodeID: no special last).
NODE_ID_PATTERN = re.compile(r"^[A-Za-z](?:[A-Za-z0-9]|[._-](?=[A-Za-z0-9]))*$")
NODE_ID_MAX_CHARS = 99
# registry-backend IsValidPublisherID.
PUBLISHER_ID_PATTERN = re.compile(r"^[a-z][a-z0-9-]*$")
# registry-backend ValidateNode.
DESCRIPTION_MAX_CHARS = 1000
# The registry's X.Y.Z semantic version.
SEMVER_PATTERN = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
# comfy-cli validate_version, applied to each comma-separated part of requires-comfyui; a part
# that does not match makes comfy-cli drop the whole field with a warning.
VERSION_PART_PATTERN = re.compile(r"^(?:(==|>=|<=|!=|~=|>|<|<>|=)\s*)?(\d+\.\d+\.\d+(?:-[a-zA-Z0-9]+)?)?$")
# Classifiers comfy-cli and ComfyUI keep; one that is not listed makes them drop all of its kind.
OS_CLASSIFIER_PREFIXES = ("Microsoft", "POSIX", "MacOS", "OS Independent")
ACCELERATOR_CLASSIFIERS = {
    "GPU :: NVIDIA CUDA", "GPU :: AMD ROCm", "GPU :: Intel Arc", "NPU :: Huawei Ascend", "GPU :: Apple Metal",
}
# Registry icon: square, at most 400 x 400 (docs, [tool.comfy] Icon).
ICON_MAX_SIDE = 400
ICON_URL_PATTERN = re.compile(r"^https://raw\.githubusercontent\.com/([^/]+)/([^/]+)/[^/]+/(.+)$")
REPOSITORY_URL_PATTERN = re.compile(r"^https://github\.com/([^/]+)/([^/]+)$")

# Needed to train and test, never at run time: requirements-test.txt lists them, requirements.txt must not
# (the test-bed's held-out digits ship inside models/testbed_digits.safetensors).
TEST_ONLY = {"scikit-learn", "scikit-image", "diffusers", "pytest", "pytest-timeout", "matplotlib"}

# Distributions the pack must never install: ComfyUI's torch stack and ComfyUI itself.
TORCH_STACK = {"torch", "torchvision", "torchaudio", "torchsde", "triton", "xformers"}
NOT_OURS_TO_INSTALL = TORCH_STACK | {"comfyui", "comfy", "comfyui-frontend-package"}


def is_torch_stack(name: str) -> bool:
    name = canonicalize_name(name)
    return name in TORCH_STACK or name.startswith("nvidia-")


# What must be in the published archive for the nodes to work, beyond the package folders.
RUNTIME_FILES = [
    "__init__.py", "LICENSE", "README.md", "pyproject.toml", "requirements.txt",
    "models/testbed_digits.safetensors", "models/testbed_flow.safetensors",
]
RUNTIME_PACKAGES = ["nodes", "inversion", "attention", "testbed"]
DEV_ONLY_DIRS = ["tests", "benchmarks", "scripts", ".ci"]
# The uncompressed archive; the two test-bed models (4.4 MB UNet with the held-out digits, 1.9 MB
# Flux) are most of it.
ARCHIVE_MAX_BYTES = 10 * 2**20
# The folder ComfyUI-Manager and `comfy node install` give the pack: custom_nodes/<project name>.
INSTALL_FOLDER = PROJECT["name"]

PIP_ENV = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONWARNINGS": "ignore"}


def git(*args: str) -> list[str]:
    out = subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, check=True).stdout
    return [path for path in out.decode().split("\0") if path]


def requirement_lines() -> list[str]:
    lines = (REPO_ROOT / "requirements.txt").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def requirements() -> list[Requirement]:
    return [Requirement(line) for line in requirement_lines()]


def pip_report(*args: str) -> subprocess.CompletedProcess:
    """``pip install --dry-run --report -`` in this (the ComfyUI) environment; nothing is changed."""
    return subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", "-", *args,
         "-r", str(REPO_ROOT / "requirements.txt")],
        capture_output=True, text=True, env=PIP_ENV, cwd=REPO_ROOT, timeout=120,
    )


# ---------------------------------------------------------------------------------------------
# The published archive, built the way comfy-cli builds node.zip.


def registry_archive_files() -> list[str]:
    """Paths that ``comfy node publish`` zips: tracked files, minus .comfyignore, plus includes.

    git applies the .comfyignore patterns (same syntax as .gitignore, as comfy-cli's pathspec
    "gitwildmatch" does); ``includes`` entries are force-included, tracked or not.
    """
    tracked = git("ls-files", "-z")
    ignored: set[str] = set()
    if (REPO_ROOT / ".comfyignore").is_file():
        ignored = set(git("ls-files", "-z", "--cached", "--ignored", "--exclude-from=.comfyignore"))
    includes = [include.strip("/") for include in TOOL_COMFY.get("includes", [])]

    def force_included(path: str) -> bool:
        return any(path == include or path.startswith(include + "/") for include in includes)

    files = {path for path in tracked if (REPO_ROOT / path).is_file() and (path not in ignored or force_included(path))}
    for include in includes:
        target = REPO_ROOT / include
        candidates = [target] if target.is_file() else [p for p in target.rglob("*") if p.is_file()]
        files.update(p.relative_to(REPO_ROOT).as_posix() for p in candidates)
    return sorted(files)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """node.zip as comfy-cli would write it."""
    path = tmp_path_factory.mktemp("registry") / "node.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipf:
        for name in registry_archive_files():
            zipf.write(REPO_ROOT / name, name)
    return path


@pytest.fixture(scope="module")
def archive_names(archive) -> set[str]:
    with zipfile.ZipFile(archive) as zipf:
        return set(zipf.namelist())


@pytest.fixture(scope="module")
def installed_pack(archive, tmp_path_factory) -> Path:
    """The archive unpacked as a registry install does: ``custom_nodes/<name>``."""
    custom_nodes = tmp_path_factory.mktemp("comfyui") / "custom_nodes"
    with zipfile.ZipFile(archive) as zipf:
        zipf.extractall(custom_nodes / INSTALL_FOLDER)
    return custom_nodes / INSTALL_FOLDER


def archive_python_modules(names: set[str]) -> dict[str, ast.Module]:
    return {name: ast.parse((REPO_ROOT / name).read_text(), name) for name in sorted(names) if name.endswith(".py")}


# ---------------------------------------------------------------------------------------------
# pyproject.toml


def test_project_fields_follow_the_registry_spec():
    name = PROJECT["name"]
    assert NODE_ID_PATTERN.match(name) and len(name) <= NODE_ID_MAX_CHARS, f"invalid registry node id {name!r}"
    assert "comfy" not in name.lower(), "the registry asks for node ids without 'ComfyUI' in them"
    assert SEMVER_PATTERN.match(PROJECT["version"]), f"version {PROJECT['version']!r} is not X.Y.Z"
    assert 0 < len(PROJECT["description"]) <= DESCRIPTION_MAX_CHARS
    assert SpecifierSet(PROJECT["requires-python"]).contains(f"{sys.version_info.major}.{sys.version_info.minor}")

    urls = PROJECT["urls"]
    assert REPOSITORY_URL_PATTERN.match(urls["Repository"]), urls["Repository"]
    for key in ("Documentation", "Bug Tracker"):
        assert urls[key].startswith(urls["Repository"]), f"[project.urls] {key} is not in the repository"


def test_license_is_the_gpl3_file():
    assert PROJECT["license"] == {"file": "LICENSE"}
    text = (REPO_ROOT / "LICENSE").read_text()
    assert "GNU GENERAL PUBLIC LICENSE" in text and "Version 3, 29 June 2007" in text
    assert "License :: OSI Approved :: GNU General Public License v3 (GPLv3)" in PROJECT["classifiers"]


def test_classifiers_survive_the_registry_validation():
    classifiers = PROJECT["classifiers"]
    os_values = [c.removeprefix("Operating System :: ") for c in classifiers if c.startswith("Operating System :: ")]
    assert os_values == ["OS Independent"]
    accelerators = [c.removeprefix("Environment :: ") for c in classifiers if c.startswith("Environment ::")]
    assert set(accelerators) <= ACCELERATOR_CLASSIFIERS, accelerators
    assert all(value.startswith(OS_CLASSIFIER_PREFIXES) for value in os_values)


def test_tool_comfy_fields_follow_the_registry_spec():
    assert PUBLISHER_ID_PATTERN.match(TOOL_COMFY["PublisherId"]), TOOL_COMFY["PublisherId"]
    assert TOOL_COMFY["DisplayName"].strip()
    requires_comfyui = TOOL_COMFY["requires-comfyui"]
    for part in requires_comfyui.split(","):
        assert VERSION_PART_PATTERN.match(part.strip()), f"comfy-cli would drop requires-comfyui {requires_comfyui!r}"
    for include in TOOL_COMFY.get("includes", []):
        assert (REPO_ROOT / include.strip("/")).exists(), f"[tool.comfy].includes names a missing path {include!r}"


def test_the_pinned_comfyui_satisfies_requires_comfyui(comfy_host):
    text = (comfy_host.comfyui_path / "comfyui_version.py").read_text()
    version = re.search(r'__version__\s*=\s*"([^"]+)"', text).group(1)
    if os.environ.get("INVEDIT_ALLOW_OTHER_COMFYUI") == "1":
        pytest.skip(f"INVEDIT_ALLOW_OTHER_COMFYUI=1: running against ComfyUI {version}")
    assert SpecifierSet(TOOL_COMFY["requires-comfyui"]).contains(version), (
        f"the tested ComfyUI {version} is outside requires-comfyui {TOOL_COMFY['requires-comfyui']!r}"
    )


def test_icon_is_a_small_square_image_in_the_repository():
    from PIL import Image

    match = ICON_URL_PATTERN.match(TOOL_COMFY["Icon"])
    assert match, f"Icon should be a raw.githubusercontent.com URL, not {TOOL_COMFY['Icon']!r}"
    owner, repo, path = match.groups()
    assert (owner, repo) == REPOSITORY_URL_PATTERN.match(PROJECT["urls"]["Repository"]).groups()
    assert path in git("ls-files", "-z", path), f"the icon {path} is not tracked by git"
    with Image.open(REPO_ROOT / path) as icon:
        assert icon.format in {"PNG", "JPEG", "GIF"}
        assert icon.width == icon.height <= ICON_MAX_SIDE, icon.size


def test_comfyui_reads_the_same_metadata(comfy_host):
    """ComfyUI's loader parses pyproject.toml with comfy_config (pydantic): the values arrive intact."""
    from comfy_config import config_parser

    config = config_parser.extract_node_configuration(str(REPO_ROOT))
    assert config.project.name == PROJECT["name"]
    assert config.project.version == PROJECT["version"]
    assert config.project.license.file == "LICENSE"
    assert config.project.urls.repository == PROJECT["urls"]["Repository"]
    assert config.project.supported_os == ["OS Independent"]
    assert config.project.supported_comfyui_version == TOOL_COMFY["requires-comfyui"]
    assert config.tool_comfy.publisher_id == TOOL_COMFY["PublisherId"]
    assert config.tool_comfy.display_name == TOOL_COMFY["DisplayName"]
    assert config.tool_comfy.icon == TOOL_COMFY["Icon"]
    assert config.tool_comfy.web is None, "[tool.comfy].web would register a second web folder"


def test_the_version_is_written_once(archive_names):
    """pyproject.toml holds the version; a ``__version__`` anywhere in the pack must agree with it."""
    for name, module in archive_python_modules(archive_names).items():
        for node in ast.walk(module):
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
                value = ast.literal_eval(node.value)
                assert value == PROJECT["version"], f"{name} says __version__ = {value!r}"


# ---------------------------------------------------------------------------------------------
# requirements.txt


def test_requirements_txt_matches_pyproject_dependencies():
    from_file = sorted(str(req) for req in requirements())
    from_pyproject = sorted(str(Requirement(dep)) for dep in PROJECT["dependencies"])
    assert from_file == from_pyproject, "requirements.txt and [project].dependencies differ"


def test_test_only_packages_stay_out_of_the_runtime_requirements():
    runtime = {canonicalize_name(req.name) for req in requirements()}
    runtime |= {canonicalize_name(Requirement(dep).name) for dep in PROJECT["dependencies"]}
    assert not runtime & TEST_ONLY, f"test-only packages in requirements.txt / pyproject: {runtime & TEST_ONLY}"
    test_lines = (REPO_ROOT / "requirements-test.txt").read_text().splitlines()
    test_requirements = {canonicalize_name(Requirement(line).name) for line in test_lines
                         if line.strip() and not line.strip().startswith("#")}
    assert "scikit-learn" in test_requirements, "training and the tests need scikit-learn: keep it in requirements-test.txt"


def test_each_requirement_line_installs_on_its_own():
    """ComfyUI-Manager runs ``pip install <line>`` per line: no pip options, no trailing comments."""
    for line in requirement_lines():
        assert not line.startswith("-") and "#" not in line and " " not in line, f"not a plain requirement: {line!r}"
        req = Requirement(line)
        assert not req.url and not req.extras, line


def test_requirements_leave_torch_and_comfyui_alone():
    names = [canonicalize_name(req.name) for req in requirements()]
    names += [canonicalize_name(Requirement(dep).name) for dep in PROJECT["dependencies"]]
    assert not [name for name in names if name in NOT_OURS_TO_INSTALL or is_torch_stack(name)]


def dependency_closure(names: list[str]) -> dict[str, str]:
    """Installed distributions the named ones pull in (no extras), by name -> version."""
    closure: dict[str, str] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in closure:
            continue
        dist = importlib.metadata.distribution(name)
        closure[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return closure


def test_no_requirement_depends_on_torch():
    closure = dependency_closure([req.name for req in requirements()])
    assert not [name for name in closure if is_torch_stack(name)], closure


def test_pip_installs_nothing_into_the_comfyui_environment():
    """In the environment with ComfyUI's torch and requirements, ``pip install -r requirements.txt``
    resolves from what is installed (no index) and would install or upgrade nothing."""
    result = pip_report("--no-index")
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["install"] == [], [item["metadata"]["name"] for item in report["install"]]


def test_a_fresh_resolution_pulls_in_no_torch():
    """Resolved from the package index as if nothing were installed: the full set a new environment
    would get. Needs an index; INVEDIT_OFFLINE=1 skips it, as does an index that does not answer."""
    if os.environ.get("INVEDIT_OFFLINE") == "1":
        pytest.skip("INVEDIT_OFFLINE=1")
    result = pip_report("--ignore-installed", "--retries", "0", "--timeout", "10")
    if result.returncode != 0:
        unreachable = ("No matching distribution found", "Could not find a version", "NewConnectionError",
                       "Max retries exceeded", "Temporary failure in name resolution")
        if any(text in result.stderr for text in unreachable):
            pytest.skip("no package index answered: " + result.stderr.strip().splitlines()[-1])
        pytest.fail(result.stderr[-2000:])
    names = [item["metadata"]["name"] for item in json.loads(result.stdout)["install"]]
    assert {canonicalize_name(req.name) for req in requirements()} <= {canonicalize_name(n) for n in names}
    assert not [name for name in names if is_torch_stack(name)], names


def imports_of(module: ast.Module) -> list[tuple[str, bool]]:
    """``(top-level package, inside a function)`` for every absolute import in ``module``."""
    in_function = {id(inner) for node in ast.walk(module) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for inner in ast.walk(node) if inner is not node}
    found = []
    for node in ast.walk(module):
        if isinstance(node, ast.Import):
            tops = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            tops = [node.module.split(".")[0]]
        else:
            continue
        found += [(top, id(node) in in_function) for top in tops]
    return found


def test_runtime_imports_come_from_the_requirements_or_comfyui(comfy_host, archive_names):
    """Every third-party module the pack imports belongs to requirements.txt or to ComfyUI's.

    The one exception: scikit-learn, a test-only package, imported inside functions of the test-bed's
    training and test paths (testbed/data.py, testbed/classifier.py);
    test_testbed_without_sklearn.py shows that the nodes never reach them.
    """
    comfyui = comfy_host.comfyui_path
    provided = {canonicalize_name(req.name) for req in requirements()}
    provided |= {
        canonicalize_name(Requirement(line).name)
        for line in (comfyui / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    }
    distributions = importlib.metadata.packages_distributions()
    missing, lazy_test_only = {}, {}
    for name, module in archive_python_modules(archive_names).items():
        for top, in_function in imports_of(module):
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if (comfyui / top).is_dir() or (comfyui / f"{top}.py").is_file():
                continue  # ComfyUI's own modules: comfy, comfy_api, folder_paths, ...
            dists = {canonicalize_name(d) for d in distributions.get(top, [])}
            if dists & provided:
                continue
            if in_function and dists and dists <= TEST_ONLY:
                lazy_test_only.setdefault(top, set()).add(name)
            else:
                missing.setdefault(top, []).append(name)
    assert not missing, f"imported but neither in requirements.txt nor in ComfyUI's: {missing}"
    allowed = {"sklearn": {"testbed/data.py", "testbed/classifier.py"}}
    assert all(files <= allowed.get(top, set()) for top, files in lazy_test_only.items()), lazy_test_only


# ---------------------------------------------------------------------------------------------
# The published archive


def test_archive_holds_what_the_nodes_need(archive_names, pack_nodes):
    missing = [name for name in RUNTIME_FILES if name not in archive_names]
    missing += [f"{package}/__init__.py" for package in RUNTIME_PACKAGES if f"{package}/__init__.py" not in archive_names]
    missing += [f"web/docs/{node_id}.md" for node_id in pack_nodes if f"web/docs/{node_id}.md" not in archive_names]
    workflows = git("ls-files", "-z", "workflows/*.json")
    assert workflows, "no workflows/*.json tracked"
    missing += [name for name in workflows if name not in archive_names]
    for package in RUNTIME_PACKAGES:
        missing += [name for name in git("ls-files", "-z", f"{package}/*.py") if name not in archive_names]
    assert not missing, f"missing from the registry archive: {list(dict.fromkeys(missing))}"


def test_archive_leaves_out_development_files(archive_names):
    present = sorted(name for name in archive_names if name.split("/")[0] in DEV_ONLY_DIRS)
    assert not present, f"development files in the registry archive: {present[:10]}"
    untracked_or_ignored = [name for name in archive_names if "__pycache__" in name or name.endswith(".pyc")]
    assert not untracked_or_ignored


def test_archive_is_small(archive):
    with zipfile.ZipFile(archive) as zipf:
        unpacked = sum(info.file_size for info in zipf.infolist())
    assert unpacked <= ARCHIVE_MAX_BYTES, f"the archive unpacks to {unpacked / 2**20:.1f} MiB"


LOAD_FROM_ARCHIVE = r"""
import asyncio, inspect, json, sys
from pathlib import Path

scripts_dir, comfyui_path, base_dir, custom_nodes, marker = sys.argv[1:6]
sys.path.insert(0, scripts_dir)
import torch
torch.set_num_threads(1)
from comfy_headless import boot_comfyui

nodes = boot_comfyui(Path(comfyui_path), Path(base_dir))
import folder_paths

folder_paths.folder_names_and_paths["custom_nodes"] = ([custom_nodes], set())
asyncio.run(nodes.init_external_custom_nodes())
ids = sorted(node_id for node_id in nodes.NODE_CLASS_MAPPINGS if node_id.startswith("InvEdit"))
files = sorted({inspect.getfile(nodes.NODE_CLASS_MAPPINGS[node_id]) for node_id in ids})
model, text_encoder = nodes.NODE_CLASS_MAPPINGS["InvEditTestbedModelLoader"].execute(verify=True).result
flow_model, _ = nodes.NODE_CLASS_MAPPINGS["InvEditTestbedFlowModelLoader"].execute(verify=True).result
print(marker + json.dumps({
    "node_ids": ids,
    "files": files,
    "web_dirs": sorted(nodes.EXTENSION_WEB_DIRS.values()),
    "model_parameters": sum(p.numel() for p in model.model.parameters()),
    "flow_model_parameters": sum(p.numel() for p in flow_model.model.parameters()),
}))
"""
RESULT_MARKER = "INVEDIT-PACKAGING-RESULT "


def test_comfyui_loads_the_pack_from_the_archive(installed_pack, comfy_host, pack_loaded, tmp_path):
    """A fresh ComfyUI process, its custom_nodes holding only the unpacked archive, registers every
    node the repository registers; both test-bed models load from the archive's copies."""
    custom_nodes = installed_pack.parent
    result = subprocess.run(
        [sys.executable, "-c", LOAD_FROM_ARCHIVE, str(SCRIPTS_DIR), str(comfy_host.comfyui_path),
         str(tmp_path / "base"), str(custom_nodes), RESULT_MARKER],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**os.environ, "PYTHONSAFEPATH": "1", "OMP_NUM_THREADS": "1"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    loaded = json.loads(lines[-1].removeprefix(RESULT_MARKER))
    # ComfyUI logs "<seconds> seconds (IMPORT FAILED): <path>" for a custom node that failed.
    failed = [line for line in result.stderr.splitlines() if "IMPORT FAILED" in line and str(installed_pack) in line]
    assert not failed, result.stderr[-4000:]
    assert loaded["node_ids"] == sorted(pack_loaded)
    assert all(Path(path).is_relative_to(installed_pack) for path in loaded["files"]), loaded["files"]
    assert str(installed_pack / "web") in loaded["web_dirs"]
    assert loaded["model_parameters"] > 0 and loaded["flow_model_parameters"] > 0
