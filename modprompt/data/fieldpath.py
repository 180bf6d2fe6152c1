"""Field paths of user task specs: JMESPath expressions (https://jmespath.org), checked and explained.

A path says where a value sits inside a record: ``question`` (a key), ``answers[0].text`` (keys and
positions), ``[1]`` (the second element of a record that is a JSON array), ``answers[*].text`` (a list of
values), ``join('', sentences)`` (a list of texts joined into one). A name that JMESPath would not read as
a key (``问题``, ``sentence-1``, ``my text``: it has no JMESPath punctuation) is taken as the key itself,
so specs written for flat records keep working; quote it as JMESPath does (``"问题".text``) to go further.

JMESPath answers ``null`` both for a missing key and for an index out of range, and where a value has
the wrong type for a key or an index. :meth:`FieldPath.explain` walks a path's keys and positions through
the record to say which step failed and what was there instead, so that an error can name it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.functions import Functions

# A bare name holding none of these characters is a key, not a (failed) JMESPath expression.
_SYNTAX = frozenset(".[]|&@*(){}:,'\"`!<>=?\\$")
_FUNCTIONS = Functions().FUNCTION_TABLE
# Nodes whose children after the first are evaluated against the first one's result, not the record.
_LEFT_ONLY = {"projection", "value_projection", "filter_projection", "flatten", "pipe"}

__all__ = ["FieldPath", "JMESPathError", "compile_path", "describe"]


def describe(value: Any) -> str:
    """A value's JSON type with an article ("a list of 3 items", "null"), for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a text"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, list):
        return f"a list of {len(value)} item(s)"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


@dataclass(frozen=True)
class FieldPath:
    """A compiled path; :meth:`search` evaluates it, :meth:`explain` says why it found nothing."""

    expression: str
    compiled: Any  # jmespath's ParsedResult
    key: str | None = None  # set when the path is one plain key: looked up directly (the hot case)

    def __str__(self) -> str:
        return self.expression

    @property
    def parsed(self) -> dict:
        """The expression's syntax tree (JMESPath's nested dicts of ``type``, ``value``, ``children``)."""
        return self.compiled.parsed

    def search(self, value: Any) -> Any:
        """The path's value in ``value`` (``None`` where it leads nowhere); raises :class:`JMESPathError`
        when a function gets an argument of the wrong type."""
        if self.key is not None:
            return value.get(self.key) if isinstance(value, dict) else None
        return self.compiled.search(value)

    def explain(self, value: Any, root: str = "the record") -> str:
        """Why the path gives nothing (or cannot be evaluated) on ``value``: the first key or position of
        its plain key/position chains that is missing, out of range or applied to the wrong type.
        ``root`` is how ``value`` itself is named."""
        for chain in _chains(self.parsed):
            problem = _walk(chain, value, root)
            if problem is not None:
                return problem
        return "no key or position along it is missing; an expression over the values found gives null"


def compile_path(expression: str, *, literal: bool = False) -> FieldPath:
    """Compile a path (a bare key when ``literal``, as for CSV columns); raises ``ValueError`` with the
    reason for an expression that JMESPath cannot parse, or that calls an unknown function or calls one
    with the wrong number of arguments."""
    return _compile(expression, literal)


@lru_cache(maxsize=None)
def _compile(expression: str, literal: bool) -> FieldPath:
    if not literal:
        try:
            compiled = jmespath.compile(expression)
        except JMESPathError as e:
            if _SYNTAX.intersection(expression):
                raise ValueError(f"not a JMESPath expression: {_first_line(e)}") from None
            literal = True
        else:
            _check_functions(compiled.parsed)
            key = compiled.parsed["value"] if compiled.parsed["type"] == "field" else None
            return FieldPath(expression, compiled, key)
    # A quoted identifier is JMESPath's own way of naming any key.
    return FieldPath(expression, jmespath.compile(json.dumps(expression, ensure_ascii=False)), expression)


def _first_line(error: Exception) -> str:
    # jmespath's messages span lines (the expression with a caret under it): one line reads better in an error.
    return " ".join(str(error).split())


def _check_functions(node: dict) -> None:
    if node.get("type") == "function_expression":
        name, given = node["value"], len(node["children"])
        if name not in _FUNCTIONS:
            raise ValueError(f"unknown JMESPath function {name}(); known: {', '.join(sorted(_FUNCTIONS))}")
        signature = _FUNCTIONS[name]["signature"]
        variadic = bool(signature) and signature[-1].get("variadic", False)
        if (given < len(signature)) if variadic else (given != len(signature)):
            wanted = f"at least {len(signature)}" if variadic else str(len(signature))
            raise ValueError(f"JMESPath function {name}() takes {wanted} argument(s), got {given}")
    for child in node.get("children", ()):
        if isinstance(child, dict):
            _check_functions(child)


def _chain(node: dict) -> list[tuple[str, Any]] | None:
    """The keys and positions of a path made only of them (``a.b[0].c``), else ``None``."""
    kind = node["type"]
    if kind == "field":
        return [("key", node["value"])]
    if kind == "index":
        return [("index", node["value"])]
    if kind in ("identity", "current"):
        return []
    if kind in ("subexpression", "index_expression"):
        steps: list[tuple[str, Any]] = []
        for child in node["children"]:
            sub = _chain(child)
            if sub is None:
                return None
            steps += sub
        return steps
    return None


def _chains(node: dict) -> list[list[tuple[str, Any]]]:
    """Every maximal key/position chain of a path that is evaluated against the record itself."""
    chain = _chain(node)
    if chain is not None:
        return [chain] if chain else []
    children = [c for c in node.get("children", ()) if isinstance(c, dict)]
    if node["type"] in _LEFT_ONLY:
        children = children[:1]
    return [c for child in children for c in _chains(child)]


def _walk(chain: list[tuple[str, Any]], value: Any, root: str) -> str | None:
    shown = ""

    def name() -> str:
        return f"{shown!r}" if shown else root

    for kind, step in chain:
        if kind == "key":
            if not isinstance(value, dict):
                return f"{name()} is {describe(value)}, not an object with a key {step!r}"
            if step not in value:
                keys = sorted(map(str, value))
                listed = ", ".join(map(repr, keys[:12])) + (", ..." if len(keys) > 12 else "")
                return f"{name()} has no key {step!r} (its keys: {listed or 'none'})"
            value = value[step]
            shown = f"{shown}.{step}" if shown else str(step)
        else:
            if not isinstance(value, list):
                return f"{name()} is {describe(value)}, not a list to take [{step}] of"
            if not -len(value) <= step < len(value):
                return f"position [{step}] is out of range: {name()} has {len(value)} item(s)"
            value = value[step]
            shown = f"{shown}[{step}]"
    if value is None:
        return f"{name()} is null"
    return None
