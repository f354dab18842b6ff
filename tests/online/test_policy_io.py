"""policy_io round trip: the loaded Policy acts exactly like the trained actor, within the env's bounds."""

import numpy as np
import pytest
import torch

from reins.errors import DataError
from rl.envs import make_env
from rl.nets import build_actor
from rl.policy_io import load_policy, save_policy


def _spec_arch(env_id, kind):
    _, spec = make_env(env_id)
    arch = {"kind": kind, "obs_dim": spec.obs_dim, "act_dim": spec.act_dim, "hidden": [16], "activation": "tanh"}
    return spec, arch


@pytest.mark.parametrize("env_id,kind", [("CartPole-v1", "categorical"), ("CartPole-v1", "q"),
                                         ("Pendulum-v1", "gaussian"), ("Pendulum-v1", "tanh_gaussian"),
                                         ("Pendulum-v1", "deterministic")])
def test_round_trip_deterministic_actions(tmp_path, env_id, kind):
    torch.manual_seed(0)
    spec, arch = _spec_arch(env_id, kind)
    actor = build_actor(arch)
    norm = {"mean": torch.arange(spec.obs_dim, dtype=torch.float64), "var": torch.full((spec.obs_dim,), 4.0,
            dtype=torch.float64), "clip": 10.0, "eps": 0.0}
    save_policy(tmp_path / "p.pt", actor=actor, arch=arch, spec=spec, algo="x", obs_norm=norm,
                explore={"epsilon": 0.5, "noise_std": 0.3})
    # weights-only loadable: no pickled classes inside
    raw = torch.load(tmp_path / "p.pt", weights_only=True)
    assert raw["env_id"] == env_id
    pol = load_policy(tmp_path / "p.pt")
    assert pol.env_id == env_id
    obs = np.random.default_rng(0).normal(size=(7, spec.obs_dim)) * 3
    x = torch.as_tensor((obs - np.arange(spec.obs_dim)) / 2.0, dtype=torch.float32)
    a = pol.act(obs, deterministic=True)
    with torch.no_grad():
        out = actor(x)
    if kind in ("categorical", "q"):
        assert a.dtype == np.int64
        np.testing.assert_array_equal(a, out.argmax(-1).numpy())
        return
    low, high = spec.act_low, spec.act_high  # Pendulum: [-2, 2]
    if kind == "gaussian":
        expect = np.clip(out[0].numpy(), low, high)
    elif kind == "tanh_gaussian":
        expect = low + (np.tanh(out[0].numpy()) + 1) * (high - low) / 2
    else:
        expect = low + (out.numpy() + 1) * (high - low) / 2
    np.testing.assert_allclose(a, expect, rtol=1e-5, atol=1e-6)
    s = pol.act(obs * 50, deterministic=False, rng=np.random.default_rng(1))
    assert s.shape == (7, spec.act_dim) and np.all(s >= low) and np.all(s <= high)


def test_stochastic_actions_follow_the_policy_distribution(tmp_path):
    """Categorical sampling frequencies match softmax(logits); epsilon-greedy matches eps/|A| + greedy mass."""
    spec, arch = _spec_arch("CartPole-v1", "categorical")
    actor = build_actor(arch)
    with torch.no_grad():
        for p in actor.parameters():
            p.zero_()
        actor.net[-1].bias.copy_(torch.tensor([0.0, np.log(3.0)]))  # p = [0.25, 0.75]
    save_policy(tmp_path / "c.pt", actor=actor, arch=arch, spec=spec, algo="ppo")
    a = load_policy(tmp_path / "c.pt").act(np.zeros((20000, 4)), deterministic=False, rng=np.random.default_rng(0))
    assert abs(a.mean() - 0.75) < 0.015
    arch_q = {**arch, "kind": "q"}
    save_policy(tmp_path / "q.pt", actor=actor, arch=arch_q, spec=spec, algo="dqn", explore={"epsilon": 0.4})
    a = load_policy(tmp_path / "q.pt").act(np.zeros((20000, 4)), deterministic=False, rng=np.random.default_rng(0))
    assert abs(a.mean() - (0.6 + 0.2)) < 0.015  # greedy action 1 w.p. 1 - eps + eps / 2


def test_load_policy_rejects_other_files(tmp_path):
    torch.save({"hello": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(DataError, match="not a reins policy file"):
        load_policy(tmp_path / "x.pt")
    with pytest.raises(DataError, match="not found"):
        load_policy(tmp_path / "missing.pt")


# ------------------------------------------------------------------------ offline policy files
@pytest.mark.parametrize("kind", ["tanh_mean_gaussian", "deterministic", "tanh_gaussian"])
def test_offline_policy_file_acts_on_the_box(tmp_path, kind):
    """An offline stage's policy.pt (offline.policy) acts as written out here: normalised obs in float32,
    actor.act in [-1, 1], affinely onto the box."""
    from offline.data import Normalization
    from offline.policy import policy_state, save_policy

    torch.manual_seed(0)
    arch = {"kind": kind, "obs_dim": 3, "act_dim": 1, "hidden": [16]}
    if kind == "tanh_gaussian":
        arch.update(log_std="clamp", log_std_min=-20.0, log_std_offset=-1.0)
    actor = build_actor(arch)
    with torch.no_grad():
        for p in actor.parameters():
            p.mul_(3.0)
    norm = Normalization(np.array([0.1, -0.2, 0.3], np.float32), np.array([0.5, 1.5, 2.0], np.float32),
                         np.array([-2.0], np.float32), np.array([2.0], np.float32))
    save_policy(tmp_path / "p.pt", policy_state(actor, arch, norm, env_id="Pendulum-v1", dataset_id="d/x-v0",
                                                algo="x"))
    pol = load_policy(tmp_path / "p.pt")
    assert pol.env_id == "Pendulum-v1" and pol.meta["dataset_id"] == "d/x-v0"
    obs = (np.random.default_rng(0).normal(size=(32, 3)) * 3).astype(np.float32)
    with torch.no_grad():
        head = actor.net(torch.from_numpy(((obs - norm.obs_mean) / norm.obs_std).astype(np.float32)))
    u = torch.tanh(head[:, :1]).numpy()  # every offline actor's deterministic action is tanh of its mean head
    expected = (np.float32(-2.0) + (u + 1.0) * 0.5 * np.float32(4.0)).astype(np.float32)
    got = pol.act(obs)
    np.testing.assert_array_equal(got, expected)
    assert np.ptp(got) > 1.0
