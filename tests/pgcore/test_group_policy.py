"""GRPO / RLOO pieces of pgcore in float64: group advantages, the clip-higher surrogate, loss aggregation and the
k3 penalty against hand-computed values, and the RLOO / GRPO baselines' bias checked by exact enumeration."""

import itertools
import math

import pytest
import torch

from pgcore.advantages import group_advantages
from pgcore.policy_losses import aggregate_token_loss, clipped_surrogate, grpo_loss, ppo_clip_loss

DT = torch.float64


def _t(x):
    return torch.tensor(x, dtype=DT)


def _close(a, b, atol=1e-12):
    torch.testing.assert_close(a, b if isinstance(b, torch.Tensor) else _t(b), rtol=0, atol=atol)


# ---------------------------------------------------------------- group advantages
def test_grpo_advantages_hand_values():
    r = _t([1.0, 0.0, 0.0, 1.0, 2.0, 3.0])        # two groups of three
    # group 1: mean 1/3, unbiased std sqrt(1/3); group 2: mean 2, std 1
    s1 = math.sqrt(1 / 3)
    _close(group_advantages(r, 3, scale="none"), [2 / 3, -1 / 3, -1 / 3, -1, 0, 1])
    _close(group_advantages(r, 3, scale="group", eps=0.0), [2 / 3 / s1, -1 / 3 / s1, -1 / 3 / s1, -1, 0, 1])
    _close(group_advantages(r, 3, scale="group", eps=0.5), [2 / 3 / (s1 + .5), -1 / 3 / (s1 + .5),
                                                            -1 / 3 / (s1 + .5), -1 / 1.5, 0, 1 / 1.5])
    sb = r.std().item()   # batch: one std over all six rewards
    _close(group_advantages(r, 3, scale="batch", eps=0.0), [2 / 3 / sb, -1 / 3 / sb, -1 / 3 / sb, -1 / sb, 0, 1 / sb])


def test_rloo_advantages_are_leave_one_out():
    r = _t([1.0, 0.0, 0.0, 4.0, 2.0, 3.0, 5.0, 0.0])   # two groups of four
    # r_i minus the mean of the other three
    want = [1 - 4 / 3, 0 - 5 / 3, 0 - 5 / 3, 4 - 1 / 3, 2 - 8 / 3, 3 - 7 / 3, 5 - 5 / 3, 0 - 10 / 3]
    got = group_advantages(r, 4, kind="rloo", scale="none")
    _close(got, want)
    # = G/(G-1) times the GRPO (mean-centred) advantage
    _close(got, 4 / 3 * group_advantages(r, 4, kind="grpo", scale="none"))


@pytest.mark.parametrize("kind", ["grpo", "rloo"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_equal_rewards_give_exactly_zero_advantage(kind, scale):
    # 0.1 * 3 / 3 != 0.1 in floating point: a naive r - mean would leave ~1e-17, which the std then blows up.
    r = _t([0.1, 0.1, 0.1, 0.7, 0.7, 0.7, 0.0, 1.0, 0.0])
    a = group_advantages(r, 3, kind=kind, scale=scale)
    assert (a[:6] == 0).all()
    assert (a[6:] != 0).all()
    # zero advantage means zero gradient (the KL term off): no update from such a group
    logp = torch.randn(6, 4, dtype=DT, requires_grad=True)
    loss, _ = grpo_loss(logp, logp.detach(), a[:6], torch.ones(6, 4), eps_low=0.2)
    (g,) = torch.autograd.grad(loss, logp)
    assert (g == 0).all()


def test_group_advantages_rejects_bad_groups():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(_t([1.0, 2.0, 3.0]), 2)
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(_t([1.0, 2.0]), 1)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(_t([1.0, 2.0]), 2, scale="std")


# ---------------------------------------------------------------- clipped surrogate (clip-higher)
def test_clipped_surrogate_hand_values_with_asymmetric_bounds():
    ratio = _t([0.5, 0.9, 1.1, 1.5, 0.5, 1.5])
    adv = _t([1.0, 1.0, 1.0, 1.0, -1.0, -1.0])
    old = torch.zeros(6, dtype=DT)
    logp = ratio.log().requires_grad_()
    loss, info = clipped_surrogate(logp, old, adv, 0.2, 0.28)
    # A > 0: min(r, clip(r, 0.8, 1.28)) ; A < 0: -max(r, clip(r)) ... as losses (negated)
    _close(loss.detach(), [-0.5, -0.9, -1.1, -1.28, 0.8, 1.5])
    assert info["low"].tolist() == [False, False, False, False, True, False]
    assert info["high"].tolist() == [False, False, False, True, False, False]
    (g,) = torch.autograd.grad(loss.sum(), logp)
    # d(-r A)/dlogp = -r A where unclipped; 0 where the clip is active
    _close(g, [-0.5, -0.9, -1.1, 0.0, 0.0, 1.5])
    # symmetric bounds reproduce PPO's clip loss
    pl, _ = ppo_clip_loss(logp.detach(), old, adv, 0.2)
    _close(clipped_surrogate(logp.detach(), old, adv, 0.2)[0].mean(), pl)


# ---------------------------------------------------------------- aggregation
def test_aggregations_hand_values():
    per_token = _t([[1.0, 2.0, 3.0, 99.0], [4.0, 99.0, 99.0, 99.0]])
    mask = _t([[1, 1, 1, 0], [1, 0, 0, 0]])
    _close(aggregate_token_loss(per_token, mask, "token"), (1 + 2 + 3 + 4) / 4)
    _close(aggregate_token_loss(per_token, mask, "sequence"), (2.0 + 4.0) / 2)
    _close(aggregate_token_loss(per_token, mask, "dr_grpo", max_length=5), 10 / (2 * 5))
    # NaN in padding is ignored
    nan_pad = per_token.clone()
    nan_pad[1, 1:] = float("nan")
    _close(aggregate_token_loss(nan_pad, mask, "token"), 2.5)
    with pytest.raises(ValueError, match="max_length"):
        aggregate_token_loss(per_token, mask, "dr_grpo")


@pytest.mark.parametrize("mode", ["token", "sequence", "dr_grpo"])
def test_micro_batches_with_minibatch_counts_add_up_to_the_minibatch_loss(mode):
    g = torch.Generator().manual_seed(0)
    per_token = torch.randn(6, 5, generator=g, dtype=DT)
    mask = (torch.rand(6, 5, generator=g) < 0.7).to(DT)
    mask[:, 0] = 1
    whole = aggregate_token_loss(per_token, mask, mode, max_length=5)
    parts = sum(aggregate_token_loss(per_token[a:a + 2], mask[a:a + 2], mode, max_length=5, num_sequences=6,
                                     num_tokens=mask.sum()) for a in (0, 2, 4))
    _close(parts, whole)


# ---------------------------------------------------------------- the GRPO loss
def test_grpo_loss_hand_value_with_k3_penalty():
    logp = _t([[math.log(0.5), math.log(0.25)], [math.log(0.8), 0.0]]).requires_grad_()
    ref = _t([[math.log(0.25), math.log(0.25)], [math.log(0.4), 0.0]])
    mask = _t([[1, 1], [1, 0]])
    adv = _t([1.0, -2.0])
    loss, info = grpo_loss(logp, logp.detach(), adv, mask, eps_low=0.2, beta=0.1, ref_logp=ref,
                           aggregation="token")
    # ratio 1: surrogate -A per token; k3 = ref/pi - log(ref/pi) - 1
    k3 = [0.5 - math.log(0.5) - 1, 0.0, 0.5 - math.log(0.5) - 1]
    want = ((-1 + 0.1 * k3[0]) + (-1 + 0.1 * k3[1]) + (2 + 0.1 * k3[2])) / 3
    _close(loss.detach(), want)
    _close(info["kl"], sum(k3) / 3)
    assert info["ratio_max"].item() == 1.0 and info["clip_region"].item() == 0.0
    # gradient wrt logp per valid token: (-A - beta * (ref/pi - 1)) / n_tokens
    (g,) = torch.autograd.grad(loss, logp)
    _close(g, [[(-1 - 0.1 * (0.5 - 1)) / 3, (-1 - 0.1 * 0) / 3], [(2 - 0.1 * (0.5 - 1)) / 3, 0.0]])


def test_one_iteration_makes_the_ratio_exactly_one():
    g = torch.Generator().manual_seed(1)
    logp = (torch.randn(4, 7, generator=g, dtype=torch.float32) * 3).requires_grad_()
    _, info = grpo_loss(logp, logp.detach(), torch.randn(4, generator=g), torch.ones(4, 7), eps_low=1e-6,
                        eps_high=1e-6)
    assert info["ratio_mean"].item() == 1.0 and info["ratio_max"].item() == 1.0
    assert info["clip_low"].item() == 0.0 and info["clip_high"].item() == 0.0


def test_grpo_loss_needs_reference_only_with_beta():
    logp = torch.zeros(2, 3, dtype=DT)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(logp, logp, _t([1.0, -1.0]), torch.ones(2, 3), eps_low=0.2, beta=0.04)
    loss, info = grpo_loss(logp, logp, _t([1.0, -1.0]), torch.ones(2, 3), eps_low=0.2, beta=0.0)
    assert info["kl"].item() == 0.0 and loss.item() == 0.0


# ---------------------------------------------------------------- unbiasedness, by exact enumeration
def _expected_group_gradient(theta, reward, G, kind):
    """E over all K^G joint draws of the group of the per-sample estimator mean_i A_i grad log pi(a_i),
    computed with pgcore's advantages and loss (sequence aggregation, ratio 1: its gradient is minus that)."""
    K = theta.shape[0]
    total = torch.zeros_like(theta)
    for draw in itertools.product(range(K), repeat=G):
        th = theta.clone().requires_grad_()
        logp_all = torch.log_softmax(th, -1)
        a = torch.tensor(draw)
        logp = logp_all[a].unsqueeze(-1)                           # [G, 1]: one-token "completions"
        adv = group_advantages(reward[a], G, kind=kind, scale="none")
        loss, _ = grpo_loss(logp, logp.detach(), adv, torch.ones(G, 1, dtype=DT), eps_low=0.2,
                            aggregation="sequence")
        (gr,) = torch.autograd.grad(loss, th)
        prob = logp_all.detach()[a].sum().exp()
        total += prob * -gr
    return total


@pytest.mark.parametrize("G", [2, 3])
def test_rloo_gradient_is_unbiased_and_grpo_mean_baseline_shrinks_it(G):
    g = torch.Generator().manual_seed(7)
    theta = torch.randn(3, generator=g, dtype=DT)
    reward = _t([1.0, -0.5, 2.0])
    th = theta.clone().requires_grad_()
    (exact,) = torch.autograd.grad((torch.softmax(th, -1) * reward).sum(), th)   # grad of E_pi[r]
    _close(_expected_group_gradient(theta, reward, G, "rloo"), exact)
    # the mean over the group includes the sample itself: the expected gradient is (G-1)/G of the true one
    _close(_expected_group_gradient(theta, reward, G, "grpo"), (G - 1) / G * exact)
