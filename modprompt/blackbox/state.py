"""Saving and resuming a black-box run: one pickle, replaced atomically after every generation.

A run killed at any moment leaves either the previous state or the new one on disk, never half a file.
State files are local files this program wrote (optimiser objects pickle with their random state); never
load one from an untrusted source.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any


def save_state(path: str | Path, state: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_state(path: str | Path) -> Any | None:
    """The saved state, or None when there is none."""
    path = Path(path)
    if not path.is_file():
        return None
    with path.open("rb") as handle:
        return pickle.load(handle)
