"""Settings of one few-shot adaptation run (``modprompt adapt``), the same for every method.

Each field's help sits beside it (``metadata["help"]``); ``modprompt adapt`` and ``benchmarks/fewshot.py``
generate their flags from it (:mod:`modprompt.config_flags`).

**Protocols.** ``protocol`` says how a run spends its budget and chooses its checkpoint
(:mod:`modprompt.adapt.loop` has the details):

* ``2`` (the default): one step budget for every method. ``max_steps`` (or ``max_epochs`` of the train
  split) is the whole run's; a multi-stage method's stages share it (mp2: 16 + 16 of 32), in whole blocks of
  ``eval_every`` steps, so every method gets the same dev evaluations: at step 0 and every ``eval_every``
  steps, 1 + ceil(budget / eval_every) in all (5 at 32 steps and ``eval_every`` 8). Every run trains its
  whole budget (no early stopping; ``patience`` is protocol 1's), and the checkpoint kept is the best on dev
  among its evaluations, step 0 included, ties to the later step. ``max_length`` is sized from the train
  and dev inputs only.
* ``1``: how runs before protocol 2 ran, kept so that their configs load and describe themselves as they
  ran (a saved config without ``protocol`` is protocol 1) and so that they can be reproduced: each stage
  has its own ``max_steps`` and its own step-0 evaluation (mp2: up to 32 + 32 steps), a stage stops after
  ``patience`` evaluations without improvement (4 unless set), ties keep the earlier step, and
  ``max_length`` was sized from the train, dev and test inputs.

**Settings added later**, which a saved config without them read as the runs before them ran:
``long_passages`` (``"cut"``: an extractive passage longer than ``max_length`` lost its end) and ``span_head``
(``"linear"``: :class:`~modprompt.head.SpanHead`).

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

The schedule is constant: a decaying schedule would tie the learning rate to the budget, and protocol 1's
runs, which early stopping ended at different steps, would each have seen another schedule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from modprompt.config_flags import flag_help
from modprompt.config_utils import config_from_dict

#: the protocol of new runs; a saved config without a ``protocol`` key ran under protocol 1
PROTOCOL = 2
PROTOCOLS = (1, 2)
#: the fields that only some methods read (each method names its own in ``AdaptMethod.settings``); the rest
#: are the loop's and the data's, read for every method
METHOD_SETTINGS = frozenset({
    "num_tokens", "router_shared", "mp2_tune", "lr_router", "lr_prompt", "lr_soft_prompt", "lr_head", "lr_backbone",
    "init_std", "prefinetuned",
})  # fmt: skip
#: protocol 1's patience when none was set (the default those runs had)
PROTOCOL1_PATIENCE = 4
#: what a saved config that lacks these keys ran with (they came later)
SAVED_BEFORE = {"protocol": 1, "long_passages": "cut", "span_head": "linear"}


@dataclass
class AdaptConfig:
    method: str = field(metadata=flag_help("the adaptation method (`modprompt adapt --help` lists them)"))
    seed: int = field(default=0, metadata=flag_help("few-shot split (FewCLUE: 0..4) and initialisation seed"))
    protocol: int = field(
        default=PROTOCOL,
        metadata=flag_help(
            "training protocol: 2, one step budget shared by a method's stages, no early stop, the best dev "
            "checkpoint (step 0 included, ties to the later step), max_length from train and dev; 1, as runs "
            "before it ran (a budget per stage, patience, ties to the earlier step, max_length also from test)",
            choices=PROTOCOLS,
        ),
    )
    k_per_label: int = field(
        default=16,
        metadata=flag_help("examples per label for train and for dev, for tasks without official few-shot files"),
    )
    max_length: int = field(default=256, metadata=flag_help("tokens per example (only the passage is cut)"))
    min_passage_tokens: int = field(
        default=128,
        metadata=flag_help(
            "passage tokens kept at least: a task whose query and options leave fewer within max_length "
            "(CSLDCP's 67 or IFLYTEK's 119 label words) gets a longer max_length for the run, logged"
        ),
    )
    long_passages: str = field(
        default="windows",
        metadata=flag_help(
            "extractive QA: a passage that does not fit max_length is read in overlapping 'windows' (training on "
            "those holding the answer, predicting the best span of all), or 'cut' at its end as before windows",
            choices=("windows", "cut"),
        ),
    )
    span_head: str = field(
        default="linear",
        metadata=flag_help(
            "the fresh span head of pt, deep-pt, ft, child-f and child-d: 'linear' (the bank's kind) or "
            "'bilinear' (a span also scored with its end token's state, modprompt.head.BilinearSpanHead; measured "
            "worse on Gemma, see modprompt/head.py); bank methods and prefinetune keep their own (linear) head",
            choices=("linear", "bilinear"),
        ),
    )
    num_tokens: int | None = field(
        default=None,
        metadata=flag_help(
            "prompt tokens of pt/deep-pt (default: the bank's when one is given, else 16); bank methods use the bank's"
        ),
    )
    router_shared: bool = field(
        default=False, metadata=flag_help("mp2: one router for all layers in stage 1 (K numbers)")
    )
    mp2_tune: str = field(
        default="both",
        metadata=flag_help(
            "mp2 stage 2 tunes the bank's 'modules', 'projection' or 'both'", choices=("modules", "projection", "both")
        ),
    )
    lr_router: float = field(
        default=0.2, metadata=flag_help("learning rate of routers (mp2 stage 1, route-only, route-per-layer)")
    )
    lr_prompt: float = field(
        default=1e-3, metadata=flag_help("learning rate of the bank's modules/projections in mp2 stage 2")
    )
    lr_soft_prompt: float = field(default=1e-2, metadata=flag_help("learning rate of pt's and deep-pt's prompts"))
    lr_head: float = field(default=1e-3, metadata=flag_help("learning rate of the fresh head of pt, deep-pt and ft"))
    lr_backbone: float = field(default=2e-5, metadata=flag_help("learning rate of ft's backbone"))
    init_std: float = field(
        default=0.02, metadata=flag_help("deep-pt's initial prompts, in units of each layer's hidden-state RMS")
    )
    prefinetuned: str | None = field(
        default=None,
        metadata=flag_help("prefinetune: the pre-finetuned model folder (RUN_DIR/model of `modprompt prefinetune`)"),
    )
    batch_size: int = field(default=8, metadata=flag_help("training examples per optimiser step"))
    max_epochs: int = field(
        default=20, metadata=flag_help("epochs of the train split in the step budget, before max_steps caps it")
    )
    max_steps: int | None = field(
        default=None,
        metadata=flag_help(
            "cap on the optimiser steps: of the whole run, shared by its stages (protocol 2), or of each stage "
            "(protocol 1); 0 trains nothing and scores the start, which shows what few-shot tuning adds to it"
        ),
    )
    eval_every: int | None = field(
        default=None, metadata=flag_help("steps between dev evaluations (default: one epoch)")
    )
    patience: int | None = field(
        default=None,
        metadata=flag_help(
            "protocol 1 only: dev evaluations without improvement before a stage stops "
            f"(default {PROTOCOL1_PATIENCE}); protocol 2 never stops early"
        ),
    )
    max_grad_norm: float = field(default=1.0, metadata=flag_help("gradient norm clip (0: none)"))
    eval_batch_size: int = field(default=16, metadata=flag_help("examples per batch when scoring dev and test"))
    #: CPU budget caps, the same for every method
    test_limit: int | None = field(
        default=None,
        metadata=flag_help("score only this many test examples (a fixed subset, the same for every method)"),
    )
    dev_limit: int | None = field(
        default=None, metadata=flag_help("select on only this many dev examples (a fixed subset)")
    )

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, not {self.protocol!r}")
        if self.protocol == 1 and self.patience is None:
            self.patience = PROTOCOL1_PATIENCE  # so that the config says what the run did
        if self.protocol >= 2 and self.patience is not None:
            raise ValueError(
                f"protocol {self.protocol} trains every run's whole budget, so patience (early stopping) does not "
                "apply; leave it unset, or ask for protocol 1"
            )
        if self.long_passages not in ("windows", "cut"):
            raise ValueError(f"long_passages must be 'windows' or 'cut', not {self.long_passages!r}")
        if self.span_head not in ("linear", "bilinear"):
            raise ValueError(f"span_head must be 'linear' or 'bilinear', not {self.span_head!r}")
        if self.mp2_tune not in ("modules", "projection", "both"):
            raise ValueError(f"mp2_tune must be 'modules', 'projection' or 'both', not {self.mp2_tune!r}")
        for name in ("k_per_label", "max_length", "batch_size", "max_epochs", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("num_tokens", "max_steps", "eval_every", "patience", "test_limit", "dev_limit"):
            value, lowest = getattr(self, name), 0 if name == "max_steps" else 1
            if value is not None and value < lowest:
                raise ValueError(f"{name} must be at least {lowest} or None, got {value}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AdaptConfig:
        """The config saved as ``data``; one saved without ``protocol`` ran under protocol 1 and reads as such, and
        one without ``long_passages`` or ``span_head`` cut long passages and had the linear head."""
        return config_from_dict(cls, {**SAVED_BEFORE, **data}, "adaptation")
