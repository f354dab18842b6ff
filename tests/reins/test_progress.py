"""Long loops show a tqdm bar with rate and ETA on a terminal, and `[step N]` lines otherwise (none under quiet)."""

from __future__ import annotations

import io
import re
import sys

import pytest

from reins.runio import RunDir, progress_step


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _run_loop(tmp_path, monkeypatch, *, tty: bool, quiet: bool) -> str:
    err = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    run = RunDir(tmp_path / f"run-{tty}-{quiet}", {"output_dir": "x", "seed": 0}, quiet=quiet)
    bar = run.progress(4, 1, desc="demo")
    for step in (2, 3, 4):
        bar.update(1)
        run.log(step, {"loss": 0.5 / step})
    bar.close()
    assert progress_step() == 4  # the count "interrupted at step N" reads, bar shown or not
    return err.getvalue()


def test_terminal_gets_a_bar_with_rate_and_eta_and_no_step_lines(tmp_path, monkeypatch):
    out = _run_loop(tmp_path, monkeypatch, tty=True, quiet=False)
    final = out.split("\r")[-1]
    assert re.search(r"demo: 100%.*\| 4/4 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+it/s\]", final), out  # elapsed<ETA, rate
    assert "[step" not in out


@pytest.mark.parametrize("quiet", [False, True])
def test_no_terminal_gets_step_lines_and_quiet_gets_nothing(tmp_path, monkeypatch, quiet):
    out = _run_loop(tmp_path, monkeypatch, tty=False, quiet=quiet)
    if quiet:
        assert out == ""
    else:
        assert out.splitlines() == ["[step 2] loss=0.25", "[step 3] loss=0.1667", "[step 4] loss=0.125"]


def test_quiet_on_a_terminal_shows_no_bar(tmp_path, monkeypatch):
    assert _run_loop(tmp_path, monkeypatch, tty=True, quiet=True) == ""
