"""KL divergences, sample estimators of KL, and KL-coefficient controllers.

KL direction: texts disagree (docs/errata.md §7); pgcore uses KL(old || new) for trust regions and
KL(policy || reference) for RLHF penalties, with samples drawn from the first argument.
"""

from __future__ import annotations

import math

import torch

__all__ = ["kl_estimate", "categorical_kl", "gaussian_kl", "adaptive_kl_beta", "proportional_kl_coef"]


def kl_estimate(logp, ref_logp, kind: str = "k1") -> torch.Tensor:
    """Per-sample estimator of KL(pi || ref) from samples ``a ~ pi``; ``log_ratio = logp - ref_logp``.

    J. Schulman, "Approximating KL divergence" (blog post, 2020).
    - ``k1 = log_ratio``: unbiased, can be negative.
    - ``k2 = 0.5 * log_ratio^2``: biased, >= 0, low variance (its expectation is KL to second order).
    - ``k3 = exp(-log_ratio) - 1 + log_ratio``: unbiased (E_pi[ref/pi] = 1) and >= 0 (``e^x >= 1 + x``).
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        # expm1 keeps precision when pi ~ ref (log_ratio ~ 0), where k3 ~ log_ratio^2 / 2.
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"kl_estimate: unknown kind {kind!r} (expected 'k1', 'k2' or 'k3')")


def categorical_kl(logits_p, logits_q) -> torch.Tensor:
    """Exact ``KL(p || q) = sum_a p(a) (log p(a) - log q(a))`` over the last dim, from logits.

    The per-state KL of TRPO's constraint (Schulman et al. 2015). Entries with p(a) = 0 (logit -inf)
    contribute 0 (``0 log 0 = 0``) rather than NaN.
    """
    logp = torch.log_softmax(logits_p, dim=-1)
    logq = torch.log_softmax(logits_q, dim=-1)
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq), torch.zeros((), dtype=p.dtype, device=p.device))
    return terms.sum(dim=-1)


def gaussian_kl(mu_p, log_std_p, mu_q, log_std_q) -> torch.Tensor:
    """Exact KL between diagonal Gaussians, summed over the last dim.

    Per dim: ``log(s_q / s_p) + (s_p^2 + (mu_p - mu_q)^2) / (2 s_q^2) - 1/2`` (the standard closed
    form; the per-state KL of TRPO/NPG for Gaussian policies).
    """
    var_ratio = torch.exp(2.0 * (log_std_p - log_std_q))
    mean_term = (mu_p - mu_q).square() * torch.exp(-2.0 * log_std_q)
    return (log_std_q - log_std_p + 0.5 * (var_ratio + mean_term) - 0.5).sum(dim=-1)


def adaptive_kl_beta(beta, kl, target) -> float:
    """Adaptive KL coefficient of PPO: ``d < target/1.5 -> beta/2``; ``d > 1.5 target -> 2 beta``.

    Schulman et al. 2017, §4 (d_targ). Boundary values (``d == target/1.5`` or ``d == 1.5 target``) and
    everything in between leave beta unchanged, as the paper's strict inequalities say.
    """
    d = float(kl)
    beta = float(beta)
    if d < target / 1.5:
        return beta / 2.0
    if d > target * 1.5:
        return beta * 2.0
    return beta


def proportional_kl_coef(kl_coef, kl, *, target, horizon, n_steps) -> float:
    """Proportional KL controller: ``e = clip(kl/target - 1, -0.2, 0.2)``, ``beta *= 1 + e n_steps/horizon``.

    Ziegler et al. 2019, "Fine-tuning language models from human preferences", §2.2 (the alternative to
    PPO's halve/double rule, ``adaptive_kl_beta``).
    """
    e = min(max(float(kl) / target - 1.0, -0.2), 0.2)
    out = float(kl_coef) * (1.0 + e * n_steps / horizon)
    if not math.isfinite(out):
        raise ValueError(f"proportional_kl_coef: non-finite coefficient from kl={kl!r}")
    return out
