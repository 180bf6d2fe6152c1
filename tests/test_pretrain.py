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
    from modprompt.modular.pretrain import upstream_data

    with pytest.raises(ValueError, match="eprstmt.*downstream"):
        upstream_data(["eprstmt"], data_root, 4)
    assert PretrainConfig.from_json(_config(tmp_path, tiny_decoder)).train.steps == 4


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
