"""The one progress display of modprompt's long loops: a bar with the count, the latest loss and dev score, and ETA.

``modprompt pretrain``, ``prefinetune``, ``adapt``, ``predict``, ``bbt`` and the benchmarks' grids show the same
bar: steps, evaluations, batches or runs done of the total, the latest ``loss`` and ``dev`` score (where the
loop has them) and tqdm's rate and ETA. It is shown only where it can be read: ``show=None`` means "when
stderr is a terminal", and the commands' ``--quiet`` passes ``False``. The log lines stay as they are: while
the bar is shown they are written above it (``logging_redirect_tqdm``), and without it nothing changes.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


class Progress:
    """One bar over ``total`` units (``unit``: "step", "eval", "batch", "run"), or nothing when not shown."""

    def __init__(self, total: int, desc: str, unit: str = "step", show: bool | None = None, initial: int = 0) -> None:
        show = sys.stderr.isatty() if show is None else show
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, disable=not show)
        self.postfix: dict[str, str] = {}

    def step(self, loss: float | None = None, n: int = 1, **values: float | str) -> None:
        """``n`` more units done; ``loss`` and any other ``values`` (e.g. tokens/s) replace the shown ones."""
        self._set(loss=loss, **values)
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(n)

    def dev(self, score: float) -> None:
        """The latest dev score."""
        self.note(dev=score)

    def note(self, **values: float | str) -> None:
        """Show ``values`` (e.g. the loss of a logged window, tokens/s) beside the count."""
        self._set(**values)
        self.bar.set_postfix(self.postfix)

    def _set(self, **values: float | str | None) -> None:
        for name, value in values.items():
            if value is not None:
                self.postfix[name] = f"{value:.4f}" if isinstance(value, float) else str(value)

    @contextlib.contextmanager
    def shown(self) -> Iterator[Progress]:
        """The bar while the block runs, with log lines written above it; closed afterwards."""
        try:
            if self.bar.disable:
                yield self
            else:
                with logging_redirect_tqdm():
                    yield self
        finally:
            self.bar.close()
