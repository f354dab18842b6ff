"""Trust-region machinery for NPG / TRPO: flat parameter views, conjugate gradient, Fisher-vector products by
double backprop, the natural-gradient step and the backtracking line search (Kakade 2001, "A natural policy
gradient"; Schulman et al. 2015, "Trust region policy optimization", §4-6 and App. C).

KL direction: everything here is built for KL(pi_old || pi_theta) with pi_old detached (Schulman et al. 2015,
the average-KL constraint), whose Hessian at theta = theta_old is the Fisher matrix F (Amari 1998;
docs/errata.md §7).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

__all__ = [
    "flat_params",
    "set_flat_params",
    "flat_grad",
    "conjugate_gradient",
    "fisher_vector_product",
    "natural_step",
    "backtracking_line_search",
    "trpo_step",
    "npg_step",
]


def flat_params(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Concatenate parameters into one detached 1-D vector (the theta of the natural-gradient step)."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def set_flat_params(params: Iterable[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy a flat vector (as produced by ``flat_params``) back into the parameters, in place, without autograd."""
    params = list(params)
    n = sum(p.numel() for p in params)
    if flat.numel() != n:
        raise ValueError(f"set_flat_params: got a vector of {flat.numel()} entries for {n} parameters")
    offset = 0
    with torch.no_grad():
        for p in params:
            k = p.numel()
            p.copy_(flat[offset : offset + k].view_as(p))
            offset += k


def flat_grad(output: torch.Tensor, params: Iterable[torch.Tensor], **kw) -> torch.Tensor:
    """Gradient of a scalar ``output`` w.r.t. ``params`` as one flat vector.

    Keyword arguments go to ``torch.autograd.grad`` (``retain_graph``, ``create_graph``). Parameters that do not
    influence ``output`` get a zero gradient instead of an error.
    """
    params = list(params)
    kw.setdefault("allow_unused", True)
    grads = torch.autograd.grad(output, params, **kw)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def conjugate_gradient(
    Avp: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    *,
    iters: int = 10,
    residual_tol: float = 1e-10,
) -> torch.Tensor:
    """Approximately solve ``A x = b`` for symmetric positive (semi-)definite A given only products ``A v``.

    Used for the TRPO search direction x = F^-1 g, which CG reaches from products F d alone (Schulman et al. 2015,
    App. C; 10 iterations there). Hestenes & Stiefel 1952. Starts from x = 0 and stops once the squared residual
    r^T r is <= ``residual_tol``. Because x_0 = 0, every iterate satisfies b^T x_k = x_k^T A x_k (the residual is
    orthogonal to the Krylov space containing x_k); ``trpo_step`` relies on this to scale the step.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rdotr = r.dot(r)
    for _ in range(iters):
        if rdotr <= residual_tol:
            break
        Ap = Avp(p)
        pAp = p.dot(Ap)
        if pAp <= 0:  # exact convergence (p = 0) or a direction of zero curvature: nothing more to gain
            break
        alpha = rdotr / pAp
        x = x + alpha * p
        r = r - alpha * Ap
        new_rdotr = r.dot(r)
        p = r + (new_rdotr / rdotr) * p
        rdotr = new_rdotr
    return x


def _fvp_closure(kl: torch.Tensor, params: list[torch.Tensor], damping: float):
    """Return v -> (F + damping I) v, differentiating ``kl`` once and re-using that graph for every product."""
    grad_kl = flat_grad(kl, params, create_graph=True)

    def fvp(v: torch.Tensor) -> torch.Tensor:
        v = v.detach()
        Fv = flat_grad(grad_kl.dot(v), params, retain_graph=True)
        return Fv + damping * v if damping else Fv

    return fvp


def fisher_vector_product(
    kl: torch.Tensor, params: Iterable[torch.Tensor], v: torch.Tensor, *, damping: float = 0.0
) -> torch.Tensor:
    """Fisher-vector product F v = grad_theta((grad_theta KL)^T v) + damping * v by double backprop.

    Pearlmutter 1994 / Schulman et al. 2015, App. C: f_k = d/dtheta_k ((dKL/dtheta)^T v); F = Hessian of the
    mean KL(pi_old || pi_theta) at theta = theta_old. ``kl`` must be a scalar built from ``params`` with pi_old
    detached; its graph is retained so the product can be called repeatedly. Damping (Tikhonov, F + damping I;
    Martens 2010) is not in Schulman et al. 2015: it and its default come from reference implementations.
    """
    return _fvp_closure(kl, list(params), damping)(v)


def natural_step(g: torch.Tensor, Finv_g: torch.Tensor, max_kl: float) -> torch.Tensor:
    """Trust-region step sqrt(2 delta / (g^T F^-1 g)) F^-1 g (Schulman et al. 2015, App. C).

    The step maximises g^T D subject to 0.5 D^T F D <= delta (KL ~ 0.5 D^T F D), the KKT solution; the
    sqrt(2 delta) and the 1/2 are both needed (docs/errata.md §5). Returns zeros when g^T F^-1 g <= 0 (no
    ascent direction).
    """
    shs = g.dot(Finv_g)
    if shs <= 0:
        return torch.zeros_like(Finv_g)
    return torch.sqrt(2.0 * max_kl / shs) * Finv_g


def backtracking_line_search(
    evaluate: Callable[[torch.Tensor], tuple],
    x0: torch.Tensor,
    full_step: torch.Tensor,
    *,
    max_kl: float,
    backtrack_coef: float = 0.5,
    max_backtracks: int = 10,
    expected_improve=None,
    accept_ratio: float = 0.0,
) -> tuple[bool, torch.Tensor, dict]:
    """Backtracking line search of TRPO (Schulman et al. 2015, App. C; docs/errata.md §6).

    Tries x_j = x0 + backtrack_coef^j * full_step for j = 0, 1, ..., max_backtracks (so at most
    ``max_backtracks + 1`` evaluations) and returns the FIRST x_j whose ``evaluate(x_j) -> (improvement, kl)``
    has improvement > 0, kl <= max_kl and, when ``expected_improve`` (the linear model's improvement of the
    full step) is given, improvement > accept_ratio * backtrack_coef^j * expected_improve: the smallest
    non-negative j, the full step first. Schulman et al. 2015 App. C give the backtracking and the KL check but
    no acceptance ratio: the expected-improvement test and its value (0.1 in rllab/baselines) come from
    reference implementations.

    Returns ``(accepted, x_new, info)``; when no j is accepted ``x_new`` is ``x0`` and ``accepted`` is False.
    info (python floats): step_frac, backtracks, improvement, kl, expected_improve (nan when not given).
    """
    info = {
        "step_frac": 0.0,
        "backtracks": float(max_backtracks + 1),
        "improvement": 0.0,
        "kl": 0.0,
        "expected_improve": math.nan,
    }
    for j in range(max_backtracks + 1):
        frac = backtrack_coef**j
        x = x0 + frac * full_step
        improve, kl = evaluate(x)
        improve, kl = float(improve), float(kl)
        ok = improve > 0 and kl <= max_kl
        if ok and expected_improve is not None:
            expected = frac * float(expected_improve)
            ok = improve > accept_ratio * expected
        if ok:
            info.update(step_frac=frac, backtracks=float(j), improvement=improve, kl=kl)
            if expected_improve is not None:
                info["expected_improve"] = frac * float(expected_improve)
            return True, x, info
    return False, x0.clone(), info


def _natural_direction(params, surrogate_fn, kl_fn, max_kl, cg_iters, damping):
    """Shared part of NPG/TRPO: g, x = (F + damping I)^-1 g by CG, and the full trust-region step."""
    surr = surrogate_fn()
    g = flat_grad(surr, params)
    fvp = _fvp_closure(kl_fn(), params, damping)
    x = conjugate_gradient(fvp, g, iters=cg_iters)
    # With CG started at 0, g^T x = x^T (F + damping I) x, so this step has 0.5 D^T (F + damping I) D = delta
    # exactly for the (possibly inexact) CG direction, as in Schulman et al.'s sqrt(shs / max_kl) scaling.
    step = natural_step(g, x, max_kl)
    return surr.detach(), g, step


def _evaluate_at(params, surrogate_fn, kl_fn, surr0):
    def evaluate(x):
        set_flat_params(params, x)
        with torch.no_grad():
            return (surrogate_fn() - surr0), kl_fn()

    return evaluate


def trpo_step(
    params: Iterable[torch.Tensor],
    surrogate_fn: Callable[[], torch.Tensor],
    kl_fn: Callable[[], torch.Tensor],
    *,
    max_kl: float,
    cg_iters: int = 10,
    damping: float = 0.1,
    backtrack_coef: float = 0.5,
    max_backtracks: int = 10,
) -> dict:
    """One TRPO update of ``params`` in place (Schulman et al. 2015, §6 and App. C).

    ``surrogate_fn()`` returns the scalar surrogate L_{theta_old}(theta) to MAXIMISE (e.g. mean ratio * A), and
    ``kl_fn()`` the mean KL(pi_old || pi_theta) with pi_old detached, both evaluated at the current ``params``.
    Direction x = (F + damping I)^-1 g by ``cg_iters`` CG iterations of double-backprop Fisher-vector products
    (Pearlmutter 1994), full step sqrt(2 delta / g^T x) x, then the backtracking line search on the true
    surrogate and KL (first accepted j >= 0; parameters are restored when every j is rejected). CG iterations:
    Schulman et al. 2015, App. C (10); the damping default is not from the paper but from reference
    implementations.

    Returns info (python floats): surrogate_before, improvement, expected_improve, kl, step_frac, backtracks,
    accepted (1.0/0.0), grad_norm, step_norm.
    """
    params = list(params)
    x0 = flat_params(params)
    surr0, g, step = _natural_direction(params, surrogate_fn, kl_fn, max_kl, cg_iters, damping)
    expected = g.dot(step)
    accepted, x_new, ls = backtracking_line_search(
        _evaluate_at(params, surrogate_fn, kl_fn, surr0),
        x0,
        step,
        max_kl=max_kl,
        backtrack_coef=backtrack_coef,
        max_backtracks=max_backtracks,
        expected_improve=expected,
    )
    set_flat_params(params, x_new)
    return {
        "surrogate_before": float(surr0),
        "improvement": ls["improvement"],
        "expected_improve": float(expected),
        "kl": ls["kl"],
        "step_frac": ls["step_frac"],
        "backtracks": ls["backtracks"],
        "accepted": float(accepted),
        "grad_norm": float(g.norm()),
        "step_norm": float(step.norm()) * ls["step_frac"],
    }


def npg_step(
    params: Iterable[torch.Tensor],
    surrogate_fn: Callable[[], torch.Tensor],
    kl_fn: Callable[[], torch.Tensor],
    *,
    max_kl: float,
    cg_iters: int = 10,
    damping: float = 0.1,
) -> dict:
    """One natural policy gradient update in place: theta += sqrt(2 delta / g^T F^-1 g) F^-1 g, no line search.

    Kakade 2001, with the step size that puts the quadratic KL model on the trust-region boundary (alpha = 1 /
    lambda, Schulman et al. 2015, App. C). Same arguments as ``trpo_step``; F^-1 g is approximated by CG on (F +
    damping I). Returns info (python floats): surrogate_before, improvement and kl after the step, expected_improve,
    grad_norm, step_norm.
    """
    params = list(params)
    x0 = flat_params(params)
    surr0, g, step = _natural_direction(params, surrogate_fn, kl_fn, max_kl, cg_iters, damping)
    improve, kl = _evaluate_at(params, surrogate_fn, kl_fn, surr0)(x0 + step)
    return {
        "surrogate_before": float(surr0),
        "improvement": float(improve),
        "expected_improve": float(g.dot(step)),
        "kl": float(kl),
        "grad_norm": float(g.norm()),
        "step_norm": float(step.norm()),
    }
