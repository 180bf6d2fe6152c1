"""Where the model runs (``--device``): resolving device names everywhere, and every path on a CUDA GPU.

The GPU tests run a tiny job on the CPU and on the GPU and compare the two. They are skipped where torch
sees no GPU (CI); they passed on the H100 lent to the session of 2026-11-24 (see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch
from blackbox_helpers import MAX_LENGTH, examples, tiny_bank
from test_adapt import FAST, cli, make_bank

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.methods import AdaptMethod
from modprompt.adapt.run import adapt
from modprompt.backbone import load_backbone
from modprompt.blackbox.params import Candidate, Space
from modprompt.blackbox.scoring import Scorer
from modprompt.data.encoding import EncodingConfig, MRCEncoder
from modprompt.data.fewshot import fewshot_splits
from modprompt.device import resolve_device
from modprompt.modular.model import ModularPromptModel

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_device_names_resolve_or_fail_saying_why(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None) == expected
    with pytest.raises(ValueError, match="unknown device 'gpu'"):
        resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="sees no CUDA GPU; use --device cpu"):
        resolve_device("cuda")


def test_every_model_command_takes_a_device():
    from modprompt.cli import build_parser

    parser = build_parser()
    for command in ("pretrain", "prefinetune", "adapt", "predict", "serve", "bbt"):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
        assert any("--device" in action.option_strings for action in sub._actions), command


def test_collate_builds_batches_on_the_encoder_device(char_tok, data_root):
    train, _, _ = fewshot_splits("eprstmt", 0, data_root)
    encoded = MRCEncoder(char_tok, EncodingConfig(64)).encode_all(train[:3])
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        batch = MRCEncoder(char_tok, EncodingConfig(64), device).collate(encoded)
        assert {t.device.type for t in batch.values()} == {device}


# -- on a GPU -------------------------------------------------------------------------------------------


@cuda
@pytest.mark.parametrize("name", ["mp2", "route-only", "pt", "deep-pt", "ft", "child-f", "child-d"])
def test_adapt_on_the_gpu_follows_the_cpu_run(name, tiny_decoder, data_root, tmp_path):
    results = {}
    for device in ("cpu", "cuda"):
        backbone = load_backbone(tiny_decoder)  # adapt moves the backbone it is given
        bank = make_bank(backbone, tmp_path / "bank")
        config = AdaptConfig(name, **FAST)
        results[device] = adapt(config, "eprstmt", data_root, bank=bank, backbone=backbone, out=tmp_path / device,
                                device=device)  # fmt: skip
    cpu, gpu = results["cpu"], results["cuda"]
    assert (cpu["device"], gpu["device"]) == ("cpu", "cuda:0")
    assert gpu["steps"] == cpu["steps"] and gpu["trainable_parameters"] == cpu["trainable_parameters"]
    for a, b in zip(cpu["stages"], gpu["stages"]):
        assert a["evaluations"][0]["dev"] == b["evaluations"][0]["dev"]  # the same start
        assert b["evaluations"][1]["loss"] == pytest.approx(a["evaluations"][1]["loss"], rel=1e-3)
    # Adapted on the GPU, reopened on the CPU: the same predictions as on the GPU.
    saved = {"backbone": tiny_decoder, "bank": tmp_path / "bank"}
    on_gpu = AdaptMethod.from_pretrained(tmp_path / "cuda", **saved, device="cuda")
    on_cpu = AdaptMethod.from_pretrained(tmp_path / "cuda", **saved, device="cpu")
    _, _, test = fewshot_splits("eprstmt", 0, data_root)
    batch = on_cpu.encoder().collate(on_cpu.encoder().encode_all(test[:8]))
    gpu_batch = on_gpu.encoder().collate(on_gpu.encoder().encode_all(test[:8]))
    with torch.no_grad():
        for a, b in zip(on_cpu(batch, ["eprstmt"] * 8), on_gpu(gpu_batch, ["eprstmt"] * 8)):
            assert b.device.type == "cuda"
            torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)


@cuda
def test_predict_cli_on_the_gpu(tiny_decoder, data_root, tmp_path, capsys):
    bank = make_bank(load_backbone(tiny_decoder), tmp_path / "bank")
    common = ["--backbone", str(tiny_decoder), "--data", str(data_root), "--max-length", "96", "--max-steps", "2",
              "--test-limit", "8"]  # fmt: skip
    assert cli(["adapt", "--task", "eprstmt", "--method", "mp2", "--bank", str(bank), "--out", str(tmp_path / "a"),
                "--device", "cuda", *common]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["device"] == "cuda:0"
    records = tmp_path / "r.jsonl"
    records.write_text('{"text": "物流很快，包装也好", "label": "正面"}\n')
    assert cli(["predict", "--adapted", str(tmp_path / "a"), "--input", str(records), "--output",
                str(tmp_path / "p.jsonl"), "--backbone", str(tiny_decoder), "--device", "cuda"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["records"] == 1


@cuda
def test_pretrain_on_the_gpu_resumes_on_the_cpu(tmp_path, tiny_decoder, data_root):
    from test_pretrain import _config, _run

    config = _config(tmp_path, tiny_decoder)
    cmd = [sys.executable, "-m", "modprompt.cli", "pretrain", "--config", str(config), "--run-dir", str(tmp_path / "run"),
           "--data", str(data_root)]  # fmt: skip
    first = _run([*cmd, "--until", "2", "--device", "cuda"])
    assert first.returncode == 0, first.stderr[-3000:]
    second = _run([*cmd, "--device", "cpu"])  # the checkpoint holds CUDA tensors
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads(second.stdout)["finished"]
    model = ModularPromptModel.from_pretrained(tmp_path / "run" / "bank", load_backbone(tiny_decoder))
    assert model.bank.modules_z.device.type == "cpu" and torch.isfinite(model.bank.modules_z).all()


@cuda
def test_scoring_on_the_gpu_matches_the_cpu(tiny_decoder, data_root, tmp_path):
    splits = examples(data_root)
    bank = tiny_bank(tiny_decoder, tmp_path / "bank", splits[0])
    scorers = {device: Scorer.from_bank(bank, tiny_decoder, device, max_length=MAX_LENGTH, batch_size=8)
               for device in ("cpu", "cuda")}  # fmt: skip
    assert scorers["cuda"].device.type == "cuda"
    generator = torch.Generator().manual_seed(0)
    for space, candidates in (
        (Space(), [Candidate(router=torch.randn(8, generator=generator).tolist()) for _ in range(3)]),
        (Space("random", seed=0, dim=8), [Candidate(intrinsic={1: torch.randn(8, generator=generator).tolist()})
                                  for _ in range(3)]),  # fmt: skip
    ):
        replies = {}
        for device, scorer in scorers.items():
            dataset = scorer.add_dataset(splits[0])["id"]
            # twice: the second call reads the GPU's layer cache
            replies[device] = [scorer.score(dataset, candidates, space, with_scores=True) for _ in range(2)]
        for reply in (*replies["cuda"], replies["cpu"][1]):
            for a, b in zip(replies["cpu"][0].results, reply.results):
                assert a.accuracy == b.accuracy
                assert b.loss == pytest.approx(a.loss, rel=1e-4)

