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


def test_stages_flush_subnormal_floats_unless_opted_out(monkeypatch):
    """Every stage runs with subnormal floats flushed to zero (Adam's decaying moments otherwise hit x86's slow
    subnormal path); REINS_KEEP_DENORMALS=1 keeps IEEE behaviour."""
    import torch

    # a float32 subnormal (~1e-39; the smallest normal is 1.18e-38) made from its bits, so that no float
    # conversion under an already flushing process can zero it on the way in
    tiny = torch.tensor([0x000AE398], dtype=torch.int32).view(torch.float32)
    seen = {}

    def train(cfg):
        seen["product"] = float((tiny * 1.0)[0])
        return {}

    try:
        torch.set_flush_denormal(False)
        monkeypatch.setenv("REINS_KEEP_DENORMALS", "1")
        assert stage_main(Cfg, train, ["--quiet"], prog="reins t") == 0
        assert seen["product"] > 0  # opted out: IEEE subnormals kept
        monkeypatch.delenv("REINS_KEEP_DENORMALS")
        assert stage_main(Cfg, train, ["--quiet"], prog="reins t") == 0
        assert seen["product"] == 0.0  # flushed
    finally:
        torch.set_flush_denormal(True)  # what any stage run earlier in this process has already set
