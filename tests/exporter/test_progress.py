"""Training progress: a few lines in a log, not one per step."""

from __future__ import annotations

import io
import sys

import pytest

from genqueue_exporter.progress import training_bar


def test_a_log_gets_a_few_redraws_not_one_per_step(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()  # not a TTY, like CI output or `make models > log`
    monkeypatch.setattr(sys, "stderr", log)
    bar = training_bar(3000, "demo", True)
    for step in bar:
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}", refresh=False)
    bar.close()
    out = log.getvalue()
    assert "demo" in out and "3000/3000" in out  # the start and the end are still shown
    assert out.count("\r") < 10


def test_disabled_bars_print_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    log = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log)
    assert list(training_bar(5, "demo", False)) == [0, 1, 2, 3, 4]
    assert log.getvalue() == ""

