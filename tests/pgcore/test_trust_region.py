"""Trust-region machinery: T12 (Fisher identities) and T13 (trust-region step, CG, line search, TRPO/NPG)
(Schulman et al. 2015, App. C; Kakade 2001). Everything in float64 with exact oracles (enumeration, quadrature, solve).
"""

import math

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian, jacobian

from pgcore.trust_region import (
    backtracking_line_search,
    conjugate_gradient,
    fisher_vector_product,
    flat_grad,
    flat_params,
    natural_step,
    npg_step,
    set_flat_params,
    trpo_step,
)

DT = torch.float64


def cat_kl(theta_p, theta_q):
    """KL(softmax(theta_p) || softmax(theta_q)) over the last dim, written out from the definition."""
    lp, lq = torch.log_softmax(theta_p, -1), torch.log_softmax(theta_q, -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def gauss_kl(mu_p, ls_p, mu_q, ls_q):
    """KL(N(mu_p, e^{2 ls_p}) || N(mu_q, e^{2 ls_q})) for diagonal Gaussians, closed form, summed."""
    return (ls_q - ls_p + (torch.exp(2 * ls_p) + (mu_p - mu_q) ** 2) / (2 * torch.exp(2 * ls_q)) - 0.5).sum(-1)


def gauss_logp(x, mu, ls):
    return (-0.5 * ((x - mu) / ls.exp()) ** 2 - ls - 0.5 * math.log(2 * math.pi)).sum(-1)


def random_spd(n, gen, cond=30.0):
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    eig = torch.logspace(0, math.log10(cond), n, dtype=DT)
    return q @ torch.diag(eig) @ q.T


# ----------------------------------------------------------------------------------------------- flat views
def test_flat_params_roundtrip_and_flat_grad_zero_for_unused(gen):
    a = torch.randn(2, 3, generator=gen, dtype=DT, requires_grad=True)
    b = torch.randn(4, generator=gen, dtype=DT, requires_grad=True)
    unused = torch.randn(2, generator=gen, dtype=DT, requires_grad=True)
    flat = flat_params([a, b, unused])
    assert flat.shape == (12,) and not flat.requires_grad
    new = torch.arange(12, dtype=DT)
    set_flat_params([a, b, unused], new)
    assert torch.equal(a.detach(), new[:6].view(2, 3)) and torch.equal(b.detach(), new[6:10])
    assert torch.equal(unused.detach(), new[10:])
    out = (a**2).sum() + 3 * b.sum()
    g = flat_grad(out, [a, b, unused])
    assert torch.allclose(g, torch.cat([2 * new[:6], torch.full((4,), 3.0, dtype=DT), torch.zeros(2, dtype=DT)]))
    with pytest.raises(ValueError):
        set_flat_params([a, b], new)


# ------------------------------------------------------------------------------------- T12 Fisher identities
def test_T12_categorical_fisher_identities(gen):
    K = 5
    theta = torch.randn(K, generator=gen, dtype=DT)
    p = torch.softmax(theta, 0)

    # grad_{theta'} KL(p_theta || p_theta') at theta' = theta is 0.
    t2 = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(cat_kl(theta, t2), t2)
    assert grad.abs().max() < 1e-14

    H = hessian(lambda t: cat_kl(theta, t), theta.clone())
    # E[score score^T] by exact enumeration over the K outcomes, with the score from autograd.
    scores = jacobian(lambda t: torch.log_softmax(t, 0), theta.clone())  # [K outcomes, K params]
    F_score = sum(p[k] * torch.outer(scores[k], scores[k]) for k in range(K))
    # -E[Hessian of log p] by enumeration.
    F_hess = -sum(p[k] * hessian(lambda t, k=k: torch.log_softmax(t, 0)[k], theta.clone()) for k in range(K))
    F_closed = torch.diag(p) - torch.outer(p, p)
    for M in (F_score, F_hess, F_closed):
        assert torch.allclose(H, M, atol=1e-12)

    # Fisher-vector product by double backprop equals F v (+ damping v).
    v = torch.randn(K, generator=gen, dtype=DT)
    t2 = theta.clone().requires_grad_(True)
    kl = cat_kl(theta, t2)  # pi_old = softmax(theta) is a constant
    assert torch.allclose(fisher_vector_product(kl, [t2], v), F_closed @ v, atol=1e-12)
    assert torch.allclose(fisher_vector_product(kl, [t2], v, damping=0.3), F_closed @ v + 0.3 * v, atol=1e-12)


def _second_order_errors(kl_fwd, kl_rev, h_dir, F, scales):
    errs = []
    for s in scales:
        h = s * h_dir
        quad = 0.5 * h @ F @ h
        errs.append((abs(float(kl_fwd(h) - quad)), abs(float(kl_rev(h) - quad)), float(quad)))
    return errs


def _assert_third_order(errs, scales):
    for i in range(2):
        ratios = [e[i] / e[2] for e in errs]  # relative error of the quadratic model
        # Error is O(|h|^3), so the relative error shrinks ~linearly with the scale (x10 per decade).
        for r_big, r_small in zip(ratios, ratios[1:]):
            assert r_small < 0.2 * r_big
        cubic = [e[i] / s**3 for e, s in zip(errs, scales)]
        assert max(cubic) < 3 * min(cubic) + 1e-12


def test_T12_categorical_kl_is_half_hFh_to_second_order(gen):
    K = 4
    theta = torch.randn(K, generator=gen, dtype=DT)
    p = torch.softmax(theta, 0)
    F = torch.diag(p) - torch.outer(p, p)
    h_dir = torch.randn(K, generator=gen, dtype=DT)
    h_dir = h_dir - h_dir.mean()  # leave the softmax null direction (constant shift) out: F h != 0
    scales = [1e-1, 1e-2, 1e-3]
    errs = _second_order_errors(
        lambda h: cat_kl(theta, theta + h), lambda h: cat_kl(theta + h, theta), h_dir, F, scales
    )
    _assert_third_order(errs, scales)


def test_T12_gaussian_fisher_identities(gen):
    d = 2
    mu = torch.randn(d, generator=gen, dtype=DT)
    ls = 0.3 * torch.randn(d, generator=gen, dtype=DT)
    theta = torch.cat([mu, ls])  # parameters: (mean, log-std)

    def kl_to(t):
        return gauss_kl(mu, ls, t[:d], t[d:])

    t2 = theta.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(kl_to(t2), t2)
    assert grad.abs().max() < 1e-14
    H = hessian(kl_to, theta.clone())
    F_closed = torch.diag(torch.cat([torch.exp(-2 * ls), torch.full((d,), 2.0, dtype=DT)]))
    assert torch.allclose(H, F_closed, atol=1e-12)

    # Expectations over x ~ N(mu, sigma^2) by Gauss-Hermite quadrature (exact: the integrands are polynomials
    # of degree <= 4 in x), scores and Hessians of log p from autograd.
    nodes, weights = np.polynomial.hermite_e.hermegauss(6)
    weights = weights / weights.sum()
    F_score = torch.zeros(2 * d, 2 * d, dtype=DT)
    F_hess = torch.zeros(2 * d, 2 * d, dtype=DT)
    for i in range(len(nodes)):
        for j in range(len(nodes)):
            z = torch.tensor([nodes[i], nodes[j]], dtype=DT)
            x = mu + ls.exp() * z
            w = float(weights[i] * weights[j])
            logp = lambda t, x=x: gauss_logp(x, t[:d], t[d:])  # noqa: E731
            s = jacobian(logp, theta.clone())
            F_score += w * torch.outer(s, s)
            F_hess -= w * hessian(logp, theta.clone())
            # Gaussian score in the mean: Sigma^-1 (x - mu) (Williams 1992).
            assert torch.allclose(s[:d], (x - mu) / ls.exp() ** 2, atol=1e-12)
    assert torch.allclose(F_score, F_closed, atol=1e-10)
    assert torch.allclose(F_hess, F_closed, atol=1e-10)

    v = torch.randn(2 * d, generator=gen, dtype=DT)
    t2 = theta.clone().requires_grad_(True)
    # Parameters passed as two tensors: checks the flattening order of the product.
    m2, l2 = t2[:d].detach().clone().requires_grad_(True), t2[d:].detach().clone().requires_grad_(True)
    kl = gauss_kl(mu, ls, m2, l2)
    assert torch.allclose(fisher_vector_product(kl, [m2, l2], v, damping=0.05), F_closed @ v + 0.05 * v)

    scales = [1e-1, 1e-2, 1e-3]
    h_dir = torch.randn(2 * d, generator=gen, dtype=DT)
    errs = _second_order_errors(
        lambda h: kl_to(theta + h), lambda h: gauss_kl(mu + h[:d], ls + h[d:], mu, ls), h_dir, F_closed, scales
    )
    _assert_third_order(errs, scales)


def test_T12_fvp_of_mean_state_kl_for_linear_softmax_policy(gen):
    """Policy Fisher F = mean_s J_s^T (diag p_s - p_s p_s^T) J_s for logits = X W + b (two parameter tensors)."""
    N, D, A = 6, 3, 4
    X = torch.randn(N, D, generator=gen, dtype=DT)
    W = torch.randn(D, A, generator=gen, dtype=DT, requires_grad=True)
    b = torch.randn(A, generator=gen, dtype=DT, requires_grad=True)
    old_logits = (X @ W + b).detach()
    kl = cat_kl(old_logits, X @ W + b).mean()
    theta0 = flat_params([W, b])

    def logits_of(t):
        return X @ t[: D * A].view(D, A) + t[D * A :]

    J = jacobian(logits_of, theta0)  # [N, A, P]
    p = torch.softmax(old_logits, -1)
    F = sum(J[n].T @ (torch.diag(p[n]) - torch.outer(p[n], p[n])) @ J[n] for n in range(N)) / N
    v = torch.randn(theta0.numel(), generator=gen, dtype=DT)
    assert torch.allclose(fisher_vector_product(kl, [W, b], v), F @ v, atol=1e-12)
    assert torch.allclose(hessian(lambda t: cat_kl(old_logits, logits_of(t)).mean(), theta0), F, atol=1e-12)


# ------------------------------------------------------------------------------------- T13 trust-region step
def test_T13_natural_step_solves_the_trust_region_problem(gen):
    n = 6
    F = random_spd(n, gen)
    g = torch.randn(n, generator=gen, dtype=DT)
    delta = 0.01
    Finv_g = torch.linalg.solve(F, g)
    D = natural_step(g, Finv_g, delta)
    c = g @ Finv_g
    assert torch.allclose(0.5 * D @ F @ D, torch.tensor(delta, dtype=DT), rtol=1e-12)
    assert torch.allclose(g @ D, torch.sqrt(2 * delta * c), rtol=1e-12)
    # Any feasible D' (0.5 D'^T F D' <= delta) does no better on the linear objective.
    for _ in range(200):
        u = torch.randn(n, generator=gen, dtype=DT)
        scale = torch.rand((), generator=gen, dtype=DT) * torch.sqrt(2 * delta / (u @ F @ u))
        assert g @ (scale * u) <= g @ D + 1e-15
    # Lagrangian dual of the trust-region problem: lambda* = sqrt(c / (2 delta)), D = F^-1 g / lambda*, and
    # lambda* maximises gbar(lambda) = -c / (2 lambda) - lambda delta with no duality gap (gbar(lambda*) = -g^T D).
    lam = torch.sqrt(c / (2 * delta))
    assert torch.allclose(D, Finv_g / lam, rtol=1e-12)

    def gbar(lmb):
        return -c / (2 * lmb) - lmb * delta

    grid = lam * torch.linspace(0.2, 5.0, 101, dtype=DT)
    assert (gbar(grid) <= gbar(lam) + 1e-14).all()
    assert torch.allclose(gbar(lam), -(g @ D), rtol=1e-12)
    # the descent form theta - sqrt(2 delta) H^-1 g / sqrt(g^T H^-1 g) is the negated step.
    assert torch.allclose(-math.sqrt(2 * delta) * Finv_g / torch.sqrt(c), -D, rtol=1e-12)
    # No ascent direction: zero step.
    zero = torch.zeros(n, dtype=DT)
    assert torch.equal(natural_step(zero, zero, delta), zero)


def test_T13_conjugate_gradient_exact_in_n_iterations(gen):
    n = 8
    F = random_spd(n, gen, cond=100.0)
    g = torch.randn(n, generator=gen, dtype=DT)
    x = conjugate_gradient(lambda v: F @ v, g, iters=n, residual_tol=0.0)
    assert torch.allclose(x, torch.linalg.solve(F, g), rtol=1e-9, atol=1e-12)
    for k in range(1, n):
        xk = conjugate_gradient(lambda v: F @ v, g, iters=k, residual_tol=0.0)
        # CG from 0: g^T x_k = x_k^T F x_k at every iterate (what trpo_step's step scaling relies on) ...
        assert torch.allclose(g @ xk, xk @ F @ xk, rtol=1e-10)
        # ... and the quadratic model 0.5 x^T F x - g^T x decreases monotonically with k.
        xk1 = conjugate_gradient(lambda v: F @ v, g, iters=k + 1, residual_tol=0.0)
        assert 0.5 * xk1 @ F @ xk1 - g @ xk1 <= 0.5 * xk @ F @ xk - g @ xk + 1e-14
    # The tolerance stops early: one iteration on b = an eigenvector solves it exactly.
    calls = []
    evec = torch.linalg.eigh(F).eigenvectors[:, 0]
    x = conjugate_gradient(lambda v: calls.append(1) or F @ v, evec, iters=n, residual_tol=1e-20)
    assert len(calls) == 1 and torch.allclose(F @ x, evec, atol=1e-12)


class _Counter:
    def __init__(self, f):
        self.f, self.xs = f, []

    def __call__(self, x):
        self.xs.append(float(x))
        return self.f(float(x))


def test_T13_line_search_returns_first_accepted_j_from_zero():
    x0, full = torch.zeros(()), torch.ones(())
    # improvement x - x^2 (> 0 on (0, 1)), KL x^2 <= 0.1 first holds at x = 0.25 (j = 2).
    ev = _Counter(lambda x: (x - x * x, x * x))
    ok, x, info = backtracking_line_search(ev, x0, full, max_kl=0.1)
    assert ok and float(x) == 0.25 and info["backtracks"] == 2.0 and info["step_frac"] == 0.25
    assert ev.xs == [1.0, 0.5, 0.25]  # stops at the first acceptance (docs/errata.md §6)
    assert info["improvement"] == pytest.approx(0.25 - 0.0625) and info["kl"] == pytest.approx(0.0625)

    # j = 0 is tried and accepted when the full step is fine (docs/errata.md §6).
    ev = _Counter(lambda x: (x - 0.5 * x * x, x * x))
    ok, x, info = backtracking_line_search(ev, x0, full, max_kl=2.0)
    assert ok and float(x) == 1.0 and info["backtracks"] == 0.0 and ev.xs == [1.0]

    # Expected-improvement ratio: improvement f - f^2/2 vs expected f, ratio 1 - f/2 > 0.9 first at f = 1/8.
    ev = _Counter(lambda x: (x - 0.5 * x * x, x * x))
    ok, x, info = backtracking_line_search(ev, x0, full, max_kl=2.0, expected_improve=1.0, accept_ratio=0.9)
    assert ok and float(x) == 0.125 and info["expected_improve"] == 0.125

    # Every j rejected (the step only hurts): x0 comes back after max_backtracks + 1 evaluations.
    ev = _Counter(lambda x: (-x, 0.0))
    ok, x, info = backtracking_line_search(ev, x0 + 3.0, full, max_kl=1.0, backtrack_coef=0.8, max_backtracks=4)
    assert not ok and float(x) == 3.0 and len(ev.xs) == 5
    assert ev.xs == pytest.approx([3.0 + 0.8**j for j in range(5)])


def _softmax_problem(gen, S=4, A=3):
    theta = torch.randn(S, A, generator=gen, dtype=DT, requires_grad=True)
    old_logits = theta.detach().clone()
    adv = torch.randn(S, A, generator=gen, dtype=DT)
    pi_old = torch.softmax(old_logits, -1)
    adv = adv - (pi_old * adv).sum(-1, keepdim=True)  # E_{a~pi_old} A = 0, as for a true advantage

    def surrogate():  # exact IS surrogate E_{s} E_{a~pi_old}[pi_theta / pi_old * A]
        pi = torch.softmax(theta, -1)
        return (pi_old * (pi / pi_old) * adv).sum(-1).mean()

    def kl():
        return cat_kl(old_logits, theta).mean()

    return theta, surrogate, kl, old_logits


def test_T13_trpo_step_improves_surrogate_within_kl(gen):
    theta, surrogate, kl, old = _softmax_problem(gen)
    before = float(surrogate().detach())
    info = trpo_step([theta], surrogate, kl, max_kl=0.01)
    after, kl_after = float(surrogate().detach()), float(kl().detach())
    assert info["accepted"] == 1.0
    assert after > before and kl_after <= 0.01
    assert info["improvement"] == pytest.approx(after - before, rel=1e-12)
    assert info["kl"] == pytest.approx(kl_after, rel=1e-12)
    # A wide trust region with the KL(new || old) direction (equal to 2nd order, docs/errata.md §7): the full
    # step violates the true KL, the search backtracks, and the previous (larger) fraction was indeed rejected.
    theta, surrogate, _, old = _softmax_problem(torch.Generator().manual_seed(4))

    def kl_new_old():
        return cat_kl(theta, old).mean()

    before = float(surrogate().detach())
    info = trpo_step([theta], surrogate, kl_new_old, max_kl=0.5, damping=1e-3, backtrack_coef=0.7)
    assert info["accepted"] == 1.0 and info["backtracks"] >= 1 and info["step_frac"] == 0.7 ** info["backtracks"]
    assert float(surrogate().detach()) > before and float(kl_new_old().detach()) <= 0.5
    direction = (theta.detach() - old) / info["step_frac"]
    with torch.no_grad():
        theta.copy_(old + info["step_frac"] / 0.7 * direction)
        assert float(kl_new_old()) > 0.5 or float(surrogate()) <= before
    # Every j rejected: a surrogate whose curvature the linear model ignores (a steep quadratic penalty around
    # theta_old, zero gradient there) makes every tried step a loss, so the parameters are restored exactly.
    theta, surrogate, kl, old = _softmax_problem(torch.Generator().manual_seed(4))

    def penalised():
        return surrogate() - 100.0 * (theta - old).square().sum()

    info = trpo_step([theta], penalised, kl, max_kl=1.0, max_backtracks=2)
    assert info["accepted"] == 0.0 and info["step_frac"] == 0.0 and info["backtracks"] == 3.0
    assert torch.equal(theta.detach(), old)


def test_T13_npg_step_is_the_exact_damped_natural_step(gen):
    theta, surrogate, kl, old = _softmax_problem(gen, S=3, A=3)
    n = theta.numel()
    damping, delta = 0.1, 1e-4
    g = flat_grad(surrogate(), [theta])
    F = hessian(lambda t: cat_kl(old, t.view(3, 3)).mean(), old.reshape(-1).clone())
    expected = old.reshape(-1) + natural_step(g, torch.linalg.solve(F + damping * torch.eye(n, dtype=DT), g), delta)
    info = npg_step([theta], surrogate, kl, max_kl=delta, cg_iters=2 * n, damping=damping)
    D = expected - old.reshape(-1)
    # CG stops at r^T r <= 1e-10 (the contract default), i.e. |r| / |g| ~ 1e-4 here: compare to that accuracy.
    assert (theta.detach().reshape(-1) - expected).abs().max() < 1e-4 * D.abs().max()
    # For a small delta the true KL is close to the quadratic model value 0.5 D^T F D <= delta.
    assert 0.5 * D @ (F + damping * torch.eye(n, dtype=DT)) @ D == pytest.approx(delta, rel=1e-9)
    assert info["kl"] == pytest.approx(float(0.5 * D @ F @ D), rel=0.05)
    assert info["improvement"] > 0
