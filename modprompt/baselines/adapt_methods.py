"""Child-Tuning and pre-finetuning as few-shot adaptation methods (``modprompt adapt --method M``).

Each is ``ft`` (:class:`~modprompt.adapt.methods.FineTuning`: every backbone weight and the span head
train, the backbone in eval mode, AdamW without weight decay at ``lr_backbone`` / ``lr_head``) with
one change:

* ``child-f``: Child-Tuning_F's optimiser, a fresh Bernoulli gradient mask every step that keeps each
  entry with probability :data:`RESERVE_P` (seeded by the run's seed);
* ``child-d``: Child-Tuning_D's. Before training (:meth:`ChildTuningD.prepare`) the diagonal Fisher
  information of the transformer-block weights is measured on the task's whole training set, in
  batches of ``batch_size``; the top :data:`RESERVE_P` fraction is the child network and no other
  block weight ever changes. As in the reference implementation, which ranks only the parameters
  named ``layer``, the embeddings, the final norm and the head train in full;
* ``prefinetune``: starts from the backbone and span head that ``modprompt prefinetune`` trained on
  the upstream mixture (``AdaptConfig.prefinetuned``: its ``RUN_DIR/model``).

No weight decay, as for ``ft``, so that the comparison isolates the child network (the reference
used 0.01; :class:`~modprompt.baselines.child_tuning.ChildTuningAdamW` handles either correctly).
Importing this module registers the three methods (:mod:`modprompt.adapt.registry` imports it on its first lookup).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.methods import FineTuning, Stage
from modprompt.adapt.registry import register_method
from modprompt.backbone import Backbone
from modprompt.baselines.child_tuning import ChildTuningAdamW, child_masks, fisher_information
from modprompt.baselines.prefinetune import BACKBONE_WEIGHTS, SpanModel
from modprompt.checksum import file_sha256
from modprompt.data.encoding import EncodedExample, MRCEncoder
from modprompt.data.mrc import MRCExample
from modprompt.head import span_loss

#: Child-Tuning's keep probability (F) and child fraction (D): the reference run script's value.
RESERVE_P = 0.3


class ChildTuningF(FineTuning):
    """``ft`` whose every step keeps each gradient entry with probability RESERVE_P (scaled by 1/RESERVE_P)."""

    name = "child-f"

    def stages(self) -> list[Stage]:
        return [replace(stage, optimizer=self._optimizer) for stage in super().stages()]

    def _optimizer(self, param_groups: list[dict]) -> torch.optim.Optimizer:
        # On the weights' device: drawing a mask for all 268M gradients on the CPU would dominate a GPU step.
        generator = torch.Generator(self.device).manual_seed(self.config.seed)
        return ChildTuningAdamW(param_groups, weight_decay=0.0, mode="F", reserve_p=RESERVE_P, generator=generator)


class ChildTuningD(FineTuning):
    """``ft`` restricted, within the transformer blocks, to the weights of highest Fisher information."""

    name = "child-d"

    def __init__(self, backbone: Backbone, config: AdaptConfig, task: str, bank_dir: str | Path | None = None):
        super().__init__(backbone, config, task, bank_dir)
        self.child: dict[str, torch.Tensor] | None = None  # block parameter name -> mask, set by prepare

    def prepare(self, encoder: MRCEncoder, train: Sequence[MRCExample]) -> None:
        encoded = encoder.encode_all(train)
        size = self.config.batch_size

        def loss(items: Sequence[EncodedExample]) -> torch.Tensor:
            batch = encoder.collate(items)
            return span_loss(*self(batch, [e.example.task for e in items]), batch)

        batches = [encoded[i : i + size] for i in range(0, len(encoded), size)]
        fisher = fisher_information(self, loss, batches, dict(self.backbone.blocks.named_parameters()))
        self.child = child_masks(fisher, RESERVE_P)

    def stages(self) -> list[Stage]:
        return [replace(stage, optimizer=self._optimizer) for stage in super().stages()]

    def _optimizer(self, param_groups: list[dict]) -> torch.optim.Optimizer:
        if self.child is None:
            raise RuntimeError("child-d chooses its child network in prepare(), before training")
        blocks = dict(self.backbone.blocks.named_parameters())
        masks = {blocks[name]: mask for name, mask in self.child.items()}
        return ChildTuningAdamW(param_groups, weight_decay=0.0, mode="D", masks=masks)


def prefinetuned_identity(directory: str | Path) -> dict:
    """The path and weights sha256 that name a pre-finetuned model in results: by content, because a folder
    can be overwritten by another run."""
    directory = Path(directory).resolve()
    return {"path": str(directory), "sha256": file_sha256(directory / BACKBONE_WEIGHTS)}


class Prefinetuned(FineTuning):
    """``ft`` from the pre-finetuned backbone and span head (``AdaptConfig.prefinetuned``)."""

    name = "prefinetune"
    fresh_head = False  # the pre-finetuned model's own head, a linear one
    settings = FineTuning.settings | {"prefinetuned"}

    def __init__(self, backbone: Backbone, config: AdaptConfig, task: str, bank_dir: str | Path | None = None):
        if not config.prefinetuned:
            raise ValueError(
                "method 'prefinetune' starts from a pre-finetuned model: give its folder "
                "(RUN_DIR/model of `modprompt prefinetune`)"
            )
        super().__init__(backbone, config, task, bank_dir)
        # FineTuning copied the backbone; its weights, and the head, become the pre-finetuned ones.
        self.head = SpanModel.from_pretrained(config.prefinetuned, self.backbone).head
        self.prefinetuned = prefinetuned_identity(config.prefinetuned)

    def identity(self) -> dict:
        return {**super().identity(), "prefinetuned": self.prefinetuned}


for _cls in (ChildTuningF, ChildTuningD, Prefinetuned):
    register_method(_cls)
