"""Few-shot adaptation methods: what trains, how prompts enter the backbone, and the adapted files.

Every method is an :class:`AdaptMethod`: a module built from a backbone (plus the pre-trained bank for
the bank methods) that maps a batch to start/end logits through the one MRC span head, and that lists
its training :class:`Stage` s (parameter groups with their learning rates). The training loop
(:mod:`modprompt.adapt.loop`) knows nothing else about a method, so a new one is a class registered by
name (:func:`~modprompt.adapt.registry.register_method`).

Methods (trainable numbers for Gemma 3 270M: 18 layers, hidden 640, K 8, n 16, rank 16):

* ``mp2`` (221,328): MP2's two stages on the pre-trained bank. Stage 1 learns a fresh router for the
  task (per-layer, or shared with ``router_shared``) under relaxed-Bernoulli routing whose temperature
  anneals as in pre-training; the bank, head and backbone are frozen. Stage 2 freezes the router, routes
  with its sigmoid (as at test time) and tunes the bank's modules and/or projections (``mp2_tune``).
* ``route-only`` (8): only a router shared by all layers, K numbers.
* ``route-per-layer`` (144): only a per-layer router, layers × K numbers.
* ``pt`` (11,522; 52,482 with ``span_head`` bilinear): vanilla prompt tuning, n soft tokens at the input
  layer plus a fresh head.
* ``deep-pt`` (185,602; 226,562 bilinear): free prompts at every layer trained from scratch plus a fresh head;
  no bank. Deep prompts as P-tuning v2 has them, in MP2's form (see :class:`DeepPromptTuning`).
* ``ft`` (268,099,458: every backbone weight + head; 268,140,418 bilinear): full fine-tuning with a fresh head
  and no prompts.

The bank methods reuse the bank's pre-trained MRC head, frozen: it was trained with the bank on every
upstream task in the same MRC format, so it is part of the pre-trained reader, and keeping it frozen
leaves route-only at exactly K trainable numbers and MP2's stage 2 tuning only the prompts, as in MP2.
The bank is copied into memory; the files on disk are never written. The methods without a bank train
a freshly initialised head, which they could not do without: of ``AdaptConfig.span_head``, by default the
linear head of the bank's shape (2 × hidden + 2 numbers), or the bilinear one (2 × hidden + 2 + 2 × hidden ×
32: 42,242 on Gemma), which scores a span with its end token's state too; measured worse on frozen Gemma,
:mod:`modprompt.head` says where and why. A run saved before ``span_head`` existed had, and reopens with, the
linear head. ``prefinetune`` keeps its pre-finetuned model's linear head.

The backbone runs in eval mode (no dropout) for every method, ``ft`` included, so that every method
sees the same network and a run is deterministic given its seed.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file
from torch import nn

from modprompt.adapt.config import METHOD_SETTINGS, AdaptConfig
from modprompt.adapt.registry import METHODS, register_method
from modprompt.backbone import Backbone, check_backbone, resolve_backbone
from modprompt.checksum import file_sha256
from modprompt.data.encoding import EncodingConfig, MRCEncoder
from modprompt.data.mrc import MRCExample
from modprompt.device import resolve_device
from modprompt.head import make_span_head
from modprompt.hooks import hooked
from modprompt.modular.model import PROMPT_OFFSET, ModularPromptModel, PromptInjector, layer_rms, read_bank_config
from modprompt.modular.model import SHIPPED_BANKS
from modprompt.modular.model import WEIGHTS_NAME as BANK_WEIGHTS
from modprompt.modular.router import annealed_temperature
from modprompt.saved import read_folder_config, write_folder

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_NAME = "adapted_config.json"
WEIGHTS_NAME = "adapted.safetensors"
DEFAULT_NUM_TOKENS = 16
#: training examples whose hidden states set deep-pt's prompt scales (:meth:`DeepPromptTuning.prepare`)
CALIBRATION_EXAMPLES = 16


@dataclass
class Stage:
    """One training stage: the parameter groups that train (each with its ``lr``), nothing else.

    ``temperature(step, total_steps)`` set: routing is a relaxed-Bernoulli sample at that temperature
    while training; ``None``: the forward pass is the inference one. ``optimizer(param_groups)`` builds
    the stage's optimiser; ``None``: AdamW without weight decay (a method with its own update rule,
    e.g. Child-Tuning, passes its optimiser here).
    """

    name: str
    param_groups: list[dict]
    temperature: Callable[[int, int], float] | None = None
    optimizer: Callable[[list[dict]], torch.optim.Optimizer] | None = None

    def parameters(self) -> list[nn.Parameter]:
        unique: dict[int, nn.Parameter] = {}
        for group in self.param_groups:
            for p in group["params"]:
                unique.setdefault(id(p), p)
        return list(unique.values())


class AdaptMethod(nn.Module, ABC):
    """A backbone adapted to one task; subclasses define the trainable parts and how prompts enter."""

    name: ClassVar[str]
    needs_bank: ClassVar[bool] = False
    #: buffers that are part of the adapted state although they never train (e.g. prompt scales)
    extra_state: ClassVar[tuple[str, ...]] = ()
    #: the method trains a fresh span head of ``config.span_head``; else it keeps a pre-trained (linear) one
    fresh_head: ClassVar[bool] = False
    #: the fields of :data:`~modprompt.adapt.config.METHOD_SETTINGS` that this method reads
    settings: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, backbone: Backbone, config: AdaptConfig, task: str, bank_dir: str | Path | None = None):
        super().__init__()
        if self.needs_bank and bank_dir is None:
            raise ValueError(f"method {self.name!r} adapts a pre-trained prompt bank; give one (--bank)")
        if not self.fresh_head and config.span_head != "linear":
            raise ValueError(
                f"method {self.name!r} keeps the linear span head it was pre-trained with; "
                f"span_head {config.span_head!r} applies to a fresh head (pt, deep-pt, ft, child-f, child-d)"
            )
        self.config = config
        self.task = task
        self.bank_dir = Path(bank_dir).resolve() if bank_dir is not None else None
        self.backbone_info = backbone.info
        self.tokenizer = backbone.tokenizer

    # -- what subclasses define -------------------------------------------------------------------

    @property
    @abstractmethod
    def num_prompt_tokens(self) -> int:
        """Placeholders the encoder must leave after the first token (0: none)."""

    @abstractmethod
    def stages(self) -> list[Stage]:
        """The training stages, in order."""

    @abstractmethod
    def forward(
        self, batch: dict, tasks: list[str], temperature: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits; ``temperature`` set: sampled routing (training)."""

    def prepare(self, encoder: MRCEncoder, train: Sequence[MRCExample]) -> None:
        """Measure what the method needs from the task's training data before training (nothing by default)."""

    @property
    def device(self) -> torch.device:
        """Where the method's weights are (move it with ``.to(device)`` before taking its :meth:`encoder`)."""
        return next(self.parameters()).device

    def encoder(self) -> MRCEncoder:
        """The MRC encoder for this method: ``max_length`` of the config, this method's placeholders, and
        batches collated on the method's device; long extractive passages in windows unless
        ``long_passages`` is ``"cut"``."""
        config = EncodingConfig(
            self.config.max_length, self.num_prompt_tokens, windows=self.config.long_passages == "windows"
        )
        return MRCEncoder(self.tokenizer, config, self.device)

    # -- shared ---------------------------------------------------------------------------------------

    def trainable_parameters(self) -> int:
        """Numbers that adaptation trains, over all stages, each counted once."""
        unique = {id(p): p for stage in self.stages() for p in stage.parameters()}
        return sum(p.numel() for p in unique.values())

    def adapted_names(self) -> list[str]:
        """State-dict keys of what :meth:`save` writes: every trained parameter and ``extra_state``."""
        trained = {id(p) for stage in self.stages() for p in stage.parameters()}
        names = [name for name, p in self.named_parameters() if id(p) in trained]
        return names + list(self.extra_state)

    def identity(self) -> dict:
        """Method, task, config, backbone and bank identity: the JSON beside the adapted tensors."""
        bank = None
        if self.needs_bank:
            bank = {"path": str(self.bank_dir), "sha256": file_sha256(self.bank_dir / BANK_WEIGHTS)}
        return {
            "method": self.name,
            "task": self.task,
            "config": self.config.to_dict(),
            "backbone": self.backbone_info.to_dict(),
            "bank": bank,
            "num_prompt_tokens": self.num_prompt_tokens,
            "trainable_parameters": self.trainable_parameters(),
        }

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        """Write only the adapted tensors (safetensors) and :meth:`identity` plus ``extra`` (JSON)."""
        state = self.state_dict(keep_vars=True)
        meta = {**self.identity(), "tensors": self.adapted_names(), **(extra or {})}
        tensors = {k: state[k] for k in self.adapted_names()}
        return write_folder(directory, CONFIG_NAME, FORMAT_VERSION, meta, {WEIGHTS_NAME: tensors})

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        backbone: Backbone | str | Path | None = None,
        bank: str | Path | None = None,
        device: torch.device | str | None = None,
    ) -> AdaptMethod:
        """Reopen a saved adaptation, whatever its method: its backbone (the recorded one by default), its
        bank, its tensors, on ``device`` (:func:`~modprompt.device.resolve_device`; None: where the backbone is).

        A bank method needs the very bank it was adapted from: the recorded path by default, or ``bank``;
        a bank whose weights changed since (another sha256) is an error.
        """
        meta = read_adapted_config(directory)
        # The bank is checked before the backbone loads: a wrong bank should fail in a second, not after Gemma.
        bank_dir = None
        if meta["bank"] is not None:
            bank_dir = Path(bank or meta["bank"]["path"])
            weights = bank_dir / BANK_WEIGHTS
            if not weights.is_file():
                raise FileNotFoundError(
                    f"the bank {bank_dir} that {directory} was adapted from is not there; pass --bank"
                )
            if file_sha256(weights) != meta["bank"]["sha256"]:
                shipped = [p.parent for p in sorted(SHIPPED_BANKS.glob(f"*/{BANK_WEIGHTS}"))
                           if file_sha256(p) == meta["bank"]["sha256"]]  # fmt: skip
                hint = f"; the shipped bank {shipped[0]} is that one: pass --bank {shipped[0]}" if shipped else ""
                raise ValueError(
                    f"bank {bank_dir} is not the bank {directory} was adapted from (its sha256 differs){hint}"
                )
        backbone = resolve_backbone(backbone, meta["backbone"])
        check_backbone(meta["backbone"], backbone, f"adapted task {directory}")
        config = AdaptConfig.from_dict(meta["config"])
        if config.method not in METHODS:
            raise KeyError(f"{directory} was adapted with method {config.method!r}, which is not registered here")
        method = METHODS[config.method](backbone, config, meta["task"], bank_dir)
        method.load_adapted_tensors(directory)
        return method.to(resolve_device(device) if device is not None else backbone.device)

    def load_adapted_tensors(self, directory: str | Path) -> None:
        """Overwrite the adapted tensors with those saved in ``directory``."""
        path = Path(directory) / WEIGHTS_NAME
        weights = load_file(path)
        expected = set(self.adapted_names())
        if set(weights) != expected:
            raise ValueError(
                f"{path} does not hold what method {self.name!r} adapts: unexpected "
                f"{sorted(set(weights) - expected)}, missing {sorted(expected - set(weights))}"
            )
        state = self.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, value in weights.items():
                if state[name].shape != value.shape:
                    raise ValueError(
                        f"{path}: {name} has shape {tuple(value.shape)}, expected {tuple(state[name].shape)}"
                    )
                state[name].copy_(value)


def read_adapted_config(directory: str | Path) -> dict:
    """The JSON config of the adapted task saved in ``directory`` (method, task, backbone, bank, settings)."""
    return read_folder_config(directory, CONFIG_NAME, FORMAT_VERSION, "adapted task")


# -- bank methods: mp2, route-only, route-per-layer -------------------------------------------------


class _BankMethod(AdaptMethod):
    """A fresh router for the task over the pre-trained bank; bank, head and backbone frozen."""

    needs_bank = True
    settings = frozenset({"lr_router"})
    shared_router: ClassVar[bool]

    def __init__(self, backbone: Backbone, config: AdaptConfig, task: str, bank_dir: str | Path | None = None):
        super().__init__(backbone, config, task, bank_dir)
        backbone.freeze()
        self.model = ModularPromptModel.from_pretrained(self.bank_dir, backbone)
        self.model.requires_grad_(False)
        self.bank_tasks = list(self.model.tasks)
        self.model.replace_router([task], shared=self._shared())

    def _shared(self) -> bool:
        return self.shared_router

    @property
    def num_prompt_tokens(self) -> int:
        return self.model.config.num_tokens

    def route_stage(self) -> Stage:
        c = self.model.config
        return Stage(
            "route",
            [{"params": [self.model.router.logits], "lr": self.config.lr_router}],
            temperature=lambda step, total: annealed_temperature(step, total, c.temperature_start, c.temperature_end),
        )

    def stages(self) -> list[Stage]:
        return [self.route_stage()]

    def forward(self, batch, tasks, temperature=None, generator=None):
        return self.model(batch, self.model.task_ids(tasks), temperature, generator)


class MP2(_BankMethod):
    name = "mp2"
    settings = _BankMethod.settings | {"router_shared", "mp2_tune", "lr_prompt"}

    def _shared(self) -> bool:
        return self.config.router_shared

    def stages(self) -> list[Stage]:
        bank = self.model.bank
        tune = {"modules": [bank.modules_z], "projection": [bank.projection]}
        tune["both"] = tune["modules"] + tune["projection"]
        return [
            self.route_stage(),
            Stage("prompts", [{"params": tune[self.config.mp2_tune], "lr": self.config.lr_prompt}]),
        ]


class RouteOnly(_BankMethod):
    name = "route-only"
    shared_router = True


class RoutePerLayer(_BankMethod):
    name = "route-per-layer"
    shared_router = False


# -- baselines: pt, deep-pt, ft ---------------------------------------------------------------------


def _with_num_tokens(config: AdaptConfig, bank_dir: str | Path | None) -> AdaptConfig:
    """The config with a baseline's prompt length filled in: given, else the bank's (MP2's n), else 16."""
    if config.num_tokens is not None:
        return config
    n = DEFAULT_NUM_TOKENS
    if bank_dir is not None:
        n = int(read_bank_config(bank_dir)["prompt"]["num_tokens"])
    return replace(config, num_tokens=n)


class PromptTuning(AdaptMethod):
    """Vanilla prompt tuning (Lester et al.): n soft tokens replace the input embeddings of the placeholders.

    The soft tokens are peft's :class:`~peft.PromptEmbedding` with its ``SAMPLE_VOCAB`` initialisation
    (the input embeddings of n random vocabulary tokens). peft's ``PeftModel`` itself does not fit: it
    prepends the virtual tokens to the input, which shifts every position the MRC head reads and, for a
    causal backbone, changes what the first token sees. Here the encoder already leaves n placeholders
    right after the first token, so the soft tokens replace the placeholders' embeddings in place (a
    forward hook on the input-embedding module, present only during the call) and positions stay as they
    are. Replacing the embedding, rather than adding to the first block's input as the bank does, keeps
    this vanilla prompt tuning on BERT-like backbones too, where the embedding LayerNorm comes after.

    The parameters are stored divided by the RMS of their initial value (the ``scale`` buffer), so one
    learning rate means the same relative step on every backbone (see ``AdaptConfig.lr_soft_prompt``).
    """

    name = "pt"
    settings = frozenset({"num_tokens", "lr_soft_prompt", "lr_head"})
    extra_state = ("scale",)
    fresh_head = True

    def __init__(self, backbone: Backbone, config: AdaptConfig, task: str, bank_dir: str | Path | None = None):
        # peft only here: importing it takes seconds, and no other method needs it
        from peft import PromptEmbedding, PromptTuningConfig

        config = _with_num_tokens(config, bank_dir)
        super().__init__(backbone, config, task, None)
        self.backbone = backbone.freeze()
        n = config.num_tokens
        embeddings = backbone.body.get_input_embeddings()
        peft_config = PromptTuningConfig(
            num_virtual_tokens=n,
            token_dim=backbone.hidden_size,
            num_transformer_submodules=1,
            prompt_tuning_init="SAMPLE_VOCAB",
        )
        self.prompt = PromptEmbedding(peft_config, embeddings)
        with torch.no_grad():
            scale = self.prompt.embedding.weight.pow(2).mean().sqrt()
            self.prompt.embedding.weight.div_(scale)
        self.register_buffer("scale", scale.clone())
        self.register_buffer("indices", torch.arange(n), persistent=False)
        self.head = make_span_head(self.config.span_head, backbone.hidden_size)

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompt.embedding.num_embeddings

    def stages(self) -> list[Stage]:
        return [
            Stage(
                "prompt",
                [
                    {"params": list(self.prompt.parameters()), "lr": self.config.lr_soft_prompt},
                    {"params": list(self.head.parameters()), "lr": self.config.lr_head},
                ],
            )
        ]

    @contextmanager
    def _soft_tokens(self) -> Iterator[None]:
        soft = self.prompt(self.indices) * self.scale
        start, stop = PROMPT_OFFSET, PROMPT_OFFSET + soft.shape[0]

        def replace(module, args, output: torch.Tensor) -> torch.Tensor:
            prompt = soft.to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
            return torch.cat([output[:, :start], prompt, output[:, stop:]], dim=1)

        with hooked([(self.backbone.body.get_input_embeddings(), replace)]):
            yield

    def forward(self, batch, tasks, temperature=None, generator=None):
        with self._soft_tokens():
            hidden = self.backbone(batch["input_ids"], batch["attention_mask"])
        return self.head(hidden)


class DeepPromptTuning(AdaptMethod):
    """Free prompts at every layer, trained from scratch, plus a fresh head.

    Each layer's (n, hidden) prompt is added at the placeholders before the block, exactly as the bank's
    prompts are (:class:`~modprompt.modular.model.PromptInjector`), and scaled like the bank by the
    layer's hidden-state RMS, measured on the task's training examples (:meth:`prepare`): pre-norm
    decoders grow their residual stream with depth, and an unscaled prompt could not reach deep layers.
    So deep-pt and the bank methods differ only in pre-training.

    This is not P-tuning v2's form: P-tuning v2 prepends trainable key and value prefixes to every
    layer's attention, where these prompts are hidden states at placeholder positions (MP2's deep
    prompts). The hidden-state form is kept because the comparison this baseline exists for is with the
    bank, which uses it; the number of prompt tokens and layers is the same.
    """

    name = "deep-pt"
    settings = frozenset({"num_tokens", "lr_soft_prompt", "lr_head", "init_std"})
    extra_state = ("layer_scale",)
    fresh_head = True

    def __init__(self, backbone: Backbone, config: AdaptConfig, task: str, bank_dir: str | Path | None = None):
        config = _with_num_tokens(config, bank_dir)
        super().__init__(backbone, config, task, None)
        self.backbone = backbone.freeze()
        n = config.num_tokens
        self.prompts = nn.Parameter(torch.randn(backbone.num_layers, n, backbone.hidden_size) * config.init_std)
        self.register_buffer("layer_scale", torch.ones(backbone.num_layers))
        self.head = make_span_head(self.config.span_head, backbone.hidden_size)
        self.injector = PromptInjector(backbone.blocks)

    @property
    def num_prompt_tokens(self) -> int:
        return self.prompts.shape[1]

    def prepare(self, encoder: MRCEncoder, train: Sequence[MRCExample]) -> None:
        batch = encoder.collate(encoder.encode_all(train[:CALIBRATION_EXAMPLES]))
        self.layer_scale.copy_(layer_rms(self.backbone, batch))

    def stages(self) -> list[Stage]:
        return [
            Stage(
                "prompt",
                [
                    {"params": [self.prompts], "lr": self.config.lr_soft_prompt},
                    {"params": list(self.head.parameters()), "lr": self.config.lr_head},
                ],
            )
        ]

    def forward(self, batch, tasks, temperature=None, generator=None):
        prompts = (self.prompts * self.layer_scale[:, None, None]).unsqueeze(0)
        with self.injector.inject(prompts.expand(batch["input_ids"].shape[0], -1, -1, -1)):
            hidden = self.backbone(batch["input_ids"], batch["attention_mask"])
        return self.head(hidden)


class FineTuning(AdaptMethod):
    """Full fine-tuning: every backbone weight and a fresh head train; no prompts (encoded with 0 placeholders).

    The backbone given is deep-copied first, so the caller's (frozen, shared) backbone is never changed.
    The adapted file holds the whole backbone body: ``ft`` is the one method whose files are not tiny.
    """

    name = "ft"
    settings = frozenset({"lr_backbone", "lr_head"})
    fresh_head = True

    def __init__(self, backbone: Backbone, config: AdaptConfig, task: str, bank_dir: str | Path | None = None):
        super().__init__(backbone, config, task, None)
        self.backbone = copy.deepcopy(backbone)
        self.head = make_span_head(self.config.span_head, backbone.hidden_size)

    @property
    def num_prompt_tokens(self) -> int:
        return 0

    def stages(self) -> list[Stage]:
        return [
            Stage(
                "finetune",
                [
                    {"params": list(self.backbone.parameters()), "lr": self.config.lr_backbone},
                    {"params": list(self.head.parameters()), "lr": self.config.lr_head},
                ],
            )
        ]

    def forward(self, batch, tasks, temperature=None, generator=None):
        return self.head(self.backbone(batch["input_ids"], batch["attention_mask"]))


for _cls in (MP2, RouteOnly, RoutePerLayer, PromptTuning, DeepPromptTuning, FineTuning):
    register_method(_cls)


def unused_settings(method: str) -> list[str]:
    """The method-specific settings (:data:`~modprompt.adapt.config.METHOD_SETTINGS`) that ``method`` does
    not read."""
    return sorted(METHOD_SETTINGS - METHODS[method].settings)


def create_method(
    backbone: Backbone, config: AdaptConfig, task: str, bank_dir: str | Path | None = None
) -> AdaptMethod:
    """Build ``config.method`` for ``task``, its random parts initialised from ``config.seed``.

    A setting the method does not read (:func:`unused_settings`) is logged as ignored; ``modprompt adapt``
    refuses it outright.
    """
    cls = METHODS[config.method]
    defaults = AdaptConfig(config.method)
    ignored = [name for name in unused_settings(config.method) if getattr(config, name) != getattr(defaults, name)]
    if ignored:
        logger.warning("method %s does not read %s: ignored", config.method, ", ".join(sorted(ignored)))
    torch.manual_seed(config.seed)
    return cls(backbone, config, task, bank_dir)
