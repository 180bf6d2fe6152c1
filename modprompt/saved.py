"""Saved folders, one pattern for every kind modprompt writes: a prompt bank, an adapted task, a
pre-finetuned model.

As peft writes ``adapter_config.json`` beside ``adapter_model.safetensors``, a folder holds one JSON config,
which carries its ``format_version`` and says what the weights are, beside safetensors weights. Each kind's
class writes its folder with ``save_pretrained(directory)`` and reopens it with the classmethod
``from_pretrained(directory, ...)`` (:class:`~modprompt.modular.model.ModularPromptModel`,
:class:`~modprompt.adapt.methods.AdaptMethod`, :class:`~modprompt.baselines.prefinetune.SpanModel`), through
the two functions here. Nothing here imports torch until a folder is written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def write_folder(directory: str | Path, config_name: str, version: int, config: dict[str, Any],
                 weights: Mapping[str, Any]) -> Path:  # fmt: skip
    """Write ``weights`` (file name -> a mapping of tensors, or a module, whose tied weights are stored once)
    as safetensors files and ``config`` with ``format_version`` ``version`` as ``config_name``; returns the
    folder."""
    from safetensors.torch import save_file, save_model

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for name, tensors in weights.items():
        if isinstance(tensors, Mapping):
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, directory / name)
        else:
            save_model(tensors, str(directory / name), force_contiguous=True)
    meta = {"format_version": version, **config}
    (directory / config_name).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return directory


def read_folder_config(directory: str | Path, name: str, version: int, what: str) -> dict[str, Any]:
    """The JSON config ``name`` that :func:`write_folder` wrote into ``directory``, checked to be of format
    ``version``.

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
