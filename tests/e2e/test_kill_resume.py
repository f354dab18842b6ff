"""kill -9 and re-run, for the stage kinds whose own tests only interrupt in-process (issue 7 "Reliability").

tests/pipelines/test_ppo_stage.py already SIGKILLs LM training with rollouts; the offline (iql), online and
collect tests interrupt by raising inside the process, where `finally:` and `except BaseException:` cleanup still
runs. Here the process gets SIGKILL (no cleanup at all) and the same command is run again:
- offline training and online RL: the re-run resumes from the last checkpoint and ends with exactly the metrics
  of an uninterrupted run (computed in-process here with the same thread count);
- collect (all-or-nothing by design): a kill while tiers are being written leaves no dataset that loads under
  its id, and the re-run writes datasets equal to an uninterrupted collection's.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import ROOT, signal_when, subprocess_env


def _kill_when(cmd: list[str], env: dict, cwd: Path, ready, timeout: float = 120.0) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` is true (polled every few ms)."""
    code, err = signal_when(cmd, ready, signal.SIGKILL, env=env, cwd=cwd, timeout=timeout)
    assert code == -signal.SIGKILL, f"it finished before the kill: {err[-2000:]}"


def _rerun(cmd: list[str], env: dict, cwd: Path) -> None:
    res = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr[-3000:]


def _yaml(path: Path, stage: str, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump({"stage": stage, **cfg}))
    return path


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _ckpt_step(out: Path, key: str) -> int:
    from reins.runio import safe_torch_load

    state = safe_torch_load(out / "checkpoints" / "checkpoint.pt")
    return int(state[key]["step"] if key else state["step"])


@pytest.fixture
def threads_restored():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # offline stages set torch_threads for the whole process


# ----------------------------------------------------------------------------------------- offline training
def test_iql_sigkill_then_rerun_equals_uninterrupted(tmp_path, monkeypatch, threads_restored):
    from offline import iql
    from reins.config import from_dict
    from tests.offline.helpers import two_episodes, write_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    write_dataset("test/kill-v0", two_episodes(), ref_min=-10.0, ref_max=10.0)
    cfg = {"dataset": "test/kill-v0", "max_steps": 600, "batch_size": 8, "hidden": [16, 16], "eval_every": 300,
           "eval_episodes": 1, "log_every": 50, "checkpoint_every": 50, "torch_threads": 1, "quiet": True}
    full = iql.train(from_dict(iql.Config, {**cfg, "output_dir": str(tmp_path / "full")}))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "offline.iql", "--config",
           str(_yaml(tmp_path / "iql.yaml", "iql", {**cfg, "output_dir": str(out)}))]
    env = subprocess_env(MINARI_DATASETS_PATH=tmp_path / "minari")
    _kill_when(cmd, env, ROOT, lambda: (out / "checkpoints" / "checkpoint.pt").is_file())
    assert _ckpt_step(out, "") < 600 and not (out / "metrics.json").exists()  # it died mid-run
    _rerun(cmd, env, ROOT)
    drop = {"time/updates_per_s"}
    assert {k: v for k, v in _metrics(out).items() if k not in drop} == \
        {k: v for k, v in full.items() if k not in drop}
    assert (out / "log.jsonl").read_text() == (tmp_path / "full" / "log.jsonl").read_text()  # no step twice


# ----------------------------------------------------------------------------------------- online RL
def test_online_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    from online.stage import Config, train
    from reins.config import from_dict

    cfg = {"algo": "ppo", "env_id": "Pendulum-v1", "total_steps": 1536, "checkpoint_every": 256,
           "eval_every": 512, "eval_episodes": 1, "log_every": 256, "seed": 1, "quiet": True,
           "ppo": {"num_envs": 2, "num_steps": 64, "hidden": [16], "update_epochs": 2}}
    full = train(from_dict(Config, {**cfg, "output_dir": str(tmp_path / "full")}))
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "online.stage", "--config",
           str(_yaml(tmp_path / "online.yaml", "online", {**cfg, "output_dir": str(out)}))]
    env = subprocess_env()
    _kill_when(cmd, env, ROOT, lambda: (out / "checkpoints" / "checkpoint.pt").is_file())
    assert _ckpt_step(out, "harness") < 1536 and not (out / "metrics.json").exists()
    _rerun(cmd, env, ROOT)
    assert _metrics(out) == json.loads(json.dumps(full))


# ----------------------------------------------------------------------------------------- collection
COLLECT = {"behaviour": "scripted", "dataset_prefix": "test/kill", "steps_per_tier": 400, "ref_episodes": 2,
           "n_envs": 4, "quiet": True}


def _datasets_equal(root_a: Path, root_b: Path, ids: list[str]) -> None:
    from offline.data import load_transitions

    for ds in ids:
        a, b = (load_transitions(str(r / ds)) for r in (root_a, root_b))
        for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
            assert (getattr(a, k) == getattr(b, k)).all(), (ds, k)
        assert (a.ref_min_score, a.ref_max_score) == (b.ref_min_score, b.ref_max_score)


@pytest.fixture(scope="module")
def killed_collection(tmp_path_factory):
    """An uninterrupted collection, and one SIGKILLed while writing its first tier and then re-run."""
    from offline import collect
    from offline.data import resolve_dataset_path
    from reins.config import from_dict
    from reins.errors import DataError

    tmp = tmp_path_factory.mktemp("collect")
    ref_root, root = tmp / "minari-ref", tmp / "minari"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(ref_root))
        full = collect.train(from_dict(collect.Config, {**COLLECT, "output_dir": str(tmp / "full")}))
        out = tmp / "killed"
        cmd = [sys.executable, "-m", "offline.collect", "--config",
               str(_yaml(tmp / "collect.yaml", "collect", {**COLLECT, "output_dir": str(out)}))]
        env = subprocess_env(MINARI_DATASETS_PATH=root)
        # Kill once the first tier is being written into the staging root (the all-or-nothing window).
        _kill_when(cmd, env, ROOT, lambda: root.is_dir() and any(root.glob(".reins-staging-*/test/kill/*")))
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        ids = full["datasets"].split(", ")
        left = []
        for ds in ids:
            try:
                resolve_dataset_path(ds)
                left.append(ds)
            except DataError:
                pass
        completed_after_kill = (out / "metrics.json").exists()
        _rerun(cmd, env, ROOT)
    return {"full": full, "ids": ids, "ref_root": ref_root, "root": root, "out": out, "left": left,
            "completed_after_kill": completed_after_kill}


def test_collect_sigkill_leaves_no_dataset_and_rerun_equals_uninterrupted(killed_collection):
    k = killed_collection
    assert len(k["ids"]) == 5
    assert k["left"] == [] and not k["completed_after_kill"]  # nothing half-written loads under a real id
    assert _metrics(k["out"]) == json.loads(json.dumps(k["full"]))
    _datasets_equal(k["ref_root"], k["root"], k["ids"])


def test_collect_rerun_after_sigkill_leaves_no_staging_debris(killed_collection):
    root = killed_collection["root"]
    assert list(root.glob(".reins-staging-*")) == []
