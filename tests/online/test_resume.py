"""Checkpoint/resume reproduces the uninterrupted run exactly; snapshots and replay.pt for offline/."""

import json

import numpy as np
import pytest
import torch

from online.policy_io import load_policy
from online.stage import Config, train
from reins.config import from_dict
from reins.errors import NonFiniteError
from reins.runio import RunDir


class Injected(RuntimeError):
    pass


def _cfg(path, **kw):
    return from_dict(Config, {"output_dir": str(path), "quiet": True, "seed": 3, "eval_episodes": 2, **kw})


def _crash_after_checkpoints(monkeypatch, n):
    """Make the run die right after its n-th checkpoint is written (a kill between checkpoints)."""
    orig = RunDir.save_checkpoint
    count = {"n": 0}

    def save(self, state):
        orig(self, state)
        count["n"] += 1
        if count["n"] == n:
            raise Injected("injected crash")

    monkeypatch.setattr(RunDir, "save_checkpoint", save)


def _strip_time(rows):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in rows]


RESUME_CASES = [
    ("ppo", "Pendulum-v1", {"ppo": {"num_envs": 2, "num_steps": 64, "hidden": [16], "normalize_obs": True,
                                    "normalize_reward": True}}, 1024, 256),
    ("sac", "Pendulum-v1", {"sac": {"hidden": [16], "learning_starts": 100, "batch_size": 16, "num_envs": 2}},
     600, 200),
    ("dqn", "CartPole-v1", {"dqn": {"hidden": [16], "learning_starts": 100, "batch_size": 16, "train_freq": 2,
                                    "buffer_size": 300, "target_update_every": 5}}, 900, 300),
]


@pytest.mark.parametrize("algo,env_id,extra,total,every", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, algo, env_id, extra, total, every):
    kw = dict(algo=algo, env_id=env_id, total_steps=total, checkpoint_every=every, eval_every=every, log_every=50,
              **extra)
    off = algo != "ppo"
    if off:
        kw.update(save_replay=True, save_snapshots=True, snapshot_every=every)
    full = train(_cfg(tmp_path / "a", **kw))
    _crash_after_checkpoints(monkeypatch, 2)
    with pytest.raises(Injected):
        train(_cfg(tmp_path / "b", **kw))
    monkeypatch.undo()
    assert not (tmp_path / "b" / "metrics.json").exists()
    resumed = train(_cfg(tmp_path / "b", **kw))
    assert resumed == full
    pa = torch.load(tmp_path / "a" / "policy.pt", weights_only=True)
    pb = torch.load(tmp_path / "b" / "policy.pt", weights_only=True)
    for k, v in pa["state_dict"].items():
        assert torch.equal(v, pb["state_dict"][k]), k
    if pa["obs_norm"] is not None:
        assert torch.equal(pa["obs_norm"]["mean"], pb["obs_norm"]["mean"])
    ca = torch.load(tmp_path / "a" / "checkpoints" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / "b" / "checkpoints" / "checkpoint.pt", weights_only=True)
    for k, v in ca["agent"].items():
        if isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values()):
            for name, t in v.items():
                assert torch.equal(t, cb["agent"][k][name]), (k, name)
    la = _strip_time(RunDir(tmp_path / "a", _cfg(tmp_path / "a", **kw)).read_log())
    lb = _strip_time(RunDir(tmp_path / "b", _cfg(tmp_path / "b", **kw)).read_log())
    assert la == lb
    if off:
        ra = torch.load(tmp_path / "a" / "replay.pt", weights_only=True)
        rb = torch.load(tmp_path / "b" / "replay.pt", weights_only=True)
        for k in ra:
            assert torch.equal(ra[k], rb[k]), k
        assert (tmp_path / "a" / "snapshots" / "index.json").read_text() == \
            (tmp_path / "b" / "snapshots" / "index.json").read_text()
    # a finished run is not retrained
    assert train(_cfg(tmp_path / "b", **kw)) == full


def test_replay_and_snapshots_for_offline(tmp_path):
    """replay.pt: insertion order, true final observations on truncation, one row per env step."""
    kw = dict(algo="sac", env_id="Pendulum-v1", total_steps=500, checkpoint_every=300, eval_every=0,
              save_replay=True, save_snapshots=True, snapshot_every=250,
              sac={"hidden": [16], "learning_starts": 100, "batch_size": 16})
    train(_cfg(tmp_path / "r", **kw))
    rep = torch.load(tmp_path / "r" / "replay.pt", weights_only=True)
    n = len(rep["rewards"])
    assert n == 500 and rep["global_step"].tolist() == list(range(500))
    assert rep["env_index"].eq(0).all()
    obs, nxt = rep["observations"].numpy(), rep["next_observations"].numpy()
    trunc = rep["truncated"].numpy()
    assert not rep["terminated"].any()  # Pendulum never terminates
    # time limit after 200 steps; the checkpoint at step 300 cuts the second episode; the third ends at 500
    assert np.flatnonzero(trunc).tolist() == [199, 299, 499]
    cont = ~trunc[:-1]
    np.testing.assert_array_equal(nxt[:-1][cont], obs[1:][cont])  # within an episode s'_t = s_{t+1}
    for t in np.flatnonzero(trunc)[:-1]:
        assert not np.array_equal(nxt[t], obs[t + 1])  # the final obs, not the next episode's reset obs
        # Pendulum obs is (cos th, sin th, thdot): a real successor stays on the unit circle
        assert abs(nxt[t][0] ** 2 + nxt[t][1] ** 2 - 1) < 1e-5
    index = json.loads((tmp_path / "r" / "snapshots" / "index.json").read_text())
    assert [r["step"] for r in index] == [250, 500]
    for r in index:
        pol = load_policy(tmp_path / "r" / "snapshots" / f"step_{r['step']}.pt")
        assert pol.env_id == "Pendulum-v1" and pol.meta["step"] == r["step"]
        assert pol.meta["eval_return"] == pytest.approx(r["eval_return"])
    final = load_policy(tmp_path / "r" / "policy.pt")
    a = final.act(np.zeros((3, 3)), deterministic=False, rng=np.random.default_rng(0))
    assert a.shape == (3, 1) and np.all(np.abs(a) <= 2.0)


def test_non_finite_loss_stops_before_checkpointing_the_bad_step(tmp_path, monkeypatch):
    import online.ppo as ppo_mod

    kw = dict(algo="ppo", env_id="CartPole-v1", total_steps=2048, checkpoint_every=512, eval_every=0,
              ppo={"num_envs": 2, "num_steps": 128, "hidden": [16]})
    calls = {"n": 0}
    real_gae = ppo_mod.gae

    def bad_gae(*a, **k):
        calls["n"] += 1
        adv, ret = real_gae(*a, **k)
        return (adv * float("nan"), ret) if calls["n"] == 3 else (adv, ret)

    monkeypatch.setattr(ppo_mod, "gae", bad_gae)
    with pytest.raises(NonFiniteError, match="ppo loss"):
        train(_cfg(tmp_path / "n", **kw))
    ck = torch.load(tmp_path / "n" / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ck["harness"]["step"] == 512  # the last good checkpoint (after update 2) is kept
    for p in ck["agent"]["actor"].values():
        assert torch.isfinite(p).all()
