"""Boot ComfyUI in this process, headless and on the CPU, the way ``main.py`` does minus the server.

Shared by the host tests (tests/host/conftest.py), the demo and the benchmarks:

    from comfy_headless import boot_comfyui, load_pack
    nodes = boot_comfyui(comfyui_path, base_dir)   # CLI args, folders, core extra nodes
    ok = load_pack(nodes)                         # this repository, through ComfyUI's own loader

Never put the repository root on ``sys.path``: its ``nodes/`` folder would shadow ComfyUI's
``nodes`` module.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def comfyui_path_from_env() -> Path:
    """``$COMFYUI_PATH`` as a checked path (scripts/env.sh sets it)."""
    value = os.environ.get("COMFYUI_PATH")
    if not value:
        raise RuntimeError(
            "COMFYUI_PATH is not set: run through scripts/run-tests.sh or scripts/run-demo.sh (they find or "
            "clone ComfyUI at the pinned commit and set it), or set COMFYUI_PATH to a ComfyUI checkout."
        )
    path = Path(value).resolve()
    if not (path / "nodes.py").is_file() or not (path / "execution.py").is_file():
        raise RuntimeError(f"COMFYUI_PATH={value} is not a ComfyUI checkout (no nodes.py / execution.py)")
    return path


def boot_comfyui(comfyui_path: Path, base_dir: Path):
    """Configure ComfyUI's arguments and folders, import its core extra nodes; return ``nodes``."""
    root = REPO_ROOT.resolve()
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != root]
    sys.path.insert(0, str(comfyui_path))
    import comfy.options

    comfy.options.enable_args_parsing(False)
    from comfy.cli_args import args

    args.cpu = True
    args.base_directory = str(base_dir)
    args.output_directory = str(base_dir / "output")
    args.temp_directory = str(base_dir / "temp")
    args.input_directory = str(base_dir / "input")
    # ComfyUI's `utils` package must be imported before `nodes`: nodes.py puts comfy/ first on
    # sys.path, after which `import utils` finds comfy/utils.py (main.py imports utils first too).
    import utils.extra_config  # noqa: F401
    import folder_paths

    folder_paths.set_output_directory(args.output_directory)
    folder_paths.set_temp_directory(args.temp_directory)
    folder_paths.set_input_directory(args.input_directory)
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    return nodes


def load_pack(nodes) -> bool:
    """Load this repository as a custom node with ComfyUI's own loader; True when it loaded."""
    return asyncio.run(nodes.load_custom_node(str(REPO_ROOT)))


def import_pack_as_package(name: str = "invedit"):
    """Import this repository as the package ``name`` (for its pure-torch libraries), once."""
    import importlib.util

    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(REPO_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def boot_with_pack(prefix: str = "invedit-"):
    """Boot ComfyUI in a fresh temporary base folder, load InvEdit and import it as ``invedit``.

    Returns ComfyUI's ``nodes`` module; exits with a message when the pack does not load.
    """
    import tempfile

    nodes = boot_comfyui(comfyui_path_from_env(), Path(tempfile.mkdtemp(prefix=prefix)))
    if not load_pack(nodes):
        raise SystemExit("ComfyUI could not load InvEdit; see the log above.")
    import_pack_as_package()
    return nodes


def inversion_options(**overrides) -> dict:
    """The shared inversion options at their node defaults, with ``overrides`` (after boot)."""
    import_pack_as_package()
    from invedit.nodes.options import option_defaults

    return {**option_defaults(), **overrides}
