"""The adaptation methods by name: :data:`METHODS`, filled by :func:`register_method`.

Registration flows down, as peft's tuners register themselves through a function that lives low down: a
module that defines methods calls :func:`register_method` for each class when it is imported, and this
module imports nothing of modprompt's when it is imported. The built-in methods' modules (this package's
``methods``: mp2, route-only, route-per-layer, pt, deep-pt, ft; ``modprompt.baselines.adapt_methods``:
child-f, child-d, prefinetune) are imported on the first read of :data:`METHODS`, as
:mod:`modprompt.data.task` loads the built-in tasks on the first lookup, so that every method is known
wherever the registry is read and registering a method of one's own imports no torch.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modprompt.adapt.methods import AdaptMethod


class MethodRegistry(Mapping[str, "type[AdaptMethod]"]):
    """Method name -> class. Reading it (a lookup, ``in``, iteration) first loads the built-in methods."""

    def __init__(self) -> None:
        self._classes: dict[str, type[AdaptMethod]] = {}
        self._builtins_loaded = False

    def register(self, cls: type[AdaptMethod]) -> type[AdaptMethod]:
        """Add ``cls`` under ``cls.name``; a second class of the same name is an error."""
        if cls.name in self._classes:
            raise ValueError(f"an adaptation method named {cls.name!r} is already registered")
        self._classes[cls.name] = cls
        return cls

    def _load_builtins(self) -> None:
        if self._builtins_loaded:
            return
        import modprompt.adapt.methods  # noqa: F401  (registers mp2, route-only, route-per-layer, pt, deep-pt, ft)
        import modprompt.baselines.adapt_methods  # noqa: F401  (registers child-f, child-d, prefinetune)

        self._builtins_loaded = True

    def __getitem__(self, name: str) -> type[AdaptMethod]:
        self._load_builtins()
        try:
            return self._classes[name]
        except KeyError:
            raise KeyError(f"unknown adaptation method {name!r}; known: {sorted(self._classes)}") from None

    def __iter__(self) -> Iterator[str]:
        self._load_builtins()
        return iter(self._classes)

    def __len__(self) -> int:
        self._load_builtins()
        return len(self._classes)


#: every adaptation method by name; the loop, ``modprompt adapt`` and the benchmarks pick them up from here
METHODS = MethodRegistry()


def register_method(cls: type[AdaptMethod]) -> type[AdaptMethod]:
    """Make the :class:`~modprompt.adapt.methods.AdaptMethod` subclass ``cls`` known by ``cls.name``
    (usable as a class decorator)."""
    return METHODS.register(cls)
