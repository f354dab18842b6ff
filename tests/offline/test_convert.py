"""`reins convert`: people's files written as Minari datasets that Minari itself reads back."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from offline import convert
from offline.data import load_transitions
from reins.errors import ConfigError, DataError
from tests.offline.helpers import OBS, SLICE, table_rows, write_jsonl, write_npz

FIELDS = ("observations", "next_observations", "actions", "rewards", "terminals")


def run(argv) -> int:
    return convert.main([*argv, "--quiet"])


def test_npz_to_minari_id_reads_back_identically(minari_root):
    import minari

    assert run([str(SLICE), "--out", "test/sb3-slice-v0", "--ref-min-score", "18.645", "--ref-max-score",
                "3234.3"]) == 0
    ds = minari.load_dataset("test/sb3-slice-v0")
    assert ds.total_steps == 1077 and ds.total_episodes == 26
    assert ds.storage.metadata["ref_max_score"] == 3234.3
    np.testing.assert_allclose(minari.get_normalized_score(ds, np.array([18.645, 3234.3])), [0.0, 1.0])
    a, b = load_transitions(str(SLICE)), load_transitions("test/sb3-slice-v0")
    for k in (*FIELDS, "timeouts", "episode_ids", "episode_returns"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert not [p for p in minari_root.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_table_without_next_observations_to_a_directory(tmp_path):
    import minari

    src = write_jsonl(tmp_path / "steps.jsonl", table_rows())
    out = tmp_path / "out" / "steps-v0"
    assert run([src, "--out", str(out)]) == 0
    ds = minari.MinariDataset(out / "data")
    eps = list(ds.iterate_episodes())
    # A keeps its 3 steps; B and the cut episode lose their last step (no next observation) and end truncated
    assert [len(e.rewards) for e in eps] == [3, 1, 1]
    assert [bool(e.terminations[-1]) for e in eps] == [True, False, False]
    assert [bool(e.truncations[-1]) for e in eps] == [False, True, True]
    np.testing.assert_array_equal(eps[1].observations, OBS[[3, 4]])
    a, b = load_transitions(src), load_transitions(str(out))
    for k in FIELDS:
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)


def test_discrete_actions_become_a_discrete_space(minari_root, tmp_path):
    import gymnasium as gym
    import minari

    src = write_npz(tmp_path / "d.npz", actions=np.array([0, 2, 1, 1, 0, 2, 2]))
    assert run([src, "--out", "test/disc-v0"]) == 0
    ds = minari.load_dataset("test/disc-v0")
    assert ds.action_space == gym.spaces.Discrete(3)
    np.testing.assert_array_equal(load_transitions("test/disc-v0").actions, load_transitions(src).actions)


def test_env_id_gives_spaces_and_eval_env(minari_root, tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "p.npz"
    np.savez(src, observations=rng.normal(size=(10, 3)).astype(np.float32),
             actions=rng.uniform(-1, 1, (10, 1)).astype(np.float32), rewards=np.zeros(10, np.float32),
             terminals=np.zeros(10, bool), timeouts=np.arange(10) == 9)
    assert run([str(src), "--out", "test/pend-v0", "--env-id", "Pendulum-v1"]) == 0
    tr = load_transitions("test/pend-v0")
    assert tr.eval_env_spec.id == "Pendulum-v1"
    np.testing.assert_array_equal(tr.action_low, [-2.0])  # the env's box, not the inferred [-1, 1]
    assert run([write_npz(tmp_path / "two.npz"), "--out", "test/bad-v0", "--env-id", "Pendulum-v1"]) == 2
    assert not (minari_root / "test" / "bad-v0").exists()


def test_minari_show_reads_the_result(minari_root, tmp_path):
    exe = Path(sys.executable).with_name("minari")
    if not exe.is_file():
        pytest.skip("the minari command is not installed beside this python")
    assert run([write_npz(tmp_path / "s.npz"), "--out", "test/show-v0"]) == 0
    out = subprocess.run([str(exe), "show", "test/show-v0"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Total Steps" in out.stdout and "Box(-1.0, 1.0, (1,), float32)" in out.stdout


def test_bad_inputs_write_nothing(minari_root, tmp_path, capsys):
    src = write_npz(tmp_path / "s.npz")
    assert run([src, "--out", "test/keep-v0"]) == 0
    before = sorted(str(p) for p in minari_root.rglob("*"))
    capsys.readouterr()
    cases = [
        ([src, "--out", "test/keep-v0"], "already exists (set --overwrite true)"),
        ([src, "--out", "no-version"], "not a Minari dataset id"),
        ([src, "--out", str(tmp_path / "folder")], "must be a Minari dataset name ending in -vN"),
        ([src, "--out", "test/x-v0", "--ref-min-score", "1"], "give both ref_min_score and ref_max_score"),
        ([write_npz(tmp_path / "m.npz", rewards=None), "--out", "test/x-v0"], "missing 'rewards'"),
        ([str(tmp_path / "none.npz"), "--out", "test/x-v0"], "no such file"),
        ([src, "--out", "test/x-v0", "--env-id", "NoSuchEnv-v9"], "--env-id NoSuchEnv-v9"),
    ]
    for argv, msg in cases:
        assert run(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and msg in err, (argv, err)
    assert sorted(str(p) for p in minari_root.rglob("*")) == before
    assert not (tmp_path / "folder").exists()


def test_next_observation_that_jumps_inside_an_episode_is_refused(minari_root, tmp_path):
    nxt = np.concatenate([OBS[1:], OBS[-1:]])
    nxt[1, 0] = 99.0  # row 1's next observation is not row 2's observation
    src = write_npz(tmp_path / "j.npz", next_observations=nxt)
    with pytest.raises(DataError, match="episode 0, step 1: next observation differs from the next step's"):
        convert.train(convert.Config(source=src, out="test/j-v0"))
    with pytest.raises(ConfigError, match="no --out given"):
        convert.Config(source=src).validate()


def test_a_recorded_env_spec_is_copied_never_made(minari_root, tmp_path):
    """A Minari source's env spec is data: convert copies it without making (importing) its entry point."""
    import warnings

    import gymnasium as gym
    import minari
    from gymnasium.envs.registration import EnvSpec
    from minari.data_collector import EpisodeBuffer

    ep = EpisodeBuffer(id=0, observations=OBS[:4], actions=np.zeros((3, 1), np.float32), rewards=[1.0] * 3,
                       terminations=[False, False, True], truncations=[False] * 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = minari.create_dataset_from_buffers("test/src-v0", [ep], observation_space=gym.spaces.Box(-9, 9, (2,)),
                                                action_space=gym.spaces.Box(-1, 1, (1,)))
    spec = EnvSpec("Nowhere-v0", entry_point="no_such_module_for_reins_tests:Env").to_json()
    ds.storage.update_metadata({"env_spec": spec, "eval_env_spec": spec})
    assert run(["test/src-v0", "--out", "test/copy-v0"]) == 0
    assert minari.load_dataset("test/copy-v0").env_spec.entry_point == "no_such_module_for_reins_tests:Env"
