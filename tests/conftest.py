"""Shared fixtures: the real data mirror, and tiny randomly initialised backbones (see tests/tiny.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The local mirror of the raw task files (``OWNER+NAME/<path>``)."""
    root = Path(os.environ.get("MODPROMPT_DATA", REPO.parent / "shared" / "data" / "raw"))
    if not root.is_dir():
        pytest.fail(f"task data mirror not found at {root}; set MODPROMPT_DATA")
    return root


pytest_plugins = ["fixtures_tiny"]


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module of tiny models (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Tiny models gain nothing from a second thread, and on a shared 2-core machine two threads per process
    make every matmul wait for the other process (10x slower under load).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def isolated_registry():
    """User tasks any test registers are removed afterwards, so the built-in suite stays as it is."""
    from modprompt.data.task import all_tasks, unregister

    before = {task.name for task in all_tasks()}
    yield
    for task in all_tasks():
        if task.name not in before:
            unregister(task.name)
