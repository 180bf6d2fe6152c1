"""Settings read back from what was saved: dataclasses from their dicts, and the JSON configs of saved folders
(banks, adapted tasks, pre-finetuned models, run results)."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], data: dict[str, Any], what: str) -> T:
    """``cls(**data)``, refusing keys that are not fields of the dataclass ``cls``.

    The error lists every unknown key, naming the config as ``what`` (e.g. "prompt-bank"), where ``cls(**data)``
    alone would raise a TypeError about the first one.
    """
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ValueError(f"unknown {what} config keys: {sorted(unknown)}")
    return cls(**data)


def read_saved_config(directory: str | Path, name: str, version: int, what: str) -> dict[str, Any]:
    """The JSON file ``name`` a ``save_pretrained`` wrote into ``directory``, checked to be of format ``version``.

    A folder without it, or one written in another format, is an error naming the folder and ``what`` it
    should have held (e.g. "prompt bank").
    """
    path = Path(directory) / name
    if not path.is_file():
        raise FileNotFoundError(f"{directory} holds no {what} ({name} missing)")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != version:
        raise ValueError(f"{path}: {what} format {meta.get('format_version')}, expected {version}")
    return meta
