"""The `reins` entry point: help lists stages, unknown stages and bad configs exit non-zero with one line."""

import subprocess
import sys
from dataclasses import dataclass

from reins.cli import main, stage_main
from reins.errors import DataError


def test_help_lists_available_stages(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: reins <stage>" in out


def test_unknown_stage(capsys):
    assert main(["nonsense"]) == 2
    assert "unknown stage 'nonsense'" in capsys.readouterr().err


@dataclass
class Cfg:
    output_dir: str = "x"
    n: int = 1
    quiet: bool = False


def test_stage_main_errors_are_one_line(capsys, tmp_path):
    def train(cfg):
        if cfg.n < 0:
            raise DataError("data.jsonl row 3: field 'chosen' is empty")
        return {"n": cfg.n}

    assert stage_main(Cfg, train, ["n=2", "--quiet"], prog="reins t") == 0
    assert stage_main(Cfg, train, ["m=2"], prog="reins t") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown key 'm'" in err[0]
    assert stage_main(Cfg, train, ["n=-1"], prog="reins t") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["reins t: error: data.jsonl row 3: field 'chosen' is empty"]


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "reins.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "stages:" in out.stdout
