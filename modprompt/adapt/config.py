"""Settings of one few-shot adaptation run (``modprompt adapt``), the same for every method.

Learning rates are per kind of parameter, so one config serves every method and a method uses only the
ones it trains. Defaults and why:

* ``lr_router`` 0.2: a router is 8 (shared) or layers × 8 logits behind a sigmoid and a relaxed-Bernoulli
  sample whose logistic noise has a standard deviation near 1.8; at 0.2 per Adam step a logit reaches a
  confident ±4 in about 20 steps, a few epochs of a 16-shot task (MP2 and black-box tuning also move
  routing logits with large steps).
* ``lr_prompt`` 1e-3: MP2 stage 2 tunes the pre-trained bank's modules and projections at the rate the
  released bank was pre-trained with (``modprompt/configs/pretrain-gemma.json``): they start from a good
  point and few-shot runs are short.
* ``lr_soft_prompt`` 1e-2: prompts trained from scratch (``pt``, ``deep-pt``) are measured in units of the
  hidden-state RMS at their layer (see :mod:`modprompt.adapt.methods`), so 1e-2 is a 1% step of the
  typical hidden size on every backbone (P-tuning v2 uses 5e-3 to 1e-2).
* ``lr_head`` 1e-3: a fresh span head (``pt``, ``deep-pt``, ``ft``) is one linear layer.
* ``lr_backbone`` 2e-5: full fine-tuning, the usual rate for a few-shot run of a pre-trained model.

The schedule is constant: early stopping on the dev set decides when a run ends, and a decaying schedule
would tie the learning rate to ``max_steps``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from modprompt.config_utils import config_from_dict


@dataclass
class AdaptConfig:
    method: str
    seed: int = 0
    #: examples per label drawn for train (and again for dev) by tasks without official few-shot files
    k_per_label: int = 16
    max_length: int = 256
    #: passage tokens kept at least: a task whose query and options leave fewer within ``max_length``
    #: (CSLDCP's 67 or IFLYTEK's 119 label words) gets a longer ``max_length`` for the run, logged
    min_passage_tokens: int = 128
    #: prompt placeholders for ``pt``/``deep-pt``; ``None``: the bank's when one is given, else 16.
    #: Bank methods always use the bank's.
    num_tokens: int | None = None
    #: ``mp2`` stage 1 only: a router shared by all layers (K numbers) instead of one per layer
    router_shared: bool = False
    #: ``mp2`` stage 2 only: which bank tensors to tune, "modules", "projection" or "both"
    mp2_tune: str = "both"
    lr_router: float = 0.2
    lr_prompt: float = 1e-3
    lr_soft_prompt: float = 1e-2
    lr_head: float = 1e-3
    lr_backbone: float = 2e-5
    #: deep-pt's initial prompts, in units of each layer's hidden-state RMS
    init_std: float = 0.02
    #: ``prefinetune`` only: the pre-finetuned model folder (``RUN_DIR/model`` of ``modprompt prefinetune``)
    prefinetuned: str | None = None
    batch_size: int = 8
    max_epochs: int = 20
    #: a cap on the optimiser steps of each stage, on top of ``max_epochs`` (``None``: no cap). 0 trains
    #: nothing: the run scores the method's starting point, which shows what few-shot tuning adds to it
    max_steps: int | None = None
    #: steps between dev evaluations; ``None``: once per epoch
    eval_every: int | None = None
    #: dev evaluations without improvement before a stage stops
    patience: int = 4
    max_grad_norm: float = 1.0
    eval_batch_size: int = 16
    #: CPU budget caps, the same for every method: the first N of a fixed shuffle of the test (dev) set;
    #: ``None``: all of it
    test_limit: int | None = None
    dev_limit: int | None = None

    def __post_init__(self) -> None:
        if self.mp2_tune not in ("modules", "projection", "both"):
            raise ValueError(f"mp2_tune must be 'modules', 'projection' or 'both', not {self.mp2_tune!r}")
        for name in ("k_per_label", "max_length", "batch_size", "max_epochs", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("num_tokens", "max_steps", "eval_every", "test_limit", "dev_limit"):
            value, lowest = getattr(self, name), 0 if name == "max_steps" else 1
            if value is not None and value < lowest:
                raise ValueError(f"{name} must be at least {lowest} or None, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdaptConfig:
        return config_from_dict(cls, data, "adaptation")
