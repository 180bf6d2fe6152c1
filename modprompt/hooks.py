"""Forward hooks that exist only inside a ``with`` block: how modprompt reaches into a frozen backbone.

Prompt injection, soft input tokens, the layer-RMS measurement and the black-box layer cache all change
or read what a module sees or returns without copying the backbone's code; outside the block the modules
are untouched, so the backbone's outputs are bit-identical to the bare model's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def hooked(hooks: Iterable[tuple[nn.Module, Callable]], pre: bool = False) -> Iterator[None]:
    """Register each ``(module, hook)`` for the block: a forward hook ``hook(module, args, output)``, or with
    ``pre`` a forward pre-hook with keyword arguments ``hook(module, args, kwargs)``; all removed afterwards,
    also when the block raises."""
    handles = []
    try:
        for module, hook in hooks:
            if pre:
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
            else:
                handles.append(module.register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()
