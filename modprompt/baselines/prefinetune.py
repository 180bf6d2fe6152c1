"""MUPPET-style pre-finetuning (Aghajanyan et al., 2021): multi-task full fine-tuning before few-shot.

The whole backbone and the MRC span head train on the upstream mixture in the unified MRC format,
through the same :class:`~modprompt.training.trainer.MultiTaskTrainer` as prompt pre-training (its
sampler, exact checkpoint/resume and progress reporting), with MUPPET's two changes:

* heterogeneous batches: every example of a batch draws its own task (``train.mixed_batches``);
* loss scaling: each example's loss is divided by ``log n``, n being the number of answers it could
  give, so that a model guessing uniformly has the same loss on every task (MUPPET §3.2 scales task
  i's loss by 1 / log n(i), n(i) its number of classes). Here n is the number of candidate start
  positions: an option task's options (one candidate per option), and an extractive question's
  passage tokens, the analogue of classes for a span head. Under uniform logits every example's
  scaled start-plus-end loss is then exactly 2.

The pre-finetuned backbone and head are saved in ``RUN_DIR/model`` when the run finishes; downstream,
few-shot full fine-tuning starts from them (:meth:`SpanModel.from_pretrained`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model
from torch import nn

from modprompt.backbone import Backbone, check_backbone, load_backbone
from modprompt.data.encoding import IGNORE_INDEX, EncodingConfig, MRCEncoder
from modprompt.device import resolve_device
from modprompt.head import SpanHead, span_loss
from modprompt.saved import read_folder_config, write_folder
from modprompt.training.trainer import MultiTaskObjective, MultiTaskTrainer, TrainConfig
from modprompt.training.upstream import UpstreamRunConfig, start_run

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_DIR = "model"
CONFIG_NAME = "prefinetuned.json"
BACKBONE_WEIGHTS = "backbone.safetensors"
HEAD_WEIGHTS = "head.safetensors"


@dataclass
class PrefinetuneConfig(UpstreamRunConfig):
    """Everything a pre-finetuning run needs; stored as JSON (see ``modprompt/configs``)."""

    lr: float = 2e-5  # the backbone's
    lr_head: float = 1e-4  # the span head starts from scratch
    weight_decay: float = 0.01  # on the backbone's matrices, not on biases, norms or the head
    loss_scaling: bool = True
    train: TrainConfig = field(default_factory=lambda: TrainConfig(mixed_batches=True))

    def __post_init__(self) -> None:
        if not self.train.mixed_batches:
            raise ValueError("pre-finetuning trains on heterogeneous batches: train.mixed_batches must be true")


class SpanModel(nn.Module):
    """A trainable backbone under the MRC span head: full fine-tuning."""

    def __init__(self, backbone: Backbone, head: SpanHead | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head if head is not None else SpanHead(backbone.hidden_size)

    def forward(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.backbone(batch["input_ids"], batch["attention_mask"]))

    # -- the pre-finetuned model: body and head weights + the backbone they start from -------------------

    def save_pretrained(self, directory: str | Path, source: str) -> Path:
        """Write the backbone body's and the head's weights, and which backbone ``source`` they fine-tune.

        Weights, not a Hugging Face ``save_pretrained`` folder: an encoder-decoder backbone's body is its
        encoder alone, which Hugging Face cannot load back as a model, and a saved decoder body would lose
        the architecture name ``load_backbone`` reads causality from. Loading rebuilds the source backbone
        and overwrites every weight, which works the same for all three backbone kinds.
        """
        meta = {"source": source, "backbone": self.backbone.info.to_dict()}
        weights = {BACKBONE_WEIGHTS: self.backbone.body, HEAD_WEIGHTS: self.head.state_dict()}
        return write_folder(directory, CONFIG_NAME, FORMAT_VERSION, meta, weights)

    @classmethod
    def from_pretrained(cls, directory: str | Path, backbone: Backbone | str | Path | None = None) -> SpanModel:
        """The pre-finetuned model saved in ``directory``.

        ``backbone``: a loaded backbone whose body weights are overwritten in place (it keeps its mode and
        ``requires_grad``), or the name or folder of one to load (trainable) instead of the recorded source.
        """
        directory = Path(directory)
        meta = read_folder_config(directory, CONFIG_NAME, FORMAT_VERSION, "pre-finetuned model")
        if not isinstance(backbone, Backbone):
            backbone = load_backbone(backbone or meta["source"], freeze=False)
        check_backbone(meta["backbone"], backbone, f"pre-finetuned model {directory}")
        load_model(backbone.body, str(directory / BACKBONE_WEIGHTS))
        head = SpanHead(backbone.hidden_size)
        head.load_state_dict(load_file(directory / HEAD_WEIGHTS))
        return cls(backbone, head)


def log_option_scaled_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean over answered examples of span loss / log(number of candidate start positions).

    At least two candidates are assumed, so an example with a single candidate is not divided by zero.
    """
    losses = span_loss(start_logits, end_logits, batch, reduction="none")
    candidates = batch["start_candidates"].sum(-1).clamp(min=2).to(losses.dtype)
    answered = batch["start_positions"] != IGNORE_INDEX
    return (losses / candidates.log()).sum() / answered.sum().clamp(min=1)


class PrefinetuneObjective(MultiTaskObjective):
    """Span loss (log-scaled per example) of the whole backbone and head; nothing is frozen."""

    def __init__(
        self,
        model: SpanModel,
        encoder: MRCEncoder,
        lr: float,
        lr_head: float,
        weight_decay: float,
        loss_scaling: bool = True,
    ) -> None:
        self.module = model
        self.model = model
        self.encoder = encoder
        self.lr = lr
        self.lr_head = lr_head
        self.weight_decay = weight_decay
        self.loss_scaling = loss_scaling
        model.backbone.body.requires_grad_(True)
        # No dropout, as in every few-shot method (modprompt.adapt.methods): the same network everywhere,
        # and a run that is deterministic given its seed, so that it resumes exactly.
        model.eval()

    def param_groups(self) -> list[dict]:
        body = list(self.model.backbone.body.parameters())
        return [
            {"params": [p for p in body if p.ndim >= 2], "lr": self.lr, "weight_decay": self.weight_decay},
            {"params": [p for p in body if p.ndim < 2], "lr": self.lr, "weight_decay": 0.0},
            {"params": list(self.model.head.parameters()), "lr": self.lr_head, "weight_decay": 0.0},
        ]

    def loss(self, batch: dict, tasks: list[str], step: int, generator: torch.Generator) -> torch.Tensor:
        start, end = self.model(batch)
        if self.loss_scaling:
            return log_option_scaled_loss(start, end, batch)
        return span_loss(start, end, batch)

    def forward(self, batch: dict, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model(batch)


# -- the multi-task stage ------------------------------------------------------------------------


def build_objective(config: PrefinetuneConfig, device: torch.device | str = "cpu") -> PrefinetuneObjective:
    """The trainable backbone (seeded fresh head) on ``device`` and its pre-finetuning objective, as
    ``config`` describes."""
    backbone = load_backbone(config.backbone, freeze=False)
    torch.manual_seed(config.train.seed)
    model = SpanModel(backbone).to(device)
    encoder = MRCEncoder(backbone.tokenizer, EncodingConfig(config.max_length), device)
    return PrefinetuneObjective(model, encoder, config.lr, config.lr_head, config.weight_decay, config.loss_scaling)


def prefinetune(
    config: PrefinetuneConfig,
    run_dir: str | Path,
    data_root: Path,
    until: int | None = None,
    device: torch.device | str = "cpu",
    progress: bool | None = None,
) -> dict:
    """Pre-finetune (or resume) in ``run_dir`` on ``device``, stopping at step ``until`` if given.

    The model is saved to ``run_dir/model`` once the run has finished. The summary adds the number
    of trained parameters to the trainer's budget figures (steps, examples, tokens, seconds). ``progress``: a
    bar over the steps (None: only when stderr is a terminal).
    """
    device = resolve_device(device)
    run_dir, tasks, train, held_out = start_run(config, run_dir, data_root)
    objective = build_objective(config, device)
    model = objective.model
    trainer = MultiTaskTrainer(objective, config.train, train, held_out, run_dir)
    trainable = sum(p.numel() for p in trainer.params.values())
    logger.info("pre-finetuning %d parameters of %s on %d upstream tasks", trainable, config.backbone, len(tasks))
    summary = trainer.run(until, progress)
    summary["trainable_parameters"] = trainable
    if trainer.rank == 0 and summary["finished"]:
        model.save_pretrained(run_dir / MODEL_DIR, config.backbone)
    return summary
