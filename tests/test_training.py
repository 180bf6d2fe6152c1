"""The multi-task loop: balanced sampling, exact resume after a stop, and held-out evaluation."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from tiny import random_bank

from modprompt.backbone import load_backbone
from modprompt.data.encoding import EncodingConfig, MRCEncoder
from modprompt.data.mrc import MRCExample
from modprompt.modular.pretrain import ModularPromptObjective
from modprompt.training.sampler import TaskSampler
from modprompt.training.trainer import MultiTaskTrainer, TrainConfig


def test_sampler_balances_tasks_regardless_of_size():
    sampler = TaskSampler({"big": 10_000, "small": 20, "mid": 500}, batch_size=4, seed=0)
    batches = [sampler.next_batch() for _ in range(3000)]
    steps = Counter(batch[0][0] for batch in batches)
    assert all(len({task for task, _ in batch}) == 1 for batch in batches)  # one task per batch
    assert all(abs(steps[t] / 3000 - 1 / 3) < 0.03 for t in ("big", "small", "mid"))
    small = [i for batch in batches for task, i in batch if task == "small"]
    assert Counter(small[:20]) == Counter(range(20))  # a full epoch before any repeat


def test_sampler_temperature_and_mixed_batches():
    sizes = {"big": 9000, "small": 1000}
    by_size = TaskSampler(sizes, batch_size=1, seed=0, temperature=1.0)
    counts = Counter(by_size.next_batch()[0][0] for _ in range(4000))
    assert abs(counts["big"] / 4000 - 0.9) < 0.03
    mixed = TaskSampler(sizes, batch_size=64, seed=0, mixed=True)
    assert any(len({t for t, _ in mixed.next_batch()}) == 2 for _ in range(5))


def test_sampler_state_resumes_exactly():
    a = TaskSampler({"x": 7, "y": 5}, batch_size=3, seed=4)
    for _ in range(5):
        a.next_batch()
    b = TaskSampler({"x": 7, "y": 5}, batch_size=3, seed=4)
    b.load_state_dict(a.state_dict())
    assert [a.next_batch() for _ in range(10)] == [b.next_batch() for _ in range(10)]


def test_sampler_ranks_split_the_global_batch():
    full = TaskSampler({"x": 50, "y": 50}, batch_size=4, seed=1)
    ranks = [TaskSampler({"x": 50, "y": 50}, batch_size=4, seed=1, rank=r, world_size=2) for r in range(2)]
    for _ in range(5):
        whole = full.next_batch()
        assert ranks[0].next_batch() + ranks[1].next_batch() == whole[0::2] + whole[1::2]


SENTENCES = ["房间很干净", "服务太差了", "早餐很丰富", "再也不来了", "位置很方便", "隔音很糟糕"]


def _data():
    senti = [
        MRCExample("senti", "这条评论的情感是？", s, ("正面", "负面"), label=i % 2) for i, s in enumerate(SENTENCES)
    ]
    topic = [
        MRCExample("topic", "这句话属于哪一类？", s, ("酒店", "餐饮", "交通"), label=i % 3) for i, s in enumerate(SENTENCES)
    ]
    return {"senti": senti, "topic": topic}


def _trainer(backbone_path, run_dir, steps=6, **train):
    backbone = load_backbone(backbone_path)
    model = random_bank(backbone, ["senti", "topic"])
    encoder = MRCEncoder(backbone.tokenizer, EncodingConfig(64, 4))
    objective = ModularPromptObjective(model, encoder, lr_router=5e-2, lr_prompt=1e-2, steps=steps)
    train_config = TrainConfig(
        steps=steps, batch_size=4, grad_accum=2, warmup_steps=2, checkpoint_every=4, log_every=2, **train
    )
    data = _data()
    return MultiTaskTrainer(objective, train_config, data, {"senti": data["senti"][:4]}, run_dir), model


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


@pytest.mark.parametrize("train", [{}, {"mixed_batches": True, "group_by_length": True}], ids=["drawn", "grouped"])
def test_stopped_and_resumed_run_equals_uninterrupted(tiny_decoder, tmp_path, train):
    straight, model_a = _trainer(tiny_decoder, tmp_path / "a", **train)
    summary_a = straight.run()
    first, _ = _trainer(tiny_decoder, tmp_path / "b", **train)
    partial = first.run(until=3)
    assert partial["finished"] is False and partial["steps"] == 3
    resumed, model_b = _trainer(tiny_decoder, tmp_path / "b", **train)  # a fresh process would do the same
    summary_b = resumed.run()
    a, b = _params(model_a), _params(model_b)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for key in ("step", "loss", "lr", "examples_seen", "tokens_seen"):
        assert [h[key] for h in summary_a["history"]] == [h[key] for h in summary_b["history"]]
    assert summary_b["examples_seen"] == 6 * 4 and summary_b["finished"]
    assert set(summary_b["final_held_out"]) == {"senti"}
    assert 0.0 <= summary_b["final_held_out"]["senti"]["accuracy"] <= 1.0


def _rows(micro_batches):
    """The unpadded token ids of every example of a step, in micro-batch order."""
    return [
        ids[mask.bool()].tolist()
        for batch, _ in micro_batches
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"])
    ]


def test_grouping_by_length_regroups_the_same_examples_with_less_padding(tiny_decoder, tmp_path):
    drawn, _ = _trainer(tiny_decoder, tmp_path / "a", mixed_batches=True)
    grouped, _ = _trainer(tiny_decoder, tmp_path / "b", mixed_batches=True, group_by_length=True)
    saved_padding = False
    for _ in range(5):
        a, b = drawn.micro_batches(), grouped.micro_batches()
        assert len(b) == 2 and all(len(tasks) == 2 for _, tasks in b)
        assert sorted(_rows(a)) == sorted(_rows(b))  # the same examples in the step
        assert [len(r) for r in _rows(b)] == sorted(len(r) for r in _rows(b))  # shortest first
        padded_a, padded_b = (sum(batch["input_ids"].numel() for batch, _ in m) for m in (a, b))
        assert padded_b <= padded_a
        saved_padding |= padded_b < padded_a
    assert saved_padding


def test_checkpoint_survives_a_kill_between_renames(tiny_decoder, tmp_path):
    first, model_a = _trainer(tiny_decoder, tmp_path / "run")
    first.run(until=4)
    saved = _params(model_a)
    (tmp_path / "run" / "checkpoint").rename(tmp_path / "run" / "checkpoint.old")
    again, model_b = _trainer(tiny_decoder, tmp_path / "run")
    assert again.load_checkpoint() and again.step == 4
    assert all(torch.equal(saved[k], v) for k, v in _params(model_b).items())


def test_training_moves_only_trainable_parameters(tiny_encoder, tmp_path):
    trainer, model = _trainer(tiny_encoder, tmp_path / "run")
    frozen = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    before = _params(model)
    trainer.run()
    assert all(torch.equal(frozen[k], v) for k, v in model.backbone.state_dict().items())
    assert all(not torch.equal(before[k], v) for k, v in _params(model).items())


def test_one_bar_shows_the_steps_loss_tokens_per_second_and_held_out_score(tiny_decoder, tmp_path, capsys):
    trainer, _ = _trainer(tiny_decoder, tmp_path / "run", eval_every=3)
    trainer.run(progress=True)
    bar = [line for line in capsys.readouterr().err.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert bar.startswith("train: 100%") and "6/6" in bar and all(f"{k}=" in bar for k in ("loss", "tok_s", "dev"))
    again, _ = _trainer(tiny_decoder, tmp_path / "quiet")
    again.run()
    assert "train:" not in capsys.readouterr().err  # stderr is no terminal here: no bar
