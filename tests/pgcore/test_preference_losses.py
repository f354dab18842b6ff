"""Preference losses: T18 (KL-regularised optimum), T19 (DPO <-> Bradley-Terry) (Rafailov et al. 2023), and every
DPO loss type / the BT loss with margin and centering against values computed by hand with `math`.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from pgcore.preference_losses import (
    bradley_terry_loss,
    chosen_nll_loss,
    dpo_loss,
    implicit_reward,
    kto_loss,
    kto_reference_point,
)

DT = torch.float64


def softplus(x):
    return math.log1p(math.exp(x))


def _kl(p, q):
    return (p * (p.log() - q.log())).sum(-1)


def _ref_and_reward(gen, K=5):
    pi_ref = torch.softmax(torch.randn(K, generator=gen, dtype=DT), 0)
    r = torch.randn(K, generator=gen, dtype=DT)
    return pi_ref, r


# --------------------------------------------------------------------------------------------------- T18
def test_T18_kl_regularised_objective_and_its_optimum(gen):
    beta = 0.7
    pi_ref, r = _ref_and_reward(gen)
    Z = (pi_ref * torch.exp(r / beta)).sum()
    pi_star = pi_ref * torch.exp(r / beta) / Z
    for _ in range(20):
        pi = torch.softmax(2 * torch.randn(5, generator=gen, dtype=DT), 0)
        value = (pi * r).sum() - beta * _kl(pi, pi_ref)
        # E_pi r - beta KL(pi || pi_ref) = beta log Z - beta KL(pi || pi*) (Rafailov et al. 2023, App. A.1) ...
        assert torch.allclose(value, beta * Z.log() - beta * _kl(pi, pi_star), atol=1e-13)
        assert value < beta * Z.log()
        # ... and it is the expectation of the shaped reward r - beta (log pi - log pi_ref) (Ziegler et al. 2019 §2.2).
        shaped = r - beta * (pi.log() - pi_ref.log())
        assert torch.allclose((pi * shaped).sum(), value, atol=1e-13)
    assert torch.allclose((pi_star * r).sum() - beta * _kl(pi_star, pi_ref), beta * Z.log(), atol=1e-13)

    # Plain gradient ascent on the logits converges to pi* = pi_ref e^{r / beta} / Z.
    theta = torch.zeros(5, dtype=DT, requires_grad=True)
    for _ in range(1500):
        pi = torch.softmax(theta, 0)
        obj = (pi * r).sum() - beta * _kl(pi, pi_ref)
        (g,) = torch.autograd.grad(obj, theta)
        with torch.no_grad():
            theta += 5.0 * g
    assert torch.allclose(torch.softmax(theta.detach(), 0), pi_star, atol=1e-9)


# --------------------------------------------------------------------------------------------------- T19
def test_T19_reparameterisation_and_bt_in_policy_form(gen):
    beta = 0.4
    pi_ref, r = _ref_and_reward(gen)
    Z = (pi_ref * torch.exp(r / beta)).sum()
    pi_star = pi_ref * torch.exp(r / beta) / Z
    # r = beta log(pi*/pi_ref) + beta log Z exactly.
    r_hat = implicit_reward(pi_star.log(), pi_ref.log(), beta)
    assert torch.allclose(r_hat + beta * Z.log(), r, atol=1e-13)
    # BT probability sigma(r1 - r2) equals its policy form, where Z cancels.
    for i in range(5):
        for j in range(5):
            p_bt = torch.sigmoid(r[i] - r[j])
            p_pol = 1 / (1 + torch.exp(r_hat[j] - r_hat[i]))
            assert torch.allclose(p_bt, p_pol, atol=1e-14)


def test_T19_dpo_is_bt_on_implicit_rewards_and_shift_invariant(gen):
    beta, B = 0.3, 16
    pc, pr, rc, rr = (torch.randn(B, generator=gen, dtype=DT) * 3 for _ in range(4))
    losses, ch, rj = dpo_loss(pc, pr, rc, rr, beta=beta)
    bt, _ = bradley_terry_loss(implicit_reward(pc, rc, beta), implicit_reward(pr, rr, beta))
    assert torch.allclose(losses.mean(), bt, atol=1e-14)
    assert torch.allclose(ch, beta * (pc - rc)) and torch.allclose(rj, beta * (pr - rr))
    assert not ch.requires_grad
    # r -> r + c(x): both losses unchanged (one c per prompt = per pair here).
    c = torch.randn(B, generator=gen, dtype=DT) * 10
    r_c, r_r = torch.randn(B, generator=gen, dtype=DT), torch.randn(B, generator=gen, dtype=DT)
    assert torch.allclose(bradley_terry_loss(r_c + c, r_r + c)[0], bradley_terry_loss(r_c, r_r)[0], atol=1e-14)
    shifted, _, _ = dpo_loss(pc + c, pr + c, rc, rr, beta=beta)  # implicit rewards shift by beta * c(x)
    assert torch.allclose(shifted, losses, atol=1e-12)
    shifted, _, _ = dpo_loss(pc, pr, rc - c, rr - c, beta=beta)
    assert torch.allclose(shifted, losses, atol=1e-12)


def test_T19_derivative_of_minus_log_sigmoid(gen):
    r_w = torch.randn(4, generator=gen, dtype=DT, requires_grad=True)
    r_l = torch.randn(4, generator=gen, dtype=DT, requires_grad=True)
    loss, _ = bradley_terry_loss(r_w, r_l)
    gw, gl = torch.autograd.grad(loss, (r_w, r_l))
    # d/dr_w [-log sigma(r_w - r_l)] = -sigma(r_l - r_w) (Rafailov et al. 2023, §4); the batch mean divides by B = 4.
    assert torch.allclose(gw, -torch.sigmoid(r_l - r_w).detach() / 4, atol=1e-15)
    assert torch.allclose(gl, torch.sigmoid(r_l - r_w).detach() / 4, atol=1e-15)


def test_T19_dpo_minimisation_recovers_bt_mle_rewards(gen):
    """3 responses to one prompt with pairwise win counts: min over pi of the DPO loss gives implicit rewards
    equal to the Bradley-Terry MLE (found independently by Zermelo's / Hunter's MM iteration) up to c(x)."""
    wins = torch.tensor([[0, 7, 9], [3, 0, 6], [1, 4, 0]], dtype=DT)  # wins[i, j]: i preferred over j
    n = wins + wins.T
    p = torch.ones(3, dtype=DT)
    for _ in range(500):
        denom = (n / (p[:, None] + p[None, :])).sum(1)
        p = wins.sum(1) / denom
        p = p / p.sum()
    r_mle = p.log()
    # Oracle check: the MLE's score equations (expected wins = observed wins) hold.
    expected_wins = (n * torch.sigmoid(r_mle[:, None] - r_mle[None, :])).sum(1)
    assert torch.allclose(expected_wins, wins.sum(1), atol=1e-10)

    beta = 0.5
    ref_logp = torch.log_softmax(torch.randn(3, generator=gen, dtype=DT), 0)
    pairs = [(i, j) for i in range(3) for j in range(3) if i != j]
    ci, ri = torch.tensor([i for i, _ in pairs]), torch.tensor([j for _, j in pairs])
    w = torch.stack([wins[i, j] for i, j in pairs])
    theta = torch.zeros(3, dtype=DT, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta], lr=1.0, max_iter=100, tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(theta, 0)
        losses, _, _ = dpo_loss(logp[ci], logp[ri], ref_logp[ci], ref_logp[ri], beta=beta)
        loss = (w * losses).sum() / w.sum()
        loss.backward()
        return loss

    opt.step(closure)
    r_hat = implicit_reward(torch.log_softmax(theta.detach(), 0), ref_logp, beta)
    assert torch.allclose(r_hat - r_hat[0], r_mle - r_mle[0], atol=1e-7)
    bt_at_mle = (w * -F.logsigmoid(r_mle[ci] - r_mle[ri])).sum() / w.sum()
    assert torch.allclose(closure().detach(), bt_at_mle, atol=1e-12)


# ------------------------------------------------------------------------------- hand-computed loss values
PC, PR, RC, RR, BETA = -5.0, -7.0, -6.0, -6.5, 0.1  # h = (PC - PR) - (RC - RR) = 1.5, beta h = 0.15


def _dpo(**kw):
    t = lambda v: torch.tensor([v], dtype=DT)  # noqa: E731
    losses, ch, rj = dpo_loss(t(PC), t(PR), t(RC), t(RR), beta=kw.pop("beta", BETA), **kw)
    return float(losses[0]), float(ch[0]), float(rj[0])


def test_dpo_loss_types_hand_computed():
    bh = 0.15
    loss, ch, rj = _dpo()
    assert loss == pytest.approx(softplus(-bh), abs=1e-14)  # -log sigma(x) = log(1 + e^{-x})
    assert ch == pytest.approx(0.1 * (-5.0 + 6.0)) and rj == pytest.approx(0.1 * (-7.0 + 6.5))
    # cDPO: -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
    assert _dpo(label_smoothing=0.1)[0] == pytest.approx(0.9 * softplus(-bh) + 0.1 * softplus(bh), abs=1e-14)
    # robust: (-(1 - eps) log sigma(beta h) + eps log sigma(-beta h)) / (1 - 2 eps)
    robust = (0.9 * softplus(-bh) - 0.1 * softplus(bh)) / 0.8
    assert _dpo(loss_type="robust", label_smoothing=0.1)[0] == pytest.approx(robust, abs=1e-14)
    assert _dpo(loss_type="robust")[0] == pytest.approx(softplus(-bh), abs=1e-14)
    # hinge: relu(1 - beta h); zero once beta h >= 1.
    assert _dpo(loss_type="hinge")[0] == pytest.approx(0.85, abs=1e-14)
    assert _dpo(loss_type="hinge", beta=1.0)[0] == 0.0
    # ipo: (h - 1 / (2 beta))^2 = (1.5 - 5)^2; label smoothing has no effect.
    assert _dpo(loss_type="ipo")[0] == pytest.approx(12.25, abs=1e-12)
    assert _dpo(loss_type="ipo", label_smoothing=0.3)[0] == pytest.approx(12.25, abs=1e-12)
    # ipo with lengths 4 (chosen) and 2 (rejected): h = (-5/4 + 7/2) - (-6/4 + 6.5/2) = 2.25 - 1.75 = 0.5.
    lens = dict(chosen_lengths=torch.tensor([4]), rejected_lengths=torch.tensor([2]))
    loss, ch, rj = _dpo(loss_type="ipo", **lens)
    assert loss == pytest.approx((0.5 - 5.0) ** 2, abs=1e-12)
    assert ch == pytest.approx(0.1) and rj == pytest.approx(-0.05)  # rewards stay sequence-level
    assert _dpo(**lens)[0] == pytest.approx(softplus(-bh), abs=1e-14)  # lengths only matter for ipo
    # reference_free: reference log-probs are 0, h = PC - PR = 2.
    loss, ch, rj = _dpo(reference_free=True)
    assert loss == pytest.approx(softplus(-0.2), abs=1e-14)
    assert ch == pytest.approx(-0.5) and rj == pytest.approx(-0.7)


def test_dpo_loss_edge_cases():
    x = torch.zeros(3)
    losses, ch, rj = dpo_loss(x, x, x, x, beta=0.1)  # policy == reference: ln 2, zero rewards
    assert losses.dtype == torch.float32
    assert torch.allclose(losses, torch.full((3,), math.log(2.0)))
    assert torch.equal(ch, x) and torch.equal(rj, x)
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="bogus")
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="robust", label_smoothing=0.5)
    with pytest.raises(ValueError):
        dpo_loss(x, x, x, x, beta=0.1, loss_type="ipo", chosen_lengths=torch.ones(3))
    # Gradient of the sigmoid loss w.r.t. the chosen policy log-prob: -beta sigma(-beta h) < 0.
    pc = torch.tensor([-1.0], dtype=DT, requires_grad=True)
    losses, _, _ = dpo_loss(
        pc, torch.tensor([-2.0], dtype=DT), torch.tensor([-1.5], dtype=DT), torch.tensor([-1.5], dtype=DT), beta=0.5
    )
    (g,) = torch.autograd.grad(losses.sum(), pc)
    assert float(g) == pytest.approx(-0.5 * (1 / (1 + math.exp(0.5))), abs=1e-14)


def test_bradley_terry_margin_centering_and_info():
    rc = torch.tensor([2.0, 0.5, -1.0], dtype=DT)
    rr = torch.tensor([1.0, 1.0, -3.0], dtype=DT)
    margin = torch.tensor([0.5, 0.0, 1.0], dtype=DT)
    # r_c - r_r = [1, -0.5, 2]; minus margin = [0.5, -0.5, 1.0]; (r_c + r_r)^2 = [9, 2.25, 16].
    loss, info = bradley_terry_loss(rc, rr, margin=margin, center_coef=0.01)
    expected = (softplus(-0.5) + softplus(0.5) + softplus(-1.0)) / 3 + 0.01 * (9 + 2.25 + 16) / 3
    assert float(loss) == pytest.approx(expected, abs=1e-14)
    assert float(bradley_terry_loss(rc, rr)[0]) == pytest.approx(
        (softplus(-1.0) + softplus(0.5) + softplus(-2.0)) / 3, abs=1e-14
    )
    assert float(bradley_terry_loss(rc, rr, margin=0.5)[0]) == pytest.approx(
        (softplus(-0.5) + softplus(1.0) + softplus(-1.5)) / 3, abs=1e-14
    )
    assert float(info["accuracy"]) == pytest.approx(2 / 3)
    assert float(info["margin"]) == pytest.approx(2.5 / 3)  # mean r_c - r_r, margin offset not included
    assert float(info["mean_reward"]) == pytest.approx(0.5 / 6)
    assert float(info["min_reward"]) == -3.0 and float(info["max_reward"]) == 2.0
    assert all(not v.requires_grad and v.dim() == 0 for v in info.values())
    # Ties count as wrong answers.
    _, info = bradley_terry_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.0, 0.0]))
    assert float(info["accuracy"]) == 0.5


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def test_simpo_hand_computed():
    # chosen: log pi = -6 over 4 tokens (mean -1.5); rejected: -9 over 3 tokens (mean -3).
    pc, pr = torch.tensor([-6.0], dtype=DT, requires_grad=True), torch.tensor([-9.0], dtype=DT)
    lens = dict(chosen_lengths=torch.tensor([4]), rejected_lengths=torch.tensor([3]))
    junk_ref = torch.tensor([123.0], dtype=DT)  # SimPO has no reference: whatever is passed is ignored
    losses, ch, rj = dpo_loss(pc, pr, junk_ref, -junk_ref, beta=2.0, loss_type="simpo", simpo_gamma=0.5, **lens)
    # z = beta (mean_c - mean_r) - gamma = 2 * 1.5 - 0.5 = 2.5; loss = -log sigma(z) = log(1 + e^{-z})
    assert float(losses[0].detach()) == pytest.approx(softplus(-2.5), abs=1e-14)
    assert float(ch[0]) == pytest.approx(-3.0, abs=1e-14) and float(rj[0]) == pytest.approx(-6.0, abs=1e-14)
    (g,) = torch.autograd.grad(losses.sum(), pc)  # d/d log pi(y_w) = -sigma(-z) * beta / |y_w|
    assert float(g) == pytest.approx(-(1 - sigmoid(2.5)) * 2.0 / 4, abs=1e-14)
    smooth = dpo_loss(pc, pr, junk_ref, junk_ref, beta=2.0, loss_type="simpo", simpo_gamma=0.5,
                      label_smoothing=0.1, **lens)[0]
    assert float(smooth[0]) == pytest.approx(0.9 * softplus(-2.5) + 0.1 * softplus(2.5), abs=1e-14)
    # gamma = 0 and equal lengths: the sigmoid loss on log-prob differences scaled by beta / |y|
    same = dict(chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([2]))
    zero = dpo_loss(pc, pr, junk_ref, junk_ref, beta=2.0, loss_type="simpo", simpo_gamma=0.0, **same)[0]
    assert float(zero[0]) == pytest.approx(softplus(-3.0), abs=1e-14)
    with pytest.raises(ValueError, match="simpo"):
        dpo_loss(pc, pr, junk_ref, junk_ref, beta=2.0, loss_type="simpo")


def test_chosen_nll_is_the_token_mean_over_the_batch():
    logps = torch.tensor([-6.0, -2.0], dtype=DT, requires_grad=True)
    nll = chosen_nll_loss(logps, torch.tensor([4, 1]))
    assert float(nll) == pytest.approx(8.0 / 5.0, abs=1e-14)  # (6 + 2) / (4 + 1), not (6/4 + 2/1) / 2
    (g,) = torch.autograd.grad(nll, logps)
    assert g.tolist() == pytest.approx([-0.2, -0.2], abs=1e-14)


def test_kto_reference_point_mean_detached_clamped():
    pol = torch.tensor([-6.0, -7.0, -5.0], dtype=DT, requires_grad=True)
    ref = torch.tensor([-6.3, -7.9, -4.9], dtype=DT)
    z0 = kto_reference_point(pol, ref)
    assert float(z0) == pytest.approx((0.3 + 0.9 - 0.1) / 3, abs=1e-14) and not z0.requires_grad
    assert float(kto_reference_point(ref, pol.detach())) == 0.0  # a negative estimate is clamped at 0
    # across processes: the mean of the per-process means, then the clamp (this process 11/30, the other -0.2)
    other = torch.tensor(-0.2, dtype=DT)
    z0 = kto_reference_point(pol, ref, reduce_mean=lambda t: (t + other) / 2)
    assert float(z0) == pytest.approx((1.1 / 3 - 0.2) / 2, abs=1e-14)
    assert float(kto_reference_point(pol, ref, reduce_mean=lambda t: (t - 2.0) / 2)) == 0.0


def test_kto_loss_hand_computed():
    beta, z0 = 0.5, 1.1 / 3
    pol = torch.tensor([-3.0, -5.0, -4.0], dtype=DT, requires_grad=True)
    ref = torch.tensor([-4.0, -4.0, -4.5], dtype=DT)  # log-ratios 1, -1, 0.5
    label = torch.tensor([True, False, True])
    losses, rewards = kto_loss(pol, ref, label, torch.tensor(z0, dtype=DT), beta=beta, desirable_weight=1.0,
                               undesirable_weight=1.5)
    want = [1 - sigmoid(0.5 * (1 - z0)), 1.5 * (1 - sigmoid(0.5 * (z0 + 1))), 1 - sigmoid(0.5 * (0.5 - z0))]
    assert losses.tolist() == pytest.approx(want, abs=1e-14)
    assert rewards.tolist() == pytest.approx([0.5, -0.5, 0.25], abs=1e-14) and not rewards.requires_grad
    # d/dr of lambda (1 - sigma(beta (r - z0))) = -lambda beta s (1 - s); undesirable: +lambda beta s (1 - s)
    (g,) = torch.autograd.grad(losses.sum(), pol)
    s0, s1, s2 = sigmoid(0.5 * (1 - z0)), sigmoid(0.5 * (z0 + 1)), sigmoid(0.5 * (0.5 - z0))
    assert g.tolist() == pytest.approx([-0.5 * s0 * (1 - s0), 1.5 * 0.5 * s1 * (1 - s1), -0.5 * s2 * (1 - s2)],
                                       abs=1e-14)
    # policy == reference and z0 = 0: every example costs lambda_y / 2
    flat, _ = kto_loss(ref, ref, label, 0.0, beta=beta, desirable_weight=2.0, undesirable_weight=3.0)
    assert flat.tolist() == pytest.approx([1.0, 1.5, 1.0], abs=1e-14)
