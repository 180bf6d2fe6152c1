"""The one progress bar (modprompt.progress): shown only when asked or on a terminal, log lines unchanged above it."""

from __future__ import annotations

import logging

from modprompt.progress import Progress


def last_line(err: str) -> str:
    return [line for line in err.replace("\r", "\n").splitlines() if line.strip()][-1]


def test_the_bar_counts_and_shows_the_latest_loss_and_dev_score(capsys):
    with Progress(4, "adapt mp2", "step", show=True).shown() as bar:
        bar.step(0.5)
        bar.dev(0.25)
        bar.step(0.125, n=3, tok_s="90")
    line = last_line(capsys.readouterr().err)
    assert line.startswith("adapt mp2: 100%") and "4/4" in line
    assert "loss=0.1250" in line and "dev=0.2500" in line and "tok_s=90" in line


def test_no_bar_off_a_terminal_and_log_lines_as_they_are(capsys, caplog):
    with caplog.at_level(logging.INFO), Progress(2, "bbt", "eval").shown() as bar:  # stderr is no terminal here
        logging.getLogger("modprompt.test").info("generation 1/2")
        bar.step(1.0)
    assert capsys.readouterr().err == ""
    assert [r.getMessage() for r in caplog.records] == ["generation 1/2"]
