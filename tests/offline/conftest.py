"""Fixtures for offline tests: a private MINARI_DATASETS_PATH and hand-made / generated datasets."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch


@pytest.fixture
def minari_root(tmp_path, monkeypatch):
    root = tmp_path / "minari"
    root.mkdir()
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture
def one_thread():
    """Small nets on a shared 2-core machine run ~10x faster on one thread than two."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


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
