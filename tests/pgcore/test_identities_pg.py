"""Policy-gradient identities checked exactly on small tabular MDPs (T4-T10, T14, T15(f), T24).

Every check compares an autograd gradient (through ``torch.linalg.solve`` or a backward induction) with a
formula built from separately computed pieces (occupancies, Q, advantages, trajectory enumeration), in float64.
"""

import math

import pytest
import torch
from torch.func import jacrev

from pgcore import tabular as tb
from pgcore.advantages import gae
from pgcore.policy_losses import dpg_actor_loss, ppo_clip_loss

DT = torch.float64


def _setup(seed, n_states=5, n_actions=3):
    g = torch.Generator().manual_seed(seed)
    P, R, rho0 = tb.random_mdp(n_states, n_actions, generator=g)
    return P, R, rho0, g


def _softmax_params(shape, g, scale=1.0):
    return scale * torch.randn(*shape, generator=g, dtype=DT)


def _tabular_score(theta):
    """d log pi(a|s) / d theta[s', b] by autograd, shape [S, A, S, A]."""
    return jacrev(lambda th: torch.log_softmax(th, -1))(theta)


def _close(a, b, atol=1e-10):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


# ---------------------------------------------------------------- T4: policy-gradient theorem


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99])
def test_T4_policy_gradient_theorem_tabular_softmax(gamma):
    P, R, rho0, g = _setup(100)
    theta = _softmax_params((5, 3), g).requires_grad_()
    eta = tb.expected_return(P, R, tb.softmax_policy(theta), rho0, gamma)
    (grad,) = torch.autograd.grad(eta, theta)

    th = theta.detach()
    pi = tb.softmax_policy(th)
    V, Q = tb.policy_evaluation(P, R, pi, gamma)
    rho = tb.occupancy(P, pi, rho0, gamma)
    d = tb.occupancy(P, pi, rho0, gamma, normalized=True)
    score = _tabular_score(th)
    grad_pi = pi[:, :, None, None] * score  # d pi(a|s) / d theta
    # Sutton et al. 2000, Theorem 1: sum_s rho(s) sum_a Q(s,a) grad pi(a|s)
    _close(torch.einsum("s,sa,saxy->xy", rho, Q, grad_pi), grad)
    # = 1/(1-gamma) E_{s~d, a~pi}[Q grad log pi]
    _close(torch.einsum("s,sa,sa,saxy->xy", d, pi, Q, score) / (1 - gamma), grad)
    # baseline b(s) changes nothing (Williams 1992), and sum_a pi grad log pi = 0 per state
    b = torch.randn(5, generator=g, dtype=DT) * 10
    _close(torch.einsum("s,sa,sa,saxy->xy", rho, pi, Q - b[:, None], score), grad)
    _close(torch.einsum("sa,saxy->sxy", pi, score), torch.zeros(5, 5, 3, dtype=DT), atol=1e-14)
    # closed-form tabular score: d log pi(a|s) / d theta_s = e_a - pi(.|s), zero for other states
    eye_s, eye_a = torch.eye(5, dtype=DT), torch.eye(3, dtype=DT)
    closed = eye_s[:, None, :, None] * (eye_a[None, :, None, :] - pi[:, None, None, :])
    _close(score, closed, atol=1e-14)
    # the per-(s, a) tabular form rho(s) pi(a|s) A(s, a)
    _close(rho[:, None] * pi * (Q - V[:, None]), grad)


def test_T4_policy_gradient_theorem_linear_features():
    # Same theorem for a non-tabular log-linear policy pi(a|s) ∝ exp(phi(s,a)^T w).
    P, R, rho0, g = _setup(101, 6, 4)
    gamma = 0.9
    phi = torch.randn(6, 4, 3, generator=g, dtype=DT)
    w = torch.randn(3, generator=g, dtype=DT)

    def policy(w_):
        return tb.softmax_policy(phi @ w_)

    (grad,) = torch.autograd.grad(tb.expected_return(P, R, policy(w.requires_grad_()), rho0, gamma), w)
    w = w.detach()
    pi = policy(w)
    _, Q = tb.policy_evaluation(P, R, pi, gamma)
    rho = tb.occupancy(P, pi, rho0, gamma)
    score = jacrev(lambda w_: torch.log(policy(w_)))(w)  # [S, A, 3]
    _close(torch.einsum("s,sa,sa,sak->k", rho, pi, Q, score), grad)
    # score of a log-linear policy is phi(s,a) - E_pi phi(s, .)
    _close(score, phi - torch.einsum("sa,sak->sk", pi, phi)[:, None, :], atol=1e-14)


# ---------------------------------------------------------------- T5, T6: trajectory estimators, exact


HORIZON = 3


def _trajectory_quantities(P, R, rho0, theta, gamma):
    states, actions = tb.enumerate_trajectories(P.shape[0], P.shape[1], HORIZON)
    th = theta.detach()
    prob = tb.trajectory_log_prob(P, tb.softmax_policy(th), rho0, states, actions).exp()
    traj_score = jacrev(lambda t: tb.trajectory_log_prob(P, tb.softmax_policy(t), rho0, states, actions))(th)
    step_score = jacrev(lambda t: torch.log_softmax(t, -1)[states, actions])(th)  # [N, T, S, A]
    rewards = R[states, actions]  # [N, T]
    return states, actions, prob, traj_score, step_score, rewards


@pytest.mark.parametrize("gamma", [1.0, 0.8])
def test_T5_trajectory_estimators_have_the_exact_gradient(gamma):
    P, R, rho0, g = _setup(110, 3, 2)
    theta = _softmax_params((3, 2), g).requires_grad_()
    # Oracle: backward induction over the horizon, differentiated by autograd (no trajectories involved).
    eta = rho0 @ tb.finite_horizon_evaluation(P, R, tb.softmax_policy(theta), gamma, HORIZON)
    (grad,) = torch.autograd.grad(eta, theta)

    states, actions, prob, traj_score, step_score, rewards = _trajectory_quantities(P, R, rho0, theta, gamma)
    assert prob.shape == (3**HORIZON * 2**HORIZON,)
    _close(prob.sum(), torch.tensor(1.0, dtype=DT), atol=1e-14)
    _close((prob * (rewards * gamma ** torch.arange(HORIZON, dtype=DT)).sum(-1)).sum(), eta.detach())
    # Williams 1992: grad log P(tau) = sum_t grad log pi(a_t|s_t); dynamics and rho0 drop out.
    _close(traj_score, step_score.sum(1), atol=1e-13)
    P2, _, rho2 = tb.random_mdp(3, 2, generator=g)
    other = jacrev(lambda t: tb.trajectory_log_prob(P2, tb.softmax_policy(t), rho2, states, actions))(
        theta.detach())
    _close(other, traj_score, atol=1e-13)

    disc = gamma ** torch.arange(HORIZON, dtype=DT)
    ret = (rewards * disc).sum(-1)
    # whole-trajectory likelihood ratio (Williams 1992)
    _close(torch.einsum("n,nxy,n->xy", prob, traj_score, ret), grad)
    # causality (reward-to-go), discounted form: sum_t gamma^t grad log pi_t * sum_{t'>=t} gamma^{t'-t} r_t'
    rtg = torch.stack([(rewards[:, t:] * disc[: HORIZON - t]).sum(-1) for t in range(HORIZON)], -1)
    _close(torch.einsum("n,t,ntxy,nt->xy", prob, disc, step_score, rtg), grad)
    # with a state-dependent baseline b(s_t) subtracted (Williams 1992)
    b = torch.randn(3, generator=g, dtype=DT) * 5
    _close(torch.einsum("n,t,ntxy,nt->xy", prob, disc, step_score, rtg - b[states]), grad)
    if gamma < 1:
        # Dropping gamma^t, as is common in practice, is biased (Thomas 2014). The comparison above is sharp enough
        # to see it.
        dropped = torch.einsum("n,ntxy,nt->xy", prob, step_score, rtg)
        assert (dropped - grad).abs().max() > 1e-3


def _baseline_variance(g_k, ret, prob, b):
    # Var of the single-coordinate estimator g_k (R - b) under exact trajectory probabilities.
    x = g_k * (ret - b)
    return (prob * x**2).sum() - (prob * x).sum() ** 2


@pytest.mark.parametrize("case", ["bandit", "mdp"])
def test_T6_optimal_constant_baseline(case):
    if case == "bandit":
        g = torch.Generator().manual_seed(120)
        theta = _softmax_params((4,), g)
        r = torch.randn(4, generator=g, dtype=DT) + 2.0
        prob = tb.softmax_policy(theta)
        score = jacrev(lambda t: torch.log_softmax(t, -1))(theta)  # [A (outcome), A (coordinate)]
        ret = r
    else:
        P, R, rho0, g = _setup(121, 3, 2)
        theta = _softmax_params((3, 2), g)
        _, _, prob, traj_score, _, rewards = _trajectory_quantities(P, R, rho0, theta, 0.9)
        score = traj_score.reshape(prob.shape[0], -1)
        ret = (rewards * 0.9 ** torch.arange(HORIZON, dtype=DT)).sum(-1) + 1.0
    mean_ret = (prob * ret).sum()
    strictly_better = False
    for k in range(score.shape[1]):
        g_k = score[:, k]
        # optimal constant baseline per coordinate (Peters & Schaal 2008)
        b_star = (prob * g_k**2 * ret).sum() / (prob * g_k**2).sum()
        v_star = _baseline_variance(g_k, ret, prob, b_star)
        for delta in (-1.0, -0.1, 0.1, 1.0):
            assert v_star <= _baseline_variance(g_k, ret, prob, b_star + delta) + 1e-12
        v_mean = _baseline_variance(g_k, ret, prob, mean_ret)
        assert v_star <= v_mean + 1e-12
        strictly_better |= bool(v_mean - v_star > 1e-6)
        # stationarity of the variance at b* (autograd, independent of the closed form)
        b = b_star.clone().requires_grad_()
        (dv,) = torch.autograd.grad(_baseline_variance(g_k, ret, prob, b), b)
        assert abs(dv.item()) < 1e-11
        # every constant baseline leaves the estimator's mean unchanged
        _close((prob * g_k * (ret - b_star)).sum(), (prob * g_k * ret).sum(), atol=1e-13)
    assert strictly_better  # b* is not just E[R] in disguise


# ---------------------------------------------------------------- T7: performance difference


@pytest.mark.parametrize("gamma", [0.5, 0.9, 0.99])
def test_T7_performance_difference(gamma):
    P, R, rho0, g = _setup(130)
    pi = tb.softmax_policy(_softmax_params((5, 3), g, 2.0))
    pi2 = tb.softmax_policy(_softmax_params((5, 3), g, 2.0))
    V, Q = tb.policy_evaluation(P, R, pi, gamma)
    V2, Q2 = tb.policy_evaluation(P, R, pi2, gamma)
    A, A2 = Q - V[:, None], Q2 - V2[:, None]
    # Kakade & Langford 2002; Schulman et al. 2015, eq. 2:
    # eta(pi2) - eta(pi) = sum_s rho_pi2(s) sum_a pi2(a|s) A_pi(s, a)
    lhs = tb.expected_return(P, R, pi2, rho0, gamma) - tb.expected_return(P, R, pi, rho0, gamma)
    _close(lhs, (tb.occupancy(P, pi2, rho0, gamma) * (pi2 * A).sum(-1)).sum())
    # the performance difference lemma with point-mass rho0 at every s0
    for s0 in range(5):
        e = torch.zeros(5, dtype=DT)
        e[s0] = 1.0
        d = tb.occupancy(P, pi, e, gamma, normalized=True)
        _close(V[s0] - V2[s0], (d * (pi * A2).sum(-1)).sum() / (1 - gamma))
    # E_tau[sum_t gamma^t f] = E_{d^pi} f / (1 - gamma) with a random f, against a truncated sum over explicit
    # state marginals
    f = torch.randn(5, 3, generator=g, dtype=DT)
    n = int(math.log(1e-16) / math.log(gamma)) + 1
    marg = tb.state_marginals(P, pi, rho0, n)  # [n + 1, S]
    disc = gamma ** torch.arange(n + 1, dtype=DT)
    traj_sum = (disc * (marg * (pi * f).sum(-1)).sum(-1)).sum()
    d = tb.occupancy(P, pi, rho0, gamma, normalized=True)
    _close(traj_sum, (d * (pi * f).sum(-1)).sum() / (1 - gamma), atol=1e-9)
    _close(tb.occupancy(P, pi, rho0, gamma), (disc[:, None] * marg).sum(0), atol=1e-9)
    _close(tb.occupancy(P, pi, rho0, gamma).sum(), torch.tensor(1 / (1 - gamma), dtype=DT), atol=1e-9)


# ---------------------------------------------------------------- T8: surrogate first-order match


@pytest.mark.parametrize("gamma", [0.6, 0.95])
def test_T8_surrogates_match_eta_to_first_order(gamma):
    P, R, rho0, g = _setup(140)
    theta0 = _softmax_params((5, 3), g, 1.5)
    pi_old = tb.softmax_policy(theta0)
    theta = theta0.clone().requires_grad_()
    eta = tb.expected_return(P, R, tb.softmax_policy(theta), rho0, gamma)
    (g_eta,) = torch.autograd.grad(eta, theta)

    # L_{pi_old}(pi_theta): equal value and gradient at theta_old (Schulman et al. 2015, eq. 4)
    L = tb.local_surrogate(P, R, pi_old, tb.softmax_policy(theta), rho0, gamma)
    _close(L.detach(), eta.detach(), atol=1e-12)
    (g_L,) = torch.autograd.grad(L, theta)
    _close(g_L, g_eta)

    V_old, Q_old = tb.policy_evaluation(P, R, pi_old, gamma)
    A_old = Q_old - V_old[:, None]
    rho_old = tb.occupancy(P, pi_old, rho0, gamma)
    _close((rho_old[:, None] * pi_old * A_old).sum(), torch.tensor(0.0, dtype=DT), atol=1e-12)
    # importance-sampled form E_{s~rho_old, a~pi_old}[pi_theta / pi_old A_old] (Schulman et al. 2015, eq. 14)
    is_obj = (rho_old[:, None] * pi_old * tb.softmax_policy(theta) / pi_old * A_old).sum()
    (g_is,) = torch.autograd.grad(is_obj, theta)
    _close(g_is, g_eta)

    # PPO-clip library loss, one entry per (s, a): the exact weights rho_old(s) pi_old(a|s) are folded into
    # the advantages (a positive factor commutes with min and clip), N undoes the mean. Padding entries with
    # mask 0 and garbage values must not contribute.
    n = 5 * 3
    weights = (rho_old[:, None] * pi_old).reshape(-1)
    logp = torch.log_softmax(theta, -1).reshape(-1)
    pad = torch.tensor([7.0, -3.0], dtype=DT)
    loss, info = ppo_clip_loss(
        torch.cat([logp, pad]),
        torch.cat([torch.log(pi_old).reshape(-1), -pad]),
        torch.cat([n * weights * A_old.reshape(-1), 100 * pad]),
        0.2,
        mask=torch.cat([torch.ones(n, dtype=DT), torch.zeros(2, dtype=DT)]),
    )
    (g_ppo,) = torch.autograd.grad(loss, theta)
    _close(-g_ppo, g_eta)  # loss is minimised: its negative gradient is grad eta
    assert abs(loss.item()) < 1e-12  # E_old[A_old] = 0
    assert info["ratio_mean"].item() == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------- T9, T10: monotonic improvement, coupling


def _random_pairs(g, batch, n_states, n_actions):
    scale = 3 * torch.rand(batch, 1, 1, generator=g, dtype=DT)
    pi = tb.softmax_policy(scale * torch.randn(batch, n_states, n_actions, generator=g, dtype=DT))
    other = tb.softmax_policy(3 * torch.randn(batch, n_states, n_actions, generator=g, dtype=DT))
    m = torch.rand(batch, 1, 1, generator=g, dtype=DT) ** 3  # mixing weight, skewed small
    return pi, (1 - m) * pi + m * other


@pytest.mark.parametrize("seed,gamma", [(150, 0.5), (151, 0.9), (152, 0.99)])
def test_T9_monotonic_improvement_bound(seed, gamma):
    P, R, rho0, g = _setup(seed)
    pi, new = _random_pairs(g, 3000, 5, 3)
    V, Q = tb.policy_evaluation(P, R, pi, gamma)
    eps = (Q - V[..., None]).abs().amax((-1, -2))
    alpha = tb.tv_distance(pi, new).amax(-1)  # D_TV^max
    eta_new = tb.expected_return(P, R, new, rho0, gamma)
    L = tb.local_surrogate(P, R, pi, new, rho0, gamma)
    gap = eta_new - L
    tol = 1e-9
    # Schulman et al. 2015, Theorem 1 (docs/errata.md §11)
    assert (gap >= -4 * eps * gamma * alpha**2 / (1 - gamma) ** 2 - tol).all()
    # the tighter intermediate bound inside the proof
    tight = 4 * alpha**2 * gamma * eps / ((1 - gamma) * (1 - gamma * (1 - alpha)))
    assert (gap.abs() <= tight + tol).all()
    # KL form: C * D_KL^max(pi, new) via Pinsker
    kl_max = (pi * (pi.log() - new.log())).sum(-1).amax(-1)
    assert (gap >= -4 * eps * gamma / (1 - gamma) ** 2 * kl_max - tol).all()
    # non-vacuous: the surrogate really differs from eta, and the tight bound is within a modest factor
    assert gap.abs().max() > 1e-4
    assert (gap.abs() / (tight + 1e-300)).max() > 0.02


def test_T9_geometric_series_identity():
    for gamma in (0.5, 0.9, 0.99):
        for alpha in (0.0, 1e-3, 0.1, 0.7, 1.0):
            n = int(math.log(1e-18) / math.log(gamma)) + 1
            s = math.fsum(gamma**t * (1 - (1 - alpha) ** t) for t in range(n))
            assert s == pytest.approx(1 / (1 - gamma) - 1 / (1 - gamma * (1 - alpha)), abs=1e-10)


def test_T10_coupling_lemmas():
    P, R, rho0, g = _setup(160)
    gamma, horizon = 0.9, 30
    pi, new = _random_pairs(g, 1000, 5, 3)
    V, Q = tb.policy_evaluation(P, R, pi, gamma)
    A = Q - V[..., None]
    max_a = A.abs().amax((-1, -2))
    tv_s = tb.tv_distance(pi, new)  # [B, S]
    alpha = tv_s.amax(-1)
    a_bar = (new * A).sum(-1)  # A-bar(s) = E_{a~new}[A_pi(s, a)]
    assert (a_bar.abs() <= 2 * tv_s * max_a[:, None] + 1e-12).all()  # Schulman et al. 2015, App. A Lemma 2
    mu_new = tb.state_marginals(P, new, rho0, horizon)  # [B, T+1, S]
    mu_old = tb.state_marginals(P, pi, rho0, horizon)
    t = torch.arange(horizon + 1, dtype=DT)
    frac = 1 - (1 - alpha[:, None]) ** t  # [B, T+1]
    diff = ((mu_new - mu_old) * a_bar[:, None, :]).sum(-1).abs()
    assert (diff <= 4 * alpha[:, None] * frac * max_a[:, None] + 1e-12).all()  # Schulman et al. 2015, App. A Lemma 3
    tv_t = tb.tv_distance(mu_new, mu_old)
    assert (tv_t <= frac + 1e-12).all()
    assert (frac <= alpha[:, None] * t + 1e-12).all()
    assert (tv_t[:, 0] == 0).all() and tv_t.max() > 1e-3  # same start distribution, then they drift apart


# ---------------------------------------------------------------- T14: compatible function approximation


@pytest.mark.parametrize("param", ["tabular", "features"])
def test_T14_compatible_function_approximation(param):
    P, R, rho0, g = _setup(170, 5, 3)
    gamma = 0.9
    if param == "tabular":
        w0 = torch.randn(15, generator=g, dtype=DT)

        def logits(w):
            return w.reshape(5, 3)
    else:
        phi = torch.randn(5, 3, 4, generator=g, dtype=DT)
        w0 = torch.randn(4, generator=g, dtype=DT)

        def logits(w):
            return phi @ w

    w = w0.clone().requires_grad_()
    (grad,) = torch.autograd.grad(tb.expected_return(P, R, tb.softmax_policy(logits(w)), rho0, gamma), w)
    pi = tb.softmax_policy(logits(w0))
    V, Q = tb.policy_evaluation(P, R, pi, gamma)
    d = tb.occupancy(P, pi, rho0, gamma, normalized=True)
    psi = jacrev(lambda w_: torch.log_softmax(logits(w_), -1))(w0).reshape(15, -1)  # features grad log pi
    weight = (d[:, None] * pi).reshape(-1)
    sw = weight.sqrt()
    w_tilde = torch.linalg.lstsq((sw[:, None] * psi), (sw * Q.reshape(-1)).unsqueeze(-1), driver="gelsd")
    w_tilde = w_tilde.solution.squeeze(-1)
    F = psi.T @ (weight[:, None] * psi)  # Fisher with the same d^pi
    # Sutton et al. 2000, Theorem 2; Kakade 2001, Theorem 1: F w~ = sum_s d(s) sum_a Q grad pi = (1 - gamma) grad eta
    _close(F @ w_tilde, (1 - gamma) * grad, atol=1e-9)
    if param == "tabular":
        # the compatible fit of Q is exactly the advantage (features span the per-state zero-mean functions)
        _close((psi @ w_tilde).reshape(5, 3), Q - V[:, None], atol=1e-9)
        assert torch.linalg.matrix_rank(F) == 15 - 5  # singular: one null direction per state


# ---------------------------------------------------------------- T15(f): GAE is unbiased given V = V^pi


def _conditional_mean(values, prob, key, n_keys):
    num = torch.zeros(n_keys, dtype=DT).index_add_(0, key, prob * values)
    den = torch.zeros(n_keys, dtype=DT).index_add_(0, key, prob)
    return num / den


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95, 1.0])
def test_T15f_gae_is_conditionally_unbiased_with_true_values(lam):
    n_s, n_a, T, gamma = 3, 2, 3, 0.9
    P, R, _, g = _setup(180, n_s, n_a)
    pi = tb.softmax_policy(_softmax_params((n_s, n_a), g))
    V, Q = tb.policy_evaluation(P, R, pi, gamma)
    A = Q - V[:, None]
    states, actions = tb.enumerate_trajectories(n_s, n_a, T, final_state=True)
    uniform = torch.full((n_s,), 1.0 / n_s, dtype=DT)
    prob = tb.trajectory_log_prob(P, pi, uniform, states, actions).exp()
    _close(prob.sum(), torch.tensor(1.0, dtype=DT), atol=1e-13)
    rewards = R[states[:, :T], actions]
    adv, ret = gae(rewards, V[states[:, :T]], gamma=gamma, lam=lam, next_values=V[states[:, 1:]])
    for t in range(T):
        key = states[:, t] * n_a + actions[:, t]
        _close(_conditional_mean(adv[:, t], prob, key, n_s * n_a), A.reshape(-1), atol=1e-12)
        _close(_conditional_mean(ret[:, t], prob, key, n_s * n_a), Q.reshape(-1), atol=1e-12)
    # With arbitrary values the estimator is biased, and its exact conditional mean is the truncated sum
    # sum_{l < T-t} (gamma lam)^l E[delta_{t+l} | s_t, a_t], computed from the model (this part is
    # sensitive to the (gamma lam) weights, which the unbiased case above is not).
    Vb = 3 * torch.randn(n_s, generator=g, dtype=DT)
    bad, _ = gae(rewards, Vb[states[:, :T]], gamma=gamma, lam=lam, next_values=Vb[states[:, 1:]])
    delta_sa = R + gamma * P @ Vb - Vb[:, None]  # E[delta | s, a]
    delta_s = (pi * delta_sa).sum(-1)  # E[delta | s]
    P_pi = tb.policy_transition(P, pi)
    for t in range(T):
        expected, reach = delta_sa.clone(), P.clone()  # reach[s, a, :] = P(s_{t+l} = . | s_t = s, a_t = a)
        for lag in range(1, T - t):
            expected += (gamma * lam) ** lag * reach @ delta_s
            reach = reach @ P_pi
        key = states[:, t] * n_a + actions[:, t]
        _close(_conditional_mean(bad[:, t], prob, key, n_s * n_a), expected.reshape(-1), atol=1e-12)
    assert (expected - A).abs().max() > 1e-2


# ---------------------------------------------------------------- T24: DPG theorem on scalar LQR


@pytest.mark.parametrize("a,b,q,rho,gamma,k", [(0.9, 0.5, 1.0, 0.3, 0.95, -0.4), (1.1, -0.7, 0.5, 2.0, 0.9, 0.6)])
def test_T24_dpg_theorem_scalar_lqr(a, b, q, rho, gamma, k):
    s0 = 1.3
    c = a + b * k
    assert gamma * c * c < 1

    def j_closed(k_):
        c_ = a + b * k_
        return -(q + rho * k_**2) * s0**2 / (1 - gamma * c_**2)

    def j_rollout(k_, n=3000):
        s, total, disc = s0, 0.0, 1.0
        for _ in range(n):
            u = k_ * s
            total += disc * -(q * s * s + rho * u * u)
            s, disc = a * s + b * u, disc * gamma
        return total

    assert j_closed(k) == pytest.approx(j_rollout(k), abs=1e-11)
    kt = torch.tensor(k, dtype=DT, requires_grad=True)
    (dJ,) = torch.autograd.grad(j_closed(kt), kt)
    h = 1e-5
    assert dJ.item() == pytest.approx((j_rollout(k + h) - j_rollout(k - h)) / (2 * h), abs=1e-6)

    # Q^mu(s, u) = r(s, u) + gamma V(a s + b u), V(s) = -P s^2 for the fixed policy k.
    Pk = (q + rho * k**2) / (1 - gamma * c * c)
    n = int(math.log(1e-18) / math.log(gamma * c * c)) + 1
    s_t = s0 * torch.tensor(c, dtype=DT) ** torch.arange(n, dtype=DT)

    def q_fn(s, u):
        return -(q * s**2 + rho * u**2) - gamma * Pk * (a * s + b * u) ** 2

    u = (k * s_t).requires_grad_()
    (dq_du,) = torch.autograd.grad(q_fn(s_t, u).sum(), u)
    disc = gamma ** torch.arange(n, dtype=DT)
    dpg = (disc * s_t * dq_du).sum()  # sum_t gamma^t grad_k mu(s_t) grad_u Q(s_t, u)|_{u = k s_t}
    assert dpg.item() == pytest.approx(dJ.item(), abs=1e-10)
    closed = s0**2 * (-2 * rho * k - 2 * gamma * Pk * b * c) / (1 - gamma * c * c)
    assert closed == pytest.approx(dJ.item(), abs=1e-10)
    # The library's actor loss gives the same gradient when states are weighted by gamma^t (Q held fixed).
    kk = torch.tensor(k, dtype=DT, requires_grad=True)
    loss = dpg_actor_loss(disc * q_fn(s_t, kk * s_t))
    (g_loss,) = torch.autograd.grad(loss, kk)
    assert (-n * g_loss).item() == pytest.approx(dJ.item(), abs=1e-10)
