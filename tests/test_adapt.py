"""Few-shot adaptation: parameter counts, frozen parts, early stopping, adapt -> save -> load -> predict, benchmark."""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny import random_bank

from modprompt.adapt.cli import add_adapt, add_predict
from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.loop import dev_evaluations, fit, run_stage, split_budget
from modprompt.adapt.methods import WEIGHTS_NAME, AdaptMethod, create_method, read_adapted_config
from modprompt.adapt.predict import builtin_record_spec, predict_file, record_spec
from modprompt.adapt.registry import METHODS
from modprompt.adapt.run import adapt, fit_max_length
from modprompt.backbone import load_backbone
from modprompt.checksum import file_sha256
from modprompt.data.fewshot import fewshot_splits, subset
from modprompt.data.readers import DataError
from modprompt.data.task import get_task
from modprompt.evaluate import evaluate, main_metric
from modprompt.modular.model import ModularPromptModel

REPO = Path(__file__).resolve().parents[1]
L, H, K, N, R = 2, 32, 8, 4, 4  # tiny backbones: layers, hidden; bank: modules, tokens, rank
HEAD = 2 * H + 2  # the linear span head
BILINEAR_HEAD = HEAD + 2 * H * 32  # its key and query of rank 32 (span_head "bilinear")
FAST = {"max_length": 96, "batch_size": 8, "eval_every": 2, "max_steps": 4, "test_limit": 20}

pytestmark = pytest.mark.usefixtures("one_thread")


def make_bank(backbone, directory: Path) -> Path:
    """A random bank for a tiny backbone, saved like a released one."""
    return random_bank(backbone, ["afqmc", "cmnli"], num_modules=K, num_tokens=N, rank=R).save_pretrained(directory)


@pytest.fixture(scope="module")
def decoder(tiny_decoder):
    return load_backbone(tiny_decoder)


@pytest.fixture(scope="module")
def bank(decoder, tmp_path_factory) -> Path:
    return make_bank(decoder, tmp_path_factory.mktemp("bank"))


@pytest.fixture(scope="module")
def eprstmt(data_root):
    train, dev, test = fewshot_splits("eprstmt", 0, data_root)
    return train, dev, subset(test, 20)


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(required=True)
    add_adapt(sub)
    add_predict(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("kind", ["encoder", "decoder", "encoder_decoder"])
def test_trainable_parameter_counts(kind, request, tmp_path):
    folder = request.getfixturevalue(f"tiny_{kind}")
    backbone = load_backbone(folder)
    bank = make_bank(backbone, tmp_path / "bank")
    body = sum(p.numel() for p in load_backbone(folder).parameters())
    head = HEAD  # every backbone's default: the linear head of the bank's shape
    expected = {
        "route-only": K,
        "route-per-layer": L * K,
        "mp2": L * K + L * K * N * R + L * R * H,
        "pt": N * H + head,
        "deep-pt": L * N * H + head,
        "ft": body + head,
    }
    for method, count in expected.items():
        assert create_method(backbone, AdaptConfig(method), "eprstmt", bank).trainable_parameters() == count, method
    variants = [
        (AdaptConfig("mp2", router_shared=True), K + L * K * N * R + L * R * H),
        (AdaptConfig("mp2", mp2_tune="modules"), L * K + L * K * N * R),
        (AdaptConfig("pt", num_tokens=7), 7 * H + head),
        (AdaptConfig("pt", span_head="bilinear"), N * H + BILINEAR_HEAD),
        (AdaptConfig("ft", span_head="bilinear"), body + BILINEAR_HEAD),
    ]
    for config, count in variants:
        assert create_method(backbone, config, "eprstmt", bank).trainable_parameters() == count, config
    assert create_method(backbone, AdaptConfig("deep-pt"), "eprstmt").num_prompt_tokens == 16  # no bank: 16
    assert create_method(backbone, AdaptConfig("ft"), "eprstmt", bank).num_prompt_tokens == 0


def test_bank_methods_need_a_bank(decoder):
    with pytest.raises(ValueError, match="route-only.*--bank"):
        create_method(decoder, AdaptConfig("route-only"), "eprstmt")
    with pytest.raises(KeyError, match="unknown adaptation method 'lora'"):
        create_method(decoder, AdaptConfig("lora"), "eprstmt")


def test_adapt_help_names_every_method(capsys):
    with pytest.raises(SystemExit):
        cli(["adapt", "--help"])
    shown = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert all(name in shown for name in METHODS)


def test_every_adapt_flag_is_generated_from_its_field_and_sets_it():
    from modprompt.adapt.cli import _FLAGS
    from modprompt.config_flags import dataclass_flag_values

    parser = argparse.ArgumentParser()
    add_adapt(parser.add_subparsers())
    given = {"seed": 3, "protocol": 1, "k_per_label": 8, "max_length": 128, "num_tokens": 4, "batch_size": 4,
             "max_epochs": 2, "max_steps": 6, "eval_every": 3, "patience": 2, "lr_router": 0.5, "lr_prompt": 0.01,
             "lr_soft_prompt": 0.1, "lr_head": 0.01, "lr_backbone": 1e-4, "mp2_tune": "modules",
             "prefinetuned": "RUN/model", "test_limit": 20, "dev_limit": 10}  # fmt: skip
    argv = ["adapt", "--task", "eprstmt", "--method", "mp2", "--router-shared"]
    argv += [arg for name, value in given.items() for arg in ("--" + name.replace("_", "-"), str(value))]
    args = parser.parse_args(argv)
    config = AdaptConfig(args.method, **dataclass_flag_values(args, _FLAGS))
    assert {name: getattr(config, name) for name in given} == given and config.router_shared
    untouched = parser.parse_args(["adapt", "--task", "eprstmt", "--method", "pt"])
    assert AdaptConfig("pt", **dataclass_flag_values(untouched, _FLAGS)) == AdaptConfig("pt")  # defaults stay


def test_a_setting_the_method_does_not_read_is_refused(decoder, caplog):
    from modprompt.adapt.config import METHOD_SETTINGS
    from modprompt.adapt.methods import unused_settings

    assert all(METHODS[m].settings <= METHOD_SETTINGS for m in METHODS)
    assert set(unused_settings("pt")) == METHOD_SETTINGS - {"num_tokens", "lr_soft_prompt", "lr_head"}
    with pytest.raises(SystemExit, match=r"method pt does not use --lr-router \(used by mp2, route-only, "
                                         r"route-per-layer\); --mp2-tune \(used by mp2\)$"):  # fmt: skip
        cli(["adapt", "--task", "eprstmt", "--method", "pt", "--mp2-tune", "modules", "--lr-router", "0.5"])
    with caplog.at_level(logging.WARNING, logger="modprompt.adapt.methods"):  # the library warns instead
        create_method(decoder, AdaptConfig("pt", mp2_tune="modules", num_tokens=4), "eprstmt")
    assert [r.getMessage() for r in caplog.records] == ["method pt does not read mp2_tune: ignored"]


def test_the_parser_imports_no_torch():
    # `modprompt --help` (and `tasks`, `data`) should answer at once, not after seconds of torch import.
    code = "import sys, modprompt.cli as c; c.build_parser(); print(sorted(m for m in ('torch', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_mp2_stages_keep_everything_else_bit_identical(decoder, bank, eprstmt):
    train, _, _ = eprstmt
    backbone_before = {k: v.clone() for k, v in decoder.state_dict().items()}
    bank_sha = file_sha256(bank / "bank.safetensors")
    saved = load_file(bank / "bank.safetensors")
    method = create_method(decoder, AdaptConfig("mp2", **FAST), "eprstmt", bank)
    encoder = method.encoder()
    encoded = encoder.encode_all(train)
    route, prompts = method.stages()
    model = method.model
    # No dev set: nothing to select on, so each stage keeps its last state and must show its training.
    run_stage(method, route, encoder, encoded, [], method.config, 0)
    router = model.router.logits.detach().clone()
    assert router.abs().max() > 0.1  # four steps of lr 0.2 move logits far beyond the ±0.01 init
    assert torch.equal(model.bank.modules_z, saved["bank.modules_z"])  # stage 1 leaves the bank alone
    summary = run_stage(method, prompts, encoder, encoded, [], method.config, 1)
    assert summary["steps"] == 4
    assert torch.equal(model.router.logits, router)  # stage 2: the router is frozen (it had gradients at lr 0.2)
    assert not torch.equal(model.bank.modules_z, saved["bank.modules_z"])  # the in-memory copy trained
    assert not torch.equal(model.bank.projection, saved["bank.projection"])
    assert torch.equal(model.head.proj.weight, saved["head.weight"])  # the bank's head stays frozen
    assert torch.equal(model.bank.layer_scale, saved["bank.layer_scale"])
    assert file_sha256(bank / "bank.safetensors") == bank_sha  # the bank on disk is never written
    for name, value in decoder.state_dict().items():
        assert torch.equal(value, backbone_before[name]), name
    assert not any(p.requires_grad or p.grad is not None for p in method.parameters())  # inference state


@pytest.mark.parametrize("name", ["route-only", "pt", "deep-pt", "ft"])
def test_other_methods_leave_frozen_parts_bit_identical(name, decoder, bank, eprstmt):
    train, _, _ = eprstmt
    backbone_before = {k: v.clone() for k, v in decoder.state_dict().items()}
    method = create_method(decoder, AdaptConfig(name, **FAST), "eprstmt", bank)
    encoder = method.encoder()
    trained = {id(p) for p in method.stages()[0].parameters()}
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    run_stage(method, method.stages()[0], encoder, encoder.encode_all(train), [], method.config)
    for n, p in method.named_parameters():
        assert torch.equal(p, before[n]) != (id(p) in trained), n  # trained ones moved, all others did not
    for n, value in decoder.state_dict().items():
        assert torch.equal(value, backbone_before[n]), n  # ft trains its own copy of the backbone


def test_the_best_dev_checkpoint_is_restored(decoder, bank, eprstmt):
    train, _, _ = eprstmt
    # Dev holds the training reviews with the other label: fitting train makes dev worse, so the best
    # dev state comes before the last step and restoring it is visible.
    dev = [replace(e, label=1 - e.label) for e in train]
    config = AdaptConfig("pt", **{**FAST, "max_steps": 8, "eval_every": 1, "lr_head": 0.05})
    method = create_method(decoder, config, "eprstmt", bank)
    encoder = method.encoder()
    (stage,) = fit(method, encoder, train, dev, config)["stages"]
    scores = [e["dev"] for e in stage["evaluations"]]
    assert len(scores) == 9 and stage["steps"] == 8  # before the first step, then after each
    assert stage["best_dev"] == max(scores) and scores[-1] < max(scores)
    assert stage["best_step"] == max(i for i, s in enumerate(scores) if s == max(scores))  # ties: the later step
    assert main_metric(evaluate(method.forward, encoder, dev)) == max(scores)
    # The same run ended by its budget at the best step (no selection) reaches the very same state.
    same = create_method(decoder, replace(config, max_steps=max(1, stage["best_step"])), "eprstmt", bank)
    if stage["best_step"]:
        fit(same, encoder, train, [], same.config)
    for a, b in zip(method.parameters(), same.parameters(), strict=True):
        assert torch.equal(a, b)


def test_protocol_1_patience_stops_a_stage(decoder, bank, eprstmt):
    train, dev, _ = eprstmt
    config = AdaptConfig("route-only", protocol=1, **{**FAST, "max_steps": 50, "eval_every": 1, "patience": 2,
                                                      "lr_router": 0.0})  # fmt: skip
    method = create_method(decoder, config, "eprstmt", bank)
    (stage,) = fit(method, method.encoder(), train, dev, config)["stages"]
    # lr 0: the dev score never improves on step 0, so the stage stops after `patience` evaluations
    assert stage["stopped_early"] and stage["steps"] == 2 and stage["best_step"] == 0
    assert AdaptConfig("pt", protocol=1).patience == 4  # what protocol 1's runs had by default
    with pytest.raises(ValueError, match="patience"):
        AdaptConfig("pt", patience=2)  # protocol 2 never stops early


def test_split_budget_gives_every_stage_whole_evaluation_blocks():
    assert split_budget(32, 8, 1) == [32] and split_budget(32, 8, 2) == [16, 16]
    assert split_budget(33, 8, 2) == [16, 17]  # a final short block goes with the last stage
    assert split_budget(40, 8, 2) == [24, 16]  # an odd number of blocks: the earlier stage takes the extra one
    assert split_budget(8, 8, 2) == [8, 0] and split_budget(0, 8, 2) == [0, 0]
    assert [dev_evaluations(t, 8) for t in (0, 8, 32, 33)] == [1, 2, 5, 6]


@pytest.mark.parametrize("max_steps", [8, 9])
def test_every_method_gets_one_step_budget_and_the_same_dev_evaluations(decoder, bank, eprstmt, max_steps):
    train, dev, _ = eprstmt
    config = {**FAST, "max_steps": max_steps, "eval_every": 2}
    runs = {}
    for name in ("mp2", "route-only", "pt"):
        method = create_method(decoder, AdaptConfig(name, **config), "eprstmt", bank)
        runs[name] = fit(method, method.encoder(), train, dev[:8], method.config)
    # mp2's two stages share the single-stage methods' budget: 4 + 4 of 8 and 4 + 5 of 9
    assert [s["steps"] for s in runs["mp2"]["stages"]] == ([4, 4] if max_steps == 8 else [4, 5])
    for name, run in runs.items():
        assert run["steps"] == run["step_budget"] == max_steps, name  # every run trains its whole budget
        assert not any(s["stopped_early"] for s in run["stages"]), name
        assert run["dev_evaluations"] == dev_evaluations(max_steps, 2) == (5 if max_steps == 8 else 6), name
    route, prompts = runs["mp2"]["stages"]
    assert prompts["evaluations"][0] == {"step": 0, "dev": route["best_dev"], "carried": True}


def _scripted_dev(monkeypatch, scores: list[float]) -> None:
    """Dev scores come from ``scores``, in order (the selection rule is then all that decides)."""
    import modprompt.adapt.loop as loop

    left = list(scores)
    monkeypatch.setattr(loop, "evaluate", lambda *args, **kwargs: {})
    monkeypatch.setattr(loop, "main_metric", lambda metrics: left.pop(0))


@pytest.mark.parametrize(
    "scores, chosen",
    [([0.9, 0.5, 0.9, 0.7], 4), ([0.9, 0.5, 0.6, 0.7], 0), ([0.5, 0.6, 0.6, 0.6], 6)],
    ids=["tie-with-step-0", "step-0", "ties-later"],
)
def test_the_best_dev_checkpoint_among_all_with_step_0_and_ties_to_the_later_step(
    decoder, bank, eprstmt, monkeypatch, scores, chosen
):
    train, dev, _ = eprstmt
    config = AdaptConfig("route-only", **{**FAST, "max_steps": 6, "eval_every": 2, "lr_router": 0.5})
    method = create_method(decoder, config, "eprstmt", bank)
    start = method.model.router.logits.detach().clone()
    _scripted_dev(monkeypatch, scores)
    run = fit(method, method.encoder(), train, dev[:4], config)
    assert run["steps"] == 6 and run["chosen_step"] == chosen and run["best_dev"] == max(scores)
    assert torch.equal(method.model.router.logits, start) == (chosen == 0)  # step 0: the untouched start


@pytest.mark.parametrize("scores, chosen", [([0.5, 0.8, 0.8], 4), ([0.5, 0.8, 0.6], 2), ([0.7, 0.6, 0.6], 0)])
def test_mp2_chooses_across_its_stages(decoder, bank, eprstmt, monkeypatch, scores, chosen):
    train, dev, _ = eprstmt
    config = AdaptConfig("mp2", **{**FAST, "max_steps": 4, "eval_every": 2})  # route 2 steps, prompts 2 steps
    method = create_method(decoder, config, "eprstmt", bank)
    bank_start = method.model.bank.modules_z.detach().clone()
    _scripted_dev(monkeypatch, scores)  # dev at run steps 0, 2 (route) and 4 (prompts)
    run = fit(method, method.encoder(), train, dev[:4], config)
    assert run["dev_evaluations"] == 3 and run["chosen_step"] == chosen
    # the prompt stage keeps its start (the router's choice) unless its own step wins
    assert torch.equal(method.model.bank.modules_z, bank_start) == (chosen < 4)


def test_max_length_is_sized_without_the_test_inputs(decoder, bank, data_root, eprstmt, monkeypatch):
    import modprompt.adapt.run as run

    train, dev, test = eprstmt
    long_test = [replace(e, query=e.query + "很长的问题" * 40) for e in test]  # only test inputs are long
    monkeypatch.setattr(run, "fewshot_splits", lambda *args, **kwargs: (train, dev, long_test))
    sized = {}
    for protocol in (1, 2):
        kwargs = {**FAST, "max_steps": 0, "protocol": protocol}
        sized[protocol] = adapt(AdaptConfig("route-only", **kwargs), "eprstmt", data_root, bank=bank, backbone=decoder)
    from_train_and_dev = fit_max_length(AdaptConfig("route-only", **FAST), decoder, train + dev).max_length
    assert sized[2]["max_length"] == from_train_and_dev < sized[1]["max_length"]  # protocol 1 read the test inputs
    # The long test inputs get their room at test time only, by the same rule
    assert sized[2]["test_max_length"] == sized[1]["max_length"] and "test_max_length" not in sized[1]


def test_each_example_is_encoded_once_per_run(decoder, bank, data_root, monkeypatch):
    from modprompt.data.encoding import MRCEncoder

    encoded = []
    original = MRCEncoder._encode_batch
    def counting(self, examples):
        encoded.extend(examples)
        return original(self, examples)

    monkeypatch.setattr(MRCEncoder, "_encode_batch", counting)
    # deep-pt prepares on train, then trains with 5 dev evaluations and scores test: each example once
    config = AdaptConfig("deep-pt", **{**FAST, "max_steps": 4, "eval_every": 1, "dev_limit": 8})
    result = adapt(config, "eprstmt", data_root, bank=bank, backbone=decoder)
    assert result["dev_evaluations"] == 5
    sizes = result["examples"]
    assert len(encoded) == len({id(e) for e in encoded}) == sizes["train"] + sizes["dev"] + sizes["test"]


def test_zero_steps_scores_the_untouched_starting_point(decoder, bank, data_root, eprstmt):
    config = AdaptConfig("mp2", **{**FAST, "max_steps": 0})
    result = adapt(config, "eprstmt", data_root, bank=bank, backbone=decoder)
    assert result["steps"] == result["examples_seen"] == 0
    # Dev is scored once, at step 0; the prompt stage starts from that state and knows its score.
    assert [s["dev_evaluations"] for s in result["stages"]] == [1, 0] and result["dev_evaluations"] == 1
    assert result["stages"][1]["evaluations"] == [{**result["stages"][0]["evaluations"][0], "carried": True}]
    start = create_method(decoder, replace(config, max_length=result["max_length"]), "eprstmt", bank)  # same seed, router
    assert result["metric"] == main_metric(evaluate(start.forward, start.encoder(), eprstmt[2]))
    with pytest.raises(ValueError, match="max_steps must be at least 0"):
        AdaptConfig("mp2", max_steps=-1)


def test_adapted_files_round_trip_every_method(decoder, bank, eprstmt, tmp_path):
    train, _, test = eprstmt
    for name in ("mp2", "route-only", "route-per-layer", "pt", "deep-pt", "ft"):
        config = AdaptConfig(name, **{**FAST, "max_steps": 2})
        method = create_method(decoder, config, "eprstmt", bank)
        encoder = method.encoder()
        method.prepare(encoder, train)
        if name == "deep-pt":
            assert (method.layer_scale != 1).all()  # measured on the task's examples, saved with the prompts
        fit(method, encoder, train, [], config)
        method.save_pretrained(tmp_path / name)
        loaded = AdaptMethod.from_pretrained(tmp_path / name, backbone=decoder)
        batch = encoder.collate(encoder.encode_all(test[:4]))
        tasks = ["eprstmt"] * 4
        for a, b in zip(method(batch, tasks), loaded(batch, tasks)):
            assert torch.equal(a, b), name
        numbers = sum(t.numel() for t in load_file(tmp_path / name / WEIGHTS_NAME).values())
        extra = {"pt": 1, "deep-pt": L}.get(name, 0)  # the prompt scales saved beside the prompts
        assert numbers == method.trainable_parameters() + extra, name
    assert (tmp_path / "route-only" / WEIGHTS_NAME).stat().st_size < 200


def test_runs_saved_before_windows_and_the_bilinear_head_reopen_as_they_ran(decoder, bank, eprstmt, tmp_path):
    # A pt run as saved before long_passages and span_head existed: linear head tensors, no key for either.
    method = create_method(decoder, AdaptConfig("pt", span_head="linear", **FAST), "eprstmt", bank)
    method.save_pretrained(tmp_path / "old")
    path = tmp_path / "old" / "adapted_config.json"
    meta = json.loads(path.read_text())
    assert {"head.proj.weight", "head.proj.bias"} <= set(meta["tensors"]) and meta["config"]["span_head"] == "linear"
    for key in ("span_head", "long_passages"):
        del meta["config"][key]
    path.write_text(json.dumps(meta))
    loaded = AdaptMethod.from_pretrained(tmp_path / "old", backbone=decoder)
    assert type(loaded.head).__name__ == "SpanHead" and not loaded.encoder().config.windows
    assert loaded.config.long_passages == "cut"
    new = create_method(decoder, AdaptConfig("pt", **FAST), "eprstmt", bank)  # a new run on a causal backbone
    assert new.config.span_head == "linear" and type(new.head).__name__ == "SpanHead" and new.encoder().config.windows
    assert create_method(decoder, AdaptConfig("route-only"), "eprstmt", bank).config.span_head == "linear"
    with pytest.raises(ValueError, match="keeps the linear span head"):
        create_method(decoder, AdaptConfig("route-only", span_head="bilinear"), "eprstmt", bank)


def test_runs_are_deterministic_given_the_seed(decoder, bank, data_root, tmp_path):
    def weights(seed: int, out: str) -> dict:
        config = AdaptConfig("mp2", seed=seed, **{**FAST, "max_steps": 3})
        adapt(config, "eprstmt", data_root, bank=bank, backbone=decoder, out=tmp_path / out)
        return load_file(tmp_path / out / WEIGHTS_NAME)

    first, again, other = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["model.router.logits"], other["model.router.logits"])


def test_end_to_end_adapt_save_load_predict(tiny_decoder, bank, data_root, eprstmt, tmp_path, capsys, monkeypatch):
    out = tmp_path / "adapted"
    common = ["--backbone", str(tiny_decoder), "--data", str(data_root)]
    flags = ["--max-length", "96", "--max-steps", "4", "--eval-every", "2", "--test-limit", "20"]
    assert cli(["adapt", "--task", "eprstmt", "--method", "route-only", "--bank", str(bank), "--seed", "0",
                "--out", str(out), *common, *flags]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["trainable_parameters"] == 8  # route-only prints exactly K = 8
    assert (result["method"], result["task"], result["seed"], result["examples"]) == (
        "route-only", "eprstmt", 0, {"train": 32, "dev": 31, "test": 20}
    )  # fmt: skip
    assert result["steps"] == 4 and result["examples_seen"] == 32 and result["train_seconds"] > 0
    assert load_file(out / WEIGHTS_NAME)["model.router.logits"].shape == (1, K)

    # The user's file: the same 20 test reviews, as a user would write them, plus an unlabelled one.
    _, _, test = eprstmt
    records = [{"text": e.passage, "label": e.answer_text} for e in test] + [{"text": "物流很快，包装也好"}]
    user_file = tmp_path / "reviews.jsonl"
    user_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    preds = tmp_path / "preds.jsonl"
    assert cli(["predict", "--adapted", str(out), "--input", str(user_file), "--output", str(preds),
                "--backbone", str(tiny_decoder)]) == 0  # fmt: skip
    summary = json.loads(capsys.readouterr().out)
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(lines) == 21 and summary["records"] == 21 and summary["labelled"] == 20
    assert lines[-1]["label"] is None and lines[-1]["correct"] is None
    assert lines[-1]["prediction"] in ("正面", "负面") and set(lines[-1]["scores"]) == {"正面", "负面"}
    assert lines[0]["source"].endswith("reviews.jsonl:1")
    # The reloaded adaptation scores the same examples exactly as the run that made it.
    assert summary["metrics"]["accuracy"] == result["test"]["accuracy"]
    assert sum(line["correct"] for line in lines[:20]) == round(20 * result["test"]["accuracy"])

    # On a terminal predict shows the one progress bar over its batches; --quiet turns it off.
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    for quiet in ([], ["--quiet"]):
        assert cli(["predict", "--adapted", str(out), "--input", str(user_file), "--output", str(preds),
                    "--backbone", str(tiny_decoder), "--batch-size", "4", *quiet]) == 0  # fmt: skip
        err = capsys.readouterr().err
        assert ("predict: 100%" in err and "6/6" in err) == (not quiet)


def test_own_task_spec_adapt_and_predict(decoder, data_root, tmp_path):
    spec = REPO / "examples" / "own_task" / "kefu_intent.json"
    config = AdaptConfig("pt", k_per_label=4, num_tokens=4, **{**FAST, "test_limit": None})
    result = adapt(config, None, data_root, backbone=decoder, task_spec=spec, out=tmp_path / "kefu")
    assert result["task"] == "kefu_intent" and result["examples"] == {"train": 20, "dev": 20, "test": 20}
    assert json.loads((tmp_path / "kefu" / "adapted_config.json").read_text())["task_spec"] == str(spec)
    method = AdaptMethod.from_pretrained(tmp_path / "kefu", backbone=decoder)
    record = record_spec(read_adapted_config(tmp_path / "kefu"), spec.parent / "test.jsonl")
    summary = predict_file(method, spec.parent / "test.jsonl", tmp_path / "p.jsonl", record)
    assert summary["records"] == 20 and summary["metrics"]["accuracy"] == result["test"]["accuracy"]


def test_predict_errors_name_the_file_and_line(decoder, bank, tmp_path):
    method = create_method(decoder, AdaptConfig("route-only"), "eprstmt", bank)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "很好", "label": "正面"}\n{"text": "很差", "label": "差评"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl, line 2: unknown label '差评'"):
        predict_file(method, bad, tmp_path / "p.jsonl", builtin_record_spec(get_task("eprstmt"), bad))
    pair = builtin_record_spec(get_task("bustm"), bad)
    assert pair.text_fields == ("text", "text_pair")
    with pytest.raises(ValueError, match="adapted to 'eprstmt'"):
        predict_file(method, bad, tmp_path / "p.jsonl", pair)


def test_a_changed_bank_is_refused(decoder, tmp_path, monkeypatch):
    import shutil

    from modprompt.adapt import methods as methods_module

    bank = make_bank(decoder, tmp_path / "bank")
    method = create_method(decoder, AdaptConfig("route-only"), "eprstmt", bank)
    method.save_pretrained(tmp_path / "adapted")
    AdaptMethod.from_pretrained(tmp_path / "adapted", backbone=decoder)  # the same bank: fine
    model = ModularPromptModel.from_pretrained(bank, decoder)
    with torch.no_grad():
        model.bank.modules_z.add_(1.0)
    shipped = tmp_path / "shipped"
    shutil.copytree(bank, shipped / "old-release")  # the bank it was adapted from, as a shipped earlier release
    model.save_pretrained(bank)
    with pytest.raises(ValueError, match="sha256 differs"):
        AdaptMethod.from_pretrained(tmp_path / "adapted", backbone=decoder)
    monkeypatch.setattr(methods_module, "SHIPPED_BANKS", shipped)
    # The bank is checked before any backbone is loaded, and the error names the shipped bank that fits.
    monkeypatch.setattr(methods_module, "resolve_backbone", lambda *a: pytest.fail("backbone loaded before the bank check"))
    with pytest.raises(ValueError, match=f"pass --bank {shipped / 'old-release'}"):
        AdaptMethod.from_pretrained(tmp_path / "adapted")


def _fewshot_benchmark(monkeypatch):
    """benchmarks/fewshot.py as a module, imported as when run as a script (result_grid beside it)."""
    monkeypatch.syspath_prepend(REPO / "benchmarks")
    spec = importlib.util.spec_from_file_location("fewshot_benchmark", REPO / "benchmarks" / "fewshot.py")
    fewshot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fewshot)
    return fewshot


def test_fewshot_benchmark_stores_resumes_and_aggregates(tiny_decoder, bank, data_root, tmp_path, monkeypatch):
    fewshot = _fewshot_benchmark(monkeypatch)
    argv = ["--bank", str(bank), "--backbone", str(tiny_decoder), "--data", str(data_root),
            "--results", str(tmp_path), "--methods", "route-only", "pt", "--tasks", "eprstmt", "bustm",
            "--seeds", "0", "--test-limit", "20", "--max-steps", "2", "--max-length", "96"]  # fmt: skip
    summary = fewshot.main(argv)
    stored = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "fewshot").rglob("seed*.json"))
    assert stored == [f"fewshot/{m}/{t}/seed0.json" for m in ("pt", "route-only") for t in ("bustm", "eprstmt")]
    route = summary["methods"]["route-only"]
    assert route["trainable_parameters"] == 8 and summary["methods"]["pt"]["trainable_parameters"] == N * H + HEAD
    assert route["tasks"]["eprstmt"]["n"] == 1 and route["tasks"]["eprstmt"]["std"] == 0.0
    expected = (route["tasks"]["eprstmt"]["mean"] + route["tasks"]["bustm"]["mean"]) / 2
    assert route["average"] == pytest.approx(expected)
    assert summary["settings"]["test_limit"] == 20
    table = (tmp_path / "fewshot.md").read_text()
    assert "| route-only | 8 |" in table and "eprstmt" in table
    # Run time covers the whole run (split, preparation, training, test), so it is above the training time.
    walls = [json.loads((tmp_path / f"fewshot/route-only/{t}/seed0.json").read_text())["wall_seconds"]
             for t in ("eprstmt", "bustm")]  # fmt: skip
    assert route["wall_seconds_per_run"] == pytest.approx(sum(walls) / 2)
    assert route["wall_seconds_per_run"] > route["fit_seconds_per_run"]
    assert "| train s/run | run s/run |" in table
    # The floor: the most frequent label's share of the 20 scored test examples (12 negative, 11 not paraphrases).
    assert summary["majority"] == {"eprstmt": pytest.approx(0.6), "bustm": pytest.approx(0.55)}
    assert "| *majority label* | 0 | 60.0 | 55.0 | 57.5 |" in table
    assert summary["command"] == "python benchmarks/fewshot.py " + " ".join(argv) and summary["command"] in table
    assert (tmp_path / "fewshot.png").stat().st_size > 1000
    # Every result records the machine it ran on; the table counts runs per machine.
    machine = json.loads((tmp_path / "fewshot/pt/eprstmt/seed0.json").read_text())["machine"]
    assert machine["isa"] == torch.backends.cpu.get_cpu_capability() and machine["threads"] == torch.get_num_threads()
    assert ("gpu" in machine) == torch.cuda.is_available()  # --device auto: the GPU when there is one
    assert summary["machines"] == [{"machine": machine, "runs": 4}]
    from machine import machine_text  # benchmarks/machine.py, on the path above

    assert f"Runs per machine (times from different machines do not compare): {machine_text(machine)}: 4" in table
    cpu_only = {k: v for k, v in machine.items() if k != "gpu"}
    assert machine_text({**cpu_only, "gpu": "NVIDIA H100"}) == f"NVIDIA H100 on {machine_text(cpu_only)}"

    # A rerun finds every result stored and trains nothing; another budget is refused.
    monkeypatch.setattr(fewshot, "adapt", lambda *a, **k: pytest.fail("a stored result was run again"))
    assert fewshot.main(argv)["methods"]["route-only"] == route
    with pytest.raises(SystemExit, match="other settings"):
        fewshot.main([*argv, "--test-limit", "30"])
    # --run-only fills cells and leaves the table alone (here there is nothing to fill).
    (tmp_path / "fewshot.md").write_text("a larger table")
    assert fewshot.main([*argv, "--run-only"]) is None
    assert (tmp_path / "fewshot.md").read_text() == "a larger table"

    # A prefinetune result names the model it started from; the table says which (by path and sha256).
    result = json.loads((tmp_path / "fewshot/pt/eprstmt/seed0.json").read_text())
    model = {"path": str(REPO / "runs/pft/model"), "sha256": "ab" * 32}
    fewshot.ResultGrid.store(tmp_path / "fewshot/prefinetune/eprstmt/seed0.json", {**result, "prefinetuned": model},
                             result["device"])  # fmt: skip
    unrecorded = tmp_path / "fewshot/pt/bustm/seed0.json"  # as stored before results recorded their machine
    unrecorded.write_text(json.dumps({k: v for k, v in json.loads(unrecorded.read_text()).items() if k != "machine"}))
    summary = fewshot.main([*argv, "--methods", "pt", "prefinetune", "--aggregate-only"])
    assert summary["prefinetuned"] == [model]
    assert summary["machines"] == [{"machine": machine, "runs": 2}, {"machine": None, "runs": 1}]
    assert "; not recorded: 1" in (tmp_path / "fewshot.md").read_text()
    assert f"pre-finetuned model `runs/pft/model` (weights sha256 {'ab' * 32})" in (tmp_path / "fewshot.md").read_text()
    # One prefinetune row comes from one model: a rebuilt one (other weights) may not add results to it, also on
    # a task where the row has no result yet (bustm; the stored one is eprstmt's).
    rebuilt = tmp_path / "rebuilt"
    rebuilt.mkdir()
    (rebuilt / "backbone.safetensors").write_bytes(b"other weights")
    for tasks in (["eprstmt", "bustm"], ["bustm"]):
        with pytest.raises(SystemExit, match=f"sha256 {'ab' * 32}; .*rebuilt has sha256 .*delete"):
            fewshot.main([*argv, "--methods", "prefinetune", "--tasks", *tasks, "--prefinetuned", str(rebuilt),
                          "--run-only"])  # fmt: skip


def test_fewshot_tables_hold_one_protocol_and_one_bank(tiny_decoder, bank, data_root, tmp_path, monkeypatch, capsys):
    fewshot = _fewshot_benchmark(monkeypatch)
    common = ["--bank", str(bank), "--backbone", str(tiny_decoder), "--data", str(data_root),
              "--results", str(tmp_path), "--methods", "pt", "route-only", "--tasks", "eprstmt", "--seeds", "1",
              "--test-limit", "20", "--max-steps", "6", "--eval-every", "2", "--max-length", "96",
              "--lr-head", "0.05"]  # fmt: skip
    old = fewshot.main([*common, "--name", "old", "--protocol", "1", "--patience", "100"])
    assert old["protocol"] == 1 and "**Protocol 1**" in (tmp_path / "old.md").read_text()
    legacy = tmp_path / "old/pt/eprstmt/seed1.json"  # as stored before protocols: no "protocol" in its config
    cell = json.loads(legacy.read_text())
    legacy.write_text(json.dumps({**cell, "config": {k: v for k, v in cell["config"].items() if k != "protocol"}}))
    with pytest.raises(SystemExit):
        fewshot.parse_args([*common, "--patience", "2"])  # early stopping is protocol 1's

    # pt trained its whole budget and its best dev step is unique: protocol 2 would have run it alike, so it is
    # carried over; route-only's dev scores tie, so protocol 2 chooses another step and runs it again.
    fair = fewshot.main([*common, "--name", "fair", "--carry-from", "old"])
    assert fair["protocol"] == 2
    assert fair["budgets"]["pt"]["carried"] == 1 and fair["budgets"]["route-only"]["carried"] == 0
    carried = json.loads((tmp_path / "fair/pt/eprstmt/seed1.json").read_text())
    assert carried["carried_from"]["path"] == "old/pt/eprstmt/seed1.json" and carried["config"]["protocol"] == 2
    assert carried["machine"] == cell["machine"]  # it keeps the machine it ran on
    table = (tmp_path / "fair.md").read_text()
    assert "**Protocol 2**" in table and "| pt | prompt | 6 | 6 | 4 | 0 of 1 |" in table
    # Ties go to the later step, so "not step 0" alone does not say that training helped: the table also counts
    # the runs whose dev score rose above step 0's (protocol 2 only: under protocol 1 it is "not step 0").
    for method in ("pt", "route-only"):
        scores = [e["dev"] for e in json.loads((tmp_path / f"fair/{method}/eprstmt/seed1.json").read_text())
                  ["stages"][0]["evaluations"]]  # fmt: skip
        assert fair["budgets"][method]["rose_above_step_0"] == int(max(scores) > scores[0])
    assert "dev rose above step 0" in table and "dev rose above step 0" not in (tmp_path / "old.md").read_text()
    flat = {"steps": 4, "evaluations": [{"step": 0, "dev": 0.5}, {"step": 4, "dev": 0.5}]}
    assert not fewshot.rose_above_start({"stages": [flat]})
    second = {"steps": 4, "evaluations": [{"step": 0, "dev": 0.5, "carried": True}, {"step": 4, "dev": 0.75}]}
    assert fewshot.rose_above_start({"stages": [flat, second]})  # a rise in a later stage counts
    # The reproduction check: run fresh under protocol 2, the carried cell comes out the same.
    fewshot.main([*common, "--name", "repro", "--methods", "pt"])
    fresh = json.loads((tmp_path / "repro/pt/eprstmt/seed1.json").read_text())
    assert fresh["metric"] == carried["metric"]
    assert fresh["stages"][0]["evaluations"] == carried["stages"][0]["evaluations"]
    report = fewshot.main([*common, "--name", "repro", "--methods", "pt", "--compare-with", "fair"])
    assert report["cells"] == report["same"] == 1 and (tmp_path / "repro-vs-fair.json").is_file()

    # A table never mixes protocols or banks, whatever lands in its folder.
    mixed = tmp_path / "fair/pt/eprstmt/seed2.json"
    mixed.write_text(legacy.read_text())
    with pytest.raises(SystemExit, match="other settings.*protocol"):
        fewshot.main([*common, "--name", "fair", "--seeds", "1", "2", "--aggregate-only"])
    mixed.write_text(json.dumps({**fresh, "bank_sha256": "ab" * 32}))
    with pytest.raises(SystemExit, match="bank sha256"):
        fewshot.main([*common, "--name", "fair", "--seeds", "1", "2", "--aggregate-only"])
    mixed.unlink()

    both = fewshot.main(["--results", str(tmp_path), "--side-by-side", "old", "fair", "--name", "both"])
    rows = {(r["method"], r["table"]): r["protocol"] for r in both["rows"]}
    assert rows == {("pt", "old"): 1, ("pt", "fair"): 2, ("route-only", "old"): 1, ("route-only", "fair"): 2}
    assert "| pt | [old](old.md) |" in (tmp_path / "both.md").read_text()

    capsys.readouterr()
    assert fewshot.main([*common, "--name", "next", "--plan", "--estimate-from", "old"]) is None
    plan = json.loads(capsys.readouterr().out)
    assert plan["to_run"] == 2 and plan["unestimated"] == 0 and plan["estimated_hours"] > 0
    assert not (tmp_path / "next.md").exists() and not (tmp_path / "next").exists()  # a plan writes nothing


@pytest.mark.parametrize("name", ["fewshot", "fewshot-untuned", "fewshot-longcap"])
def test_stored_fewshot_tables_aggregate_to_the_same_numbers(name, data_root, tmp_path, monkeypatch):
    fewshot = _fewshot_benchmark(monkeypatch)
    stored = REPO / "benchmarks" / "results"
    (tmp_path / name).symlink_to(stored / name)  # read the stored cells, write the tables here
    committed = json.loads((stored / f"{name}.json").read_text())
    argv = committed["command"].split()[2:] + ["--aggregate-only", "--results", str(tmp_path), "--data", str(data_root)]
    summary = json.loads(json.dumps(fewshot.main(argv)))  # as written (JSON keys are strings)
    assert summary["methods"] == committed["methods"] and summary["settings"] == committed["settings"]

    def rows(text: str) -> list[str]:
        return [line for line in text.splitlines() if line.startswith("| ") and "trainable params" not in line]

    assert rows((tmp_path / f"{name}.md").read_text()) == rows((stored / f"{name}.md").read_text())
