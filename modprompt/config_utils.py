"""Settings read back from what was saved: dataclasses from their dicts (saved folders' configs, run results).
A saved folder itself is read by :mod:`modprompt.saved`."""

from __future__ import annotations

from dataclasses import fields
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
