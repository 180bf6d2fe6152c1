"""Few-shot adaptation of a pre-trained prompt bank (MP2) and of the baselines, under one loop.

``config`` (AdaptConfig), ``methods`` (one class per method, the METHODS registry, saving and loading
the adapted parameters), ``loop`` (training with early stopping on the dev set), ``run`` (one run end
to end: :func:`adapt`, :func:`load_adapted`), ``predict`` (a user's file -> JSON lines), ``cli``.
"""

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.methods import METHODS, AdaptMethod, Stage, create_method, register_method
from modprompt.adapt.run import adapt, load_adapted

# Registers the Child-Tuning and pre-finetuning methods (child-f, child-d, prefinetune) beside the others.
import modprompt.baselines.adapt_methods  # noqa: E402,F401  isort: skip

__all__ = [
    "AdaptConfig",
    "AdaptMethod",
    "METHODS",
    "Stage",
    "adapt",
    "create_method",
    "load_adapted",
    "register_method",
]
