"""The user-task examples end to end on a tiny backbone: spec -> adapt -> save -> predict, with lenient reading.

examples/squad_qa (extractive QA in the SQuAD layout) runs through the command line, examples/dialogue_mc
(a dialogue followed by its questions, each with choices: JSON-array records) through the Python API.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.methods import AdaptMethod, read_adapted_config
from modprompt.adapt.predict import predict_file, record_spec
from modprompt.adapt.run import adapt
from modprompt.backbone import load_backbone
from modprompt.cli import main as cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SQUAD_SPEC = EXAMPLES / "squad_qa" / "baike_qa.json"
MC_SPEC = EXAMPLES / "dialogue_mc" / "duihua_mc.json"
FAST = ["--k-per-label", "4", "--num-tokens", "4", "--max-steps", "2", "--eval-every", "2", "--batch-size", "4"]

pytestmark = pytest.mark.usefixtures("one_thread")


def test_squad_example_on_the_command_line(tiny_decoder, data_root, tmp_path, capsys, caplog):
    out = tmp_path / "adapted"
    common = ["--backbone", str(tiny_decoder)]
    assert cli(["adapt", "--task-spec", str(SQUAD_SPEC), "--method", "pt", "--seed", "0", "--data", str(data_root),
                "--out", str(out), "--lenient", *common, *FAST]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert (result["task"], result["examples"]) == ("baike_qa", {"train": 4, "dev": 4, "test": 10})
    assert result["skipped"] == {"records": 0, "first": []} and set(result["test"]) >= {"exact_match", "f1"}

    # The test file itself: the reloaded adaptation scores it exactly as the run did.
    preds = tmp_path / "test-preds.jsonl"
    test = SQUAD_SPEC.parent / "test.json"
    assert cli(["predict", "--adapted", str(out), "--input", str(test), "--output", str(preds), *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["records"] == summary["labelled"] == 10 and summary["metrics"] == result["test"]
    lines = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    passages = {p["id"]: p["context"] for d in json.loads(test.read_text())["data"] for p in d["paragraphs"]}
    assert len(lines) == 10 and all(line["prediction"] in passages[f"TEST_{i}"] for line, i in
                                    zip(lines, [0, 0, 0, 1, 1, 2, 2, 2, 3, 3], strict=True))  # fmt: skip

    # A user's file in the same layout: an unanswered question, a labelled one, and one without its question.
    context = "秦始皇统一六国后，在全国推行统一的文字、货币和度量衡。"
    mine = tmp_path / "mine.json"
    mine.write_text(json.dumps({"data": [{"paragraphs": [{"context": context, "qas": [
        {"id": "u1", "question": "秦始皇统一了哪些东西？"},
        {"id": "u2", "question": "谁统一了六国？", "answers": [{"text": "秦始皇", "answer_start": 0}]},
        {"id": "u3", "answers": [{"text": "货币", "answer_start": 18}]},
    ]}]}]}, ensure_ascii=False), encoding="utf-8")  # fmt: skip
    argv = ["predict", "--adapted", str(out), "--input", str(mine), "--output", str(tmp_path / "p.jsonl"), *common]
    assert cli(argv) == 2  # strict: the first bad record stops the command
    assert "mine.json, question 2: path 'question' gives nothing" in caplog.text
    assert cli([*argv, "--lenient"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["records"], summary["labelled"], summary["skipped"]["records"]) == (2, 1, 1)
    assert "question 2: path 'question' gives nothing" in summary["skipped"]["first"][0]
    first, second = (json.loads(line) for line in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines())
    assert first["label"] is None and first["prediction"] in context and second["label"] == "秦始皇"


def test_dialogue_example_through_the_python_api(tiny_decoder, data_root, tmp_path):
    backbone = load_backbone(tiny_decoder)
    config = AdaptConfig("pt", k_per_label=4, num_tokens=4, max_steps=2, eval_every=2, batch_size=4)
    result = adapt(config, None, data_root, backbone=backbone, task_spec=MC_SPEC, out=tmp_path / "mc")
    assert (result["task"], result["examples"]) == ("duihua_mc", {"train": 4, "dev": 4, "test": 9})
    method = AdaptMethod.from_pretrained(tmp_path / "mc", backbone=backbone)
    test = MC_SPEC.parent / "test.json"
    spec = record_spec(read_adapted_config(tmp_path / "mc"), test)
    summary = predict_file(method, test, tmp_path / "p.jsonl", spec)
    assert summary["records"] == 9 and summary["metrics"]["accuracy"] == result["test"]["accuracy"]
    lines = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()]
    assert lines[0]["source"].endswith("test.json:0/0") and lines[1]["source"].endswith("test.json:0/1")
    assert set(lines[0]["scores"]) == {"五路", "十五路", "四路"} and lines[0]["label"] == "十五路"


def test_bbt_reads_a_spec_leniently(tiny_decoder, data_root, tmp_path):
    from blackbox_helpers import tiny_bank

    from modprompt.data.fewshot import fewshot_splits
    from modprompt.data.readers import DataError
    from modprompt.data.spec import load_spec

    # The dialogue example with one option listed twice (the record that stopped every run of a public set).
    records = json.loads((MC_SPEC.parent / "train.json").read_text(encoding="utf-8"))
    records[2][1][0]["choice"].append(records[2][1][0]["choice"][0])
    (tmp_path / "train.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "test.json").write_text((MC_SPEC.parent / "test.json").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "spec.json").write_text(MC_SPEC.read_text(encoding="utf-8"), encoding="utf-8")
    task = load_spec(tmp_path / "spec.json").name
    with pytest.raises(DataError, match=r"train.json, record 2, item 0: field 'item.choice' repeats an option"):
        fewshot_splits(task, 0, data_root, 4)
    bank = tiny_bank(tiny_decoder, tmp_path / "bank", fewshot_splits(task, 0, data_root, 4, lenient=True)[0])
    out = tmp_path / "result.json"
    argv = ["bbt", "--bank", str(bank), "--backbone", str(tiny_decoder), "--task-spec", str(tmp_path / "spec.json"),
            "--method", "mp2-bb", "--preset", "cpu", "--router-evaluations", "2", "--router-initial-points", "2",
            "--prompt-evaluations", "0", "--k-per-label", "4", "--state", str(tmp_path / "s.pkl"), "--out", str(out),
            "--max-length", "128", "--test-limit", "4", "--lenient"]  # fmt: skip
    assert cli(argv) == 0
    result = json.loads(out.read_text())
    assert result["examples"] == {"train": 4, "dev": 4, "test": 4}
    assert result["skipped"]["records"] == 1 and "repeats an option" in result["skipped"]["first"][0]
