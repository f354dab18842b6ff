"""The `reins` entry point: help lists stages, unknown stages and bad configs exit non-zero with one line."""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from reins.cli import main
from reins.entry import stage_main
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


def _config_keys(cls, prefix=""):
    """(dotted key, help) of every config key of `cls`, nested dataclass sections flattened."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            yield from _config_keys(tp, f"{prefix}{f.name}.")
            continue
        yield prefix + f.name, f.metadata.get("help", "")
        for section in (a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)):  # `lora: LoraSpec | None`
            yield from _config_keys(section, f"{prefix}{f.name}.")


def test_stage_help_prints_every_key_with_its_type_default_and_help(capsys):
    """`reins <stage> --help` lists each key of the stage's Config (nested sections as dotted keys) with the help
    from the field's metadata, and no key of any stage lacks help."""
    import dataclasses
    import importlib

    from reins.entry import STAGES

    checked = 0
    for name, (module, _) in STAGES.items():
        mod = importlib.import_module(module)
        if not hasattr(mod, "train"):  # `run` and `export` are commands with their own arguments, not stages
            continue
        cls = mod.Config
        assert main([name, "--help"]) == 0
        lines = capsys.readouterr().out.splitlines()
        keys = list(_config_keys(cls))
        for key, help_ in keys:
            assert help_.strip(), f"{name}: config key '{key}' has no help"
            at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{key}: "))
            presets = sorted(p.stem for p in getattr(cls, "PRESET_DIR", Path("/nonexistent")).glob("*.yaml"))
            listed = f" (available: {', '.join(presets)})" if key == "preset" and presets else ""
            assert lines[at + 1].strip() == help_.strip() + listed, (name, key)
        listed = [line.split(":")[0].strip() for line in lines if line.startswith("  ") and not line.startswith("    ")]
        assert listed == [k for k, _ in keys], name
        checked += len(keys)
    assert checked > 300  # every stage's keys were looked at
    # the type and the default are printed too (a nested key's default is its section's)
    assert main(["iql", "--help"]) == 0
    out = capsys.readouterr().out
    iql_expectile = next(f for f in dataclasses.fields(importlib.import_module("offline.iql").Config)
                         if f.name == "expectile")
    assert f"  expectile: float = {iql_expectile.default!r}\n      {iql_expectile.metadata['help']}\n" in out
    assert main(["online", "--help"]) == 0
    assert "  sac.alpha_lr: float = 0.001\n" in capsys.readouterr().out


def test_help_into_a_closed_pipe_prints_no_traceback():
    # `reins iql --help | head -1`: the reader leaves after one line, the help must end quietly with exit 0.
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.Popen([sys.executable, "-m", "reins.cli", "iql", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=root)
    proc.stdout.readline()
    proc.stdout.close()  # the reader is gone before the rest of the help is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err
