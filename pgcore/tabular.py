"""Exact dynamic programming on small tabular MDPs: the test oracle for the identity tests in tests/pgcore/.

Conventions: ``P`` is [S, A, S'] with rows summing to 1, ``R`` is [S, A] (expected reward r(s, a)), a policy
``pi`` is [S, A] with rows summing to 1, ``rho0`` is [S]. Every function also accepts leading batch
dimensions on ``pi`` (and on ``P``/``R``/``V``/``rho0`` where it makes sense): they broadcast, so thousands of
policies can be evaluated with one batched ``torch.linalg.solve``. Evaluation goes through
``torch.linalg.solve``, so autograd through a policy gives exact policy gradients. Use float64 for
identity checks.

Notation follows Sutton & Barto 2018 ch. 3-4 and Schulman et al. 2015 §2:
V^pi = (I - gamma P_pi)^{-1} r_pi, Q^pi = R + gamma P V^pi, rho_pi = sum_t gamma^t P(s_t = s) (unnormalised,
sums to 1/(1-gamma)), d^pi = (1 - gamma) rho_pi.
"""

from __future__ import annotations

import itertools

import torch

__all__ = [
    "random_mdp",
    "policy_transition",
    "policy_evaluation",
    "iterative_policy_evaluation",
    "bellman_operator",
    "greedy_policy",
    "policy_iteration",
    "value_iteration",
    "occupancy",
    "expected_return",
    "local_surrogate",
    "state_marginals",
    "finite_horizon_evaluation",
    "soft_bellman_operator",
    "soft_policy_evaluation",
    "soft_policy_iteration",
    "softmax_policy",
    "enumerate_trajectories",
    "trajectory_log_prob",
    "tv_distance",
    "maximal_coupling",
]


def random_mdp(n_states, n_actions, *, generator=None, dtype=torch.float64):
    """Random MDP of the identity tests' shared fixture: P(.|s,a) proportional to U^3, R ~ N(0, 1), rho0 random
    on the simplex.

    Cubing uniform draws makes transitions uneven (some next states likely, some rare) while keeping every
    probability positive, so every state is reachable and every trajectory has positive probability.
    Returns ``(P [S, A, S], R [S, A], rho0 [S])``.
    """
    u = torch.rand(n_states, n_actions, n_states, generator=generator, dtype=dtype) ** 3
    P = u / u.sum(-1, keepdim=True)
    R = torch.randn(n_states, n_actions, generator=generator, dtype=dtype)
    w = torch.rand(n_states, generator=generator, dtype=dtype) + 0.05
    return P, R, w / w.sum()


def policy_transition(P, pi):
    """State-to-state kernel of a policy, P_pi(s'|s) = sum_a pi(a|s) P(s'|s,a) (the chain of states under pi)."""
    return torch.einsum("...sa,...sat->...st", pi, P)


def _solve(A, b):
    # b is a (batch of) vector(s); unsqueeze so that torch never mistakes it for a matrix right-hand side.
    return torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)


def _q_from_v(V, P, R, gamma):
    # Q(s, a) = R(s, a) + gamma sum_s' P(s'|s,a) V(s')  (Sutton & Barto 2018, eq. 4.6). Broadcast-multiply-sum
    # rather than einsum: these tensors are tiny and the loops in value iteration call this thousands of times.
    return R + gamma * (P * V.unsqueeze(-2).unsqueeze(-2)).sum(-1)


def policy_evaluation(P, R, pi, gamma):
    """Exact policy evaluation by one linear solve (Sutton & Barto 2018, eq. 4.4: the fixed point of B^pi).

    V^pi = (I - gamma P_pi)^{-1} r_pi with r_pi(s) = sum_a pi(a|s) R(s, a), and Q^pi = R + gamma P V^pi.
    Differentiable in ``pi``, ``P`` and ``R``. Returns ``(V [..., S], Q [..., S, A])``.
    """
    P_pi = policy_transition(P, pi)
    n = P_pi.shape[-1]
    eye = torch.eye(n, dtype=P_pi.dtype, device=P_pi.device)
    r_pi = (pi * R).sum(-1)
    V = _solve(eye - gamma * P_pi, r_pi)
    return V, _q_from_v(V, P, R, gamma)


def bellman_operator(V, P, R, gamma, pi=None):
    """Bellman operators (Sutton & Barto 2018, eqs. 4.5 and 4.10).

    With ``pi``: B^pi V(s) = sum_a pi(a|s) [r(s,a) + gamma sum_s' P(s'|s,a) V(s')] (policy evaluation).
    Without: B V(s) = max_a [r(s,a) + gamma sum_s' P(s'|s,a) V(s')] (value iteration).
    """
    Q = _q_from_v(V, P, R, gamma)
    if pi is None:
        return Q.amax(-1)
    return (pi * Q).sum(-1)


def iterative_policy_evaluation(P, R, pi, gamma, *, tol=1e-12, max_iters=100000):
    """Iterative policy evaluation (Sutton & Barto 2018 §4.1): V_0 = 0, V_{k+1} = B^pi V_k.

    Stops when ||V_{k+1} - V_k||_inf <= tol and returns V_{k+1}; by Prop 24 it is then within
    gamma * tol / (1 - gamma) of V^pi.
    """
    V = torch.zeros_like((pi * R).sum(-1))
    for _ in range(max_iters):
        V_new = bellman_operator(V, P, R, gamma, pi)
        if (V_new - V).abs().amax() <= tol:
            return V_new
        V = V_new
    return V


def greedy_policy(Q):
    """Greedy policy pi(a|s) = 1{a = argmax_a' Q(s, a')}, one-hot (Sutton & Barto 2018, eq. 4.9).

    Ties go to the lowest action index.
    """
    return torch.nn.functional.one_hot(Q.argmax(-1), Q.shape[-1]).to(Q.dtype)


def policy_iteration(P, R, gamma, pi0=None):
    """Policy iteration (Sutton & Barto 2018 §4.3): evaluate pi_i exactly, then pi_{i+1} = greedy in
    Q^{pi_i}; stop when the policy no longer changes.

    ``pi0`` defaults to "always the first action". A state keeps its current action when that action is
    greedy up to 100 machine epsilons (relative), so round-off on ties cannot make the loop cycle. Lemma 21 bounds the
    loop by |A|^|S| improvements. Returns ``(pi, V, history)`` where ``history`` is the list
    [V^{pi_0}, V^{pi_1}, ..., V^{pi_final}].
    """
    n_states, n_actions = R.shape[-2:]
    if pi0 is None:
        pi0 = torch.zeros_like(R)
        pi0[..., 0] = 1.0
    pi = pi0
    history = []
    for _ in range(n_actions**n_states + 1):
        V, Q = policy_evaluation(P, R, pi, gamma)
        history.append(V)
        new = greedy_policy(Q)
        q_max = Q.amax(-1)
        q_cur = (pi * Q).sum(-1)
        tol = 100 * torch.finfo(Q.dtype).eps * (1.0 + Q.abs().amax())
        is_det = pi.amax(-1) == 1.0
        keep = is_det & (q_cur >= q_max - tol)
        new = torch.where(keep.unsqueeze(-1), pi, new)
        if torch.equal(new, pi):
            return pi, V, history
        pi = new
    raise RuntimeError("policy iteration did not terminate within |A|^|S| improvements")


def value_iteration(P, R, gamma, *, tol=1e-12, max_iters=100000):
    """Value iteration (Sutton & Barto 2018 §4.4): V_0 = 0, V_{k+1} = B V_k, pi greedy in the last backup.

    Stops when ||V_{k+1} - V_k||_inf <= tol, so ||V - V_*|| <= gamma tol / (1 - gamma) (Prop 24).
    Returns ``(V, pi)`` with ``pi`` one-hot.
    """
    V = torch.zeros_like(R[..., 0])
    for _ in range(max_iters):
        V_new = bellman_operator(V, P, R, gamma)
        done = (V_new - V).abs().amax() <= tol
        V = V_new
        if done:
            break
    return V, greedy_policy(_q_from_v(V, P, R, gamma))


def occupancy(P, pi, rho0, gamma, normalized=False):
    """Discounted state visitation rho_pi (Kakade & Langford 2002; Schulman et al. 2015 §2).

    rho_pi(s) = sum_t gamma^t P(s_t = s) = [(I - gamma P_pi^T)^{-1} rho0](s), summing to 1/(1 - gamma).
    With ``normalized=True`` returns d^pi = (1 - gamma) rho_pi (a distribution: the normalised
    discounted occupancy, not the stationary distribution of P_pi; docs/errata.md §12).
    """
    P_pi = policy_transition(P, pi)
    n = P_pi.shape[-1]
    eye = torch.eye(n, dtype=P_pi.dtype, device=P_pi.device)
    b = rho0.expand(torch.broadcast_shapes(rho0.shape, P_pi.shape[:-1]))
    rho = _solve(eye - gamma * P_pi.transpose(-1, -2), b)
    return (1.0 - gamma) * rho if normalized else rho


def expected_return(P, R, pi, rho0, gamma):
    """eta(pi) = E_{s0 ~ rho0}[V^pi(s0)] (Schulman et al. 2015 §2)."""
    V, _ = policy_evaluation(P, R, pi, gamma)
    return (rho0 * V).sum(-1)


def local_surrogate(P, R, pi, pi_new, rho0, gamma):
    """Local approximation L_pi(pi_new) = eta(pi) + sum_s rho_pi(s) sum_a pi_new(a|s) A_pi(s, a)
    (Kakade & Langford 2002; Schulman et al. 2015, eq. 3).

    State visitation and advantages come from ``pi``; only ``pi_new`` enters the inner sum. Gradients flow
    through both arguments as given: detach ``pi`` to get the surrogate as a function of ``pi_new`` only.
    """
    V, Q = policy_evaluation(P, R, pi, gamma)
    A = Q - V.unsqueeze(-1)
    rho = occupancy(P, pi, rho0, gamma)
    eta = (rho0 * V).sum(-1)
    return eta + (rho * (pi_new * A).sum(-1)).sum(-1)


def state_marginals(P, pi, rho0, horizon):
    """State marginals P(s_t = s | pi) for t = 0..horizon by the k-step recursion of the
    policy-gradient-theorem proof (Sutton & Barto 2018 §13.2).

    Returns [..., horizon + 1, S].
    """
    P_pi = policy_transition(P, pi)
    mu = rho0.expand(torch.broadcast_shapes(rho0.shape, P_pi.shape[:-1]))
    out = [mu]
    for _ in range(horizon):
        mu = torch.einsum("...s,...st->...t", mu, P_pi)
        out.append(mu)
    return torch.stack(out, dim=-2)


def finite_horizon_evaluation(P, R, pi, gamma, horizon):
    """Finite-horizon evaluation by backward induction: V_H = 0, V_t = B^pi V_{t+1} (Puterman 1994 ch. 4).

    Returns V_0 [..., S] = E[sum_{t<H} gamma^t r_t | s_0 = s]; differentiable in ``pi``.
    """
    V = torch.zeros_like((pi * R).sum(-1))
    for _ in range(horizon):
        V = bellman_operator(V, P, R, gamma, pi)
    return V


def soft_bellman_operator(Q, P, R, pi, gamma, alpha=1.0):
    """Soft Bellman backup (Haarnoja et al. 2018a §4.1; temperature written explicitly):
    T^pi Q(s, a) = r(s, a) + gamma E_{s'}[V(s')], V(s) = E_{a ~ pi}[Q(s, a) - alpha log pi(a|s)].

    ``xlogy`` makes 0 log 0 = 0, so deterministic policies are allowed.
    """
    V = (pi * Q).sum(-1) - alpha * torch.special.xlogy(pi, pi).sum(-1)
    return _q_from_v(V, P, R, gamma)


def soft_policy_evaluation(P, R, pi, gamma, *, alpha=1.0):
    """Exact soft policy evaluation (Haarnoja et al. 2018a, Lemma 1):
    V = (I - gamma P_pi)^{-1} E_pi[R - alpha log pi], Q = R + gamma P V.

    The paper folds alpha into the reward scale (alpha = 1; docs/errata.md §9); ``alpha`` is exposed as a keyword
    for the temperature-scaled form. Returns ``(V, Q)``.
    """
    P_pi = policy_transition(P, pi)
    n = P_pi.shape[-1]
    eye = torch.eye(n, dtype=P_pi.dtype, device=P_pi.device)
    r_soft = (pi * R).sum(-1) - alpha * torch.special.xlogy(pi, pi).sum(-1)
    V = _solve(eye - gamma * P_pi, r_soft)
    return V, _q_from_v(V, P, R, gamma)


def softmax_policy(theta):
    """Tabular softmax policy pi_theta(a|s) = exp(theta_sa) / sum_b exp(theta_sb) (the identity tests' fixture)."""
    return torch.softmax(theta, dim=-1)


def soft_policy_iteration(P, R, gamma, *, iters, alpha=1.0, pi0=None):
    """Soft policy iteration (Haarnoja et al. 2018a, Lemma 2 and Theorem 1):
    pi_{k+1}(.|s) = softmax(Q^{pi_k}(s, .) / alpha), the minimiser of KL(pi' || exp(Q/alpha) / Z).

    ``pi0`` defaults to uniform. Returns ``(pi, Q, history)``: the policy after ``iters`` improvements, its
    soft Q, and the list [Q^{pi_0}, ..., Q^{pi_iters}].
    """
    pi = torch.full_like(R, 1.0 / R.shape[-1]) if pi0 is None else pi0
    _, Q = soft_policy_evaluation(P, R, pi, gamma, alpha=alpha)
    history = [Q]
    for _ in range(iters):
        pi = softmax_policy(Q / alpha)
        _, Q = soft_policy_evaluation(P, R, pi, gamma, alpha=alpha)
        history.append(Q)
    return pi, Q, history


def enumerate_trajectories(n_states, n_actions, horizon, *, final_state=False, device=None):
    """All state/action sequences (s_0, a_0, ..., s_{H-1}, a_{H-1}[, s_H]) of a finite-horizon MDP.

    Used to take exact expectations over trajectories (the likelihood-ratio form of the policy gradient, Williams
    1992). Returns index tensors ``states [N, H (+1)]`` and ``actions [N, H]`` with N = S^(H(+1)) A^H; keep S, A, H
    tiny.
    """
    n_s = horizon + (1 if final_state else 0)
    s_idx = list(itertools.product(range(n_states), repeat=n_s))
    a_idx = list(itertools.product(range(n_actions), repeat=horizon))
    states = torch.tensor(s_idx, dtype=torch.long, device=device)
    actions = torch.tensor(a_idx, dtype=torch.long, device=device)
    n_a = actions.shape[0]
    return states.repeat_interleave(n_a, dim=0), actions.repeat(states.shape[0], 1)


def trajectory_log_prob(P, pi, rho0, states, actions):
    """log P_theta(tau) = log rho0(s_0) + sum_t log pi(a_t|s_t) + sum_t log P(s_{t+1}|s_t, a_t)
    (the dynamics terms do not depend on theta, Williams 1992). Transitions are counted for every next state present
    in ``states`` (so a trailing s_H adds log P(s_H|s_{H-1}, a_{H-1})). Returns [N].
    """
    h = actions.shape[-1]
    logp = torch.log(rho0[states[:, 0]]) + torch.log(pi[states[:, :h], actions]).sum(-1)
    n_next = states.shape[-1] - 1
    if n_next > 0:
        logp = logp + torch.log(P[states[:, :n_next], actions[:, :n_next], states[:, 1:]]).sum(-1)
    return logp


def tv_distance(p, q):
    """Total variation distance ||p - q||_TV = 1/2 sum_x |p(x) - q(x)| over the last dim
    (Levin, Peres & Wilmer 2017, Prop. 4.2)."""
    return 0.5 * (p - q).abs().sum(-1)


def maximal_coupling(p, q):
    """Constructive optimal coupling (Levin, Peres & Wilmer 2017, Prop. 4.7), as a joint matrix
    J[x, y] = P(X = x, Y = y) with marginals p, q and P(X != Y) = ||p - q||_TV.

    With m = sum min(p, q): X = Y ~ min(p, q) / m with probability m; otherwise X ~ (p - q)_+ / TV and,
    independently, Y ~ (q - p)_+ / TV. Y's law uses q - p, and P(X != Y) = 1 - m
    (docs/errata.md §10). The second part is an outer product that vanishes when TV = 0.
    """
    overlap = torch.minimum(p, q)
    tv = tv_distance(p, q)
    excess_p = (p - q).clamp_min(0)
    excess_q = (q - p).clamp_min(0)
    # (p-q)_+ (q-p)_+^T / TV; safe when TV = 0 because both excesses are then zero.
    denom = torch.where(tv > 0, tv, torch.ones_like(tv)).unsqueeze(-1).unsqueeze(-1)
    off = excess_p.unsqueeze(-1) * excess_q.unsqueeze(-2) / denom
    return torch.diag_embed(overlap) + off
