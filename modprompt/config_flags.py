"""Command-line flags written once: generated from a config dataclass's fields and their help.

A field's help lives beside it, as ``field(default=..., metadata={"help": "..."})`` (the way transformers'
``HfArgumentParser`` reads it), and :func:`add_dataclass_flags` turns each field into ``--field-name``
(dashes for underscores), typed from the field's annotation. Every flag defaults to ``None``, so that
:func:`dataclass_flag_values` returns only what was given and a config built from it keeps its own
defaults for the rest. This module imports no torch, so a parser built with it answers ``--help`` at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

#: annotations a flag can parse (after ``| None`` is dropped)
_PARSERS = {int: int, float: float, str: str}


def flag_help(text: str, **extra: Any) -> dict[str, Any]:
    """A config field's ``metadata``: its flag's help, and ``choices`` or ``type`` where given."""
    return {"help": text, **extra}


def _flag_type(annotation: Any) -> type:
    """``int`` for ``int`` and ``int | None``; the same for float, str and bool."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"a flag needs one type, not {annotation}")
        annotation = args[0]
    if annotation is not bool and annotation not in _PARSERS:
        raise TypeError(f"no flag for fields of type {annotation}")
    return annotation


def flag_fields(cls: type, names: Iterable[str] | None = None, exclude: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of dataclass ``cls`` that become flags: ``names`` (all fields by default) less ``exclude``."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    chosen = list(by_name) if names is None else list(names)
    unknown = [n for n in chosen if n not in by_name]
    if unknown:
        raise KeyError(f"{cls.__name__} has no fields {unknown}")
    skipped = set(exclude)
    return [by_name[n] for n in chosen if n not in skipped]


def add_dataclass_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    names: Iterable[str] | None = None,
    *,
    exclude: Iterable[str] = (),
    note: str = "",
    field_notes: Mapping[str, str] | None = None,
) -> list[str]:
    """Add ``--field-name`` for each chosen field of dataclass ``cls``; returns the field names.

    The help is the field's ``metadata["help"]`` plus its default (unless the help already speaks of one),
    the field's entry in ``field_notes`` (e.g. another preset's value) and ``note``; ``metadata["choices"]``
    restricts the values, and ``metadata["type"]`` gives the flag's type where the annotation admits more
    than the command line does. A ``bool`` field becomes a switch (``store_true``; it turns on what
    defaults to off). Every flag defaults to None: only the flags given override the config's defaults.
    """
    hints = typing.get_type_hints(cls)
    field_notes = field_notes or {}
    added = []
    for f in flag_fields(cls, names, exclude):
        kind = f.metadata.get("type") or _flag_type(hints[f.name])
        text = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING and kind is not bool and "default" not in text:
            text = "; ".join(filter(None, [text, f"default {f.default}" if f.default is not None else "default: none"]))
        text = "; ".join(filter(None, [text, field_notes.get(f.name)]))
        text = " ".join(filter(None, [text, note]))
        flag = "--" + f.name.replace("_", "-")
        if kind is bool:
            parser.add_argument(flag, action="store_true", default=None, help=text)
        else:
            parser.add_argument(flag, type=_PARSERS[kind], choices=f.metadata.get("choices"), help=text)
        added.append(f.name)
    return added


def dataclass_flag_values(args: argparse.Namespace, names: Iterable[str]) -> dict[str, Any]:
    """The fields among ``names`` that were given on the command line (None: left out)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}
