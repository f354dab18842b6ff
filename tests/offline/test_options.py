"""Each IQL/CQL option changes what the update computes, checked against a float64 oracle or an exact property, so
a test fails when the option is ignored: cql `cql_max_target_backup`, `cql_clip_diff_min/max`, `bc_steps`,
`auto_alpha`; iql `n_critics`, `actor_cosine`, `value_layer_norm`, `actor_dropout`."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from offline.cql import CQL
from offline.cql import Config as CQLConfig
from offline.iql import IQL
from offline.iql import Config as IQLConfig
from pgcore.distributions import TanhGaussian

OBS, ACT, B = 3, 2, 16
CPU = torch.device("cpu")


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"observations": torch.randn(B, OBS, generator=g, dtype=torch.float64),
            "actions": torch.rand(B, ACT, generator=g, dtype=torch.float64) * 1.8 - 0.9,
            "rewards": torch.randn(B, generator=g, dtype=torch.float64),
            "next_observations": torch.randn(B, OBS, generator=g, dtype=torch.float64),
            "terminals": (torch.arange(B) % 4 == 0).double()}


def _cql(**kw) -> CQL:
    torch.manual_seed(1)
    algo = CQL(CQLConfig(hidden=[16], q_hidden=[16], cql_n_actions=3, gamma=0.9, **kw), OBS, ACT, CPU)
    for name in ("actor", "critic", "critic_target"):
        getattr(algo, name).double()
    algo.log_alpha.data = algo.log_alpha.data.double()
    return algo


# ----------------------------------------------------------------------------------------- CQL
def test_cql_max_target_backup_is_min_over_critics_of_max_over_sampled_next_actions():
    algo, b = _cql(cql_max_target_backup=True), _batch()
    before = copy.deepcopy(algo)
    torch.manual_seed(9)
    info = algo.update(b)
    s, a, r, s2, d = (b[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals"))
    torch.manual_seed(9)
    with torch.no_grad():
        before.actor.dist(s).rsample()                 # the actor step's draw comes first
        dist = algo.actor.dist(s2)                      # the actor after its step proposes the next actions
        a2, _ = TanhGaussian(dist.mean.unsqueeze(1).expand(-1, 3, -1),
                             dist.log_std.unsqueeze(1).expand(-1, 3, -1)).rsample()
        q_next = before.critic_target(s2.unsqueeze(1).expand(-1, 3, -1), a2)   # [2, B, 3]
        y = r + 0.9 * (1 - d) * q_next.max(dim=-1).values.min(dim=0).values
        q = before.critic(s, a)
        td = ((q[0] - y) ** 2).mean() + ((q[1] - y) ** 2).mean()
    torch.testing.assert_close(info["loss/td"], td)


@pytest.mark.parametrize("bounds,value", [({"cql_clip_diff_min": 1e3}, 1e3), ({"cql_clip_diff_max": -1e3}, -1e3),
                                          ({"cql_clip_diff_min": 0.25, "cql_clip_diff_max": 0.25}, 0.25)])
def test_cql_clip_diff_bounds_clip_the_conservative_gap(bounds, value):
    info = _cql(cql_alpha=2.0, **bounds).update(_batch())
    assert float(info["train/cql_gap"]) == pytest.approx(value)
    assert float(info["loss/cql"]) == pytest.approx(2.0 * 2 * value)   # cql_alpha x the gap of each of 2 critics


def test_cql_bc_steps_warm_up_the_actor_with_behaviour_cloning_then_switch_to_sac():
    algo, b = _cql(bc_steps=1, auto_alpha=False, alpha=0.5), _batch()
    s, a = b["observations"], b["actions"]
    for step in range(2):
        before = copy.deepcopy(algo)
        torch.manual_seed(step)
        info = algo.update(b)
        torch.manual_seed(step)
        with torch.no_grad():
            new_a, logp = before.actor.dist(s).rsample()
            if step == 0:   # BC: alpha log pi(a~|s) - log pi(a_data|s)
                want = (0.5 * logp - before.actor.log_prob(s, a)).mean()
            else:           # SAC: alpha log pi(a~|s) - min_e Q_e(s, a~)
                want = (0.5 * logp - before.critic(s, new_a).min(dim=0).values).mean()
        torch.testing.assert_close(info["loss/actor"], want)
        torch.testing.assert_close(info["train/entropy"], -logp.mean())   # of the actor before its step


@pytest.mark.parametrize("auto", [True, False])
def test_cql_auto_alpha_false_keeps_the_temperature_fixed(auto):
    algo, b = _cql(auto_alpha=auto, alpha=0.5, policy_lr=1e-2), _batch()
    log_alpha = algo.log_alpha.detach().clone()
    alphas = [float(algo.update(b)["train/alpha"]) for _ in range(3)]
    if auto:
        assert all(abs(x - 0.5) > 1e-4 for x in alphas)   # tuned from its first step on
    else:
        assert alphas == pytest.approx([0.5] * 3, rel=1e-7) and torch.equal(algo.log_alpha.detach(), log_alpha)


# ----------------------------------------------------------------------------------------- IQL
def _iql(**kw) -> IQL:
    torch.manual_seed(0)
    algo = IQL(IQLConfig(hidden=[16, 16], expectile=0.8, gamma=0.9, **kw), OBS, ACT, CPU)
    for name in ("actor", "critic", "critic_target", "value"):
        getattr(algo, name).double()
    return algo


def test_iql_n_critics_trains_every_critic_and_takes_the_minimum_of_all():
    algo, b = _iql(n_critics=3), _batch()
    before = copy.deepcopy(algo)
    info = algo.update(b)
    s, a, r, s2, d = (b[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals"))
    with torch.no_grad():
        q_t = before.critic_target(s, a)
        assert q_t.shape == (3, B)
        u = q_t.min(dim=0).values - before.value(s)
        v_loss = (torch.where(u < 0, 0.2, 0.8) * u ** 2).mean()
        y = r + 0.9 * (1 - d) * before.value(s2)
        q = before.critic(s, a)
        q_loss = sum(((q[e] - y) ** 2).mean() for e in range(3))
    torch.testing.assert_close(info["loss/value"], v_loss)
    torch.testing.assert_close(info["loss/q"], q_loss)


@pytest.mark.parametrize("cosine", [True, False])
def test_iql_actor_cosine_decays_only_the_actor_learning_rate(cosine):
    algo, b = _iql(actor_cosine=cosine, max_steps=8, actor_lr=1e-3), _batch()
    for _ in range(3):
        algo.update(b)
    want = 1e-3 * 0.5 * (1 + math.cos(math.pi * 3 / 8)) if cosine else 1e-3
    assert algo.actor_opt.param_groups[0]["lr"] == pytest.approx(want, rel=1e-12)
    assert algo.critic_opt.param_groups[0]["lr"] == algo.value_opt.param_groups[0]["lr"] == 3e-4


@pytest.mark.parametrize("layer_norm", [True, False])
def test_iql_value_layer_norm_makes_v_invariant_to_the_scale_of_its_first_layer(layer_norm):
    value = _iql(value_layer_norm=layer_norm).value
    s = _batch()["observations"]
    with torch.no_grad():
        v0 = value(s)
        first = next(m for m in value.modules() if isinstance(m, torch.nn.Linear))
        first.weight.mul_(3.0)
        first.bias.mul_(3.0)
        v1 = value(s)
    # LayerNorm after the first layer cancels a common scale of its pre-activations (up to its epsilon)
    assert torch.allclose(v0, v1, rtol=1e-4, atol=1e-6) == layer_norm


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_iql_actor_dropout_drops_units_in_training_only(p):
    actor = _iql(actor_dropout=p).actor
    s, a = _batch()["observations"], _batch()["actions"]
    actor.train()
    torch.manual_seed(0)
    lp1 = actor.log_prob(s, a)
    lp2 = actor.log_prob(s, a)
    assert torch.equal(lp1, lp2) == (p == 0.0)
    drops = [m.p for m in actor.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops == ([p] * len(drops)) and (len(drops) > 0) == (p > 0)
    actor.eval()   # acting and evaluation: deterministic
    assert torch.equal(actor.log_prob(s, a), actor.log_prob(s, a))
    if p > 0:   # the update's actor loss sees the dropped units: its log-likelihood differs from eval mode's
        lp_eval = actor.log_prob(s, a)
        assert not torch.allclose(actor.train().log_prob(s, a), lp_eval)
