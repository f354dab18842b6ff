"""IQL and CQL learn from a small generated dataset: Pendulum medium-replay from the scripted controller.

The dataset is mostly random-action data (behaviour normalised score ~25, uniform random ~0); a short seeded
budget must bring the deterministic policy clearly above both.
"""

from __future__ import annotations

import os

import pytest
import torch

from offline import collect, cql, iql

COMMON = dict(hidden=[64, 64], eval_every=1000, eval_episodes=10, log_every=500, checkpoint_every=100_000,
              torch_threads=1, quiet=True, reward_scale=0.1)


@pytest.fixture(scope="module")
def medium_replay(tmp_path_factory):
    root = tmp_path_factory.mktemp("minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cfg = collect.Config(output_dir=str(root.parent / "collect"), behaviour="scripted", tiers=["medium-replay"],
                             ref_episodes=10, n_envs=8, dataset_prefix="test/pendulum")
        cfg.validate()
        m = collect.train(cfg)
        yield "test/pendulum/medium-replay-v0", m
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _run(mod, ds, out, **kw):
    cfg = mod.Config(dataset=ds, output_dir=str(out), **{**COMMON, **kw})
    cfg.validate()
    return mod.train(cfg)


def test_iql_improves_over_behaviour_and_random(medium_replay, tmp_path):
    ds, data = medium_replay
    m = _run(iql, ds, tmp_path / "iql", max_steps=3000, beta=10.0)
    assert data["medium-replay/normalized_score"] < 40
    assert m["eval/normalized_score_best"] > 70, m
    assert m["eval/normalized_score"] > m["data/normalized_score"] + 30, m


def test_cql_improves_over_behaviour_and_random(medium_replay, tmp_path):
    ds, _ = medium_replay
    m = _run(cql, ds, tmp_path / "cql", max_steps=3000, q_hidden=[64, 64], cql_n_actions=4, reward_scale=1.0)
    assert m["eval/normalized_score_best"] > 70, m
    assert m["eval/normalized_score"] > m["data/normalized_score"] + 30, m
