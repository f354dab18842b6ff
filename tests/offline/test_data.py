"""D4RL-style transition view, validation errors and normalisation (offline/data.py)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from offline.data import DeviceBuffer, Normalization, load_transitions, reference_scores, resolve_dataset_path
from reins.errors import DataError
from tests.offline.helpers import make_episode, two_episodes, write_dataset


@pytest.mark.parametrize("fmt", ["hdf5", "arrow"])
def test_d4rl_view_termination_and_truncation(minari_root, fmt):
    write_dataset("test/view-v0", two_episodes(), data_format=fmt, ref_min=-10.0, ref_max=10.0)
    tr = load_transitions("test/view-v0")
    # 3 + 2 transitions: the truncated episode keeps its last transition (D4RL would have dropped it)
    assert len(tr) == 5
    np.testing.assert_array_equal(tr.observations[:, 0], [0, 1, 2, 10, 11])
    np.testing.assert_array_equal(tr.next_observations[:, 0], [1, 2, 3, 11, 12])
    np.testing.assert_array_equal(tr.actions[:, 0], [0.5, -1.0, 2.0, -2.0, 1.0])
    np.testing.assert_array_equal(tr.rewards, [1, 2, 3, -1, -2])
    # terminals = terminations only (the bootstrap mask); truncation is a timeout, not a terminal
    np.testing.assert_array_equal(tr.terminals, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(tr.timeouts, [0, 0, 0, 0, 1])
    np.testing.assert_array_equal(tr.episode_ids, [0, 0, 0, 1, 1])
    np.testing.assert_allclose(tr.episode_returns, [6.0, -3.0])
    assert (tr.ref_min_score, tr.ref_max_score) == (-10.0, 10.0)
    assert tr.eval_env_spec.id == "Pendulum-v1"
    np.testing.assert_array_equal(tr.action_low, [-2.0])


def test_load_by_path_equals_load_by_id(minari_root):
    write_dataset("test/view-v0", two_episodes())
    by_path = load_transitions(str(minari_root / "test" / "view-v0"))
    by_data_dir = load_transitions(str(minari_root / "test" / "view-v0" / "data"))
    by_id = load_transitions("test/view-v0")
    for t in (by_path, by_data_dir):
        np.testing.assert_array_equal(t.observations, by_id.observations)
        np.testing.assert_array_equal(t.terminals, by_id.terminals)


def test_unknown_dataset_id(minari_root):
    write_dataset("test/view-v0", two_episodes())
    with pytest.raises(DataError, match="unknown dataset 'test/nope-v0'.*test/view-v0"):
        resolve_dataset_path("test/nope-v0")


def test_nan_reward_is_rejected(minari_root):
    eps = two_episodes()
    eps[1] = make_episode([[10, 1, 1], [11, 1, 1], [12, 1, 1]], [[0.0], [0.0]], [-1.0, float("nan")], [0, 0],
                          [0, 1])
    write_dataset("test/nan-v0", eps)
    with pytest.raises(DataError, match="episode 1: non-finite rewards at step 1"):
        load_transitions("test/nan-v0")


def test_wrong_lengths_are_rejected(minari_root):
    # hdf5 stores what it is given: N observations for N actions (the Minari #199 bug) is only caught on load
    bad = make_episode([[0, 0, 0], [1, 0, 0]], [[0.0], [0.0]], [0.0, 0.0], [0, 0], [0, 1])
    write_dataset("test/short-v0", [two_episodes()[0], bad])
    with pytest.raises(DataError, match="episode 1: 2 observations for 2 actions; expected 3"):
        load_transitions("test/short-v0")


def test_reward_length_mismatch_is_rejected(minari_root):
    write_dataset("test/rew-v0", two_episodes())
    path = minari_root / "test" / "rew-v0" / "data" / "main_data.hdf5"
    with h5py.File(path, "r+") as f:
        del f["episode_0"]["rewards"]
        f["episode_0"].create_dataset("rewards", data=np.zeros(2))
    with pytest.raises(DataError, match=r"episode 0: rewards has shape \(2,\), expected \(3,\)"):
        load_transitions("test/rew-v0")


def test_flag_before_last_step_is_rejected(minari_root):
    bad = make_episode([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0.0], [0.0]], [0.0, 0.0], [1, 0], [0, 1])
    write_dataset("test/flag-v0", [bad])
    with pytest.raises(DataError, match="termination/truncation at step 0 before the episode's last step"):
        load_transitions("test/flag-v0")


def test_missing_reference_scores(minari_root):
    write_dataset("test/noref-v0", two_episodes())
    tr = load_transitions("test/noref-v0")
    assert tr.ref_min_score is None
    with pytest.raises(DataError, match="no ref_min_score/ref_max_score"):
        reference_scores(tr, required=True)
    assert reference_scores(tr, required=False) is None
    assert reference_scores(tr, -1.0, 3.0, required=True) == (-1.0, 3.0)


def test_normalization_hand_computed(minari_root):
    write_dataset("test/view-v0", two_episodes())
    tr = load_transitions("test/view-v0")
    norm = Normalization.fit(tr, normalize_obs=True, iql_reward_scale=True, reward_scale=2.0, reward_bias=-1.0)
    x = np.array([0, 1, 2, 10, 11], dtype=np.float64)
    np.testing.assert_allclose(norm.obs_mean[0], x.mean(), rtol=1e-6)
    np.testing.assert_allclose(norm.obs_std[0], x.std() + 1e-3, rtol=1e-6)
    # IQL: r * 1000 / (max return - min return) = r * 1000 / (6 - (-3)), then * 2 - 1
    assert norm.reward_mult == pytest.approx(1000.0 / 9.0)
    np.testing.assert_allclose(norm.reward(np.array([1.0, -2.0])), [1000 / 9 * 2 - 1, -2000 / 9 * 2 - 1], rtol=1e-6)
    # actions: [-2, 2] -> [-1, 1], clipped to +-(1 - 1e-5); and back
    unit = norm.action_to_unit(np.array([[-2.0], [0.5], [2.0]]))
    np.testing.assert_allclose(unit[:, 0], [-1 + 1e-5, 0.25, 1 - 1e-5], atol=1e-7)
    np.testing.assert_allclose(norm.action_from_unit(np.array([[0.25]])), [[0.5]], atol=1e-6)
    rt = Normalization.from_state_dict(norm.state_dict())
    np.testing.assert_array_equal(rt.obs_std, norm.obs_std)
    assert rt.reward_mult == norm.reward_mult


def test_iql_scaling_needs_distinct_returns(minari_root):
    ep = two_episodes()[0]
    write_dataset("test/one-v0", [ep])
    with pytest.raises(DataError, match="all episode returns are equal"):
        Normalization.fit(load_transitions("test/one-v0"), iql_reward_scale=True)


def test_device_buffer_sampling_is_seeded():
    arrays = {"observations": np.arange(20, dtype=np.float32).reshape(10, 2), "rewards": np.arange(10.0)}
    buf = DeviceBuffer(arrays, "cpu")
    b1 = buf.sample(64, torch.Generator().manual_seed(3))
    b2 = buf.sample(64, torch.Generator().manual_seed(3))
    torch.testing.assert_close(b1["rewards"], b2["rewards"])
    # rows stay aligned across fields
    torch.testing.assert_close(b1["observations"][:, 0], 2 * b1["rewards"].float())
    assert len(set(b1["rewards"].tolist())) > 5


def test_dataset_eval_env_is_used_for_evaluation(minari_root):
    """A dataset whose `eval_env` differs from its collection env (here: 50-step Pendulum episodes) is evaluated
    in the eval env, as `recover_environment(eval_env=True)` gives it; without one, in the collection env."""
    import dataclasses
    import warnings

    import gymnasium as gym
    import minari

    from offline.trainer import OfflineConfig, _eval_env

    eps = [dataclasses.replace(ep, id=k) for k, ep in enumerate(two_episodes())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("test/evalenv-v0", eps, env="Pendulum-v1",
                                           eval_env=gym.make("Pendulum-v1", max_episode_steps=50).spec)
    tr = load_transitions("test/evalenv-v0")
    spec = _eval_env(OfflineConfig(output_dir="unused"), tr)
    assert spec.id == "Pendulum-v1" and spec.max_episode_steps == 50
    env = gym.make(spec)
    env.reset(seed=0)
    steps = 1
    while not any(env.step(env.action_space.sample())[2:4]):
        steps += 1
    assert steps == 50
    write_dataset("test/plain-v0", two_episodes())
    assert _eval_env(OfflineConfig(output_dir="unused"), load_transitions("test/plain-v0")).max_episode_steps == 200
