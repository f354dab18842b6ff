"""Dataset builders shared by the offline tests (and the e2e tests that train offline): hand-made Minari
episodes, and one seven-step log as arrays, npz files and step tables."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "data"
SLICE = DATA / "sb3-hopper-medium-replay-slice.npz"
# Seven steps: episode A rows 0-2 (terminated at 2), episode B rows 3-4 (timed out at 4), rows 5-6 cut off by the log.
OBS = np.array([[0, 0.5], [1, 0.5], [2, 0.5], [3, -1], [4, -1], [5, 2], [6, 2]], np.float32)
ACT = np.array([[0.1], [-0.2], [0.3], [-0.4], [0.5], [-0.6], [0.7]], np.float32)
REW = np.array([1, 2, 3, 4, 5, 6, 7], np.float32)
TERM = np.array([0, 0, 1, 0, 0, 0, 0], bool)
TOUT = np.array([0, 0, 0, 0, 1, 0, 0], bool)


def arrays(**kw):
    a = {"observations": OBS, "actions": ACT, "rewards": REW, "terminals": TERM, "timeouts": TOUT}
    a.update(kw)
    return {k: v for k, v in a.items() if v is not None}


def write_npz(path, **kw):
    np.savez(path, **arrays(**kw))
    return str(path)


def table_rows(obs_style="list"):
    ep = [0, 0, 0, 1, 1, 2, 2]
    rows = []
    for i in range(7):
        r = {"episode_id": ep[i], "action": float(ACT[i, 0]), "reward": float(REW[i]),
             "terminated": bool(TERM[i]), "truncated": bool(TOUT[i])}
        if obs_style == "list":
            r["observation"] = [float(x) for x in OBS[i]]
        else:
            r.update({f"obs_{j}": float(OBS[i, j]) for j in range(2)})
        rows.append(r)
    return rows


def write_jsonl(path, rows, raw=""):
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows) + raw)
    return str(path)


def make_episode(obs, act, rew, term, trunc, seed=None):
    from minari.data_collector import EpisodeBuffer

    return EpisodeBuffer(id=None, seed=seed, observations=np.asarray(obs, np.float32),
                         actions=np.asarray(act, np.float32), rewards=list(map(float, rew)),
                         terminations=list(map(bool, term)), truncations=list(map(bool, trunc)))


def write_dataset(ds_id, episodes, *, data_format="hdf5", ref_min=None, ref_max=None, env="Pendulum-v1"):
    """Write hand-made episodes as a Minari dataset (Pendulum spaces: obs 3, action 1 in [-2, 2])."""
    import dataclasses

    import minari

    episodes = [dataclasses.replace(ep, id=k) for k, ep in enumerate(episodes)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return minari.create_dataset_from_buffers(ds_id, episodes, env=env, ref_min_score=ref_min,
                                                  ref_max_score=ref_max, data_format=data_format)


def two_episodes():
    """Episode A: 3 steps, terminated at the end. Episode B: 2 steps, truncated at the end."""
    obs_a = [[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]]
    obs_b = [[10, 1, 1], [11, 1, 1], [12, 1, 1]]
    a = make_episode(obs_a, [[0.5], [-1.0], [2.0]], [1.0, 2.0, 3.0], [0, 0, 1], [0, 0, 0], seed=7)
    b = make_episode(obs_b, [[-2.0], [1.0]], [-1.0, -2.0], [0, 0], [0, 1], seed=8)
    return [a, b]


class CartPolePD:
    """A CartPole-v1 balancing rule (push towards where the pole is falling: theta + 0.5 theta_dot) that takes a
    uniformly random action with probability `epsilon` (return 500 at epsilon 0, ~20 at epsilon 1)."""

    def __init__(self, epsilon: float = 0.0):
        self.epsilon = float(epsilon)

    def act(self, obs, deterministic: bool = True, rng=None):
        obs = np.asarray(obs)
        a = (obs[:, 2] + 0.5 * obs[:, 3] + 0.05 * obs[:, 1] > 0).astype(np.int64)
        rng = rng if rng is not None else np.random.default_rng()
        return np.where(rng.random(len(obs)) < self.epsilon, rng.integers(0, 2, len(obs)), a).astype(np.int64)


def write_cartpole_replay(ds_id: str, n_episodes: int, *, eps_from: float = 1.0, eps_to: float = 0.5, seed: int = 0):
    """A CartPole-v1 Discrete dataset shaped like a learner's replay: episode k is CartPolePD with epsilon falling
    from eps_from to eps_to, reference scores 20 (random) and 500."""
    import minari

    from offline.collect import _buffers, rollout

    pols = [CartPolePD(e) for e in np.linspace(eps_from, eps_to, n_episodes)]
    eps = rollout(None, "CartPole-v1", n_envs=4, seed=seed, deterministic=False, policies=pols)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers(ds_id, _buffers(eps), env="CartPole-v1", ref_min_score=20.0,
                                           ref_max_score=500.0)
    return ds_id, float(np.mean([e.rewards.sum() for e in eps]))
