"""Evaluation episodes (rl.envs.evaluate), normalised scores and multi-seed aggregation (offline/evaluate.py)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from offline.evaluate import aggregate, aggregate_runs, bootstrap_ci, iqm, normalized_score
from reins.errors import DataError
from rl.envs import evaluate


def test_batched_evaluation_equals_sequential_rollouts():
    def act(obs):
        return np.clip(-obs[:, 2:3] - 2 * obs[:, 1:2], -2, 2)  # any deterministic state feedback

    got, lengths = evaluate(act, "Pendulum-v1", 3, seed=5)
    assert lengths.tolist() == [200, 200, 200]
    want = []
    for i in range(3):
        env = gym.make("Pendulum-v1")
        obs, _ = env.reset(seed=5 + i)
        total, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(act(obs[None])[0])
            total += r
            done = term or trunc
        want.append(total)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_evaluation_counts_only_first_episode_when_lengths_differ():
    # CartPole episodes end at different times; each env's return must stop at its own termination
    def act(obs):
        return (obs[:, 2] > 0).astype(np.int64)

    got, lengths = evaluate(act, "CartPole-v1", 4, seed=0)
    assert len(set(lengths.tolist())) > 1 and np.array_equal(got, lengths)  # CartPole pays 1 per step
    for i, g in enumerate(got):
        env = gym.make("CartPole-v1")
        obs, _ = env.reset(seed=i)
        n, done = 0, False
        while not done:
            obs, r, term, trunc, _ = env.step(int(act(obs[None])[0]))
            n += r
            done = term or trunc
        assert g == n


def test_max_steps_caps_each_episode():
    returns, lengths = evaluate(lambda obs: np.zeros((len(obs), 1), np.float32), "Pendulum-v1", 2, seed=0,
                                max_steps=7)
    full, _ = evaluate(lambda obs: np.zeros((len(obs), 1), np.float32), "Pendulum-v1", 2, seed=0)
    assert lengths.tolist() == [7, 7] and np.all(returns > full)  # Pendulum's rewards are all negative


def test_unknown_env_is_data_error():
    with pytest.raises(DataError, match="cannot make evaluation env 'NoSuchEnv-v0'"):
        evaluate(lambda o: o, "NoSuchEnv-v0", 1, seed=0)


def test_normalized_score_d4rl_convention():
    np.testing.assert_allclose(normalized_score([-20.272305, 3234.3], -20.272305, 3234.3), [0.0, 100.0])
    assert normalized_score(1617.0, 0.0, 3234.0) == pytest.approx(50.0)


def test_iqm_and_bootstrap():
    x = [1, 2, 3, 4, 100, -50, 5, 6]  # sorted: -50 1 2 3 4 5 6 100 -> middle four: 2 3 4 5
    assert iqm(x) == pytest.approx(3.5)
    assert iqm([3.0]) == 3.0
    lo, hi = bootstrap_ci([2.0, 2.0, 2.0])
    assert lo == hi == 2.0
    rng = np.random.default_rng(0)
    sample = rng.normal(10, 1, size=200)
    lo, hi = bootstrap_ci(sample, seed=1)
    se = sample.std(ddof=1) / np.sqrt(200)
    assert lo < sample.mean() < hi
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)  # percentile CI ~ normal CI for a large sample
    agg = aggregate([1.0, 2.0, 3.0, 4.0])
    assert agg["mean"] == 2.5 and agg["iqm"] == 2.5 and agg["n"] == 4
    assert agg["std"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))


def test_aggregate_runs(tmp_path):
    dirs = []
    for i, s in enumerate([50.0, 70.0, 90.0]):
        d = tmp_path / f"seed{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"eval/normalized_score": s, "eval/return_mean": -s}))
        dirs.append(d)
    out = aggregate_runs(dirs)
    assert out["eval/normalized_score/mean"] == pytest.approx(70.0)
    assert out["eval/return_mean/mean"] == pytest.approx(-70.0)
    assert "eval/normalized_score_best/mean" not in out  # absent keys are skipped
    with pytest.raises(DataError, match="missing"):
        aggregate_runs([tmp_path / "nope"])


def test_stratified_bootstrap_ci():
    from offline.evaluate import stratified_bootstrap_ci

    x = np.random.default_rng(3).normal(50, 10, 7)
    # one task, the mean: the same replicates as the plain percentile bootstrap of the mean
    assert stratified_bootstrap_ci([x], statistic="mean", seed=4) == bootstrap_ci(x, seed=4)
    # each task keeps its own run count in every replicate: two constant tasks give one pooled set,
    # [0, 0, 0, 100, 100, 100], whose IQM (drop one from each end) is 50 in every replicate
    assert stratified_bootstrap_ci([[0.0, 0.0, 0.0], [100.0, 100.0, 100.0]]) == (50.0, 50.0)
    lo, hi = stratified_bootstrap_ci([x])
    assert lo < iqm(x) < hi and lo >= x.min() and hi <= x.max()


def test_aggregate_runs_includes_last_k_and_the_iqm_ci(tmp_path):
    dirs = []
    for i, s in enumerate([50.0, 70.0, 90.0, 60.0]):
        d = tmp_path / f"seed{i}"
        d.mkdir()
        (d / "metrics.json").write_text(json.dumps({"eval/normalized_score": s, "eval/normalized_score_last3": s + 1}))
        dirs.append(d)
    out = aggregate_runs(dirs)
    assert out["eval/normalized_score_last3/mean"] == pytest.approx(68.5)
    assert out["eval/normalized_score_last3/iqm"] == pytest.approx((61.0 + 71.0) / 2)  # middle two of four
    assert out["eval/normalized_score/iqm_ci95_low"] <= 65.0 <= out["eval/normalized_score/iqm_ci95_high"]
