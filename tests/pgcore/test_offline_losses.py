"""Offline losses: T20 (expectiles), T21 (IQL tabular fixed point, AWR extraction) and T22 (CQL)
(Kostrikov et al. 2021; Kumar et al. 2020), plus hand-computed values of every function. float64, seeded.
"""

import math

import pytest
import torch

from pgcore.offline_losses import (
    awr_loss,
    awr_weights,
    cql_alpha_loss,
    cql_logsumexp,
    cql_regularizer,
    expectile_loss,
)

DT = torch.float64


def expectile_bisect(x, p, tau, iters=200):
    """Oracle: root of the balance equation tau E[(X - m)_+] = (1 - tau) E[(m - X)_+] by bisection (x, p [..., n])."""
    lo, hi = x.min(-1).values.clone(), x.max(-1).values.clone()
    for _ in range(iters):
        m = (lo + hi) / 2
        u = x - m[..., None]
        f = tau * (p * u.clamp_min(0)).sum(-1) - (1 - tau) * (p * (-u).clamp_min(0)).sum(-1)
        lo, hi = torch.where(f > 0, m, lo), torch.where(f > 0, hi, m)
    return (lo + hi) / 2


def expectile_newton(x, p, tau, iters=10):
    """Weighted expectile by the reweighting (Newton) iteration m = sum w x / sum w, w = p |tau - 1(x < m)|; exact
    after finitely many steps for a discrete distribution. x, p [..., n]; p may be 0 off the support."""
    m = (p * x).sum(-1)
    for _ in range(iters):
        w = p * torch.where(x < m[..., None], x.new_tensor(1 - tau), x.new_tensor(tau))
        m = (w * x).sum(-1) / w.sum(-1)
    return m


def random_mdp(gen, S, A):
    P = torch.rand(S, A, S, generator=gen, dtype=DT) ** 3
    P = P / P.sum(-1, keepdim=True)
    R = torch.randn(S, A, generator=gen, dtype=DT)
    return P, R


# -------------------------------------------------------------------------------------------- T20 expectiles
X_VALUES = torch.tensor([-2.0, 0.5, 1.0, 3.0, 7.0], dtype=DT)
X_COUNTS = torch.tensor([3, 1, 2, 2, 1])


def _argmin_expectile_loss(samples, tau):
    """Minimise m -> expectile_loss(samples - m, tau) by Newton's method with autograd derivatives."""
    m = samples.mean().clone().requires_grad_(True)
    for _ in range(30):
        loss = expectile_loss(samples - m, tau)
        (g,) = torch.autograd.grad(loss, m, create_graph=True)
        (h,) = torch.autograd.grad(g, m)
        with torch.no_grad():
            m -= g / h
    return m.detach()


def test_T20_expectile_minimiser_solves_the_balance_equation():
    samples = X_VALUES.repeat_interleave(X_COUNTS)  # X with P(x) = count / 9, as an equally weighted sample
    p = X_COUNTS.to(DT) / X_COUNTS.sum()
    taus = [0.01, 0.1, 0.3, 0.5, 0.6, 0.8, 0.9, 0.99]
    ms = []
    for tau in taus:
        m = _argmin_expectile_loss(samples, tau)
        assert m == pytest.approx(float(expectile_bisect(X_VALUES, p, tau)), abs=1e-10)
        balance = tau * (p * (X_VALUES - m).clamp_min(0)).sum() - (1 - tau) * (p * (m - X_VALUES).clamp_min(0)).sum()
        assert abs(float(balance)) < 1e-12
        ms.append(float(m))
    assert ms[taus.index(0.5)] == pytest.approx(float((p * X_VALUES).sum()), abs=1e-12)  # tau = 0.5: the mean
    assert all(a < b for a, b in zip(ms, ms[1:]))  # increasing in tau (strictly, X not constant)
    # tau -> 1: the expectile approaches the maximum of the support (7), monotonically.
    gaps = [7.0 - float(expectile_bisect(X_VALUES, p, 1 - 10.0**-k)) for k in range(1, 7)]
    assert all(a > b > 0 for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-4


def test_T20_expectile_weights_and_mask():
    # L_2^0.6: weight 0.6 for u > 0, 0.4 for u < 0 (the expectile loss of Kostrikov et al. 2021).
    assert float(expectile_loss(torch.tensor([2.0]), 0.6)) == pytest.approx(0.6 * 4)
    assert float(expectile_loss(torch.tensor([-2.0]), 0.6)) == pytest.approx(0.4 * 4)
    assert float(expectile_loss(torch.tensor([0.0]), 0.6)) == 0.0
    diff = torch.tensor([[2.0, -1.0, float("nan")], [3.0, 1.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert float(expectile_loss(diff, 0.7, mask)) == pytest.approx((0.7 * 4 + 0.3 * 1) / 2)
    assert float(expectile_loss(diff, 0.7, torch.zeros_like(diff))) == 0.0
    assert expectile_loss(diff[1:].to(DT), 0.7).dtype == DT


# ------------------------------------------------------------------------------------------- T21 IQL / AWR
def _iql_problem(gen, S=5, A=4):
    P, R = random_mdp(gen, S, A)
    counts = torch.zeros(S, A, dtype=torch.long)
    for s in range(S):  # sparse behaviour support: two actions per state, integer counts
        acts = torch.randperm(A, generator=gen)[:2]
        counts[s, acts] = torch.randint(1, 4, (2,), generator=gen)
    return P, R, counts


def _iql_fixed_point(P, R, pi_b, gamma, tau, iters=300):
    V = torch.zeros(R.shape[0], dtype=DT)
    for _ in range(iters):
        Q = R + gamma * P @ V
        V = expectile_newton(Q, pi_b, tau)
    return R + gamma * P @ V, V


def test_T21_iql_fixed_point_monotone_and_below_in_support_max(gen):
    gamma = 0.9
    P, R, counts = _iql_problem(gen)
    pi_b = counts.to(DT) / counts.sum(-1, keepdim=True)
    support = counts > 0
    # In-support max fixed point Q = R + gamma P max_{a in supp} Q (the ideal IQL target, Kostrikov et al. 2021).
    V_max = torch.zeros(P.shape[0], dtype=DT)
    for _ in range(300):
        V_max = (R + gamma * P @ V_max).masked_fill(~support, -math.inf).max(-1).values
    taus = [0.1, 0.5, 0.7, 0.9, 0.99, 0.999, 0.9999]
    Vs = [_iql_fixed_point(P, R, pi_b, gamma, tau)[1] for tau in taus]
    for a, b in zip(Vs, Vs[1:]):
        assert (a <= b + 1e-12).all()
    gaps = [float((V_max - V).max()) for V in Vs]
    assert all((V <= V_max + 1e-12).all() for V in Vs)
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] < 1e-3 * gaps[0]
    # tau = 0.5 is SARSA: the value of the behaviour policy, by a linear solve.
    r_b, P_b = (pi_b * R).sum(-1), torch.einsum("sa,sat->st", pi_b, P)
    V_b = torch.linalg.solve(torch.eye(P.shape[0], dtype=DT) - gamma * P_b, r_b)
    assert torch.allclose(Vs[taus.index(0.5)], V_b, atol=1e-12)
    # At the fixed point, expectile_loss over the logged (s, a) rows is stationary in V (L_V of Kostrikov et al. 2021).
    Q, V = _iql_fixed_point(P, R, pi_b, gamma, 0.9)
    s_idx, a_idx = torch.nonzero(counts, as_tuple=True)
    reps = counts[s_idx, a_idx]
    s_rows, a_rows = s_idx.repeat_interleave(reps), a_idx.repeat_interleave(reps)
    V_param = V.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(expectile_loss(Q[s_rows, a_rows] - V_param[s_rows], 0.9), V_param)
    assert g.abs().max() < 1e-12


def _fit_awr(counts, adv, beta, max_weight):
    acts = torch.arange(len(counts)).repeat_interleave(counts)
    theta = torch.zeros(len(counts), dtype=DT, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta], max_iter=200, tolerance_grad=1e-13, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )

    def closure():
        opt.zero_grad()
        loss = awr_loss(torch.log_softmax(theta, 0)[acts], adv[acts], beta, max_weight)
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(theta.detach(), 0)


def test_T21_awr_argmax_is_exponentially_tilted_behaviour(gen):
    counts = torch.tensor([1, 2, 3, 4])
    pi_b = counts.to(DT) / counts.sum()
    adv = torch.randn(4, generator=gen, dtype=DT)
    for beta in (0.0, 0.5, 2.0):
        target = pi_b * torch.exp(beta * adv)
        assert torch.allclose(_fit_awr(counts, adv, beta, 100.0), target / target.sum(), atol=1e-7)
    # beta = 0: behaviour cloning.
    assert torch.allclose(_fit_awr(counts, adv, 0.0, 100.0), pi_b, atol=1e-7)
    # With clipping the tilt saturates: pi proportional to pi_b * min(e^{beta A}, max_weight).
    adv = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=DT)
    target = pi_b * torch.exp(2.0 * adv).clamp(max=10.0)
    assert torch.allclose(_fit_awr(counts, adv, 2.0, 10.0), target / target.sum(), atol=1e-7)


def test_awr_weights_and_loss_values():
    adv = torch.tensor([0.0, 1.0, 10.0, 1e4], dtype=DT, requires_grad=True)
    w = awr_weights(adv, 1.0)
    assert torch.allclose(w, torch.tensor([1.0, math.e, 100.0, 100.0], dtype=DT))
    assert not w.requires_grad
    assert torch.allclose(awr_weights(adv, 1.0, max_weight=None)[:3], torch.exp(adv.detach()[:3]))
    # -mean(w log pi): logp = [-1, -2], A = [0, 1], beta = 2 -> (1 * 1 + e^2 * 2) / 2.
    logp = torch.tensor([-1.0, -2.0], dtype=DT, requires_grad=True)
    loss = awr_loss(logp, torch.tensor([0.0, 1.0], dtype=DT), 2.0)
    assert float(loss.detach()) == pytest.approx((1 + 2 * math.e**2) / 2, abs=1e-12)
    # Sign (docs/errata.md §8): descending the loss RAISES log pi of well-weighted actions.
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.allclose(g, -torch.tensor([1.0, math.e**2], dtype=DT) / 2)
    # Huge advantages: weights clipped, finite gradients, and the mask removes padded rows.
    logp = torch.tensor([-1.0, -3.0, 0.0], dtype=DT, requires_grad=True)
    loss = awr_loss(logp, torch.tensor([1e5, 0.0, 1e5], dtype=DT), 3.0, mask=torch.tensor([1.0, 1.0, 0.0]))
    assert float(loss.detach()) == pytest.approx(-(100 * -1.0 + 1 * -3.0) / 2)
    (g,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(g).all() and g[2] == 0


# --------------------------------------------------------------------------------------------------- T22 CQL
def test_T22a_gibbs_variational_identity(gen):
    A = 5
    Q = torch.randn(A, generator=gen, dtype=DT) * 2
    rho = torch.softmax(torch.randn(A, generator=gen, dtype=DT), 0)
    value = cql_logsumexp(Q + rho.log())  # log sum_a rho(a) e^{Q(a)}
    assert torch.allclose(value, torch.log((rho * Q.exp()).sum()), atol=1e-14)
    mu_star = rho * Q.exp() / (rho * Q.exp()).sum()
    assert torch.allclose((mu_star * Q).sum() - (mu_star * (mu_star / rho).log()).sum(), value, atol=1e-13)
    for _ in range(50):
        mu = torch.softmax(2 * torch.randn(A, generator=gen, dtype=DT), 0)
        obj = (mu * Q).sum() - (mu * (mu / rho).log()).sum()
        assert obj <= value + 1e-14
        assert torch.allclose(obj, value - (mu * (mu / mu_star).log()).sum(), atol=1e-13)  # gap = KL(mu||mu*)
    # Uniform rho: log sum rho e^Q = logsumexp Q - log|A|; uniform importance weights over all actions give
    # logsumexp Q + log|A| (the log N of the estimator is not subtracted, as in the CQL code).
    q = torch.randn(3, A, generator=gen, dtype=DT)
    assert torch.allclose(cql_logsumexp(q), torch.logsumexp(q, -1), atol=1e-14)
    uniform = torch.full((3, A), -math.log(A), dtype=DT)
    assert torch.allclose(cql_logsumexp(q, uniform), torch.logsumexp(q, -1) + math.log(A), atol=1e-14)
    assert torch.allclose(cql_logsumexp(q, uniform) - 2 * math.log(A), torch.log((q.exp() / A).sum(-1)), atol=1e-14)
    assert float(cql_logsumexp(torch.tensor([0.0, math.log(3.0)]))) == pytest.approx(math.log(4.0))
    assert float(cql_regularizer(torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([1.0]))) == pytest.approx(
        math.log(4.0) - 1.0
    )


def test_T22_importance_sampled_logsumexp_of_a_continuous_action():
    gen = torch.Generator().manual_seed(0)
    N = 200_000

    def Q(a):
        return 1.0 - 2.0 * (a - 0.3) ** 2

    # On [-1, 1] with a uniform proposal (density 1/2): log int_{-1}^{1} e^{Q(a)} da in closed form via erf.
    exact = 1.0 + math.log(math.sqrt(math.pi / 2) / 2 * (math.erf(math.sqrt(2) * 0.7) - math.erf(math.sqrt(2) * -1.3)))
    a = torch.rand(1, N, generator=gen, dtype=DT) * 2 - 1
    est = cql_logsumexp(Q(a), torch.full_like(a, math.log(0.5))) - math.log(N)
    assert float(est) == pytest.approx(exact, abs=5e-3)
    # On R with two Gaussian proposals concatenated (as CQL mixes uniform and policy samples), each with its own
    # density: the average of two unbiased estimates of int e^Q = e sqrt(pi / 2).
    a1 = torch.randn(1, N, generator=gen, dtype=DT)
    a2 = 0.3 + 0.6 * torch.randn(1, N, generator=gen, dtype=DT)

    def log_normal(x, m, s):
        return -0.5 * ((x - m) / s) ** 2 - math.log(s * math.sqrt(2 * math.pi))

    est = cql_logsumexp(torch.cat([Q(a1), Q(a2)], -1), torch.cat([log_normal(a1, 0, 1), log_normal(a2, 0.3, 0.6)], -1))
    assert float(est - math.log(2 * N)) == pytest.approx(1.0 + 0.5 * math.log(math.pi / 2), abs=5e-3)


def _cql_problem(gen, S=4, A=3):
    P, R = random_mdp(gen, S, A)
    counts = torch.randint(1, 5, (S, A), generator=gen)  # full behaviour support, integer counts
    d = counts.sum(-1).to(DT) / counts.sum()
    pi_b = counts.to(DT) / counts.sum(-1, keepdim=True)
    pi = torch.softmax(torch.randn(S, A, generator=gen, dtype=DT), -1)
    return P, R, counts, d, pi_b, pi


def test_T22b_conservative_iterations_lower_bound_the_policy_value(gen):
    gamma, alpha = 0.9, 0.5
    P, R, counts, d, pi_b, pi = _cql_problem(gen)
    S, A = R.shape

    def backup(Q):  # empirical Bellman operator B^pi Q = r + gamma E_{s'} E_{a'~pi} Q(s', a')
        return R + gamma * P @ (pi * Q).sum(-1)

    Q_pi = torch.zeros(S, A, dtype=DT)
    for _ in range(500):
        Q_pi = backup(Q_pi)
    V_pi = (pi * Q_pi).sum(-1)
    mu = pi
    Q1, Q2 = torch.zeros(S, A, dtype=DT), torch.zeros(S, A, dtype=DT)
    for _ in range(500):
        Q1 = backup(Q1) - alpha * mu / pi_b  # variant 1 first-order solution
        Q2 = backup(Q2) - alpha * (mu - pi_b) / pi_b  # variant 2
    # Variant 1 fixed point = Q^pi - (I - gamma P^pi)^-1 alpha mu / pi_b on (s, a) space: pointwise below Q^pi.
    P_sa = torch.einsum("sat,tb->satb", P, pi).reshape(S * A, S * A)
    corr = torch.linalg.solve(torch.eye(S * A, dtype=DT) - gamma * P_sa, (alpha * mu / pi_b).reshape(-1))
    assert torch.allclose(Q1, Q_pi - corr.view(S, A), atol=1e-12)
    assert (Q1 < Q_pi).all()
    # Variant 2: only the policy's expected value is a lower bound, E_{a~pi} Q2(s, a) <= V^pi(s).
    assert ((pi * Q2).sum(-1) <= V_pi + 1e-12).all()
    assert ((pi * Q2).sum(-1) - V_pi).abs().max() < (Q1 - Q_pi).abs().max()  # tighter than variant 1


def test_T22c_gradient_descent_on_tabular_objectives_matches_closed_form(gen):
    alpha, gamma = 0.5, 0.9
    P, R, counts, d, pi_b, mu = _cql_problem(gen)
    S, A = R.shape
    Qk = torch.randn(S, A, generator=gen, dtype=DT)
    y = R + gamma * P @ (mu * Qk).sum(-1)  # B^pi Q^k with pi = mu
    s_idx, a_idx = torch.nonzero(counts, as_tuple=True)
    reps = counts[s_idx, a_idx]
    s_rows, a_rows = s_idx.repeat_interleave(reps), a_idx.repeat_interleave(reps)  # (s, a) ~ d(s) pi_b(a|s)

    def minimise(objective):
        Q = torch.zeros(S, A, dtype=DT, requires_grad=True)
        opt = torch.optim.LBFGS(
            [Q], max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16, line_search_fn="strong_wolfe"
        )

        def closure():
            opt.zero_grad()
            loss = objective(Q)
            loss.backward()
            return loss

        opt.step(closure)
        return Q.detach()

    def bellman(Q):
        return 0.5 * (Q[s_rows, a_rows] - y[s_rows, a_rows]).square().mean()

    # Seed objectives with a fixed mu: variant 1 alpha E_{s~D, a~mu} Q, variant 2 minus alpha E_{s,a~D} Q.
    Q1 = minimise(lambda Q: alpha * (mu[s_rows] * Q[s_rows]).sum(-1).mean() + bellman(Q))
    assert torch.allclose(Q1, y - alpha * mu / pi_b, atol=1e-8)
    Q2 = minimise(lambda Q: alpha * ((mu[s_rows] * Q[s_rows]).sum(-1) - Q[s_rows, a_rows]).mean() + bellman(Q))
    assert torch.allclose(Q2, y - alpha * (mu - pi_b) / pi_b, atol=1e-8)
    # CQL(H) with R(mu) = -KL(mu || uniform): the inner max gives the logsumexp regulariser; the minimiser is the
    # variant-2 solution with mu = the Gibbs policy softmax(Q) of the solution itself.
    log_unif = torch.full((len(s_rows), A), -math.log(A), dtype=DT)
    QH = minimise(lambda Q: alpha * cql_regularizer(Q[s_rows], Q[s_rows, a_rows], log_unif) + bellman(Q))
    assert torch.allclose(QH, y - alpha * (torch.softmax(QH, -1) - pi_b) / pi_b, atol=1e-8)


def test_cql_alpha_loss_is_dual_ascent():
    for gap, target, sign in ((3.0, 1.0, 1.0), (0.2, 1.0, -1.0)):
        log_alpha = torch.tensor(0.5, dtype=DT, requires_grad=True)
        g_in = torch.tensor(gap, dtype=DT, requires_grad=True)
        loss = cql_alpha_loss(log_alpha, g_in, target)
        assert float(loss.detach()) == pytest.approx(-math.exp(0.5) * (gap - target))
        loss.backward()
        assert g_in.grad is None  # the gap is detached: alpha's loss never moves Q
        # One SGD step on log_alpha moves alpha up when gap > target, down when gap < target.
        assert float(-log_alpha.grad) * sign > 0
    # A per-sample gap is averaged.
    loss = cql_alpha_loss(torch.tensor(0.0), torch.tensor([1.0, 3.0]), 1.5)
    assert float(loss) == pytest.approx(-0.5)
