"""Env creation errors, SAME_STEP final observations, running statistics and the replay buffer."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from online.buffer import ReplayBuffer
from online.stage import Config, train
from reins.config import from_dict
from reins.errors import ConfigError, DataError
from rl.envs import (
    RunningMeanStd,
    final_observations,
    flat_observations,
    make_env,
    make_vector_env,
    spec_from_spaces,
)


def _cfg(tmp_path, **kw):
    return from_dict(Config, {"output_dir": str(tmp_path / "run"), "quiet": True, **kw})


def test_unknown_env_id_is_a_data_error_before_anything_is_written(tmp_path):
    with pytest.raises(DataError, match="cannot make env 'NoSuchEnv-v0'"):
        train(_cfg(tmp_path, env_id="NoSuchEnv-v0"))
    assert not (tmp_path / "run").exists()


class _TextObsEnv(gym.Env):
    observation_space = gym.spaces.Text(8)
    action_space = gym.spaces.Discrete(2)


def test_unsupported_spaces_raise_data_errors():
    with pytest.raises(DataError, match="env 'T-v0': unsupported observation space Text"):
        flat_observations(_TextObsEnv(), "T-v0")
    box = gym.spaces.Box(-1, 1, (3,))
    with pytest.raises(DataError, match="unsupported action space MultiDiscrete"):
        spec_from_spaces("X-v0", box, gym.spaces.MultiDiscrete([2, 3]))
    with pytest.raises(DataError, match="unsupported action space Dict"):
        spec_from_spaces("X-v0", box, gym.spaces.Dict({"a": gym.spaces.Discrete(2)}))
    with pytest.raises(DataError, match="unsupported action space MultiBinary"):
        spec_from_spaces("X-v0", box, gym.spaces.MultiBinary(3))
    with pytest.raises(DataError, match="unsupported action space"):
        spec_from_spaces("X-v0", box, gym.spaces.Box(-1, 1, (2, 2)))
    with pytest.raises(DataError, match="finite"):
        spec_from_spaces("X-v0", box, gym.spaces.Box(-np.inf, np.inf, (2,)))


@pytest.mark.parametrize("algo,env_id", [("dqn", "Pendulum-v1"), ("sac", "CartPole-v1"), ("td3", "CartPole-v1")])
def test_algo_action_space_mismatch_is_a_config_error(tmp_path, algo, env_id):
    with pytest.raises(ConfigError, match=f"algo '{algo}' needs a"):
        train(_cfg(tmp_path, algo=algo, env_id=env_id))
    assert not (tmp_path / "run").exists()


def test_snapshot_keys_rejected_for_on_policy_algos(tmp_path):
    with pytest.raises(ConfigError, match="off-policy"):
        _cfg(tmp_path, algo="ppo", save_replay=True)
    with pytest.raises(ConfigError, match="gamma"):
        _cfg(tmp_path, algo="sac", sac={"gamma": 1.5})


def test_vector_env_final_obs_matches_a_single_env_stepped_alone():
    """SAME_STEP autoreset: info['final_obs'] is the true last observation of the ended episode."""
    envs, _ = make_vector_env("CartPole-v1", 2)
    single, _ = make_env("CartPole-v1")
    obs, _ = envs.reset(seed=[7, 8])
    s_obs, _ = single.reset(seed=7)
    np.testing.assert_array_equal(obs[0], s_obs)
    for _ in range(500):
        nxt, _, term, trunc, info = envs.step(np.array([1, 1]))
        s_next, _, s_term, s_trunc, _ = single.step(1)
        real = final_observations(nxt, info, np.logical_or(term, trunc))
        np.testing.assert_array_equal(real[0], s_next)
        if s_term or s_trunc:
            assert term[0] or trunc[0]
            assert not np.array_equal(nxt[0], s_next)  # the vector env already reset env 0
            break
    else:
        pytest.fail("episode never ended")


def test_running_mean_std_equals_full_batch_statistics():
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=(n, 4)) for n in (1, 5, 17, 3)]
    rms = RunningMeanStd((4,), epsilon=0.0)  # no prior pseudo-count: exactly the pooled statistics
    for b in batches:
        rms.update(b)
    full = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, full.mean(0), rtol=1e-12)
    np.testing.assert_allclose(rms.var, full.var(0), rtol=1e-12)


def _fill(buf, n_steps, num_envs=2):
    for t in range(n_steps):
        o = np.full((num_envs, 3), t, dtype=np.float32)
        buf.add(o, o + 1, np.arange(num_envs) + 10 * t, np.full(num_envs, float(t)), np.zeros(num_envs, bool),
                np.zeros(num_envs, bool), global_step=t * num_envs)


def test_replay_buffer_export_is_insertion_order_after_wraparound():
    buf = ReplayBuffer(5, 3, 2, discrete=True)
    _fill(buf, 4)  # 8 transitions into 5 slots: the 5 newest survive
    out = buf.export()
    assert out["global_step"].tolist() == [2, 4, 4, 6, 6]
    assert out["env_index"].tolist() == [1, 0, 1, 0, 1]
    assert out["rewards"].tolist() == [1.0, 2.0, 2.0, 3.0, 3.0]
    buf.mark_last_truncated(2)
    assert buf.export()["truncated"].tolist() == [False, False, False, True, True]


def test_replay_buffer_state_round_trip_keeps_sampling_identical():
    buf = ReplayBuffer(5, 3, 2, discrete=True)
    _fill(buf, 4)
    clone = ReplayBuffer(5, 3, 2, discrete=True)
    clone.load_state_dict(buf.state_dict())
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, b = buf.sample(16, g1), clone.sample(16, g2)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    _fill(buf, 1)
    _fill(clone, 1)
    for k in buf.data:
        np.testing.assert_array_equal(buf.data[k], clone.data[k])


@pytest.mark.parametrize("env_id,dim", [("FrozenLake-v1", 16), ("Blackjack-v1", 32 + 11 + 2)])
def test_discrete_and_tuple_observations_arrive_flattened_one_hot(env_id, dim):
    """Discrete parts of an observation become one-hot blocks, in training and evaluation envs alike."""
    raw = gym.make(env_id)
    env, spec = make_env(env_id)
    envs, vspec = make_vector_env(env_id, 2)
    assert spec.obs_dim == vspec.obs_dim == dim and spec.discrete
    o_raw, _ = raw.reset(seed=3)
    o, _ = env.reset(seed=3)
    ov, _ = envs.reset(seed=[3, 4])
    parts = o_raw if isinstance(o_raw, tuple) else (o_raw,)
    sizes = [s.n for s in (raw.observation_space.spaces if isinstance(o_raw, tuple) else [raw.observation_space])]
    expect = np.concatenate([np.eye(n)[int(x)] for x, n in zip(parts, sizes)])
    np.testing.assert_array_equal(o, expect)
    np.testing.assert_array_equal(ov[0], expect)
    assert o.sum() == len(parts)
    for e in (raw, env, envs):
        e.close()
