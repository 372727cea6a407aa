"""Test set-up shared by every tier: the repository is importable as the package ``invedit``.

The repository root is itself the node pack's package (ComfyUI imports its ``__init__.py``), so
tests import it as ``invedit`` (``from invedit.inversion import ...``). The root is never put on
``sys.path``: its ``nodes/`` folder would shadow ComfyUI's top-level ``nodes`` module.

Run the suite with ``bash scripts/run-tests.sh``; it builds the environment the host tier needs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_NAME = "invedit"
DEFAULT_SEED = 0


def _drop_repo_root_from_sys_path() -> None:
    """Remove the repository root (or the cwd, when it is the root) from ``sys.path``."""
    cwd = Path.cwd().resolve()

    def is_root(entry: str) -> bool:
        path = cwd if entry in ("", ".") else Path(entry)
        try:
            return path.resolve() == REPO_ROOT
        except OSError:
            return False

    sys.path[:] = [entry for entry in sys.path if not is_root(entry)]


_drop_repo_root_from_sys_path()
sys.path.insert(0, str(REPO_ROOT / "scripts"))
from comfy_headless import import_pack_as_package  # noqa: E402  (imports no ComfyUI module)

import_pack_as_package(PACKAGE_NAME)


@pytest.fixture(scope="session", autouse=True)
def torch_threads() -> int:
    """One torch thread unless INVEDIT_TEST_THREADS says otherwise.

    The tests' tensors are small: on an idle 2-core machine 1 and 2 threads run the tiny-model
    sampling equally fast (0.22 s for 10 steps), while with other busy processes 2 spinning
    OpenMP threads were 10-30x slower (12 s) and 1 thread stayed at 0.36 s.
    """
    threads = int(os.environ.get("INVEDIT_TEST_THREADS") or 1)
    torch.set_num_threads(min(threads, os.cpu_count() or 1))
    return torch.get_num_threads()


@pytest.fixture(autouse=True)
def torch_seed() -> int:
    """Seed torch's global generator before every test, so no test depends on the order."""
    torch.manual_seed(DEFAULT_SEED)
    return DEFAULT_SEED
