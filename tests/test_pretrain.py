"""`modprompt pretrain` end to end on a tiny backbone and real upstream tasks, alone and under torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from modprompt.backbone import load_backbone
from modprompt.modular.model import ModularPromptModel
from modprompt.modular.pretrain import PretrainConfig

TASKS = ["cluewsc", "csl", "shopping_heater"]


def _config(tmp_path, backbone, steps=4, **train):
    config = {
        "backbone": str(backbone),
        "tasks": TASKS,
        "max_length": 96,
        "held_out_per_task": 6,
        "num_tokens": 4,
        "rank": 4,
        "train": {"steps": steps, "batch_size": 4, "checkpoint_every": 2, "log_every": 1, "eval_at_start": True, **train},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return path


def _run(args, env_extra=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.slow
def test_pretrain_cli_trains_and_saves_a_loadable_bank(tmp_path, tiny_decoder, data_root):
    config = _config(tmp_path, tiny_decoder)
    cmd = [sys.executable, "-m", "modprompt.cli", "pretrain", "--config", str(config), "--run-dir", str(tmp_path / "run"),
           "--data", str(data_root)]
    first = _run([*cmd, "--until", "2"])
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads(first.stdout)["finished"] is False
    second = _run(cmd)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout)
    assert summary["finished"] and summary["steps"] == 4 and summary["examples_seen"] == 16
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [e["step"] for e in history["evaluations"]] == [0, 4]  # untrained baseline, then trained
    assert set(history["final_held_out"]) == set(TASKS)
    model = ModularPromptModel.from_pretrained(tmp_path / "run" / "bank", load_backbone(tiny_decoder))
    assert model.tasks == sorted(TASKS)
    assert (model.bank.layer_scale > 0).all()
    training = json.loads((tmp_path / "run" / "bank" / "bank_config.json").read_text())["training"]
    assert training["finished"] and training["steps"] == 4 and training["examples_seen"] == 16


def test_pretrain_rejects_downstream_tasks(tmp_path, tiny_decoder, data_root):
    from modprompt.training.upstream import upstream_data

    with pytest.raises(ValueError, match="eprstmt.*downstream"):
        upstream_data(["eprstmt"], data_root, 4)
    assert PretrainConfig.from_json(_config(tmp_path, tiny_decoder)).train.steps == 4


@pytest.mark.slow
def test_torchrun_two_ranks_hold_identical_parameters(tmp_path, tiny_encoder, data_root):
    config = _config(tmp_path, tiny_encoder, steps=3)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "modprompt.cli", "pretrain", "--config", str(config), "--run-dir", str(tmp_path / "ddp"),
           "--data", str(data_root), "--device", "cpu"]  # two ranks, gloo: also on a machine with one GPU
    done = _run(cmd, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summaries = [json.loads(part) for part in done.stdout.replace("}\n{", "}\n\x00{").split("\x00")]
    assert len(summaries) == 2  # one summary per rank
    for summary in summaries:
        assert summary["world_size"] == 2 and summary["steps"] == 3
        assert summary["max_difference_between_ranks"] == 0.0
    assert (tmp_path / "ddp" / "bank" / "bank.safetensors").is_file()


def test_warm_start_keeps_the_bank_and_head_and_drops_cut_answers(tmp_path, tiny_decoder, data_root):
    import torch
    from safetensors.torch import load_file

    from modprompt.data.encoding import EncodingConfig, MRCEncoder
    from modprompt.data.registry import load_examples
    from modprompt.modular.pretrain import pretrain

    source = PretrainConfig.from_json(_config(tmp_path, tiny_decoder, steps=2, eval_at_start=False))
    pretrain(source, tmp_path / "source", data_root)
    warm = PretrainConfig.from_json(_config(tmp_path, tiny_decoder, steps=2, eval_at_start=False))
    warm.tasks = [*TASKS, "cmrc2018"]
    warm.init_from = str(tmp_path / "source" / "bank")
    summary = pretrain(warm, tmp_path / "warm", data_root, until=0)  # step 0: the warm start as it is

    before = load_file(tmp_path / "source" / "bank" / "bank.safetensors")
    after = load_file(tmp_path / "warm" / "bank" / "bank.safetensors")
    for name in ("bank.modules_z", "bank.projection", "bank.layer_scale", "head.weight", "head.bias"):
        assert torch.equal(before[name], after[name]), name
    assert after["router.logits"].shape[0] == 4 and after["router.logits"].abs().max() <= 1e-2  # fresh routers

    # Every CMRC 2018 training example whose answer the 96-token encoding cuts away is dropped, and counted.
    encoder = MRCEncoder(load_backbone(tiny_decoder).tokenizer, EncodingConfig(96, 4))
    cut = sum(e.answer_lost for e in encoder.encode_all(load_examples("cmrc2018", "train", data_root), report=False))
    assert cut > 0 and summary["unreachable_dropped"] == {"cmrc2018": cut}
    training = json.loads((tmp_path / "warm" / "bank" / "bank_config.json").read_text())["training"]
    assert training["unreachable_dropped"] == {"cmrc2018": cut}

    wrong = PretrainConfig.from_json(_config(tmp_path, tiny_decoder, steps=2))
    wrong.num_tokens, wrong.init_from = 5, str(tmp_path / "source" / "bank")
    with pytest.raises(ValueError, match="num_tokens is 4 in the bank but 5 here"):
        pretrain(wrong, tmp_path / "wrong", data_root, until=0)


def test_route_entropy_term_is_added_to_the_span_loss(tiny_decoder):
    import torch

    from modprompt.data.encoding import EncodingConfig, MRCEncoder
    from modprompt.data.mrc import MRCExample
    from modprompt.head import span_loss
    from tiny import random_bank

    from modprompt.modular.pretrain import ModularPromptObjective, route_entropy

    backbone = load_backbone(tiny_decoder)
    model = random_bank(backbone, ["a", "b"])
    with torch.no_grad():
        model.router.logits[0] = -5.0
        model.router.logits[0, :, 0] = 5.0  # task a uses module 0 alone
    encoder = MRCEncoder(backbone.tokenizer, EncodingConfig(64, 4))
    batch = encoder.collate(encoder.encode_all([MRCExample("a", "好吗", "很好", ("否", "是"), 1)] * 2))
    objective = ModularPromptObjective(model, encoder, 0.1, 0.1, 10, route_entropy_weight=0.5)
    start, end = model(batch, model.task_ids(["a", "a"]), objective.temperature(0), torch.Generator().manual_seed(0))
    expected = span_loss(start, end, batch) + 0.5 * route_entropy(model.router.logits[[0, 0]]).mean()
    assert torch.allclose(objective.loss(batch, ["a", "a"], 0, torch.Generator().manual_seed(0)), expected)
    entropy = route_entropy(model.router.logits)
    assert torch.allclose(entropy[1], torch.ones(backbone.num_layers), atol=1e-3)  # near-uniform: about 1
    assert (entropy[0] < 0.2).all()


def test_trainer_step_benchmark_lays_out_pretraining_steps_four_ways(tmp_path, tiny_decoder, data_root, monkeypatch):
    import importlib.util
    from pathlib import Path

    benchmarks = Path(__file__).parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(benchmarks)  # as when run as a script: it imports machine beside it
    spec = importlib.util.spec_from_file_location("trainer_step", benchmarks / "trainer_step.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    config = json.loads(_config(tmp_path, tiny_decoder).read_text())
    config["max_length"] = 512  # long enough that lengths differ
    config["train"] |= {"batch_size": 4, "grad_accum": 2}
    (tmp_path / "pretrain.json").write_text(json.dumps(config))
    argv = ["--stage", "pretrain", "--config", str(tmp_path / "pretrain.json"), "--data", str(data_root), "--padding-steps", "20",
            "--steps", "2", "--out", str(tmp_path / "step.json")]  # fmt: skip
    result = bench.main(argv)
    assert result["stage"] == "pretrain" and result["optimizer_update"] == {}
    one, per_task, mixed, grouped = result["layouts"].values()
    # One task per micro-batch pads less than tasks mixed in one micro-batch; grouping by length helps mixing.
    share = {name: layout["real"] / layout["padded"] for name, layout in result["layouts"].items()}
    assert share[list(share)[1]] >= share[list(share)[2]] and grouped["padded"] / grouped["real"] <= mixed["padded"] / mixed["real"]
    assert one["speedup"] == 1.0 and all(layout["timed_real_tokens"] > 0 for layout in result["layouts"].values())
    table = (tmp_path / "step.md").read_text()
    assert "| 2 tasks, 1 micro-batch each |" in table and result["command"] in table


def test_route_ablation_scores_each_task_with_its_own_the_uniform_and_a_foreign_route(tmp_path, tiny_decoder, data_root,
                                                                                     monkeypatch):  # fmt: skip
    import importlib.util
    from pathlib import Path

    from tiny import random_bank

    benchmarks = Path(__file__).parents[1] / "benchmarks"
    spec = importlib.util.spec_from_file_location("route_ablation", benchmarks / "route_ablation.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    random_bank(load_backbone(tiny_decoder), TASKS).save_pretrained(tmp_path / "bank")
    argv = ["--bank", str(tmp_path / "bank"), "--config", str(_config(tmp_path, tiny_decoder)), "--data", str(data_root),
            "--per-task", "3", "--name", "ablation"]  # fmt: skip
    result = bench.main(argv)
    assert set(result["per_task"]) == set(TASKS) and all(len(v) == 3 for v in result["per_task"].values())
    assert all(task != other for task, other in result["derangement"].items())  # nobody keeps its own route
    assert set(result["examples_per_task"].values()) == {3}
    table = (tmp_path / "results" / "ablation.md").read_text()
    paired = [line for line in table.splitlines() if line.startswith(("| uniform |", "| other |"))]
    assert len(paired) == 2 and all(sum(map(int, line.split("|")[4].split("/"))) == len(TASKS) for line in paired)
    diff = sum(v["own"] - v["uniform"] for v in result["per_task"].values()) / len(TASKS)
    assert f"{diff:+.3f}" in paired[0]
