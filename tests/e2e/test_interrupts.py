"""Ctrl-C and SIGTERM anywhere (issue 14, class 4): one line, exit 130 / 143, and the rerun equals an
uninterrupted run.

Real processes get real signals: SIGINT (what Ctrl-C sends) mid-training of an offline stage and inside
`reins run` (an LM stage), and SIGTERM (what `kill`, schedulers and container runtimes send) during an LM stage's
final evaluation. Each must end with exactly
one stderr line `<prog>: interrupted at step N; rerun the same command to resume` (N the step it had reached),
exit code 128 + the signal (130, 143), and the same command run again must end with the metrics.json of a run
that was never interrupted (computed in-process here on one thread, as the subprocesses run), the LM stages'
`train/*` metrics included.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import ROOT, signal_when, subprocess_env
from tests.pipelines.helpers import SMALL

LINE = re.compile(r"^(reins \w+): interrupted at step (\d+)( of stage '\w+')?; rerun the same command to resume$")
LM = {"quiet": True, "tiny": dict(SMALL), "max_length": 48, "builtin_size": 64, "max_eval_samples": 8,
      "batch_size": 8, "log_every": 1, "eval_prompts": None}


@pytest.fixture(autouse=True)
def one_thread():
    """The subprocesses run with OMP_NUM_THREADS=1; the in-process reference runs must round the same way."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _log_step(out: Path) -> int:
    try:
        lines = (out / "log.jsonl").read_text().splitlines()
        return max((json.loads(x)["step"] for x in lines if x.endswith("}")), default=0)
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _interrupt_when(cmd: list[str], ready, sig: int, env: dict | None = None,
                    timeout: float = 180.0) -> tuple[int, list[str]]:
    """Run `cmd`, send `sig` as soon as `ready()` is true; its exit code and non-empty stderr lines."""
    code, err = signal_when(cmd, ready, sig, env=env, timeout=timeout)
    return code, [x for x in err.splitlines() if x.strip()]


def _rerun(cmd: list[str], env: dict | None = None) -> None:
    res = subprocess.run(cmd, env=env or subprocess_env(), cwd=ROOT, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-3000:]


def _stage_cmd(tmp_path: Path, stage: str, cfg: dict) -> list[str]:
    f = tmp_path / f"{stage}.yaml"
    f.write_text(yaml.safe_dump({"stage": stage, **cfg}))
    return [sys.executable, "-m", "reins.cli", stage, "--config", str(f)]


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _one_line(err: list[str], prog: str) -> int:
    assert len(err) == 1, err
    m = LINE.match(err[0])
    assert m and m.group(1) == prog, err
    return int(m.group(2))


def test_dpo_sigterm_during_final_evaluation(tmp_path):
    """The run is killed after its last checkpoint, while it generates for the final evaluation: the rerun
    trains nothing and must still report the last step's train/* metrics."""
    from pipelines import dpo
    from reins.config import from_dict

    cfg = {**LM, "max_steps": 3, "save_every": 1, "eval_prompts": "builtin:sentiment",
           "eval": {"num_prompts": 48, "max_new_tokens": 16, "batch_size": 8}}
    full = dpo.train(from_dict(dpo.Config, {**cfg, "output_dir": str(tmp_path / "full")}))
    out = tmp_path / "run"
    cmd = _stage_cmd(tmp_path, "dpo", {**cfg, "output_dir": str(out)})
    code, err = _interrupt_when(cmd, lambda: (out / "model" / "config.json").is_file(), signal.SIGTERM)
    assert code == 143
    assert _one_line(err, "reins dpo") == 3 and not (out / "metrics.json").exists()
    _rerun(cmd)
    got = _metrics(out)
    assert "train/loss" in got and "train/rewards/margins" in got
    assert got == full


RECIPE = {"name": "intr", "stages": [
    {"name": "sft", "stage": "sft", **LM, "max_steps": 4, "save_every": 2},
    {"name": "dpo", "stage": "dpo", **LM, "model": "${sft.output_dir}/model", "max_steps": 40, "save_every": 2},
], "quiet": True, "report": False}


def test_reins_run_sigint_inside_a_stage(tmp_path):
    from pipelines.runner import run_recipe

    ref = tmp_path / "ref.yaml"
    ref.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(tmp_path / "full")}))
    full = run_recipe(ref)
    f = tmp_path / "r.yaml"
    out = tmp_path / "run"
    f.write_text(yaml.safe_dump({**RECIPE, "output_dir": str(out)}))
    cmd = [sys.executable, "-m", "reins.cli", "run", str(f)]
    code, err = _interrupt_when(cmd, lambda: _log_step(out / "dpo") >= 5, signal.SIGINT)
    assert code == 130
    step = _one_line(err, "reins run")
    assert 5 <= step < 40 and err[0].endswith("of stage 'dpo'; rerun the same command to resume")
    assert (out / "sft" / "metrics.json").is_file() and not (out / "dpo" / "metrics.json").exists()
    _rerun(cmd)
    assert {s: _metrics(out / s) for s in ("sft", "dpo")} == json.loads(json.dumps(full))


def test_iql_sigint_mid_training(tmp_path, monkeypatch):
    from offline import iql
    from reins.config import from_dict
    from tests.offline.helpers import two_episodes, write_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    write_dataset("test/intr-v0", two_episodes(), ref_min=-10.0, ref_max=10.0)
    cfg = {"dataset": "test/intr-v0", "max_steps": 1000, "batch_size": 8, "hidden": [16, 16], "eval_every": 500,
           "eval_episodes": 1, "log_every": 50, "checkpoint_every": 100, "torch_threads": 1, "quiet": True}
    full = iql.train(from_dict(iql.Config, {**cfg, "output_dir": str(tmp_path / "full")}))
    out = tmp_path / "run"
    cmd = _stage_cmd(tmp_path, "iql", {**cfg, "output_dir": str(out)})
    env = subprocess_env(MINARI_DATASETS_PATH=tmp_path / "minari")
    code, err = _interrupt_when(cmd, lambda: _log_step(out) >= 150, signal.SIGINT, env)
    assert code == 130
    step = _one_line(err, "reins iql")
    assert 150 <= step < 1000 and not (out / "metrics.json").exists()
    _rerun(cmd, env)
    drop = {"time/updates_per_s"}
    assert {k: v for k, v in _metrics(out).items() if k not in drop} == \
        {k: v for k, v in full.items() if k not in drop}


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo"])
def test_resume_after_the_last_checkpoint_keeps_train_metrics(tmp_path, monkeypatch, stage):
    """Interrupted between its last checkpoint and metrics.json (here: as it writes metrics.json), a stage
    resumed from that checkpoint trains no step and must still return the last step's train/* metrics."""
    import importlib

    from reins.config import from_dict
    from reins.entry import STAGES
    from reins.runio import RunDir

    mod = importlib.import_module(STAGES[stage][0])
    cfg = {**{k: v for k, v in LM.items() if k != "eval_prompts" or stage != "reward"}, "max_steps": 2,
           "save_every": 1}
    full = mod.train(from_dict(mod.Config, {**cfg, "output_dir": str(tmp_path / "full")}))
    real = RunDir.finish

    def interrupted(self, metrics):
        raise KeyboardInterrupt

    monkeypatch.setattr(RunDir, "finish", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mod.train(from_dict(mod.Config, {**cfg, "output_dir": str(tmp_path / "run")}))
    monkeypatch.setattr(RunDir, "finish", real)
    resumed = mod.train(from_dict(mod.Config, {**cfg, "output_dir": str(tmp_path / "run")}))
    assert any(k.startswith("train/") for k in full)
    assert resumed == full


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_collect_interrupted_has_no_step_and_leaves_no_dataset(tmp_path, monkeypatch, capfd, sig, code):
    """collect has no step loop (it is all-or-nothing): the line claims no step, and no dataset is left."""
    from offline import collect
    from offline.data import _local_ids
    from tests.helpers import run_cli

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    real = collect.rollout
    calls = []

    def signalled(*a, **k):
        calls.append(1)
        if len(calls) == 2:  # mid-collection: the second rollout (reference returns or a tier)
            signal.raise_signal(sig)
        return real(*a, **k)

    monkeypatch.setattr(collect, "rollout", signalled)
    handler = signal.getsignal(signal.SIGTERM)
    got, err = run_cli(["collect", f"output_dir={tmp_path / 'out'}", "behaviour=scripted", "steps_per_tier=50",
                        "ref_episodes=1", "dataset_prefix=test/intr", "--quiet"], capfd)
    assert (got, err) == (code, ["reins collect: interrupted; rerun the same command to resume"])
    assert _local_ids(tmp_path / "minari") == [] and not (tmp_path / "out" / "metrics.json").exists()
    assert signal.getsignal(signal.SIGTERM) == handler  # ours is gone again
