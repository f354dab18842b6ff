"""Checkpoint/resume reproduces the uninterrupted run exactly; snapshots and replay.pt for offline/."""

import json

import numpy as np
import pytest
import torch

from online.stage import Config, train
from reins.config import from_dict
from reins.errors import NonFiniteError
from reins.runio import RunDir
from rl.policy_io import load_policy


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
    ("reinforce", "CartPole-v1", {"reinforce": {"num_envs": 2, "num_steps": 64, "hidden": [16],
                                                "anneal_lr": True}}, 512, 128),
    ("a2c", "CartPole-v1", {"a2c": {"num_envs": 2, "num_steps": 8, "hidden": [16], "gae_lambda": 0.95}}, 256, 64),
    ("trpo", "CartPole-v1", {"trpo": {"num_envs": 2, "num_steps": 64, "hidden": [16], "anneal_lr": True}},
     512, 128),
    ("npg", "Pendulum-v1", {"npg": {"num_envs": 2, "num_steps": 64, "hidden": [16], "normalize_obs": True}},
     512, 128),
    ("td3", "Pendulum-v1", {"td3": {"hidden": [16], "learning_starts": 100, "batch_size": 16, "num_envs": 2,
                                    "train_freq": 2}}, 600, 200),
    ("ddpg", "Pendulum-v1", {"ddpg": {"hidden": [16], "learning_starts": 100, "batch_size": 16}}, 400, 100),
]


def _assert_same(a, b, path="checkpoint"):
    """Nested checkpoint contents (tensors, optimiser states, RNG states, counters) are identical."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.mark.parametrize("algo,env_id,extra,total,every", RESUME_CASES, ids=[c[0] for c in RESUME_CASES])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, algo, env_id, extra, total, every):
    kw = dict(algo=algo, env_id=env_id, total_steps=total, checkpoint_every=every, eval_every=every, log_every=50,
              **extra)
    off = algo in ("sac", "dqn", "td3", "ddpg")
    if off:
        kw.update(save_replay=True, save_snapshots=True, snapshot_every=every)
    full = train(_cfg(tmp_path / "a", **kw))
    assert any(k.startswith("loss/") for k in full)  # the last update's metrics are reported
    # killed after the 2nd checkpoint (mid-run), and after the last one (before metrics.json is written)
    for crash_at, run in ((2, "b"), (total // every, "c")):
        _check_resume(tmp_path, monkeypatch, kw, full, crash_at, run, off)


def _check_resume(tmp_path, monkeypatch, kw, full, crash_at, run, off):
    _crash_after_checkpoints(monkeypatch, crash_at)
    with pytest.raises(Injected):
        train(_cfg(tmp_path / run, **kw))
    monkeypatch.undo()
    assert not (tmp_path / run / "metrics.json").exists()
    resumed = train(_cfg(tmp_path / run, **kw))
    assert resumed == full
    pa = torch.load(tmp_path / "a" / "policy.pt", weights_only=True)
    pb = torch.load(tmp_path / run / "policy.pt", weights_only=True)
    _assert_same(pa, pb, "policy")
    ca = torch.load(tmp_path / "a" / "checkpoints" / "checkpoint.pt", weights_only=True)
    cb = torch.load(tmp_path / run / "checkpoints" / "checkpoint.pt", weights_only=True)
    _assert_same(ca, cb)  # networks, optimisers, temperature, buffers, RNG states, counters
    la = _strip_time(RunDir(tmp_path / "a", _cfg(tmp_path / "a", **kw)).read_log())
    lb = _strip_time(RunDir(tmp_path / run, _cfg(tmp_path / run, **kw)).read_log())
    assert la == lb
    if off:
        ra = torch.load(tmp_path / "a" / "replay.pt", weights_only=True)
        rb = torch.load(tmp_path / run / "replay.pt", weights_only=True)
        _assert_same(ra, rb, "replay")
        assert (tmp_path / "a" / "snapshots" / "index.json").read_text() == \
            (tmp_path / run / "snapshots" / "index.json").read_text()
    # a finished run is not retrained
    assert train(_cfg(tmp_path / run, **kw)) == full


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
    with pytest.raises(NonFiniteError, match="non-finite loss/policy at step 768"):  # update 3, after 3 x 256 steps
        train(_cfg(tmp_path / "n", **kw))
    ck = torch.load(tmp_path / "n" / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ck["harness"]["step"] == 512  # the last good checkpoint (after update 2) is kept
    for p in ck["agent"]["actor"].values():
        assert torch.isfinite(p).all()


def _nan_td_loss(real):
    def poisoned(q, y, *a, **k):  # every TD loss from the 120th update on (update k runs at env step 49 + k)
        poisoned.n += 1
        loss, info = real(q, y, *a, **k)
        return (loss * float("nan"), info) if poisoned.n >= 120 else (loss, info)
    poisoned.n = 0
    return poisoned


def _nan_policy_step(real):
    def poisoned(params, *a, **k):  # the third policy step leaves a NaN weight behind, its losses stay finite
        poisoned.n += 1
        info = real(params, *a, **k)
        if poisoned.n == 3:
            with torch.no_grad():
                params[0].view(-1)[0] = float("nan")
        return info
    poisoned.n = 0
    return poisoned


@pytest.mark.parametrize("algo,attr,poison,kw,msg,kept", [
    ("dqn", "online.dqn.value_loss", _nan_td_loss,
     dict(total_steps=300, checkpoint_every=100,
          dqn={"learning_starts": 50, "train_freq": 1, "batch_size": 16, "hidden": [16]}),
     "non-finite loss/td at step 169", 100),
    ("trpo", "online.trpo.trpo_step", _nan_policy_step,
     dict(total_steps=640, checkpoint_every=256, trpo={"num_envs": 2, "num_steps": 64, "hidden": [16]}),
     "non-finite policy parameters at step 384", 256),
])
def test_harness_stops_at_the_update_that_went_non_finite(tmp_path, monkeypatch, algo, attr, poison, kw, msg, kept):
    """The harness, not the agent, checks each update's losses and policy parameters: the error names the
    metric and the update's step, and the last good checkpoint stays."""
    import importlib

    mod, name = attr.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(mod), name, poison(getattr(importlib.import_module(mod), name)))
    with pytest.raises(NonFiniteError, match=msg):
        train(_cfg(tmp_path / algo, algo=algo, env_id="CartPole-v1", eval_every=0, **kw))
    ck = torch.load(tmp_path / algo / "checkpoints" / "checkpoint.pt", weights_only=True)
    assert ck["harness"]["step"] == kept
    assert all(torch.isfinite(p).all() for p in ck["agent"][{"dqn": "q", "trpo": "actor"}[algo]].values())
    assert not (tmp_path / algo / "metrics.json").exists()


@pytest.mark.parametrize("algo", ["trpo", "npg"])
def test_annealed_value_learning_rate_decays_from_vf_lr(tmp_path, algo):
    """With anneal_lr, TRPO/NPG's critic optimiser decays its own vf_lr (not the policy's lr) linearly to 0."""
    cfg = _cfg(tmp_path / algo, algo=algo, env_id="CartPole-v1", total_steps=512, checkpoint_every=0,
               eval_every=0, **{algo: {"num_envs": 2, "num_steps": 64, "hidden": [8], "anneal_lr": True,
                                       "lr": 0.1, "vf_lr": 0.002}})
    train(cfg)
    ck = torch.load(tmp_path / algo / "checkpoints" / "checkpoint.pt", weights_only=True)
    # 4 updates of 128 steps; the last one runs on the rollout that starts at step 384 of 512
    assert ck["agent"]["vf_opt"]["param_groups"][0]["lr"] == pytest.approx(0.002 * (1 - 384 / 512))
