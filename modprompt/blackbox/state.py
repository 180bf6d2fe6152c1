"""Saving and resuming a black-box run: one data file, replaced atomically after every generation.

A run killed at any moment leaves either the previous state or the new one on disk, never half a file.

A state file holds data only, so it can be read without trusting whoever wrote it. It is a safetensors
file: every numpy array of the state is one of its tensors, and everything else is JSON in its header
(``__metadata__["state"]``), where an object is written as its class name and its attributes. Loading
runs no code from the file: the JSON may name only the classes, functions and methods that
:func:`_allowed_global` and :data:`_METHODS` allow (modprompt's optimiser wrappers and
:class:`~modprompt.blackbox.params.Candidate`, the ``cma`` package's own classes and functions, numpy's
random generators and ``numpy.linalg.eigh``). An allowed object is made without calling its
``__init__`` (``cls.__new__``) and then given its saved attributes, exactly as pickle restores it,
shared references and cycles included, so a resumed CMA-ES samples exactly what an uninterrupted one
would have. A scikit-optimize ``Optimizer`` is written as its constructor arguments and the attributes
its ``ask`` and ``tell`` change (the told points and losses, the random generator, the next proposal);
loading builds it from those arguments and refits the last surrogate from the told points, which gives
the same model (the fit is seeded) without storing scikit-learn's objects.

States written by modprompt before this format (pickles) are refused with a message saying so: a
pickle runs code when it is read.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "modprompt-blackbox-state"
VERSION = 1
# Every pickle of protocol 2 and later starts with PROTO (0x80) and its protocol number. A safetensors file
# starts with its header's length (8 bytes, little-endian), whose first byte is 0x80 for one header length in
# 256, so a file is called a pickle only when it does not read as safetensors.
_PICKLE_STARTS = tuple(bytes([0x80, protocol]) for protocol in range(2, 6))

#: classes outside the cma package a state may hold (module, qualified name)
_CLASSES = frozenset({
    ("modprompt.blackbox.cmaes", "LayerwiseCMA"),
    ("modprompt.blackbox.router_bo", "RouterSearch"),
    ("modprompt.blackbox.params", "Candidate"),
})  # fmt: skip
#: functions outside the cma package a state may refer to (cma's options hold numpy's eigensolver)
_FUNCTIONS = frozenset({("numpy.linalg", "eigh")})
#: bound methods a state may hold: cma's ``randn`` option is a seeded generator's method
_METHODS = frozenset({("numpy.random.mtrand", "RandomState", "randn")})
#: packages whose own classes and functions are allowed
_PACKAGES = ("cma",)
#: the attributes of a scikit-optimize Optimizer that ``ask`` and ``tell`` change (skopt 0.10)
_SKOPT_DYNAMIC = ("Xi", "yi", "_n_initial_points", "gains_", "next_xs_", "_next_x", "cache_", "models", "rng")


class StateError(ValueError):
    """A state file that cannot be read (not this format, a refused name, a damaged file) or a state
    that cannot be written (it holds an object this format does not store)."""


def save_state(path: str | Path, state: Any) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename)."""
    from safetensors.numpy import save

    encoder = _Encoder()
    document = json.dumps({"format": FORMAT, "version": VERSION, "state": encoder.encode(state)})
    data = save(encoder.arrays, metadata={"state": document})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def load_state(path: str | Path) -> Any | None:
    """The saved state, or None when there is none; :class:`StateError` for a file it will not read."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        return None
    try:
        with safe_open(path, framework="np") as handle:
            document = json.loads((handle.metadata() or {})["state"])
            # Copies: the optimisers update their arrays in place.
            arrays = {name: np.array(handle.get_tensor(name)) for name in handle.keys()}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
        with path.open("rb") as handle:
            start = handle.read(2)
        if start in _PICKLE_STARTS:
            raise StateError(
                f"{path} is a state file of an older modprompt (a pickle, which runs code when read); it is no "
                "longer read: delete it (or give another --state path) to start the run again"
            ) from None
        raise StateError(f"{path} is not a modprompt state file ({type(err).__name__}: {err})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT or document.get("version") != VERSION:
        raise StateError(f"{path} is not a modprompt state file of version {VERSION}")
    try:
        return _Decoder(arrays).decode(document["state"])
    except StateError as err:
        raise StateError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise StateError(f"{path} is damaged ({type(err).__name__}: {err})") from None


def _in_package(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in _PACKAGES)


def _allowed_global(module: str, name: str) -> bool:
    return (module, name) in _CLASSES or (module, name) in _FUNCTIONS or _in_package(module)


def _resolve(module: str, name: str) -> Any:
    """The object ``module:name`` names, if allowed; modules are imported only when allowed."""
    if not _allowed_global(module, name):
        raise StateError(f"the state names {module}:{name}, which a state file may not hold")
    top = module.split(".")[0]
    importlib.import_module(top if _in_package(module) else module)
    loaded = sys.modules.get(module)
    if loaded is None:
        raise StateError(f"the state names {module}:{name}, but {module} is not part of the installed {top}")
    value: Any = loaded
    for part in name.split("."):
        value = getattr(value, part)
    # Defined where the name says, not imported there from elsewhere (cma's modules import os, numpy...).
    if getattr(value, "__module__", None) != module or getattr(value, "__qualname__", None) != name:
        raise StateError(f"{module}:{name} is not a class or function defined there")
    if not callable(value):
        raise StateError(f"{module}:{name} is neither a class nor a function")
    return value


def _name_of(value: Any) -> tuple[str, str]:
    module, name = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(name, str) or not _allowed_global(module, name):
        raise StateError(f"a state cannot hold {value!r}")
    try:
        same = _resolve(module, name) is value
    except (StateError, AttributeError, ImportError):
        same = False
    if not same:
        raise StateError(f"a state cannot hold {value!r}: {module}:{name} names something else")
    return module, name


def _is_skopt_optimizer(value: Any) -> bool:
    cls = type(value)
    return cls.__module__ == "skopt.optimizer.optimizer" and cls.__qualname__ == "Optimizer"


class _Encoder:
    """Python values → JSON nodes, with the arrays collected aside (see the module docstring)."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}
        self._ids: dict[int, int] = {}
        self._alive: list[Any] = []  # keeps every memoised object alive, so no id is reused meanwhile

    def _memo(self, value: Any) -> tuple[int, bool]:
        key = id(value)
        if key in self._ids:
            return self._ids[key], True
        self._ids[key] = len(self._ids)
        self._alive.append(value)
        return self._ids[key], False

    def encode(self, value: Any) -> Any:
        if value is None or isinstance(value, (bool, str)):
            return value
        if type(value) in (int, float):
            return value
        if isinstance(value, np.generic):
            if value.dtype.kind not in "biuf":
                raise StateError(f"a state cannot hold a numpy scalar of dtype {value.dtype}")
            return {"$scalar": value.dtype.str, "value": value.item()}
        if isinstance(value, tuple) and type(value) is tuple:
            return {"$tuple": [self.encode(v) for v in value]}
        if isinstance(value, range):
            return {"$range": [value.start, value.stop, value.step]}
        if isinstance(value, (types.FunctionType, types.BuiltinFunctionType, type)) or type(value).__name__ in (
            "_ArrayFunctionDispatcher",
        ):
            return {"$global": ":".join(_name_of(value))}
        ref, seen = self._memo(value)
        if seen:
            return {"$ref": ref}
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise StateError(f"a state cannot hold an array of dtype {value.dtype}")
            name = f"a{len(self.arrays)}"
            self.arrays[name] = np.ascontiguousarray(value)
            return {"$array": name, "$id": ref}
        if type(value) is list:
            return {"$list": [self.encode(v) for v in value], "$id": ref}
        if type(value) is dict:
            return {"$dict": [[self.encode(k), self.encode(v)] for k, v in value.items()], "$id": ref}
        if type(value) in (set, frozenset):
            return {"$set": [self.encode(v) for v in value], "frozen": type(value) is frozenset, "$id": ref}
        if type(value) is np.random.RandomState:
            name, keys, pos, has_gauss, cached = value.get_state()
            return {"$random_state": [name, self.encode(keys), pos, has_gauss, cached], "$id": ref}
        if isinstance(value, types.MethodType):
            owner = type(value.__self__)
            method = (owner.__module__, owner.__qualname__, value.__func__.__name__)
            if method not in _METHODS:
                raise StateError(f"a state cannot hold the method {'.'.join(method)}")
            return {"$method": ":".join(method), "self": self.encode(value.__self__), "$id": ref}
        if _is_skopt_optimizer(value):
            return {"$skopt": self._skopt(value), "$id": ref}
        module, name = _name_of(type(value))
        node: dict[str, Any] = {"$object": f"{module}:{name}", "$id": ref}
        if isinstance(value, dict):
            node["items"] = [[self.encode(k), self.encode(v)] for k, v in dict.items(value)]
        elif isinstance(value, list):
            node["items"] = [self.encode(v) for v in list.__iter__(value)]
        elif isinstance(value, (tuple, set, frozenset)):
            raise StateError(f"a state cannot hold an instance of {module}:{name}")
        if not hasattr(value, "__dict__"):
            raise StateError(f"a state cannot hold {module}:{name}: it keeps no attribute dict")
        node["attrs"] = [[k, self.encode(v)] for k, v in vars(value).items()]
        return node

    def _skopt(self, optimizer: Any) -> dict:
        """A scikit-optimize Optimizer as its constructor arguments and what ask/tell changed."""
        args = optimizer.specs["args"]
        fresh = type(optimizer)(**args)
        unknown = sorted(set(vars(optimizer)) - set(vars(fresh)) - set(_SKOPT_DYNAMIC))
        if unknown:
            raise StateError(f"this scikit-optimize Optimizer keeps attributes a state does not store: {unknown}")
        dynamic = {k: getattr(optimizer, k) for k in _SKOPT_DYNAMIC if hasattr(optimizer, k)}
        dynamic.pop("cache_", None)  # answers of ask() since the last tell(); recomputed when asked again
        fitted = bool(dynamic.pop("models", None))
        return {"args": self.encode(args), "state": self.encode(dynamic), "fitted": fitted}


class _Decoder:
    """JSON nodes → Python values; only what :func:`_resolve` allows is ever looked up."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self._objects: dict[int, Any] = {}

    def _keep(self, node: dict, value: Any) -> Any:
        self._objects[node["$id"]] = value
        return value

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, str, int, float)):
            return node
        if isinstance(node, list):
            raise StateError("a bare JSON list in a state (lists are tagged)")
        if not isinstance(node, dict):
            raise StateError(f"unexpected JSON value {type(node).__name__} in a state")
        if "$ref" in node:
            return self._objects[node["$ref"]]
        if "$scalar" in node:
            dtype = np.dtype(node["$scalar"])
            if dtype.kind not in "biuf":
                raise StateError(f"a numpy scalar of dtype {dtype}")
            return dtype.type(node["value"])
        if "$tuple" in node:
            return tuple(self.decode(v) for v in node["$tuple"])
        if "$range" in node:
            return range(*(int(v) for v in node["$range"]))
        if "$global" in node:
            module, _, name = node["$global"].partition(":")
            return _resolve(module, name)
        if "$array" in node:
            return self._keep(node, self.arrays[node["$array"]])
        if "$list" in node:
            items = self._keep(node, [])
            items.extend(self.decode(v) for v in node["$list"])
            return items
        if "$dict" in node:
            mapping = self._keep(node, {})
            for k, v in node["$dict"]:
                mapping[self.decode(k)] = self.decode(v)
            return mapping
        if "$set" in node:
            members = {self.decode(v) for v in node["$set"]}
            return self._keep(node, frozenset(members) if node.get("frozen") else members)
        if "$random_state" in node:
            name, keys, pos, has_gauss, cached = node["$random_state"]
            generator = self._keep(node, np.random.RandomState())
            generator.set_state((str(name), self.decode(keys), int(pos), int(has_gauss), float(cached)))
            return generator
        if "$method" in node:
            module, owner, method = node["$method"].split(":")
            if (module, owner, method) not in _METHODS:
                raise StateError(f"the state names the method {module}.{owner}.{method}, which it may not hold")
            owner_value = self.decode(node["self"])
            if (type(owner_value).__module__, type(owner_value).__qualname__) != (module, owner):
                raise StateError(f"the method {module}.{owner}.{method} bound to another type")
            return self._keep(node, getattr(owner_value, method))
        if "$skopt" in node:
            return self._keep(node, self._skopt(node["$skopt"]))
        if "$object" in node:
            module, _, name = node["$object"].partition(":")
            cls = _resolve(module, name)
            if not isinstance(cls, type):
                raise StateError(f"{module}:{name} is not a class")
            value = self._keep(node, cls.__new__(cls))
            if "items" in node:
                if isinstance(value, dict):
                    for k, v in node["items"]:
                        dict.__setitem__(value, self.decode(k), self.decode(v))
                elif isinstance(value, list):
                    list.extend(value, (self.decode(v) for v in node["items"]))
                else:
                    raise StateError(f"{module}:{name} holds no items")
            attributes = value.__dict__
            for k, v in node["attrs"]:
                attributes[str(k)] = self.decode(v)
            return value
        raise StateError(f"unknown node {sorted(node)[:3]} in a state")

    def _skopt(self, node: dict) -> Any:
        from skopt import Optimizer
        from sklearn.base import clone

        args = self.decode(node["args"])
        if not isinstance(args, dict) or not all(isinstance(v, (str, int, float, bool, list, tuple, dict, type(None)))
                                                 for v in args.values()):  # fmt: skip
            raise StateError("a scikit-optimize Optimizer whose arguments are not plain data")
        optimizer = Optimizer(**args)
        for key, value in self.decode(node["state"]).items():
            if key not in _SKOPT_DYNAMIC:
                raise StateError(f"a scikit-optimize Optimizer attribute {key!r} a state does not store")
            setattr(optimizer, key, value)
        optimizer.cache_ = {}
        optimizer.models = []
        if node["fitted"]:
            # The surrogate the last tell() fitted: the same fit on the same points (its seed was drawn
            # when the optimiser was built), so ask() proposes what it would have.
            model = clone(optimizer.base_estimator_)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(optimizer.space.transform(optimizer.Xi), optimizer.yi)
            optimizer.models.append(model)
        return optimizer
