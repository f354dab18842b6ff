"""Tabular dynamic programming against exact oracles: T1, T2, T3, T23 and cheap unit checks.

Oracles are independent of the code under test where possible: explicit Python loops over (s, a, s'),
brute force over every deterministic policy, truncated power series, and hand-built tight cases.
"""

import itertools
import math

import pytest
import torch

from pgcore import tabular as tb

DT = torch.float64
GAMMAS = [0.5, 0.9, 0.99]


def _mdp(seed, n_states=5, n_actions=3):
    g = torch.Generator().manual_seed(seed)
    P, R, rho0 = tb.random_mdp(n_states, n_actions, generator=g)
    return P, R, rho0, g


def _random_policy(shape, g, scale=1.0):
    return torch.softmax(scale * torch.randn(*shape, generator=g, dtype=DT), dim=-1)


def _all_deterministic_policies(n_states, n_actions):
    choices = torch.tensor(list(itertools.product(range(n_actions), repeat=n_states)))
    return torch.nn.functional.one_hot(choices, n_actions).to(DT)  # [A^S, S, A]


# ---------------------------------------------------------------- fixture sanity


def test_random_mdp_is_a_valid_mdp():
    P, R, rho0, _ = _mdp(0, 6, 4)
    assert P.shape == (6, 4, 6) and R.shape == (6, 4) and rho0.shape == (6,)
    assert P.dtype == DT and (P > 0).all() and (rho0 > 0).all()
    torch.testing.assert_close(P.sum(-1), torch.ones(6, 4, dtype=DT), rtol=0, atol=1e-14)
    torch.testing.assert_close(rho0.sum(), torch.tensor(1.0, dtype=DT), rtol=0, atol=1e-14)
    P32, _, _ = tb.random_mdp(3, 2, dtype=torch.float32)
    assert P32.dtype == torch.float32


# ---------------------------------------------------------------- T1: Bellman operators, evaluation, VI


def test_bellman_operator_matches_explicit_loops():
    P, R, _, g = _mdp(1, 4, 3)
    gamma = 0.9
    V = torch.randn(4, generator=g, dtype=DT)
    pi = _random_policy((4, 3), g)
    bp = tb.bellman_operator(V, P, R, gamma, pi)
    b = tb.bellman_operator(V, P, R, gamma)
    for s in range(4):
        q = [R[s, a].item() + gamma * sum(P[s, a, t].item() * V[t].item() for t in range(4)) for a in range(3)]
        assert bp[s].item() == pytest.approx(sum(pi[s, a].item() * q[a] for a in range(3)), abs=1e-13)
        assert b[s].item() == pytest.approx(max(q), abs=1e-13)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_T1_bellman_operators_are_gamma_contractions(gamma):
    P, R, _, g = _mdp(2)
    pi = _random_policy((5, 3), g)
    V = 10 * torch.randn(200, 5, generator=g, dtype=DT)
    W = 10 * torch.randn(200, 5, generator=g, dtype=DT)
    dist = (V - W).abs().max(-1).values
    for op in (lambda x: tb.bellman_operator(x, P, R, gamma, pi), lambda x: tb.bellman_operator(x, P, R, gamma)):
        contracted = (op(V) - op(W)).abs().max(-1).values
        assert (contracted <= gamma * dist + 1e-12).all()
    # Shifting V by a constant c moves B^pi V by exactly gamma c: the modulus gamma is attained, not loose.
    shifted = tb.bellman_operator(V[0] + 3.0, P, R, gamma, pi) - tb.bellman_operator(V[0], P, R, gamma, pi)
    torch.testing.assert_close(shifted, torch.full((5,), 3.0 * gamma, dtype=DT), rtol=0, atol=1e-12)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_T1_policy_evaluation_fixed_point_and_iteration(gamma):
    P, R, _, g = _mdp(3)
    pi = _random_policy((5, 3), g)
    V, Q = tb.policy_evaluation(P, R, pi, gamma)
    # Independent oracle: truncated Neumann series sum_t gamma^t P_pi^t r_pi.
    P_pi = torch.einsum("sa,sat->st", pi, P)
    r_pi = (pi * R).sum(-1)
    series, term = torch.zeros(5, dtype=DT), r_pi.clone()
    for _ in range(int(math.log(1e-17) / math.log(gamma)) + 1):
        series += term
        term = gamma * P_pi @ term
    torch.testing.assert_close(V, series, rtol=0, atol=1e-11)
    torch.testing.assert_close((pi * Q).sum(-1), V, rtol=0, atol=1e-12)  # V = E_pi Q
    torch.testing.assert_close(tb.bellman_operator(V, P, R, gamma, pi), V, rtol=0, atol=1e-12)
    V_it = tb.iterative_policy_evaluation(P, R, pi, gamma, tol=1e-13)
    torch.testing.assert_close(V_it, V, rtol=0, atol=1e-10)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_T1_value_iteration_finds_the_best_deterministic_policy(gamma):
    P, R, _, g = _mdp(4, 4, 3)
    V_star, pi_star = tb.value_iteration(P, R, gamma)
    torch.testing.assert_close(tb.bellman_operator(V_star, P, R, gamma), V_star, rtol=0, atol=1e-10)
    # Brute force over all 3^4 deterministic policies: V* is their elementwise max (Puterman 1994, ch. 6).
    V_all, _ = tb.policy_evaluation(P, R, _all_deterministic_policies(4, 3), gamma)
    torch.testing.assert_close(V_star, V_all.max(0).values, rtol=0, atol=1e-9)
    V_pi_star, _ = tb.policy_evaluation(P, R, pi_star, gamma)
    torch.testing.assert_close(V_pi_star, V_star, rtol=0, atol=1e-9)
    # No stochastic policy beats it either.
    V_rand, _ = tb.policy_evaluation(P, R, _random_policy((500, 4, 3), g, scale=3.0), gamma)
    assert (V_rand <= V_star + 1e-9).all()


def test_iterative_evaluation_broadcasts_over_policies():
    P, R, _, g = _mdp(5)
    pis = _random_policy((7, 5, 3), g)
    V, _ = tb.policy_evaluation(P, R, pis, 0.8)
    V_it = tb.iterative_policy_evaluation(P, R, pis, 0.8)
    assert V.shape == (7, 5)
    torch.testing.assert_close(V_it, V, rtol=0, atol=1e-10)
    for i in range(7):
        torch.testing.assert_close(V[i], tb.policy_evaluation(P, R, pis[i], 0.8)[0], rtol=0, atol=1e-13)


# ---------------------------------------------------------------- T2: policy iteration


@pytest.mark.parametrize("seed,gamma", [(10, 0.5), (11, 0.9), (12, 0.99), (13, 0.95)])
def test_T2_policy_iteration(seed, gamma):
    n_states, n_actions = 5, 3
    P, R, _, g = _mdp(seed, n_states, n_actions)
    pi0 = torch.nn.functional.one_hot(torch.randint(n_actions, (n_states,), generator=g), n_actions).to(DT)
    pi, V, history = tb.policy_iteration(P, R, gamma, pi0)
    V_star, _ = tb.value_iteration(P, R, gamma)
    assert 1 <= len(history) <= n_actions**n_states
    torch.testing.assert_close(V, V_star, rtol=0, atol=1e-9)
    for before, after in zip(history, history[1:]):
        assert (after >= before - 1e-12).all()  # policy improvement theorem (Sutton & Barto 2018 §4.2): monotone ...
        assert (after - before).max() > 1e-12  # ... and strict while the policy is suboptimal
    # The final policy is deterministic and greedy in Q*.
    Q_star = R + gamma * torch.einsum("sat,t->sa", P, V_star)
    torch.testing.assert_close(pi, tb.greedy_policy(Q_star), rtol=0, atol=0)
    torch.testing.assert_close(pi.sum(-1), torch.ones(n_states, dtype=DT), rtol=0, atol=0)


def test_policy_iteration_default_start_and_greedy_one_hot():
    P, R, _, _ = _mdp(14, 4, 2)
    pi, V, history = tb.policy_iteration(P, R, 0.7)
    V_first, _ = tb.policy_evaluation(P, R, torch.tensor([[1.0, 0.0]] * 4, dtype=DT), 0.7)
    torch.testing.assert_close(history[0], V_first)  # default pi0 = always action 0
    q = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 5.0]], dtype=DT)
    torch.testing.assert_close(tb.greedy_policy(q), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]], dtype=DT))


# ---------------------------------------------------------------- T3: Bellman-residual bounds (Williams & Baird 1993)


def _greedy_in(V, P, R, gamma):
    return tb.greedy_policy(R + gamma * torch.einsum("sat,t->sa", P, V))


@pytest.mark.parametrize("gamma", GAMMAS)
def test_T3_bellman_error_bounds(gamma):
    P, R, _, g = _mdp(20)
    V_star, _ = tb.value_iteration(P, R, gamma)
    tol = 1e-9
    for k in range(40):
        scale = [0.01, 0.3, 3.0][k % 3]
        V = V_star + scale * torch.randn(5, generator=g, dtype=DT)
        if k % 2:
            V = V_star + (V - V_star).abs()  # the V >= V* variant
        eps = (tb.bellman_operator(V, P, R, gamma) - V).abs().max()
        pi = _greedy_in(V, P, R, gamma)
        V_pi, _ = tb.policy_evaluation(P, R, pi, gamma)
        assert (V - V_star).abs().max() <= eps / (1 - gamma) + tol  # contraction bound
        eps_pi = (tb.bellman_operator(V, P, R, gamma, pi) - V).abs().max()
        assert (V - V_pi).abs().max() <= eps_pi / (1 - gamma) + tol  # contraction bound, policy form
        assert (V_pi >= V_star - 2 * gamma * eps / (1 - gamma) - tol).all()  # greedy-policy loss, tight form
        assert (V_pi >= V_star - 2 * eps / (1 - gamma) - tol).all()  # greedy-policy loss
        if k % 2:
            assert (V_pi >= V_star - eps / (1 - gamma) - tol).all()  # greedy-policy loss when V >= V*


def test_T3_prop24_is_tight_for_a_constant_shift():
    # V = V* + c: B V = V* + gamma c, so eps = (1 - gamma)|c| and ||V - V*|| = eps / (1 - gamma) exactly.
    gamma = 0.9
    P, R, _, _ = _mdp(21)
    V_star, _ = tb.value_iteration(P, R, gamma)
    V = V_star - 2.5
    eps = (tb.bellman_operator(V, P, R, gamma) - V).abs().max()
    assert eps.item() == pytest.approx(2.5 * (1 - gamma), abs=1e-10)
    assert (V - V_star).abs().max().item() == pytest.approx(eps.item() / (1 - gamma), abs=1e-9)


# ---------------------------------------------------------------- T23: soft policy iteration


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_T23_soft_evaluation_equals_iterated_soft_backup(gamma):
    P, R, _, g = _mdp(30, 4, 3)
    pi = _random_policy((4, 3), g, scale=2.0)
    V, Q = tb.soft_policy_evaluation(P, R, pi, gamma)
    Q_it = torch.zeros_like(R)
    for _ in range(int(math.log(1e-15) / math.log(gamma)) + 20):
        Q_it = tb.soft_bellman_operator(Q_it, P, R, pi, gamma)
    torch.testing.assert_close(Q, Q_it, rtol=0, atol=1e-11)
    # V = E_pi[Q - log pi] and, with the entropy removed, the soft value exceeds the plain one by the
    # discounted entropy (r_pi(s) = r + H(pi(.|s)) view of Haarnoja et al. 2018a, Lemma 1).
    torch.testing.assert_close(V, (pi * (Q - pi.log())).sum(-1), rtol=0, atol=1e-12)
    H = -(pi * pi.log()).sum(-1)
    V_plain, _ = tb.policy_evaluation(P, R, pi, gamma)
    V_H, _ = tb.policy_evaluation(P, H.unsqueeze(-1).expand(4, 3), pi, gamma)
    torch.testing.assert_close(V, V_plain + V_H, rtol=0, atol=1e-12)
    # Temperature: alpha scales the entropy reward.
    V2, _ = tb.soft_policy_evaluation(P, R, pi, gamma, alpha=0.3)
    torch.testing.assert_close(V2, V_plain + 0.3 * V_H, rtol=0, atol=1e-12)


@pytest.mark.parametrize("gamma", [0.5, 0.9])
def test_T23_soft_policy_improvement_and_convergence(gamma):
    P, R, _, g = _mdp(31, 4, 3)
    pi_old = _random_policy((4, 3), g, scale=2.0)
    V_old, Q_old = tb.soft_policy_evaluation(P, R, pi_old, gamma)
    pi_new = tb.softmax_policy(Q_old)
    lhs = (pi_new * (Q_old - pi_new.log())).sum(-1)
    assert (lhs >= V_old - 1e-12).all() and (lhs - V_old).max() > 1e-6  # Haarnoja 2018a Lemma 2, strict
    _, Q_new = tb.soft_policy_evaluation(P, R, pi_new, gamma)
    assert (Q_new >= Q_old - 1e-12).all()  # Haarnoja et al. 2018a, Lemma 2

    _, Q, history = tb.soft_policy_iteration(P, R, gamma, iters=60)
    assert len(history) == 61
    for before, after in zip(history, history[1:]):
        assert (after >= before - 1e-11).all()
    # Converged to the soft-optimal fixed point Q* = R + gamma P logsumexp(Q*) (soft Bellman optimality).
    fixed = R + gamma * torch.einsum("sat,t->sa", P, torch.logsumexp(Q, -1))
    torch.testing.assert_close(Q, fixed, rtol=0, atol=1e-9)
    # Haarnoja et al. 2018a, Theorem 1: Q* dominates the soft Q of every policy.
    _, Q_rand = tb.soft_policy_evaluation(P, R, _random_policy((300, 4, 3), g, scale=3.0), gamma)
    assert (Q_rand <= Q + 1e-9).all()


def test_softmax_policy_rows_are_distributions():
    theta = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]], dtype=DT)
    torch.testing.assert_close(tb.softmax_policy(theta), torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=DT))


# ---------------------------------------------------------------- cheap unit checks


def test_discounted_return_recursion():
    adv = pytest.importorskip("pgcore.advantages")
    g = torch.Generator().manual_seed(40)
    r = torch.randn(3, 9, generator=g, dtype=DT)
    gamma = 0.87
    G = adv.discounted_returns(r, gamma)
    direct = torch.stack([sum(gamma**k * r[:, t + k] for k in range(9 - t)) for t in range(9)], -1)
    torch.testing.assert_close(G, direct, rtol=0, atol=1e-12)
    torch.testing.assert_close(G[:, :-1], r[:, :-1] + gamma * G[:, 1:], rtol=0, atol=1e-12)  # G_t = r_t + g G_t+1


@pytest.mark.parametrize("T,rho", [(5, 0.3), (20, 0.8), (12, -0.05)])
def test_equicorrelated_return_variance(T, rho):
    # equicorrelated rewards: Var(r_t) = s^2, Cov(r_t, r_t') = rho s^2  =>  Var(sum_t r_t) = T s^2 + T(T-1) rho s^2.
    sigma = 1.7
    cov = sigma**2 * ((1 - rho) * torch.eye(T, dtype=DT) + rho * torch.ones(T, T, dtype=DT))
    formula = T * sigma**2 + T * (T - 1) * rho * sigma**2
    ones = torch.ones(T, dtype=DT)
    assert (ones @ cov @ ones).item() == pytest.approx(formula, rel=1e-12)
    # Monte Carlo with correlated Gaussian rewards (independent of the algebra above).
    g = torch.Generator().manual_seed(41)
    L = torch.linalg.cholesky(cov)
    samples = torch.randn(200_000, T, generator=g, dtype=DT) @ L.T
    assert samples.sum(-1).var().item() == pytest.approx(formula, rel=0.02)


def test_equicorrelated_variance_is_quadratic_in_horizon():
    sigma, rho = 1.0, 0.4
    ratio = [(T * sigma**2 + T * (T - 1) * rho * sigma**2) / (rho * sigma**2 * T**2) for T in (10, 100, 10_000)]
    assert ratio[0] > ratio[1] > ratio[2] and ratio[2] == pytest.approx(1.0, abs=1e-3)


def test_tabular_q_learning_with_harmonic_steps_approaches_q_star():
    # Watkins & Dayan 1992 (Sutton & Barto 2018, eq. 6.8): q <- q + alpha (r + gamma max q(s') - q),
    # alpha_i = 1/i per (s, a) visit count,
    # (s, a) drawn uniformly (every pair visited infinitely often), s' ~ P.
    gamma = 0.5
    P, R, _, g = _mdp(42, 4, 2)
    V_star, _ = tb.value_iteration(P, R, gamma)
    Q_star = (R + gamma * torch.einsum("sat,t->sa", P, V_star)).tolist()
    n_steps = 40_000
    sa = torch.randint(8, (n_steps,), generator=g)
    nxt = torch.multinomial(P.reshape(8, 4), n_steps, replacement=True, generator=g)  # [8, n_steps]
    Rl, sal, nxtl = R.tolist(), sa.tolist(), nxt.tolist()
    rng_pos = [0] * 8  # next unused sample for each (s, a)
    q = [[0.0, 0.0] for _ in range(4)]
    counts = [[0, 0] for _ in range(4)]
    err0 = max(abs(Q_star[s][a]) for s in range(4) for a in range(2))
    for i in sal:
        s, a = divmod(i, 2)
        s2 = nxtl[i][rng_pos[i]]
        rng_pos[i] += 1
        counts[s][a] += 1
        target = Rl[s][a] + gamma * max(q[s2])
        q[s][a] += (target - q[s][a]) / counts[s][a]
    err = max(abs(q[s][a] - Q_star[s][a]) for s in range(4) for a in range(2))
    assert err < 0.05 and err < 0.1 * err0
