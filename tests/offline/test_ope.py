"""reins ope (fitted Q evaluation): exact oracles on a chain MDP, the bootstrap CI, errors before writing, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from offline import ope
from pgcore.tabular import policy_evaluation
from reins.errors import DataError
from rl.nets import build_actor
from rl.policy_io import policy_dict

S, A, GAMMA = 5, 2, 0.9
PI = np.array([1, 0, 1, 1, 0])  # the evaluated policy's action in each state


def chain_mdp():
    """Deterministic chain: action 1 moves right (the last state stays), action 0 stays; R(s, a) by hand."""
    P = np.zeros((S, A, S))
    for s in range(S):
        P[s, 0, s] = 1.0
        P[s, 1, min(s + 1, S - 1)] = 1.0
    R = np.array([[0.0, 1.0], [0.5, -1.0], [2.0, 0.0], [-0.5, 1.5], [1.0, 3.0]])
    return P, R


def chain_npz(path, *, seed=0, n_episodes=40, length=6):
    """Episodes from uniformly random states and actions (every (s, a) is covered), truncated, never terminated."""
    P, R = chain_mdp()
    rng = np.random.default_rng(seed)
    obs, act, rew, nxt, term, tout = [], [], [], [], [], []
    for _ in range(n_episodes):
        s = int(rng.integers(S))
        for t in range(length):
            a = int(rng.integers(A))
            s2 = int(np.argmax(P[s, a]))
            obs.append(np.eye(S)[s]), act.append(a), rew.append(R[s, a]), nxt.append(np.eye(S)[s2])
            term.append(False), tout.append(t == length - 1)
            s = s2
    np.savez(path, observations=np.array(obs, np.float32), actions=np.array(act, np.int64),
             rewards=np.array(rew, np.float32), next_observations=np.array(nxt, np.float32),
             terminals=np.array(term), timeouts=np.array(tout))
    return path


def tabular_policy_file(path):
    """A linear categorical actor on one-hot states whose argmax is PI."""
    spec = {"kind": "categorical", "obs_dim": S, "act_dim": A, "hidden": []}
    actor = build_actor(spec)
    with torch.no_grad():
        actor.net[0].weight.copy_(torch.tensor(np.eye(A)[PI].T * 10.0, dtype=torch.float32))
        actor.net[0].bias.zero_()
    torch.save(policy_dict(actor=actor, arch=spec, algo="test", action_space={"type": "discrete", "n": A}), path)
    return path


def _cfg(tmp_path, policy, dataset, out="out", **kw):
    base = dict(policy=str(policy), dataset=str(dataset), output_dir=str(tmp_path / out), gamma=GAMMA, hidden=[],
                normalize_obs=False, lr=0.05, batch_size=64, max_steps=3000, target_update_every=20, log_every=500,
                checkpoint_every=500, bootstrap=200, quiet=True, torch_threads=1, device="cpu")
    cfg = ope.Config(**{**base, **kw})
    cfg.validate()
    return cfg


def test_fqe_matches_exact_q_pi_on_chain(tmp_path, one_thread):
    """A one-hot (tabular) Q fitted by FQE equals Q^pi from the linear solve, hence so does V(s0)."""
    P, R = chain_mdp()
    pi = torch.tensor(np.eye(A)[PI], dtype=torch.float64)
    V, Q = policy_evaluation(torch.tensor(P), torch.tensor(R), pi, GAMMA)
    data = chain_npz(tmp_path / "chain.npz")
    cfg = _cfg(tmp_path, tabular_policy_file(tmp_path / "pi.pt"), data)
    m = ope.train(cfg)
    inputs = ope.load_inputs(cfg)
    fqe = ope.FQE(inputs.prob, [], cfg.lr, GAMMA, torch.device("cpu"))
    fqe.load_state_dict(torch.load(tmp_path / "out" / "checkpoints" / "checkpoint.pt", weights_only=True)["fqe"])
    q_fit = fqe.q(torch.eye(S)).detach().double().numpy()
    np.testing.assert_allclose(q_fit, Q.numpy(), atol=2e-3)
    starts = np.argmax(inputs.prob.init_obs, axis=1)
    assert m["ope/value"] == pytest.approx(float(V.numpy()[starts].mean()), abs=2e-3)
    assert m["ope/value_ci_low"] <= m["ope/value"] <= m["ope/value_ci_high"]


def time_indexed_npz(path, length=4, n_episodes=30, seed=0):
    """Observations one-hot in the time step, reward 1 per step, terminated after `length` steps: V(s0) is
    sum_{t<length} gamma^t whatever the (continuous) actions; a linear Q on [s, a] represents it exactly."""
    rng = np.random.default_rng(seed)
    eye = np.eye(length + 1)
    obs = np.concatenate([eye[:length]] * n_episodes).astype(np.float32)
    nxt = np.concatenate([eye[1:]] * n_episodes).astype(np.float32)
    term = np.tile(np.arange(length) == length - 1, n_episodes)
    act = rng.uniform(-1, 1, (len(obs), 2)).astype(np.float32)
    np.savez(path, observations=obs, next_observations=nxt, actions=act,
             rewards=np.ones(len(obs), np.float32), terminals=term, timeouts=np.zeros(len(obs), bool))
    return path


def box_policy_file(path, obs_dim, act_dim=2, low=-1.0, high=1.0):
    spec = {"kind": "deterministic", "obs_dim": obs_dim, "act_dim": act_dim, "hidden": []}
    actor = build_actor(spec)
    box = {"type": "box", "low": torch.full((act_dim,), low), "high": torch.full((act_dim,), high)}
    torch.save(policy_dict(actor=actor, arch=spec, algo="test", action_space=box, unit_actions=True), path)
    return path


def test_fqe_continuous_terminal_and_reward_scale(tmp_path, one_thread):
    """Box actions, terminals cut the bootstrap, and reward_scale is undone: V(s0) = 1 + g + g^2 + g^3."""
    data = time_indexed_npz(tmp_path / "t.npz")
    m = ope.train(_cfg(tmp_path, box_policy_file(tmp_path / "pi.pt", 5), data, reward_scale=3.0, lr=0.02))
    assert m["ope/value"] == pytest.approx(sum(GAMMA ** t for t in range(4)), abs=5e-3)
    # the return equivalent of a constant reward is exactly the undiscounted return (4 steps of reward 1)
    assert m["ope/return_estimate"] == pytest.approx(4.0, abs=5e-3)


def test_bootstrap_ci_against_binomial():
    """Two values 0 and 1: a resampled mean is 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4."""
    assert ope.bootstrap_ci(np.array([0.0, 1.0]), 20000, 0.95, 0) == (0.0, 1.0)
    assert ope.bootstrap_ci(np.array([0.0, 1.0]), 20000, 0.4, 0) == (0.5, 0.5)
    lo, hi = ope.bootstrap_ci(np.full(7, 3.25), 100, 0.9, 1)
    assert lo == hi == 3.25


def bandit_npz(path, rewards):
    """One-step episodes from state 0 with action PI[0], terminated, rewards differing by episode: Q(s0, pi(s0))
    fitted to a weighting of the episodes is exactly the weighted mean of their rewards."""
    n = len(rewards)
    obs = np.tile(np.eye(S)[0], (n, 1)).astype(np.float32)
    np.savez(path, observations=obs, next_observations=obs, actions=np.full(n, PI[0], np.int64),
             rewards=np.asarray(rewards, np.float32), terminals=np.ones(n, bool), timeouts=np.zeros(n, bool))
    return path


@pytest.mark.slow
def test_refit_bootstrap_fits_each_resample(tmp_path, one_thread):
    """Each refit weights transitions and initial states by its episode counts: its estimate is the count-weighted
    mean reward (the exact fit of its resample); the main estimate is the same as without refits, and the CI is
    the estimate +- z * the refits' spread."""
    rewards = np.random.default_rng(3).normal(1.0, 1.0, 40)
    data = bandit_npz(tmp_path / "b.npz", rewards)
    pol = tabular_policy_file(tmp_path / "pi.pt")
    kw = dict(gamma=0.5, lr=1e-3, batch_size=2048, max_steps=3000, target_update_every=50)
    m = ope.train(_cfg(tmp_path, pol, data, "refit", bootstrap_fits=6, **kw))
    plain = ope.train(_cfg(tmp_path, pol, data, "plain", bootstrap_fits=0, **kw))
    assert m["ope/value"] == plain["ope/value"] and plain["ope/bootstrap_fits"] == 0
    cfg = _cfg(tmp_path, pol, data, "refit", bootstrap_fits=6, **kw)
    inputs = ope.load_inputs(cfg)
    fqe = ope.FQE(inputs.prob, [], cfg.lr, cfg.gamma, torch.device("cpu"), n_boot=6, seed=cfg.seed)
    fqe.load_state_dict(torch.load(tmp_path / "refit" / "checkpoints" / "checkpoint.pt", weights_only=True)["fqe"])
    counts = fqe.boot_counts.double().numpy()
    assert counts.shape == (6, 40) and np.all(counts.sum(axis=1) == 40) and len(np.unique(counts, axis=0)) == 6
    oracle = counts[:, inputs.prob.arrays["episode_index"]] @ rewards / 40.0
    # Adam's minibatch noise leaves each fit within ~0.01 of its optimum; the resamples' means differ by ~0.16
    np.testing.assert_allclose(fqe.boot_estimates(inputs.prob, torch.device("cpu")), oracle, atol=2e-2)
    assert m["ope/value"] == pytest.approx(rewards.mean(), abs=2e-2)
    half = 1.959963984540054 * np.std(oracle, ddof=1)
    assert m["ope/value_ci_low"] == pytest.approx(m["ope/value"] - half, abs=5e-2)
    assert m["ope/value_ci_high"] == pytest.approx(m["ope/value"] + half, abs=5e-2)
    assert np.std(oracle) > 0.1


def test_refit_ci_formula():
    lo, hi = ope.refit_ci(5.0, np.array([1.0, 2.0, 3.0]), 0.95)  # sample std 1
    assert (lo, hi) == pytest.approx((5.0 - 1.959963984540054, 5.0 + 1.959963984540054), rel=1e-12)


def test_return_equivalent():
    assert ope.return_equivalent(10.0, 1.0, 200) == 10.0
    # a constant reward c: V = c (1 - g^H) / (1 - g) maps back to c H
    g, H, c = 0.99, 200, -2.5
    assert ope.return_equivalent(c * (1 - g ** H) / (1 - g), g, H) == pytest.approx(c * H, rel=1e-12)


@pytest.mark.parametrize("make_policy,message", [
    (lambda p: box_policy_file(p, 4), "takes 4-dim observations"),
    (lambda p: box_policy_file(p, 5, act_dim=3), "3-dim actions"),
    (lambda p: box_policy_file(p, 5, low=-0.5, high=0.5), "outside"),
    (lambda p: tabular_policy_file(p), "discrete actions"),  # 5-dim obs fit, its actions do not
])
def test_space_mismatch_is_one_line_error_before_writing(tmp_path, make_policy, message):
    data = time_indexed_npz(tmp_path / "t.npz")
    policy = make_policy(tmp_path / "pi.pt")
    with pytest.raises(DataError, match=message) as e:
        ope.train(_cfg(tmp_path, policy, data))
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_cli_errors_exit_2_and_write_nothing(tmp_path, capsys):
    data = time_indexed_npz(tmp_path / "t.npz")
    out = tmp_path / "o"
    assert ope.main([str(tmp_path / "missing.pt"), "--dataset", str(data), f"output_dir={out}"]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert ope.main([str(box_policy_file(tmp_path / "p.pt", 5)), f"output_dir={out}"]) == 2
    assert "dataset is required" in capsys.readouterr().err
    assert not out.exists()


class Interrupt(Exception):
    pass


def test_resume_equals_uninterrupted(tmp_path, monkeypatch, one_thread):
    data = chain_npz(tmp_path / "chain.npz")
    pol = tabular_policy_file(tmp_path / "pi.pt")
    kw = dict(max_steps=60, log_every=10, checkpoint_every=20, target_update_every=7)
    full = ope.train(_cfg(tmp_path, pol, data, "full", **kw))
    real, count = ope.FQE.update, {"n": 0}

    def update(self, b):
        count["n"] += 1
        if count["n"] > 50:
            raise Interrupt()
        return real(self, b)

    monkeypatch.setattr(ope.FQE, "update", update)
    cfg = _cfg(tmp_path, pol, data, "resumed", **kw)
    with pytest.raises(Interrupt):
        ope.train(cfg)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(ope.FQE, "update", real)
    resumed = ope.train(cfg)
    drop = {"time/updates_per_s"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in full.items() if k not in drop}
    assert (tmp_path / "full" / "log.jsonl").read_text() == (tmp_path / "resumed" / "log.jsonl").read_text()
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["train/steps"] == 60


def test_select_by_ope_keeps_best_fqe_checkpoint(tmp_path, one_thread):
    """Without an env, select_by=ope logs an FQE value per evaluation point, keeps policy_best.pt at the best one,
    and leaves the training stream as it was (policy.pt bit-identical to a select_by=env run)."""
    from offline import bc
    from reins.runio import safe_torch_load

    data = time_indexed_npz(tmp_path / "t.npz", n_episodes=8)
    kw = dict(dataset=str(data), hidden=[8], batch_size=16, max_steps=30, eval_every=10, log_every=10,
              checkpoint_every=10, quiet=True, torch_threads=1, device="cpu")
    plain = bc.Config(output_dir=str(tmp_path / "env"), **kw)
    m_plain = bc.train(plain)
    cfg = bc.Config(output_dir=str(tmp_path / "ope"), select_by="ope", ope_steps=40, ope_target_update_every=10, **kw)
    cfg.validate()
    m = bc.train(cfg)
    assert "ope/value" not in m_plain and not (tmp_path / "env" / "policy_best.pt").exists()
    rows = [json.loads(x) for x in (tmp_path / "ope" / "log.jsonl").read_text().splitlines()]
    values = {r["step"]: r["ope/value"] for r in rows if "ope/value" in r}
    assert sorted(values) == [10, 20, 30]
    assert m["ope/best_step"] == max(values, key=values.get) and m["ope/value_best"] == max(values.values())
    a = safe_torch_load(tmp_path / "env" / "policy.pt")["state_dict"]
    b = safe_torch_load(tmp_path / "ope" / "policy.pt")["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    best = safe_torch_load(tmp_path / "ope" / "policy_best.pt")["state_dict"]
    assert (m["ope/best_step"] == 30) == all(torch.equal(best[k], b[k]) for k in b)
    # a value is the FQE of that actor: re-running fqe_value on policy_best.pt gives the best value back
    from offline.data import load_transitions
    from rl.policy_io import load_policy

    again = ope.fqe_value(load_policy(tmp_path / "ope" / "policy_best.pt"), load_transitions(str(data)), gamma=0.99,
                          steps=40, target_update_every=10, hidden=[8], lr=1e-3, batch_size=16,
                          seed=int(m["ope/best_step"]), device=torch.device("cpu"))
    assert again == pytest.approx(m["ope/value_best"], rel=1e-6)


def test_select_by_ope_resumes_exactly(tmp_path, monkeypatch, one_thread):
    """The FQE history travels in the checkpoint: a killed select_by=ope run resumes to the same best choice."""
    from offline import bc

    data = time_indexed_npz(tmp_path / "t.npz", n_episodes=8)
    kw = dict(dataset=str(data), hidden=[8], batch_size=16, max_steps=30, eval_every=10, log_every=10,
              checkpoint_every=10, quiet=True, torch_threads=1, device="cpu", select_by="ope", ope_steps=20,
              ope_target_update_every=5)
    full = bc.train(bc.Config(output_dir=str(tmp_path / "full"), **kw))
    real, count = bc.BC.update, {"n": 0}

    def update(self, b):
        count["n"] += 1
        if count["n"] > 25:
            raise Interrupt()
        return real(self, b)

    monkeypatch.setattr(bc.BC, "update", update)
    cfg = bc.Config(output_dir=str(tmp_path / "resumed"), **kw)
    with pytest.raises(Interrupt):
        bc.train(cfg)
    monkeypatch.setattr(bc.BC, "update", real)
    resumed = bc.train(cfg)
    drop = {"time/updates_per_s"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in full.items() if k not in drop}
    assert (tmp_path / "full" / "log.jsonl").read_text() == (tmp_path / "resumed" / "log.jsonl").read_text()
    assert (tmp_path / "full" / "policy_best.pt").read_bytes() == (tmp_path / "resumed" / "policy_best.pt").read_bytes()
