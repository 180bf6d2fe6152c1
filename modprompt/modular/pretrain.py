"""Multi-task pre-training of a deep modular prompt bank (MP2 stage 0).

The backbone stays frozen; the bank's modules and projections, the per-task routers and the MRC head
train on the upstream mixture, one uniformly drawn task per micro-batch (as in MP2), and routing is a
relaxed-Bernoulli sample whose temperature anneals over the run (as in MP2).

Where this departs from MP2, and why (measured in ``benchmarks/results/pretrain-probes.md``):

* MP2 trains for about 1M steps; a 2-core CPU affords a few thousand. The learning rates are the
  config's (``modprompt/configs/pretrain-gemma.json``), far above what a million-step run uses, and the
  router's is the largest, so that routes can move in the few hundred updates each task gets.
* ``train.grad_accum`` micro-batches per step, each of one task, so one step updates several tasks'
  routers at the cost of one batch; a micro-batch of one task is also the layout with least padding.
* ``init_from`` warm-starts the modules, projection, layer scales and head from an earlier bank
  (the routers start fresh), so a short run starts from that bank's quality instead of from noise.
* Extractive examples whose answer the truncation to ``max_length`` cuts away are dropped before
  training (they would train nothing yet count as seen); the count per task is kept in the bank's
  training record.
* ``route_entropy_weight`` (0 by default) adds the mean normalised entropy of the batch's routes to the
  loss, a pull towards sparse routes that MP2 does not have.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from modprompt.backbone import load_backbone
from modprompt.data.encoding import EncodingConfig, MRCEncoder, drop_unreachable
from modprompt.device import resolve_device
from modprompt.head import span_loss
from modprompt.modular.config import ModularPromptConfig
from modprompt.modular.model import ModularPromptModel
from modprompt.modular.router import annealed_temperature, route_weights
from modprompt.training.trainer import MultiTaskObjective, MultiTaskTrainer, TrainConfig
# upstream_data: benchmarks/route_ablation.py (the bank issue's file) still imports it from here
from modprompt.training.upstream import UpstreamRunConfig, start_run, upstream_data  # noqa: F401

logger = logging.getLogger(__name__)


@dataclass
class PretrainConfig(UpstreamRunConfig):
    """Everything a pre-training run needs; stored as JSON (see ``modprompt/configs``)."""

    lr_router: float = 5e-4
    lr_prompt: float = 1e-4
    #: a saved bank whose modules, projection, layer scales and head start the run (the routers start fresh)
    init_from: str | None = None
    #: weight of the routes' mean normalised entropy in the loss (0: MP2's loss alone)
    route_entropy_weight: float = 0.0
    num_modules: int = 8
    num_tokens: int = 16
    rank: int = 16
    router: str = "per_layer"
    temperature_start: float = 1.0
    temperature_end: float = 0.1
    train: TrainConfig = field(default_factory=TrainConfig)

    def prompt_config(self, num_layers: int, hidden_size: int) -> ModularPromptConfig:
        return ModularPromptConfig(
            num_layers=num_layers,
            hidden_size=hidden_size,
            num_modules=self.num_modules,
            num_tokens=self.num_tokens,
            rank=self.rank,
            router=self.router,
            temperature_start=self.temperature_start,
            temperature_end=self.temperature_end,
        )


class ModularPromptObjective(MultiTaskObjective):
    """Span loss of a modular-prompt model under sampled routing; the backbone never trains."""

    def __init__(
        self,
        model: ModularPromptModel,
        encoder: MRCEncoder,
        lr_router: float,
        lr_prompt: float,
        steps: int,
        route_entropy_weight: float = 0.0,
    ):
        self.module = model
        self.model = model
        self.encoder = encoder
        self.lr_router = lr_router
        self.lr_prompt = lr_prompt
        self.steps = steps
        self.route_entropy_weight = route_entropy_weight
        model.backbone.freeze()

    def param_groups(self) -> list[dict]:
        m = self.model
        return [
            {"params": [m.router.logits], "lr": self.lr_router},
            {"params": [*m.bank.parameters(), *m.head.parameters()], "lr": self.lr_prompt},
        ]

    def temperature(self, step: int) -> float:
        c = self.model.config
        return annealed_temperature(step, self.steps, c.temperature_start, c.temperature_end)

    def loss(self, batch: dict, tasks: list[str], step: int, generator: torch.Generator) -> torch.Tensor:
        task_ids = self.model.task_ids(tasks)
        start, end = self.model(batch, task_ids, self.temperature(step), generator)
        loss = span_loss(start, end, batch)
        if self.route_entropy_weight:
            loss = loss + self.route_entropy_weight * route_entropy(self.model.router.logits[task_ids]).mean()
        return loss

    def forward(self, batch: dict, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(batch, self.model.task_ids(tasks))


def route_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Normalised entropy (1 = uniform) of the inference routes of router logits (..., K), per route."""
    weights = route_weights(logits)
    return -(weights * weights.clamp_min(1e-12).log()).sum(-1) / math.log(weights.shape[-1])


def build_model(
    config: PretrainConfig, tasks: list[str], seed: int, device: torch.device | str = "cpu"
) -> tuple[ModularPromptModel, MRCEncoder]:
    """The seeded bank, routers and head on the frozen backbone, on ``device``, and their encoder."""
    backbone = load_backbone(config.backbone)
    torch.manual_seed(seed)
    model = ModularPromptModel(backbone, config.prompt_config(backbone.num_layers, backbone.hidden_size), tasks)
    encoder = MRCEncoder(backbone.tokenizer, EncodingConfig(config.max_length, config.num_tokens), device)
    return model.to(device), encoder


def pretrain(
    config: PretrainConfig,
    run_dir: str | Path,
    data_root: Path,
    until: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> dict:
    """Train (or resume) a bank in ``run_dir`` on ``device``, stopping at step ``until`` if given.

    The bank is saved to ``run_dir/bank`` whenever a call ends, finished or not. ``progress``: a bar over the
    steps (None: only when stderr is a terminal).
    """
    device = resolve_device(device)
    run_dir, tasks, train, held_out = start_run(config, run_dir, data_root)
    model, encoder = build_model(config, tasks, config.train.seed, device)
    if config.init_from:
        model.load_weights(config.init_from, router=False)
    else:
        sample = [example for name in tasks for example in train[name][:2]]
        model.calibrate(encoder.collate(encoder.encode_all(sample)))
    unreachable = {}
    for name in tasks:
        train[name], unreachable[name] = drop_unreachable(train[name], encoder)
        if unreachable[name]:
            logger.info("%s: dropped %d training examples whose answer is cut away at max_length %d",
                        name, unreachable[name], config.max_length)  # fmt: skip
    objective = ModularPromptObjective(
        model, encoder, config.lr_router, config.lr_prompt, config.train.steps, config.route_entropy_weight
    )
    trainer = MultiTaskTrainer(objective, config.train, train, held_out, run_dir)
    summary = trainer.run(until, progress) | {"unreachable_dropped": {k: v for k, v in unreachable.items() if v}}
    if trainer.rank == 0:
        keys = ("finished", "steps", "examples_seen", "tokens_seen", "train_seconds", "mean_held_out", "unreachable_dropped")
        model.save_pretrained(run_dir / "bank", training={k: summary[k] for k in keys} | {"config": config.to_dict()})
    return summary
