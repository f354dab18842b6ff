"""Offline data against its environment, checked before the first update (issue 14, class 6).

Each case is a Minari dataset or an `eval_env` that does not fit together: observations or actions of another
width than the env's, declared action bounds that differ from the env's, an env of another kind (Discrete
actions), an unknown env id and an env whose package is not installed. Each must end in one line
`reins <stage>: error: ...` naming the dataset and both sides, exit 2, and nothing written to a fresh
output_dir: no training or checkpoint before the check, no traceback, no report only at the first evaluation.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import run_cli, snapshot
from tests.offline.helpers import make_episode, two_episodes, write_dataset

OFFLINE = ["max_steps=4", "batch_size=4", "hidden=[8]", "eval_episodes=1", "eval_every=2", "log_every=1",
           "checkpoint_every=1", "torch_threads=1", "--quiet"]


def _with_spaces(ds_id: str, obs_dim: int, act_dim: int, *, act_bound: float = 2.0) -> str:
    """Three steps of `obs_dim`-wide observations and `act_dim`-wide actions, declared as recorded in
    Pendulum-v1 (3-wide observations, 1-wide actions in [-2, 2])."""
    import dataclasses

    import gymnasium as gym
    import minari

    ep = make_episode(np.zeros((4, obs_dim)), np.zeros((3, act_dim)), [1.0, 2.0, 3.0], [0, 0, 1], [0, 0, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(
            ds_id, [dataclasses.replace(ep, id=0)], env="Pendulum-v1", ref_min_score=-1.0, ref_max_score=1.0,
            observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
            action_space=gym.spaces.Box(-act_bound, act_bound, (act_dim,), np.float32))
    return ds_id


def _env_not_installed(root: Path) -> str:
    """A dataset whose stored env spec points at a package that is not installed (recorded elsewhere)."""
    write_dataset("test/plugin-v0", two_episodes(), ref_min=-10.0, ref_max=10.0)
    meta_path = root / "test" / "plugin-v0" / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    spec = json.loads(meta["env_spec"])
    spec.update(id="ReinsPlugin/Pendulum-v0", entry_point="reins_plugin_not_installed.envs:PluginPendulum")
    meta["env_spec"] = json.dumps(spec)
    meta_path.write_text(json.dumps(meta))
    return "test/plugin-v0"


CASES = {
    "iql-4-wide-observations-for-pendulum": (
        "iql", lambda root: [f"dataset={_with_spaces('test/wide-v0', 4, 1)}"],
        ["test/wide-v0", "observations are 4-wide", "'Pendulum-v1' has 3-wide observations"]),
    "cql-2-wide-actions-for-pendulum": (
        "cql", lambda root: [f"dataset={_with_spaces('test/act2-v0', 3, 2)}"],
        ["test/act2-v0", "actions are 2-wide", "'Pendulum-v1' has 1-wide actions"]),
    "bc-action-bounds-differ": (
        "bc", lambda root: [f"dataset={_with_spaces('test/unit-v0', 3, 1, act_bound=1.0)}"],
        ["test/unit-v0", "action bounds in dimension 0 are [-1, 1]", "'Pendulum-v1' has [-2, 2]"]),
    "iql-eval-env-with-discrete-actions": (
        "iql", lambda root: [f"dataset={write_dataset('test/ok-v0', two_episodes()) and 'test/ok-v0'}",
                             "eval_env=CartPole-v1", "normalize_score=false"],
        ["test/ok-v0", "1-wide Box actions", "'CartPole-v1' has a Discrete action space"]),
    "iql-unknown-eval-env": (
        "iql", lambda root: [f"dataset={write_dataset('test/ok-v0', two_episodes()) and 'test/ok-v0'}",
                             "eval_env=NoSuchEnv-v0", "normalize_score=false"],
        ["cannot make evaluation env 'NoSuchEnv-v0'"]),
    "cql-dataset-env-not-installed": (
        "cql", lambda root: [f"dataset={_env_not_installed(root)}", "trust_dataset_env=true"],
        ["cannot make evaluation env 'ReinsPlugin/Pendulum-v0'", "reins_plugin_not_installed"]),
}


@pytest.mark.parametrize("stage,build,expect", list(CASES.values()), ids=list(CASES))
def test_data_env_mismatch_is_one_line_before_training(tmp_path, monkeypatch, capfd, stage, build, expect):
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    code, err = run_cli([stage, *build(root), f"output_dir={out}", *OFFLINE], capfd)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"reins {stage}: error: "), err
    for s in expect:
        assert s in err[0], (s, err[0])
    assert snapshot(out) == {}  # no config.yaml: the corrected command is not refused as "a different run"


def test_a_fitting_dataset_and_eval_episodes_0_still_train(tmp_path, monkeypatch, capfd):
    """The check passes data recorded in the env it names; with eval_episodes=0 no env is made at all, so data
    of an env that is not installed here still trains."""
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    write_dataset("test/ok-v0", two_episodes(), ref_min=-10.0, ref_max=10.0)
    code, err = run_cli(["iql", "dataset=test/ok-v0", f"output_dir={tmp_path / 'a'}", *OFFLINE], capfd)
    assert code == 0, err
    args = [a for a in OFFLINE if not a.startswith("eval_episodes")] + ["eval_episodes=0"]
    code, err = run_cli(["iql", f"dataset={_env_not_installed(root)}", f"output_dir={tmp_path / 'b'}", *args],
                        capfd)
    assert code == 0, err
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["train/steps"] == 4
