"""Offline-RL losses: IQL's expectile regression and AWR policy extraction (Kostrikov et al. 2021, "Offline
reinforcement learning with implicit Q-learning"), and CQL's conservative regulariser in its logsumexp form with
a Lagrange multiplier (Kumar et al. 2020, "Conservative Q-learning for offline reinforcement learning") and its
exact form over Discrete actions, and TD3+BC's actor loss (Fujimoto & Gu 2021, "A minimalist approach to offline
reinforcement learning").
"""

from __future__ import annotations

import math

import torch

from pgcore._util import masked_mean

__all__ = [
    "expectile_loss",
    "awr_weights",
    "awr_loss",
    "cql_logsumexp",
    "cql_regularizer",
    "cql_alpha_loss",
    "discrete_cql_gap",
    "td3bc_actor_loss",
]


def expectile_loss(diff: torch.Tensor, tau: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Asymmetric squared loss mean(|tau - 1(diff < 0)| * diff^2), diff = Q(s, a) - V(s).

    Kostrikov et al. 2021: L_2^tau(u) = |tau - 1{u < 0}| u^2 and L_V(psi) = E[L_2^tau(Q_hat(s, a) - V_psi(s))]; its
    minimiser over V is the tau-expectile of Q(s, .) under the behaviour policy (tau = 0.5: the mean; tau -> 1:
    the in-support maximum). Masked entries are ignored (0 when everything is masked).
    """
    # Build the weights in diff's dtype: torch.where on two python floats would round them to float32.
    weight = torch.where(diff < 0, diff.new_tensor(1.0 - tau), diff.new_tensor(tau))
    return masked_mean(weight * diff.square(), mask)


def awr_weights(advantages: torch.Tensor, beta: float, max_weight: float | None = 100.0) -> torch.Tensor:
    """Advantage weights exp(beta * A) clipped at ``max_weight``, detached (IQL policy extraction).

    The clip follows Kostrikov et al. 2021's code (ikostrikov/implicit_q_learning ``actor.py``:
    min(exp(beta (q - v)), 100)). The exponent is
    clamped at log(max_weight) before exp, which gives the same value without overflowing to inf.
    """
    z = beta * advantages.detach()
    if max_weight is not None:
        z = z.clamp(max=math.log(max_weight))
    return torch.exp(z)


def awr_loss(
    logp: torch.Tensor,
    advantages: torch.Tensor,
    beta: float,
    max_weight: float | None = 100.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Advantage-weighted regression loss -mean(w * log pi(a|s)), w = ``awr_weights(A, beta, max_weight)``.

    Kostrikov et al. 2021's L_pi(phi) = E[exp(beta (Q - V)) log pi_phi(a|s)] (AWR, Peng et al. 2019) is an
    objective to MAXIMISE; descending it would push probability away from good actions (docs/errata.md §8). So
    the loss to minimise carries the minus sign. Its minimiser over pi(.|s) is pi_beta(a|s) w(s, a) / Z(s); beta = 0 is
    behaviour cloning. ``mask`` (optional) ignores padded rows.
    """
    w = awr_weights(advantages, beta, max_weight)
    return -masked_mean(w * logp, mask)


def cql_logsumexp(q_samples: torch.Tensor, log_densities: torch.Tensor | None = None) -> torch.Tensor:
    """Importance-sampled log-sum-exp of Q over actions: logsumexp(q - log_density, dim=-1).

    Kumar et al. 2020's CQL(R) with R(mu) = -KL(mu || rho) gives max_mu E_mu[Q] - KL(mu || rho) =
    log sum_a rho(a|s) e^Q(s,a) (the Gibbs variational identity); with uniform rho this is the CQL(H) term, up
    to the constant log |A|. For
    continuous actions the integral log int e^Q(s,a) da is estimated from N sampled actions a_i ~ p with density
    p(a_i): log((1/N) sum_i e^{Q(s,a_i)} / p(a_i)) = cql_logsumexp - log N (Kumar et al. 2020,
    App. F). As in the CQL code, the constant log N is NOT subtracted (no effect on gradients; note it shifts the
    gap that a Lagrange threshold is compared with). Samples from several proposals may be concatenated along
    the last dim, each with its own density. ``log_densities=None``: the exact logsumexp over N discrete actions.

    q_samples [..., N] (log_densities broadcastable to it) -> [...].
    """
    if log_densities is not None:
        q_samples = q_samples - log_densities
    return torch.logsumexp(q_samples, dim=-1)


def cql_regularizer(
    q_samples: torch.Tensor, q_data: torch.Tensor, log_densities: torch.Tensor | None = None
) -> torch.Tensor:
    """CQL conservative term mean(cql_logsumexp(q_samples, log_densities) - Q(s, a_data)).

    Kumar et al. 2020, CQL(R) with R(mu) = -KL(mu || rho): alpha E_{s~D}[log sum_a rho e^Q - E_{a~pi_beta} Q(s, a)]
    (multiply by alpha outside). q_samples [B, N], q_data [B] (or [E, B, N] / [E, B] for a critic ensemble).
    """
    return (cql_logsumexp(q_samples, log_densities) - q_data).mean()


def cql_alpha_loss(log_alpha: torch.Tensor, gap: torch.Tensor, target_gap: float) -> torch.Tensor:
    """Lagrange-multiplier loss -exp(log_alpha) * (gap - target_gap), gap detached.

    Kumar et al. 2020, eq. 30 (CQL-Lagrange): min_Q max_{alpha >= 0} alpha (gap - tau). Minimising
    this loss in log_alpha is dual ascent: alpha grows while the conservative gap (``cql_regularizer`` value,
    averaged if not scalar) exceeds ``target_gap`` and shrinks otherwise.
    """
    return -log_alpha.exp() * (gap.detach().mean() - target_gap)


def discrete_cql_gap(q_all: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """CQL(H) over Discrete actions: mean_s(logsumexp_a Q(s, a) - Q(s, a_data)).

    Kumar et al. 2020, eq. 4 with the exact log-sum-exp over the |A| actions (their discrete-action variant, as
    d3rlpy's DiscreteCQL): no sampling, no importance weights. q_all [B, A], actions [B] integer indices -> scalar;
    multiply by alpha outside. It is >= 0 up to log |A|'s offset: logsumexp >= max >= Q(s, a_data).
    """
    q_data = q_all.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
    return cql_regularizer(q_all, q_data)


def td3bc_actor_loss(q: torch.Tensor, pi_actions: torch.Tensor, data_actions: torch.Tensor,
                     alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TD3+BC's actor loss -lambda mean(Q(s, pi(s))) + mean((pi(s) - a)^2), lambda = alpha / mean|Q| detached.

    Fujimoto & Gu 2021, eq. 3-5: pi = argmax E[lambda Q(s, pi(s)) - (pi(s) - a)^2]; lambda normalises Q's scale
    so that alpha (2.5 in the paper) sets the RL/BC balance for any reward scale. The squared error is averaged
    over the batch and the action dimensions (the authors' code: F.mse_loss). q [B], actions [B, A] ->
    (loss, lambda).
    """
    lam = alpha / q.detach().abs().mean()
    return -lam * q.mean() + (pi_actions - data_actions).square().mean(), lam
