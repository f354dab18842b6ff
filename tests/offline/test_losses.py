"""The losses IQL/CQL/BC optimise equal hand-written oracles of their equations (float64, exact)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from offline.bc import BC
from offline.bc import Config as BCConfig
from offline.cql import CQL, DiscreteCQL
from offline.cql import Config as CQLConfig
from offline.iql import IQL
from offline.iql import Config as IQLConfig
from offline.td3bc import TD3BC
from offline.td3bc import Config as TD3BCConfig
from pgcore.offline_losses import discrete_cql_gap, td3bc_actor_loss
from reins.config import apply_preset
from rl.nets import EnsembleQ

OBS, ACT, B = 3, 2, 32


def _batch(gen, terminal_every=4):
    return {
        "observations": torch.randn(B, OBS, generator=gen, dtype=torch.float64),
        "actions": torch.rand(B, ACT, generator=gen, dtype=torch.float64) * 1.8 - 0.9,
        "rewards": torch.randn(B, generator=gen, dtype=torch.float64),
        "next_observations": torch.randn(B, OBS, generator=gen, dtype=torch.float64),
        "terminals": (torch.arange(B) % terminal_every == 0).double(),
    }


def _double(algo, names):
    for n in names:
        getattr(algo, n).double()
    return algo


def test_ensemble_critic_matches_separate_mlps(gen):
    c = EnsembleQ(2, OBS, ACT, [8, 8]).double()
    s = torch.randn(5, OBS, dtype=torch.float64, generator=gen)
    a = torch.randn(5, ACT, dtype=torch.float64, generator=gen)
    out = c(s, a)
    for e in range(2):
        h = torch.cat([s, a], -1)
        for i, layer in enumerate(c.layers):
            h = h @ layer.weight[e] + layer.bias[e]
            h = torch.relu(h) if i < len(c.layers) - 1 else h
        torch.testing.assert_close(out[e], h.squeeze(-1))
    # extra leading dims ([B, N, d]) give [E, B, N]
    assert c(s.unsqueeze(1).expand(-1, 4, -1), a.unsqueeze(1).expand(-1, 4, -1)).shape == (2, 5, 4)


def test_iql_losses_match_oracle(gen):
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=[16, 16], expectile=0.8, beta=2.5, max_weight=5.0, gamma=0.9)
    algo = _double(IQL(cfg, OBS, ACT, torch.device("cpu")), ["actor", "critic", "critic_target", "value"])
    b = _batch(gen)
    before = copy.deepcopy(algo)
    info = algo.update(b)
    s, a, r, s2, d = (b[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals"))
    with torch.no_grad():
        qt = torch.minimum(*before.critic_target(s, a))
        v = before.value(s)
        u = qt - v
        w = torch.where(u < 0, 1 - 0.8, 0.8)  # |tau - 1(u < 0)|
        v_loss = (w * u ** 2).mean()
        y = r + 0.9 * (1 - d) * before.value(s2)
        q = before.critic(s, a)
        q_loss = ((q[0] - y) ** 2).mean() + ((q[1] - y) ** 2).mean()
        mean = torch.tanh(before.actor.net(s))
        std = before.actor.log_std.exp()
        logp = (-0.5 * ((a - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)
        weights = torch.clamp(torch.exp(2.5 * u), max=5.0)
        pi_loss = -(weights * logp).mean()
    torch.testing.assert_close(info["loss/value"], v_loss)
    torch.testing.assert_close(info["loss/q"], q_loss)
    torch.testing.assert_close(info["loss/actor"], pi_loss)
    # target critics moved by exactly tau towards the updated critics
    for pt, p0, p1 in zip(algo.critic_target.parameters(), before.critic_target.parameters(),
                          algo.critic.parameters()):
        torch.testing.assert_close(pt, (1 - cfg.tau) * p0 + cfg.tau * p1)


def test_iql_d3rlpy_switches_sigmoid_log_std_and_advantage_after_the_v_step(gen):
    # log_std_param=sigmoid: log std = min + sigmoid(p) (max - min), -1.5 at p = 0 for [-5, 2]; advantage_v=after:
    # the actor's weights use V after its update step (and the pre-Polyak target critics).
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=[16, 16], beta=2.5, max_weight=5.0, gamma=0.9, log_std_param="sigmoid",
                    advantage_v="after")
    algo = _double(IQL(cfg, OBS, ACT, torch.device("cpu")), ["actor", "critic", "critic_target", "value"])
    assert algo.actor_spec["log_std_param"] == "sigmoid"
    torch.testing.assert_close(algo.actor.bounded_log_std(), torch.full((ACT,), -1.5, dtype=torch.float64))
    b = _batch(gen)
    before = copy.deepcopy(algo)
    info = algo.update(b)
    s, a = b["observations"], b["actions"]
    with torch.no_grad():
        u_after = torch.minimum(*before.critic_target(s, a)) - algo.value(s)  # V after its step
        u_before = torch.minimum(*before.critic_target(s, a)) - before.value(s)
        mean = torch.tanh(before.actor.net(s))
        log_std = -5.0 + torch.sigmoid(before.actor.log_std) * 7.0
        std = log_std.exp()
        logp = (-0.5 * ((a - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        expected = -(torch.clamp(torch.exp(2.5 * u_after), max=5.0) * logp).mean()
        other = -(torch.clamp(torch.exp(2.5 * u_before), max=5.0) * logp).mean()
    torch.testing.assert_close(info["loss/actor"], expected)
    assert not torch.isclose(expected, other)  # the switch changes what the actor sees
    # far outside [min, max] the clamp's gradient is 0 but the sigmoid's is not
    for param, grad_zero in (("clamp", True), ("sigmoid", False)):
        actor = IQL(IQLConfig(hidden=[4], log_std_param=param), OBS, ACT, torch.device("cpu")).actor
        with torch.no_grad():
            actor.log_std.fill_(-8.0)
        actor.log_prob(torch.zeros(1, OBS), torch.zeros(1, ACT)).sum().backward()
        assert bool((actor.log_std.grad == 0).all()) == grad_zero


def test_iql_deterministic_actor_is_weighted_mse(gen):
    torch.manual_seed(0)
    cfg = IQLConfig(hidden=[16], actor="deterministic", beta=1.0)
    algo = _double(IQL(cfg, OBS, ACT, torch.device("cpu")), ["actor", "critic", "critic_target", "value"])
    b = _batch(gen)
    before = copy.deepcopy(algo)
    info = algo.update(b)
    with torch.no_grad():
        s, a = b["observations"], b["actions"]
        u = torch.minimum(*before.critic_target(s, a)) - before.value(s)
        mse = ((torch.tanh(before.actor.net(s)) - a) ** 2).sum(-1)
        expected = (torch.clamp(torch.exp(u), max=100.0) * mse).mean()
    torch.testing.assert_close(info["loss/actor"], expected)


def _cql_oracle_gap(q_data, q_rand, q_cur, q_nxt, cur_logp, nxt_logp, act_dim, temp, importance):
    """temp * logsumexp over the concatenated proposals / temp, averaged over states, minus mean Q(s, a)."""
    if importance:
        parts = [q_rand + act_dim * math.log(2.0), q_nxt - nxt_logp, q_cur - cur_logp]
    else:
        parts = [q_rand, q_data.unsqueeze(-1), q_nxt, q_cur]
    cat = torch.cat(parts, dim=-1) / temp
    m = cat.max(dim=-1, keepdim=True).values
    lse = (m.squeeze(-1) + torch.log(torch.exp(cat - m).sum(-1))) * temp
    return lse.mean() - q_data.mean()


def _replay_cql_samples(algo, b, seed, n):
    """Re-draw the update's random numbers in the same order (global RNG) to rebuild its samples."""
    torch.manual_seed(seed)
    s, s2 = b["observations"], b["next_observations"]
    with torch.no_grad():
        algo.actor.dist(s).rsample()  # actor/temperature sample
        algo.actor.dist(s2).rsample()  # TD target sample
        rand_a = torch.rand(B, n, ACT, dtype=torch.float64) * 2 - 1
        cur_a, cur_logp = algo.actor.dist(s.unsqueeze(1).expand(-1, n, -1)).rsample()
        nxt_a, nxt_logp = algo.actor.dist(s2.unsqueeze(1).expand(-1, n, -1)).rsample()
    return rand_a, cur_a, cur_logp, nxt_a, nxt_logp


def _check_cql(gen, importance):
    torch.manual_seed(1)
    n = 3
    cfg = CQLConfig(hidden=[16], q_hidden=[16], cql_n_actions=n, cql_importance_sample=importance, cql_temp=0.7,
                    cql_alpha=2.0, gamma=0.95)
    algo = CQL(cfg, OBS, ACT, torch.device("cpu"))
    _double(algo, ["actor", "critic", "critic_target"])
    b = _batch(gen)
    before = copy.deepcopy(algo)
    # The actor is stepped before the critic's samples are drawn: replay them from the updated actor.
    torch.manual_seed(5)
    info = algo.update(b)
    rand_a, cur_a, cur_logp, nxt_a, nxt_logp = _replay_cql_samples(algo, b, 5, n)
    s, a = b["observations"], b["actions"]
    with torch.no_grad():
        q = before.critic(s, a)
        rep = s.unsqueeze(1).expand(-1, n, -1)
        gaps = []
        for e in range(2):
            gaps.append(_cql_oracle_gap(q[e], before.critic(rep, rand_a)[e], before.critic(rep, cur_a)[e],
                                        before.critic(rep, nxt_a)[e], cur_logp, nxt_logp, ACT, 0.7, importance))
        gaps = torch.stack(gaps)
    torch.testing.assert_close(info["train/cql_gap"], gaps.mean())
    torch.testing.assert_close(info["loss/cql"], 2.0 * gaps.sum())


def test_cql_importance_sampled_gap_matches_oracle(gen):
    _check_cql(gen, importance=True)


def test_cql_plain_logsumexp_gap_matches_oracle(gen):
    _check_cql(gen, importance=False)


def test_cql_td_target_and_lagrange(gen):
    torch.manual_seed(2)
    cfg = CQLConfig(hidden=[16], q_hidden=[16], cql_n_actions=2, cql_lagrange=True, cql_target_action_gap=0.5,
                    cql_log_alpha_prime_init=0.3, gamma=0.9, backup_entropy=True)
    algo = CQL(cfg, OBS, ACT, torch.device("cpu"))
    _double(algo, ["actor", "critic", "critic_target"])
    algo.log_alpha.data = algo.log_alpha.data.double()
    b = _batch(gen)
    before = copy.deepcopy(algo)
    torch.manual_seed(9)
    info = algo.update(b)
    torch.manual_seed(9)
    s, a, r, s2, d = (b[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals"))
    with torch.no_grad():
        before.actor.dist(s).rsample()
        alpha = algo.log_alpha.exp()  # after its own step, as used by the critic target
        a2, logp2 = algo.actor.dist(s2).rsample()
        y = r + 0.9 * (1 - d) * (torch.minimum(*before.critic_target(s2, a2)) - alpha * logp2)
        q = before.critic(s, a)
        td = ((q[0] - y) ** 2).mean() + ((q[1] - y) ** 2).mean()
    torch.testing.assert_close(info["loss/td"], td)
    # Lagrange: alpha' = exp(0.3) multiplies cql_alpha * (gap - target), and log alpha' moves against the gap
    gap = info["train/cql_gap"]
    torch.testing.assert_close(info["loss/cql"], math.exp(0.3) * cfg.cql_alpha * (2 * gap - 2 * 0.5),
                               check_dtype=False)
    moved = float(algo.log_alpha_prime.detach()) - 0.3
    assert moved * (float(gap) - 0.5) > 0  # dual ascent: grows while the gap exceeds the target
    # its gradient is that of -alpha' * cql_alpha * (gap - target) (CORL, Kumar et al.'s code); Adam's first
    # moment after one step is (1 - beta1) * grad
    grad = algo.alpha_prime_opt.state[algo.log_alpha_prime]["exp_avg"] / 0.1
    torch.testing.assert_close(grad, -cfg.cql_alpha * math.exp(0.3) * (gap - 0.5), check_dtype=False)


def test_cql_max_backup_takes_each_critics_max_then_the_min():
    from offline.cql import max_backup

    q = torch.tensor([[[1.0, 5.0, 2.0], [0.0, -1.0, 3.0]],    # critic 0: maxima 5 (j=1), 3 (j=2)
                      [[4.0, 0.0, 1.0], [9.0, 2.0, 8.0]]])   # critic 1: maxima 4 (j=0), 9 (j=0)
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
    v, lp = max_backup(q, logp)
    assert v.tolist() == [4.0, 3.0]        # min over critics of each critic's max
    assert lp.tolist() == [-1.0, -6.0]     # log pi of the proposal the smaller critic picked


def test_bc_is_negative_log_likelihood(gen):
    torch.manual_seed(3)
    algo = BC(BCConfig(hidden=[16], actor="tanh_gaussian"), OBS, ACT, torch.device("cpu"))
    algo.actor.double()
    b = _batch(gen)
    before = copy.deepcopy(algo.actor)
    info = algo.update(b)
    with torch.no_grad():
        s, a = b["observations"], b["actions"]
        mean, raw = before.net(s).chunk(2, -1)
        log_std = (raw - 1.0).clamp(-20, 2)
        u = torch.atanh(a)
        base = (-0.5 * ((u - mean) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        logp = base - torch.log(1 - a ** 2).sum(-1)
    torch.testing.assert_close(info["loss/actor"], -logp.mean())


def _linears(module):
    return [m for m in module.modules() if isinstance(m, torch.nn.Linear)]


def _is_orthogonal(w, gain):
    """Rows or columns (whichever are fewer) orthonormal up to `gain`, as nn.init.orthogonal_ makes them."""
    g = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return torch.allclose(g, gain ** 2 * torch.eye(g.shape[0]), atol=1e-5 * max(1.0, gain ** 2))


def test_iql_paper_preset_inits_every_layer_orthogonal_sqrt2():
    """Original IQL's default_init: orthogonal, scale sqrt(2), on every Dense layer of actor, critics and V."""
    cfg = IQLConfig(dataset="x", preset="paper-locomotion", hidden=[16, 16])
    apply_preset(cfg)
    algo = IQL(cfg, OBS, ACT, torch.device("cpu"))
    nets = [_linears(algo.actor), _linears(algo.value)]
    assert len(nets[0]) == 3 and len(nets[1]) == 3
    for linears in nets:
        for m in linears:  # output layers included
            assert _is_orthogonal(m.weight.detach(), math.sqrt(2.0))
            assert torch.count_nonzero(m.bias) == 0
    for layer in algo.critic.layers:
        for e in range(algo.critic.n):
            assert _is_orthogonal(layer.weight.detach()[e], math.sqrt(2.0))
        assert torch.count_nonzero(layer.bias) == 0
    # without the preset the actor keeps torch's default (uniform, non-zero biases)
    plain = IQL(IQLConfig(dataset="x", hidden=[16, 16]), OBS, ACT, torch.device("cpu"))
    assert not _is_orthogonal(_linears(plain.actor)[0].weight.detach(), math.sqrt(2.0))
    assert torch.count_nonzero(_linears(plain.actor)[0].bias) > 0


def test_cql_corl_preset_inits_critics_orthogonal_and_actor_last_layer_small():
    cfg = CQLConfig(dataset="x", preset="corl-locomotion", hidden=[16, 16], q_hidden=[16, 16])
    apply_preset(cfg)
    assert cfg.actor_last_gain == 1e-2
    algo = CQL(cfg, OBS, ACT, torch.device("cpu"))
    n = len(algo.critic.layers)
    for i, layer in enumerate(algo.critic.layers):
        for e in range(2):
            assert _is_orthogonal(layer.weight.detach()[e], 1e-2 if i == n - 1 else math.sqrt(2.0))
    actor = _linears(algo.actor)
    last = actor[-1].weight.detach()
    bound = 1e-2 * math.sqrt(6.0 / (last.shape[0] + last.shape[1]))  # xavier-uniform, gain 1e-2
    assert last.abs().max() <= bound and last.abs().max() > bound / 2
    assert torch.count_nonzero(actor[-1].bias) == 0
    # hidden actor layers keep torch's default init (CORL passes no orthogonal init to the actor)
    first = actor[0].weight.detach()
    assert not _is_orthogonal(first, math.sqrt(2.0)) and first.abs().max() > 0.1
    with __import__("pytest").raises(Exception, match="actor_last_gain must be > 0"):
        CQLConfig(dataset="x", actor_last_gain=0.0).validate()


def test_discrete_cql_gap_hand_value():
    q = torch.tensor([[1.0, 2.0], [0.0, math.log(3.0)]], dtype=torch.float64)
    gap = discrete_cql_gap(q, torch.tensor([0, 1]))
    # row 1: log(e + e^2) - 1 = 1 + log(1 + e^-1); row 2: log(1 + 3) - log 3
    want = (1.0 + math.log(1.0 + math.exp(-1.0)) + math.log(4.0 / 3.0)) / 2
    assert gap.item() == pytest.approx(want, rel=1e-14, abs=0)


def test_td3bc_actor_loss_hand_value():
    q = torch.tensor([2.0, -4.0], dtype=torch.float64, requires_grad=True)
    pi = torch.tensor([[0.5], [0.0]], dtype=torch.float64)
    a = torch.tensor([[0.0], [-1.0]], dtype=torch.float64)
    loss, lam = td3bc_actor_loss(q, pi, a, alpha=2.5)
    # lambda = 2.5 / mean(|2|, |-4|) = 2.5 / 3; -lambda * mean(q) = 2.5 / 3; mean((pi - a)^2) = (0.25 + 1) / 2
    assert lam.item() == pytest.approx(2.5 / 3, rel=1e-15)
    assert loss.item() == pytest.approx(2.5 / 3 + 0.625, rel=1e-15)
    loss.backward()  # lambda is a constant: dL/dq_i = -lambda / B
    torch.testing.assert_close(q.grad, torch.full((2,), -2.5 / 6, dtype=torch.float64), rtol=1e-15, atol=0)


def test_td3bc_update_matches_oracle(gen):
    """One TD3+BC update in float64 (no target noise, actor every update): the critics' loss and the actor's
    loss equal the paper's formulas evaluated on copies of the networks."""
    torch.manual_seed(0)
    cfg = TD3BCConfig(hidden=[16, 16], policy_noise=0.0, policy_delay=1, gamma=0.9, alpha=2.5)
    algo = _double(TD3BC(cfg, OBS, ACT, torch.device("cpu")), ["actor", "actor_target", "critic", "critic_target"])
    algo.last_actor_loss, algo.last_lambda = algo.last_actor_loss.double(), algo.last_lambda.double()
    b = _batch(gen)
    before = copy.deepcopy(algo)
    info = algo.update(b)
    s, a, r, s2, d = (b[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals"))
    with torch.no_grad():
        y = r + 0.9 * (1 - d) * before.critic_target(s2, before.actor_target(s2)).min(dim=0).values
        q = before.critic(s, a)
        critic_loss = ((q[0] - y) ** 2).mean() + ((q[1] - y) ** 2).mean()
        pi = before.actor(s)
        q_pi = algo.critic(s, pi)[0]  # the actor steps on the critics as just updated (the actor step leaves them)
        lam = 2.5 / q_pi.abs().mean()
        actor_loss = -lam * q_pi.mean() + ((pi - a) ** 2).mean()
    torch.testing.assert_close(info["loss/critic"], critic_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(info["loss/actor"], actor_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(info["train/lambda"], lam, rtol=1e-12, atol=0)
    for p, p0 in zip(algo.actor.parameters(), before.actor.parameters()):
        assert not torch.equal(p, p0)  # the actor really stepped


def test_discrete_cql_update_matches_oracle(gen):
    """One Discrete CQL update in float64: Huber TD to the double-DQN target plus alpha * (logsumexp - Q(s, a))."""
    torch.manual_seed(0)
    n = 3
    cfg = CQLConfig(q_hidden=[16], cql_alpha=2.0, gamma=0.9, td_loss="huber")
    algo = _double(DiscreteCQL(cfg, OBS, n, torch.device("cpu")), ["actor", "critic_target"])
    b = _batch(gen)
    b["actions"] = torch.randint(0, n, (B,), generator=gen)
    with torch.no_grad():  # a target that differs from the online net, so the double-DQN choice matters
        for p in algo.critic_target.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
    before = copy.deepcopy(algo)
    info = algo.update(b)
    s, a, r, s2, d = (b[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals"))
    with torch.no_grad():
        a_star = before.actor(s2).argmax(-1)
        y = r + 0.9 * (1 - d) * before.critic_target(s2)[torch.arange(B), a_star]
        q_all = before.actor(s)
        err = (q_all[torch.arange(B), a] - y).abs()
        huber = torch.where(err < 1, 0.5 * err ** 2, err - 0.5).mean()
        gap = (torch.logsumexp(q_all, -1) - q_all[torch.arange(B), a]).mean()
    torch.testing.assert_close(info["loss/td"], huber, rtol=1e-12, atol=0)
    torch.testing.assert_close(info["loss/cql"], 2.0 * gap, rtol=1e-12, atol=0)
    assert not torch.equal(a_star, before.critic_target(s2).argmax(-1))  # online selects, target evaluates


def test_discrete_cql_hard_target_copies_as_d3rlpy(gen):
    """target_update_every=N copies Q into the target after updates 1, N + 1, 2N + 1 (d3rlpy's DQNImpl syncs when
    its grad-step counter, starting at 0, is a multiple of N) and leaves it frozen in between."""
    torch.manual_seed(0)
    cfg = CQLConfig(q_hidden=[8], target_update_every=3, qf_lr=1e-2)
    algo = _double(DiscreteCQL(cfg, OBS, 2, torch.device("cpu")), ["actor", "critic_target"])
    synced = []
    for _ in range(7):
        b = _batch(gen)
        b["actions"] = torch.randint(0, 2, (B,), generator=gen)
        algo.update(b)
        synced.append(all(torch.equal(p, q) for p, q in zip(algo.actor.parameters(),
                                                            algo.critic_target.parameters())))
    assert synced == [True, False, False, True, False, False, True]


def _float_batch(gen, n_actions):
    b = {k: v.float() if v.is_floating_point() else v for k, v in _batch(gen).items()}
    b["actions"] = torch.randint(0, n_actions, (B,), generator=gen)
    return b


def _policy_of(algo, n_actions):
    """The policy file state the offline trainer would write for a discrete algo (no env, no normalisation)."""
    from rl.policy_io import Policy, policy_dict

    return Policy(policy_dict(actor=algo.actor, arch=algo.actor_spec, algo="cql", env_id="",
                              action_space={"type": "discrete", "n": n_actions}, observation_space=None))


def test_discrete_cql_dropout_trains_stochastic_and_acts_deterministic(gen):
    """q_dropout: the Q-network drops units in its updates (two forward passes of one batch differ), the policy
    file records the dropout and acts with it off (= the network in eval mode), and exports (dropout is the
    identity when acting)."""
    from rl.portable import linear_layers

    torch.manual_seed(0)
    cfg = CQLConfig(q_hidden=[32, 32], q_dropout=0.5)
    algo = DiscreteCQL(cfg, OBS, 3, torch.device("cpu"))
    assert algo.actor_spec["dropout"] == 0.5 and "layer_norm" not in algo.actor_spec
    s = torch.randn(64, OBS, generator=gen)
    assert not torch.equal(algo.actor(s), algo.actor(s))  # training mode: dropout on
    b = _float_batch(gen, 3)
    algo.update(b)
    pol = _policy_of(algo, 3)
    algo.actor.eval()
    expect = algo.actor(s).argmax(-1).numpy()
    assert (pol.act(s.numpy()) == expect).all() and (pol.act(s.numpy()) == expect).all()
    linears, _ = linear_layers(pol.actor.net)  # what export_portable keeps
    assert len(linears) == 3


def test_discrete_cql_layer_norm_and_weight_decay(gen):
    """q_layer_norm puts a LayerNorm after each hidden Linear (in the policy file too); qf_weight_decay adds
    wd * theta to the Q-network's gradient (Adam's L2 form): one update from the same start differs from wd = 0,
    and equals a hand Adam step on the gradient plus wd * theta."""
    from torch import nn

    torch.manual_seed(0)
    algo = DiscreteCQL(CQLConfig(q_hidden=[16, 16], q_layer_norm=True), OBS, 2, torch.device("cpu"))
    assert sum(isinstance(m, nn.LayerNorm) for m in algo.actor.modules()) == 2
    pol = _policy_of(algo, 2)
    assert sum(isinstance(m, nn.LayerNorm) for m in pol.actor.modules()) == 2
    s = torch.randn(16, OBS, generator=gen)
    assert (pol.act(s.numpy()) == algo.actor(s).argmax(-1).numpy()).all()

    b = _float_batch(gen, 2)
    torch.manual_seed(1)
    plain = DiscreteCQL(CQLConfig(q_hidden=[8], qf_lr=1e-2), OBS, 2, torch.device("cpu"))
    decayed = copy.deepcopy(plain)
    decayed.cfg = CQLConfig(q_hidden=[8], qf_lr=1e-2, qf_weight_decay=0.5)
    decayed.critic_opt = torch.optim.Adam(decayed.actor.parameters(), lr=1e-2, weight_decay=0.5)
    built = DiscreteCQL(decayed.cfg, OBS, 2, torch.device("cpu"))
    assert built.critic_opt.param_groups[0]["weight_decay"] == 0.5
    before = copy.deepcopy(plain)
    plain.update(b)
    decayed.update(b)
    # Adam's first step is -lr * g_hat / (|g_hat| + eps) per entry, g_hat = g + wd * theta
    before.actor.zero_grad()
    with torch.no_grad():
        y = before.critic_target(b["next_observations"]).gather(
            -1, before.actor(b["next_observations"]).argmax(-1, keepdim=True)).squeeze(-1)
        y = b["rewards"] + before.cfg.gamma * (1 - b["terminals"]) * y
    q_all = before.actor(b["observations"])
    q = q_all.gather(-1, b["actions"].unsqueeze(-1)).squeeze(-1)
    loss = torch.nn.functional.smooth_l1_loss(q, y) + before.cfg.cql_alpha * discrete_cql_gap(q_all, b["actions"])
    loss.backward()
    differs = []
    for p0, p_plain, p_dec in zip(before.actor.parameters(), plain.actor.parameters(), decayed.actor.parameters()):
        g = p0.grad + 0.5 * p0.detach()
        torch.testing.assert_close(p_dec, p0.detach() - 1e-2 * g / (g.abs() + 1e-8), rtol=1e-5, atol=1e-6)
        differs.append(not torch.equal(p_dec, p_plain))  # the first step is -lr sign(g_hat): flips where wd wins
    assert any(differs)
