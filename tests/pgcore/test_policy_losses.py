"""Policy/critic losses and targets: T16 (PPO-clip algebra, Schulman et al. 2017) and hand-computed unit values."""

import math

import pytest
import torch

from pgcore.policy_losses import (
    clipped_double_q,
    double_dqn_target,
    dpg_actor_loss,
    dqn_target,
    entropy_bonus,
    epsilon_greedy_probs,
    polyak_update,
    ppo_clip_loss,
    ppo_kl_penalty_loss,
    reinforce_loss,
    sac_actor_loss,
    sac_q_target,
    sac_temperature_loss,
    td3_smoothed_action,
    td_target,
    value_loss,
)

D = torch.float64


def _t(*xs):
    return torch.tensor(xs, dtype=D)


# ------------------------------------------------------------------------------------------ T16


def _clip_objective_and_grad(r: float, a: float, eps: float) -> tuple[float, float]:
    """L^CLIP(r) and dL/dr from ppo_clip_loss on one sample (logp = log r, old_logp = 0)."""
    ratio = torch.tensor([r], dtype=D, requires_grad=True)
    loss, _ = ppo_clip_loss(torch.log(ratio), torch.zeros(1, dtype=D), torch.tensor([a], dtype=D), eps)
    (-loss).backward()
    return -loss.item(), ratio.grad.item()


def test_t16_ppo_clip_algebra_grid():
    # Grid chosen off the kinks r = 1 +- eps, where the objective is not differentiable.
    ratios = [0.05 + 0.1 * i + 0.013 for i in range(29)]
    for eps in (0.1, 0.2, 0.33, 0.45):
        for adv in (1.7, -0.6):
            for r in ratios:
                assert abs(r - (1 + eps)) > 1e-6 and abs(r - (1 - eps)) > 1e-6
                L, g = _clip_objective_and_grad(r, adv, eps)
                assert L <= r * adv + 1e-12
                if adv >= 0:
                    assert L == pytest.approx(min(r, 1 + eps) * adv, abs=1e-12)
                else:
                    assert L == pytest.approx(max(r, 1 - eps) * adv, abs=1e-12)
                flat = (adv > 0 and r > 1 + eps) or (adv < 0 and r < 1 - eps)
                assert g == pytest.approx(0.0 if flat else adv, abs=1e-12), (eps, adv, r)


def test_t16_negative_advantage_is_not_min_of_ratios_times_a():
    # r = 0.5, eps = 0.2, A = -1: min(r, clip(r)) A = -0.5 but L^CLIP = min(-0.5, -0.8) = -0.8.
    L, g = _clip_objective_and_grad(0.5, -1.0, 0.2)
    assert L == pytest.approx(-0.8, abs=1e-12)
    naive = min(0.5, min(max(0.5, 0.8), 1.2)) * -1.0
    assert naive == pytest.approx(-0.5) and abs(L - naive) > 0.29
    assert g == 0.0


def test_ppo_clip_loss_info_hand_computed():
    r = _t(0.5, 1.0, 1.1, 1.5, 1.5, 0.5)
    A = _t(1.0, -1.0, 2.0, -2.0, 1.0, -1.0)
    logp = torch.log(r)
    old = torch.zeros(6, dtype=D)
    loss, info = ppo_clip_loss(logp, old, A, 0.2)
    # objectives: 0.5, -1, 2.2, -3, 1.2 (clipped), -0.8 (clipped): mean -0.15
    assert loss.item() == pytest.approx(0.15, abs=1e-12)
    assert info["clipfrac"].item() == pytest.approx(4 / 6)
    assert info["clip_active_frac"].item() == pytest.approx(2 / 6)
    kl = 0.5 * (2 * math.log(0.5) ** 2 + math.log(1.1) ** 2 + 2 * math.log(1.5) ** 2) / 6
    assert info["approxkl"].item() == pytest.approx(kl, abs=1e-12)
    assert info["ratio_mean"].item() == pytest.approx(6.1 / 6)
    assert info["ratio_max"].item() == pytest.approx(1.5)
    assert all(not v.requires_grad and v.dim() == 0 for v in info.values())
    # Two masked entries with huge ratio/advantage change nothing.
    logp_m = torch.cat([logp, torch.log(_t(3.0, 0.01))])
    A_m = torch.cat([A, _t(100.0, -100.0)])
    mask = torch.tensor([1, 1, 1, 1, 1, 1, 0, 0])
    loss_m, info_m = ppo_clip_loss(logp_m, torch.zeros(8, dtype=D), A_m, 0.2, mask=mask)
    assert loss_m.item() == pytest.approx(0.15, abs=1e-12)
    for k in info:
        assert info_m[k].item() == pytest.approx(info[k].item(), abs=1e-12), k
    # Gradient flows only through logp: old_logp and advantages are constants.
    lp = logp.clone().requires_grad_()
    o = old.clone().requires_grad_()
    a = A.clone().requires_grad_()
    ppo_clip_loss(lp, o, a, 0.2)[0].backward()
    assert o.grad is None and a.grad is None
    # d/dlogp of -mean(r A) on unclipped entries is -r A / N; clipped-active entries get 0.
    expected = -(r * A) / 6
    expected[4] = expected[5] = 0.0
    torch.testing.assert_close(lp.grad, expected, atol=1e-12, rtol=0)
    empty_loss, empty_info = ppo_clip_loss(logp, old, A, 0.2, mask=torch.zeros(6))
    assert empty_loss.item() == 0.0 and empty_info["ratio_max"].item() == 0.0


def test_ppo_kl_penalty_loss_hand_computed():
    logp = _t(-1.0, -2.0).requires_grad_()
    old = _t(-1.0, -2.0)
    kl = _t(0.1, 0.3)
    loss, info = ppo_kl_penalty_loss(logp, old, _t(1.0, 3.0), kl, 2.0)
    assert loss.item() == pytest.approx(-2.0 + 2.0 * 0.2, abs=1e-12)
    assert info["surrogate"].item() == pytest.approx(2.0) and info["kl"].item() == pytest.approx(0.2)
    loss.backward()
    torch.testing.assert_close(logp.grad, _t(-0.5, -1.5))  # -ratio A / N at ratio 1


def test_value_loss_with_and_without_clipping_hand_computed():
    V = _t(1.0, 2.0, 3.0).requires_grad_()
    y = _t(1.5, 1.0, 3.0)
    old = _t(1.25, 2.5, 2.0)
    loss, info = value_loss(V, y)
    assert loss.item() == pytest.approx(0.5 * (0.25 + 1.0 + 0.0) / 3)
    assert info["clipfrac"].item() == 0.0
    # clipped values: 1.25 + clip(-0.25) = 1.0, 2.5 + clip(-0.5) = 2.25, 2.0 + clip(1.0) = 2.25
    # errors unclipped 0.25, 1, 0; clipped 0.25, 1.5625, 0.5625 -> max sum 2.375
    loss_c, info_c = value_loss(V, y, old_values=old, clip_eps=0.25)
    assert loss_c.item() == pytest.approx(0.5 * 2.375 / 3, abs=1e-12)
    assert info_c["clipfrac"].item() == pytest.approx(2 / 3)
    loss_c.backward()
    # entries 1, 2: the saturated clipped error dominates -> no gradient
    assert V.grad[1].item() == 0.0 and V.grad[2].item() == 0.0
    masked, _ = value_loss(V, y, old_values=old, clip_eps=0.25, mask=torch.tensor([1, 0, 0]))
    assert masked.item() == pytest.approx(0.5 * 0.25)


def test_reinforce_loss_and_entropy_bonus():
    logp = _t(-1.0, -2.0, -0.5).requires_grad_()
    w = _t(2.0, 3.0, 100.0).requires_grad_()
    loss = reinforce_loss(logp, w, mask=torch.tensor([1, 1, 0]))
    assert loss.item() == pytest.approx(-(-2.0 - 6.0) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, _t(-1.0, -1.5, 0.0))
    assert w.grad is None
    assert entropy_bonus(_t(1.0, 2.0, 9.0), mask=torch.tensor([1.0, 1.0, 0.0])).item() == pytest.approx(1.5)


# ------------------------------------------------------------------------------------ SAC / TD3 / DPG


def test_sac_target_actor_and_temperature_hand_computed():
    y = sac_q_target(_t(1.0, 2.0), _t(3.0, 4.0), _t(-1.0, 0.5), alpha=0.2, gamma=0.9,
                     terminated=torch.tensor([False, True]))
    torch.testing.assert_close(y, _t(1.0 + 0.9 * (3.0 + 0.2), 2.0))  # terminal -> y = r
    assert not y.requires_grad
    assert clipped_double_q(_t(1.0, 5.0), _t(2.0, -1.0)).tolist() == [1.0, -1.0]

    logp = _t(-1.0, 0.5).requires_grad_()
    q = _t(3.0, 4.0).requires_grad_()
    alpha = torch.tensor(0.2, dtype=D, requires_grad=True)
    loss = sac_actor_loss(logp, q, alpha)
    assert loss.item() == pytest.approx((-0.2 - 3.0 + 0.1 - 4.0) / 2)
    loss.backward()
    torch.testing.assert_close(logp.grad, _t(0.1, 0.1))
    torch.testing.assert_close(q.grad, _t(-0.5, -0.5))
    assert alpha.grad is None  # temperature is not trained by the actor loss

    # Entropy estimate -mean(logp) = 2. Target 3 (entropy too low): alpha must go UP under SGD.
    for target, direction in ((3.0, +1), (1.0, -1)):
        log_alpha = torch.zeros((), dtype=D, requires_grad=True)
        lp = _t(-1.0, -3.0).requires_grad_()
        loss = sac_temperature_loss(log_alpha, lp, target)
        loss.backward()
        assert log_alpha.grad.item() == pytest.approx(2.0 - target)  # H_est - target
        assert lp.grad is None or (lp.grad == 0).all()
        with torch.no_grad():
            log_alpha -= 0.1 * log_alpha.grad
        assert math.copysign(1, log_alpha.item()) == direction


def test_td_target_and_dpg_actor_loss():
    y = td_target(_t(1.0, 1.0), _t(2.0, 2.0), gamma=0.5, terminated=_t(0.0, 1.0))
    torch.testing.assert_close(y, _t(2.0, 1.0))
    q = _t(1.0, 3.0).requires_grad_()
    loss = dpg_actor_loss(q)
    assert loss.item() == -2.0
    loss.backward()
    torch.testing.assert_close(q.grad, _t(-0.5, -0.5))


def test_td3_smoothing_bounds_and_noise_clip(gen):
    a = torch.rand(500, 3, generator=gen, dtype=D) * 1.6 - 0.8
    out = td3_smoothed_action(a, noise_std=5.0, noise_clip=0.5, low=-1.0, high=1.0, generator=gen)
    assert out.min() >= -1.0 and out.max() <= 1.0
    diff = (out - a).abs()
    assert diff.max() <= 0.5 + 1e-12
    # With std 10x the clip, most noise is clipped: interior points moved by exactly 0.5.
    interior = (a.abs() < 0.45)
    assert ((diff - 0.5).abs() < 1e-12)[interior].float().mean() > 0.8
    # Per-dimension tensor bounds and reproducibility with a generator.
    low, high = _t(-1.0, 0.0, -0.1), _t(1.0, 0.2, 0.1)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    o1 = td3_smoothed_action(a, noise_std=0.3, noise_clip=0.4, low=low, high=high, generator=g1)
    o2 = td3_smoothed_action(a, noise_std=0.3, noise_clip=0.4, low=low, high=high, generator=g2)
    assert torch.equal(o1, o2)
    assert (o1 >= low).all() and (o1 <= high).all()
    # Small std: the noise is Gaussian with that std (before clipping, which rarely triggers).
    z = td3_smoothed_action(torch.zeros(20000, dtype=D), noise_std=0.1, noise_clip=10.0, low=-9, high=9,
                            generator=gen)
    assert abs(z.std().item() - 0.1) < 0.005


# ----------------------------------------------------------------------------------------- DQN family


def test_dqn_and_double_dqn_targets_hand_computed():
    r = _t(1.0, 1.0)
    q_tgt = _t(1.0, 5.0, 2.0, 3.0, 0.0, -1.0).reshape(2, 3)
    y = dqn_target(r, q_tgt, gamma=0.5, terminated=torch.tensor([0, 1]))
    torch.testing.assert_close(y, _t(1.0 + 0.5 * 5.0, 1.0))
    q_online = _t(9.0, 0.0, 0.0, 0.0, 0.0, 9.0).reshape(2, 3)
    yd = double_dqn_target(r, q_online, q_tgt, gamma=0.5, terminated=torch.tensor([0, 1]))
    torch.testing.assert_close(yd, _t(1.0 + 0.5 * 1.0, 1.0))  # online picks a=0; target evaluates Q'=1
    yd2 = double_dqn_target(r, q_online, q_tgt, gamma=0.5, terminated=torch.tensor([0, 0]))
    torch.testing.assert_close(yd2, _t(1.5, 1.0 + 0.5 * -1.0))
    assert not yd2.requires_grad


def test_epsilon_greedy_probs(gen):
    q = torch.randn(5, 4, generator=gen, dtype=D)
    p = epsilon_greedy_probs(q, 0.1)
    torch.testing.assert_close(p.sum(-1), torch.ones(5, dtype=D))
    greedy = q.argmax(-1)
    torch.testing.assert_close(p.gather(-1, greedy[:, None]).squeeze(-1), torch.full((5,), 0.925, dtype=D))
    others = p.masked_select(~torch.nn.functional.one_hot(greedy, 4).bool())
    torch.testing.assert_close(others, torch.full((15,), 0.025, dtype=D))
    torch.testing.assert_close(epsilon_greedy_probs(q, 1.0), torch.full((5, 4), 0.25, dtype=D))
    assert epsilon_greedy_probs(_t(1.0, 3.0, 3.0), 0.0).tolist() == [0.0, 1.0, 0.0]


def test_polyak_update(gen):
    torch.manual_seed(0)
    src = torch.nn.Linear(3, 2).double()
    tgt = torch.nn.Linear(3, 2).double()
    before = [p.detach().clone() for p in tgt.parameters()]
    polyak_update(tgt.parameters(), src.parameters(), 0.3)
    for b, s, t in zip(before, src.parameters(), tgt.parameters()):
        torch.testing.assert_close(t, 0.3 * s.detach() + 0.7 * b, atol=1e-14, rtol=0)
        assert t.grad is None
    polyak_update(tgt, src, 1.0)  # hard copy (DQN); modules accepted too
    for s, t in zip(src.parameters(), tgt.parameters()):
        assert torch.equal(s, t)
    frozen = [p.detach().clone() for p in tgt.parameters()]
    polyak_update(list(tgt.parameters()), list(src.parameters()), 0.0)
    assert all(torch.equal(a, b) for a, b in zip(frozen, tgt.parameters()))
    with pytest.raises(ValueError):
        polyak_update(list(tgt.parameters())[:1], list(src.parameters()), 0.5)
