"""Few-shot adaptation of a pre-trained prompt bank (MP2) and of the baselines, under one loop.

``config`` (AdaptConfig), ``registry`` (the methods by name: METHODS), ``methods`` (one class per method;
``AdaptMethod.save_pretrained`` / ``from_pretrained`` save and reopen the adapted parameters), ``loop``
(training for a step budget, selecting on the dev set), ``run`` (one run end to end: :func:`adapt`),
``predict`` (a user's file -> JSON lines), ``cli``.

The names below load on first use, so that the ``modprompt`` parser (which reads AdaptConfig's
defaults) imports no torch: ``modprompt --help`` answers at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "AdaptConfig": "modprompt.adapt.config",
    "AdaptMethod": "modprompt.adapt.methods",
    "METHODS": "modprompt.adapt.registry",
    "Stage": "modprompt.adapt.methods",
    "create_method": "modprompt.adapt.methods",
    "register_method": "modprompt.adapt.registry",
    "adapt": "modprompt.adapt.run",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # the same names, for type checkers (``as`` marks them as re-exported)
    from modprompt.adapt.config import AdaptConfig as AdaptConfig
    from modprompt.adapt.methods import AdaptMethod as AdaptMethod
    from modprompt.adapt.methods import Stage as Stage
    from modprompt.adapt.methods import create_method as create_method
    from modprompt.adapt.registry import METHODS as METHODS
    from modprompt.adapt.registry import register_method as register_method
    from modprompt.adapt.run import adapt as adapt


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
