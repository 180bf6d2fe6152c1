"""The layer cache: hidden states at a block's input, reused when only deeper prompts change.

Layer ``i``'s input depends only on the examples and the prompts of layers ``< i``. BBTv2's layer-wise
search evaluates a population that differs only in layer ``i``'s prompt, so every candidate of a
generation shares the states entering block ``i``, and the next generation (layer ``i + 1``) shares the
states entering block ``i`` again. :class:`LayerCache` keeps such states under
``(dataset, chunk, layer, hash of the prompts below it)``, least recently used first out, bounded in
bytes. :func:`start_at` runs the backbone from block ``i`` without copying any model code: blocks below
``i`` are swapped for stand-ins that return the cached output of block ``i - 1`` in the structure the
real block returned, so the model's own forward does everything else (masks, positions, final norm).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from modprompt.hooks import hooked

logger = logging.getLogger(__name__)


def nbytes(value: Any) -> int:
    """Bytes held by the tensors in a block output (a tensor, or a tuple/list holding tensors)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    return 0


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stored: int = 0
    evicted: int = 0
    blocks_skipped: int = 0
    blocks_run: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class LRUBytes:
    """A least-recently-used map bounded by the bytes of its values (0: stores nothing)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Any | None:
        item = self._items.get(key)
        if item is None:
            return None
        self._items.move_to_end(key)
        return item[0]

    def put(self, key: Hashable, value: Any, size: int) -> bool:
        """Store ``value``; False (and nothing stored) when it alone exceeds the bound."""
        if size > self.max_bytes:
            return False
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
        self._items[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped
            self.evicted += 1
        return True

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


class LayerCache:
    """Block inputs by ``(dataset, chunk, layer, prefix hash)``; see the module docstring."""

    def __init__(self, max_bytes: int) -> None:
        self._store = LRUBytes(max_bytes)
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self._store.max_bytes > 0

    @property
    def bytes(self) -> int:
        return self._store.bytes

    def lookup(self, dataset: str, chunk: int, prefixes: list[bytes], below: int) -> tuple[int, Any]:
        """The deepest cached block input ``1 <= layer <= below`` for these prompt-prefix hashes.

        ``prefixes[l]`` hashes the prompts of layers ``< l``. Returns ``(layer, output of block layer - 1)``,
        or ``(0, None)`` when nothing is cached.
        """
        for layer in range(min(below, len(prefixes) - 1), 0, -1):
            value = self._store.get((dataset, chunk, layer, prefixes[layer]))
            if value is not None:
                self.stats.hits += 1
                return layer, value
        self.stats.misses += 1
        return 0, None

    def store(self, dataset: str, chunk: int, layer: int, prefix: bytes, output: Any) -> None:
        if self._store.put((dataset, chunk, layer, prefix), output, nbytes(output)):
            self.stats.stored += 1
        self.stats.evicted = self._store.evicted

    def clear(self) -> None:
        self._store.clear()


class _Replay(nn.Module):
    """Stands in for a block and returns a fixed output; other attributes come from the real block."""

    def __init__(self, block: nn.Module, output: Any) -> None:
        super().__init__()
        object.__setattr__(self, "_real", block)  # not a submodule: the stand-in owns no weights
        object.__setattr__(self, "_output", output)

    def forward(self, *args, **kwargs) -> Any:
        return self._output

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Model code may read block attributes in its loop (e.g. an attention type).
            return getattr(object.__getattribute__(self, "_real"), name)


@contextmanager
def start_at(blocks: nn.ModuleList, layer: int, output: Any) -> Iterator[None]:
    """Within the context, a forward pass skips blocks ``< layer``: block ``layer`` receives ``output``.

    ``output`` must be what block ``layer - 1`` returned for the same inputs and prompts below ``layer``.
    Block ``layer`` must not change its input in place (prompt injection replaces it with a new tensor).
    """
    if layer == 0:
        yield
        return
    originals = [blocks[j] for j in range(layer)]
    try:
        for j in range(layer):
            blocks[j] = _Replay(originals[j], output)
        yield
    finally:
        for j, block in enumerate(originals):
            blocks[j] = block


def capture_output(block: nn.Module, into: list) -> AbstractContextManager[None]:
    """Append what ``block`` returns to ``into`` for every call inside the context."""
    return hooked([(block, lambda module, args, output: into.append(output))])
