"""The multi-task training loop shared by prompt pre-training and multi-task pre-finetuning.

What differs between methods (which parameters train, at which learning rates, and the loss) lives
in a :class:`MultiTaskObjective`; the loop owns everything else: balanced task sampling, gradient
accumulation, the learning-rate schedule, data-parallel gradient averaging, per-task held-out
evaluation, a progress bar, and checkpoints from which a stopped run resumes to exactly the
parameters an uninterrupted run would reach.

Exact resumption rests on three things: the sampler's state is saved; every random draw inside a
step comes from a generator seeded by (seed, step, micro-batch, rank) rather than from global state;
and the optimiser and schedule states are saved with the trainable parameters.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from modprompt.data.encoding import MRCEncoder
from modprompt.data.mrc import MRCExample
from modprompt.evaluate import evaluate, main_metric
from modprompt.progress import Progress
from modprompt.training.sampler import TaskSampler

logger = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Settings of the loop itself (the objective carries method-specific ones)."""

    steps: int = 1000
    batch_size: int = 8  # examples per optimiser step, over all ranks and micro-batches
    grad_accum: int = 1
    warmup_steps: int = 0
    schedule: str = "linear"  # linear decay to zero after warm-up, or "constant"
    max_grad_norm: float = 1.0
    seed: int = 0
    task_temperature: float | None = None  # None: uniform over tasks (MP2); T: ∝ size^(1/T)
    mixed_batches: bool = False  # heterogeneous batches (MUPPET) instead of one task per micro-batch
    # Regroup a step's examples into its grad_accum micro-batches by encoded length, shortest first,
    # instead of keeping them as drawn: the step sees the same examples, padded far less when lengths
    # vary within a batch (Gemma, mixed upstream batches of 8 in 2 micro-batches: 971 padded tokens per
    # 533 real ones become 825; benchmarks/results/trainer_step.md).
    group_by_length: bool = False
    eval_every: int = 0  # 0: evaluate only at the end
    eval_at_start: bool = False  # also evaluate the untrained state (step 0), as a baseline
    eval_batch_size: int = 16
    checkpoint_every: int = 50
    log_every: int = 10

    def __post_init__(self) -> None:
        if self.schedule not in ("linear", "constant"):
            raise ValueError(f"schedule must be 'linear' or 'constant', not {self.schedule!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")


class MultiTaskObjective(ABC):
    """What a multi-task method trains: its module, parameter groups and loss."""

    module: nn.Module
    encoder: MRCEncoder

    @abstractmethod
    def param_groups(self) -> list[dict]:
        """Optimiser parameter groups (each with its own ``lr``); only these parameters train."""

    @abstractmethod
    def loss(self, batch: dict, tasks: list[str], step: int, generator: torch.Generator) -> torch.Tensor:
        """Mean training loss of a micro-batch at ``step``; random draws use ``generator``."""

    @abstractmethod
    def forward(self, batch: dict, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Start and end logits at inference."""


def distributed_context() -> tuple[int, int]:
    """(rank, world size), initialising the process group when launched by torchrun (gloo for CPU tensors,
    NCCL for CUDA ones)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class MultiTaskTrainer:
    def __init__(
        self,
        objective: MultiTaskObjective,
        config: TrainConfig,
        train: dict[str, list[MRCExample]],
        held_out: dict[str, list[MRCExample]] | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.objective = objective
        self.config = config
        self.train = train
        self.held_out = held_out or {}
        self.run_dir = Path(run_dir) if run_dir else None
        self.rank, self.world = distributed_context()
        if (config.batch_size // config.grad_accum) % self.world:
            raise ValueError(f"micro-batch {config.batch_size // config.grad_accum} not divisible by {self.world} ranks")
        self.sampler = TaskSampler(
            {task: len(examples) for task, examples in train.items()},
            batch_size=config.batch_size // config.grad_accum,
            seed=config.seed,
            temperature=config.task_temperature,
            mixed=config.mixed_batches,
            rank=self.rank,
            world_size=self.world,
        )
        groups = objective.param_groups()
        self.params = {
            name: p for name, p in objective.module.named_parameters() if p.requires_grad
        }
        grouped = {id(p) for g in groups for p in g["params"]}
        if grouped != {id(p) for p in self.params.values()}:
            raise ValueError("the objective's parameter groups must be exactly the module's trainable parameters")
        # The fused kernel makes a full-model step's update 5.5x faster on a CPU (0.30 s against 1.63 s
        # for Gemma 3 270M's 268M parameters, benchmarks/results/trainer_step.md); other devices keep the
        # default implementation.
        fused = all(p.device.type in ("cpu", "cuda") for p in self.params.values())
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0, fused=fused or None)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        self.step = 0
        self.history: list[dict] = []
        self.evaluations: list[dict] = []
        self.examples_seen = 0
        self.tokens_seen = 0
        self.train_seconds = 0.0
        self.rank_difference = 0.0
        # Loss and tokens since the last log line; checkpointed so a resumed run logs the same numbers.
        self.window = {"loss": 0.0, "tokens": 0, "steps": 0, "seconds": 0.0}

    def _lr_factor(self, step: int) -> float:
        c = self.config
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return 1.0
        return max(0.0, (c.steps - step) / max(1, c.steps - c.warmup_steps))

    # -- checkpoints -------------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.run_dir / "checkpoint" if self.run_dir else None

    def save_checkpoint(self) -> None:
        if self.rank != 0 or self.checkpoint_dir is None:
            return
        tmp = self.checkpoint_dir.with_name("checkpoint.tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_file({k: v.detach().contiguous() for k, v in self.params.items()}, tmp / "trainable.safetensors")
        torch.save(
            {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "sampler": self.sampler.state_dict(),
                "history": self.history,
                "evaluations": self.evaluations,
                "examples_seen": self.examples_seen,
                "tokens_seen": self.tokens_seen,
                "train_seconds": self.train_seconds,
                "window": self.window,
                "config": asdict(self.config),
            },
            tmp / "state.pt",
        )
        # Swap in the new checkpoint only once it is complete, so a kill mid-write loses nothing.
        old = self.checkpoint_dir.with_name("checkpoint.old")
        if self.checkpoint_dir.exists():
            self.checkpoint_dir.rename(old)
        tmp.rename(self.checkpoint_dir)
        if old.exists():
            shutil.rmtree(old)

    def load_checkpoint(self) -> bool:
        """Resume from the run folder's checkpoint if there is one; True when resumed."""
        if self.checkpoint_dir is None:
            return False
        folder = self.checkpoint_dir
        if not folder.exists() and folder.with_name("checkpoint.old").exists():
            folder = folder.with_name("checkpoint.old")  # killed between the two renames
        if not (folder / "state.pt").is_file():
            return False
        weights = load_file(folder / "trainable.safetensors")
        if set(weights) != set(self.params):
            raise ValueError(f"checkpoint in {folder} holds other parameters than this run trains")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(weights[name])
        # On the CPU first: a run checkpointed on a GPU may resume elsewhere; the optimiser's state moves
        # to its parameters' device as it loads.
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        if state["config"] != asdict(self.config):
            raise ValueError(f"checkpoint in {folder} was written by a run with another configuration")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = state["step"]
        self.history = state["history"]
        self.evaluations = state["evaluations"]
        self.examples_seen = state["examples_seen"]
        self.tokens_seen = state["tokens_seen"]
        self.train_seconds = state["train_seconds"]
        self.window = state["window"]
        logger.info("resumed from %s at step %d", folder, self.step)
        return True

    # -- the loop ----------------------------------------------------------------------------------

    def _generator(self, micro: int) -> torch.Generator:
        seed = ((self.config.seed * 1_000_003 + self.step) * 101 + micro) * 17 + self.rank
        return torch.Generator().manual_seed(seed)

    def _reduce_gradients(self) -> None:
        if self.world == 1:
            return
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def micro_batches(self) -> list[tuple[dict, list[str]]]:
        """The next step's micro-batches as (collated batch, task of each example), in draw or length order.

        Each call draws a new step from the sampler.
        """
        encoder = self.objective.encoder
        micros = []
        for _ in range(self.config.grad_accum):
            examples = [self.train[task][index] for task, index in self.sampler.next_batch()]
            micros.append(list(zip(examples, encoder.encode_all(examples, report=False))))
        if self.config.group_by_length:
            ordered = sorted((pair for micro in micros for pair in micro), key=lambda pair: len(pair[1].input_ids))
            size = len(ordered) // len(micros)
            micros = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        return [(encoder.collate([e for _, e in micro]), [x.task for x, _ in micro]) for micro in micros]

    def train_step(self) -> float:
        c = self.config
        self.optimizer.zero_grad(set_to_none=True)
        total_loss, tokens = 0.0, 0
        for micro, (batch, tasks) in enumerate(self.micro_batches()):
            loss = self.objective.loss(batch, tasks, self.step, self._generator(micro))
            (loss / c.grad_accum).backward()
            total_loss += float(loss.detach()) / c.grad_accum
            tokens += int(batch["attention_mask"].sum())
        self._reduce_gradients()
        if c.max_grad_norm:
            nn.utils.clip_grad_norm_(list(self.params.values()), c.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        stats = torch.tensor([total_loss, tokens], dtype=torch.float64)
        if self.world > 1:
            dist.all_reduce(stats)
            stats[0] /= self.world
        self.examples_seen += c.batch_size
        self.tokens_seen += int(stats[1])
        return float(stats[0])

    def evaluate_held_out(self) -> dict[str, dict[str, float]]:
        objective = self.objective
        objective.module.eval()
        started = time.perf_counter()
        results = {
            task: evaluate(objective.forward, objective.encoder, examples, self.config.eval_batch_size, progress=False)
            for task, examples in self.held_out.items()
        }
        self.evaluations.append({"step": self.step, "results": results})
        logger.info("held-out at step %d: mean main metric %.4f over %d tasks (%.0f s)", self.step,
                    _mean_main_metric(results), len(results), time.perf_counter() - started)  # fmt: skip
        return results

    def run(self, until: int | None = None, progress: bool | None = None) -> dict:
        """Train to ``config.steps`` (resuming if a checkpoint exists) and return a summary.

        ``until`` stops this call earlier, at that step, with a checkpoint: a long run can be done in
        pieces (for example one per working session) and ends exactly as an uninterrupted one.
        ``progress``: a bar over the steps on rank 0 (None: only when stderr is a terminal).
        """
        c = self.config
        self.load_checkpoint()
        stop = c.steps if until is None else min(until, c.steps)
        if c.eval_at_start and self.held_out and not self.evaluations:
            self.evaluate_held_out()
        shown = progress if self.rank == 0 else False  # one bar, on rank 0
        with Progress(c.steps, "train", "step", shown, initial=self.step).shown() as bar:
            self._train_until(stop, bar)
        self.rank_difference = self._rank_difference()
        if self.step < c.steps:
            return self.summary()
        if self.held_out and (not self.evaluations or self.evaluations[-1]["step"] != self.step):
            self.evaluate_held_out()
            self.save_checkpoint()
        summary = self.summary()
        if self.rank == 0 and self.run_dir:
            (self.run_dir / "history.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
        return summary

    def _train_until(self, stop: int, bar: Progress) -> None:
        """Steps up to ``stop``, with their log lines, held-out evaluations and checkpoints, counted on ``bar``."""
        c = self.config
        while self.step < stop:
            started = time.perf_counter()
            tokens_before = self.tokens_seen
            loss = self.train_step()
            elapsed = time.perf_counter() - started
            self.train_seconds += elapsed
            self.window["seconds"] += elapsed
            self.window["loss"] += loss
            self.window["tokens"] += self.tokens_seen - tokens_before
            self.window["steps"] += 1
            if self.step % c.log_every == 0 or self.step == c.steps:
                record = {
                    "step": self.step,
                    "loss": self.window["loss"] / self.window["steps"],
                    "tokens_per_s": self.window["tokens"] / max(self.window["seconds"], 1e-9),
                    "lr": self.scheduler.get_last_lr()[0],
                    "examples_seen": self.examples_seen,
                    "tokens_seen": self.tokens_seen,
                    "train_seconds": self.train_seconds,
                }
                self.history.append(record)
                logger.info("step %d loss %.4f %.0f tokens/s", self.step, record["loss"], record["tokens_per_s"])
                self.window = {"loss": 0.0, "tokens": 0, "steps": 0, "seconds": 0.0}
                bar.note(loss=record["loss"], tok_s=f"{record['tokens_per_s']:.0f}")
            if c.eval_every and self.step % c.eval_every == 0 and self.step < c.steps and self.held_out:
                bar.dev(_mean_main_metric(self.evaluate_held_out()))
            if self.step % c.checkpoint_every == 0 or self.step == stop:
                self.save_checkpoint()
            bar.step()

    def _rank_difference(self) -> float:
        """Largest difference of any trainable number between ranks (0.0 when they agree, as they must)."""
        if self.world == 1:
            return 0.0
        flat = torch.cat([p.detach().flatten() for p in self.params.values()])
        gathered = [torch.empty_like(flat) for _ in range(self.world)]
        dist.all_gather(gathered, flat)
        return max(float((g - gathered[0]).abs().max()) for g in gathered)

    def summary(self) -> dict:
        final = self.evaluations[-1]["results"] if self.evaluations else {}
        return {
            "finished": self.step >= self.config.steps,
            "steps": self.step,
            "examples_seen": self.examples_seen,
            "tokens_seen": self.tokens_seen,
            "train_seconds": self.train_seconds,
            "world_size": self.world,
            "max_difference_between_ranks": self.rank_difference,
            "history": self.history,
            "evaluations": self.evaluations,
            "held_out_step": self.evaluations[-1]["step"] if self.evaluations else None,
            "final_held_out": final,
            "mean_held_out": _mean_main_metric(final),
        }


def _mean_main_metric(results: dict[str, dict[str, float]]) -> float | None:
    values = [main_metric(m) for m in results.values()]
    return sum(values) / len(values) if values else None
