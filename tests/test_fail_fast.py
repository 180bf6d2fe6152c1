"""Commands that fail on their arguments fail before a model is loaded (and, where they can, before torch)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modprompt.adapt.predict import record_spec


def test_predict_names_a_missing_input_before_any_model_is_loaded(tmp_path):
    # record_spec is the first thing `modprompt predict` does, before AdaptMethod.from_pretrained loads the backbone.
    with pytest.raises(FileNotFoundError, match="input file not found: .*missing.jsonl"):
        record_spec({"task": "eprstmt", "task_spec": None}, tmp_path / "missing.jsonl")


def test_python_m_modprompt_is_the_modprompt_command(tmp_path):
    def modprompt(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "modprompt", *argv], capture_output=True, text=True, timeout=120)

    shown = modprompt("--help")
    assert shown.returncode == 0 and shown.stdout.startswith("usage: modprompt ")
    failed = modprompt("tasks", "--check", str(tmp_path / "missing.json"))
    assert failed.returncode == 2 and "missing.json" in failed.stderr
