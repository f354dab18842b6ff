"""Policy and critic losses and bootstrapped targets (all losses are scalars to MINIMISE).

Targets (``*_target``) are returned detached: they are regression labels, never differentiated.
Every bootstrapped target is done-masked (as in Mnih et al. 2015's DQN target, y = r at a terminal):
``terminated`` = 1 means the next state is terminal (value 0); time-limit truncations must pass 0.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ._util import masked_mean
from .kl import kl_estimate

__all__ = [
    "reinforce_loss",
    "ppo_clip_loss",
    "ppo_kl_penalty_loss",
    "value_loss",
    "entropy_bonus",
    "clipped_surrogate",
    "importance_log_ratio",
    "mask_truncated_completions",
    "aggregate_token_loss",
    "grpo_loss",
    "sac_q_target",
    "clipped_double_q",
    "sac_actor_loss",
    "sac_temperature_loss",
    "td_target",
    "td3_smoothed_action",
    "dpg_actor_loss",
    "dqn_target",
    "double_dqn_target",
    "epsilon_greedy_probs",
    "polyak_update",
]


def _detach(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


def _not_done(terminated, like: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.as_tensor(terminated, device=like.device).to(like.dtype)


def _valid(x: torch.Tensor, mask) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(x, dtype=torch.bool)
    return torch.broadcast_to(torch.as_tensor(mask, device=x.device) != 0, x.shape)


# --------------------------------------------------------------------------------------------- on-policy


def reinforce_loss(logp, weights, mask=None) -> torch.Tensor:
    """Score-function surrogate ``-mean(log pi(a_t|s_t) * w_t)`` with ``w`` detached.

    Williams 1992 (REINFORCE); Sutton & Barto 2018 §13.3-13.5: ``w`` is the return G_t (reward-to-go),
    ``G_t - b(s_t)`` (baseline) or an advantage estimate (actor-critic). Its gradient is the negated
    policy-gradient estimate. Every step counts, t = 0 included, and the gradient comes from differentiating
    this loss (docs/errata.md §1-3).
    """
    return -masked_mean(logp * _detach(weights), mask)


def ppo_clip_loss(logp, old_logp, advantages, clip_eps, mask=None):
    """PPO clipped surrogate ``-mean(min(r A, clip(r, 1-eps, 1+eps) A))``, ``r = exp(logp - old_logp)``.

    Schulman et al. 2017, eq. 7 (L^CLIP). This is NOT ``min(r, clip(r)) A``: they differ when A < 0. ``old_logp``
    and ``advantages`` are treated as constants. ``info``: ``clipfrac`` = fraction with ``|r - 1| > eps``
    (OpenAI-baselines definition), ``clip_active_frac`` = fraction where the clipped term is the strictly smaller
    one (zero-gradient region), ``approxkl = 0.5 mean((logp - old_logp)^2)`` (the k2 estimator), ``ratio_mean``,
    ``ratio_max`` (valid entries only; 0 for an all-masked batch).
    """
    old_logp, adv = _detach(old_logp), _detach(advantages)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    surr = ratio * adv
    surr_clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv
    objective = torch.minimum(surr, surr_clipped)
    loss = -masked_mean(objective, mask)
    with torch.no_grad():
        valid = _valid(ratio, mask)
        ninf = torch.tensor(float("-inf"), dtype=ratio.dtype, device=ratio.device)
        rmax = torch.where(valid, ratio, ninf).max() if ratio.numel() else ninf
        info = {
            "clipfrac": masked_mean(((ratio - 1.0).abs() > clip_eps).to(ratio.dtype), mask),
            "clip_active_frac": masked_mean((surr_clipped < surr).to(ratio.dtype), mask),
            "approxkl": 0.5 * masked_mean(log_ratio.square(), mask),
            "ratio_mean": masked_mean(ratio, mask),
            "ratio_max": torch.where(torch.isfinite(rmax), rmax, torch.zeros_like(rmax)),
        }
    return loss, info


def ppo_kl_penalty_loss(logp, old_logp, advantages, kl, beta, mask=None):
    """PPO adaptive-KL-penalty objective, negated: ``-mean(r A) + beta * mean(kl)``.

    Schulman et al. 2017, eq. 8 (L^KLPEN: maximise ``E[r A - beta KL(pi_old || pi_new)]``); ``kl`` is a
    per-sample KL(old || new) (docs/errata.md §7) computed by the caller with gradients flowing into the new
    policy. ``beta`` is a constant here; update it between iterations with ``pgcore.kl.adaptive_kl_beta``
    (Schulman et al. 2017 §4).
    """
    old_logp, adv = _detach(old_logp), _detach(advantages)
    ratio = torch.exp(logp - old_logp)
    surrogate = masked_mean(ratio * adv, mask)
    kl_mean = masked_mean(kl, mask)
    loss = -surrogate + _detach(beta) * kl_mean
    info = {
        "surrogate": surrogate.detach(),
        "kl": kl_mean.detach(),
        "ratio_mean": masked_mean(ratio.detach(), mask),
    }
    return loss, info


def value_loss(values, returns, *, old_values=None, clip_eps=None, mask=None):
    """Critic regression ``0.5 mean((V - y)^2)``, optionally with PPO value clipping.

    The squared-error term L^VF of Schulman et al. 2017, eq. 9 (``(V_phi(s_t) - y_t)^2``). Value clipping follows
    OpenAI baselines PPO2 (``baselines/ppo2/model.py``):
    ``0.5 mean(max((V - y)^2, (V_old + clip(V - V_old, -eps, eps) - y)^2))``. ``returns`` and ``old_values`` are
    constants. ``info["clipfrac"]``: fraction where the clipped error is the strictly larger term (TRL's
    ``vf_clipfrac``), 0 without clipping.
    """
    y = _detach(returns)
    err = (values - y).square()
    if clip_eps is None or old_values is None:
        loss = 0.5 * masked_mean(err, mask)
        return loss, {"clipfrac": torch.zeros((), dtype=values.dtype, device=values.device)}
    old = _detach(old_values)
    v_clipped = old + torch.clamp(values - old, -clip_eps, clip_eps)
    err_clipped = (v_clipped - y).square()
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((err_clipped > err).to(values.dtype), mask)
    return loss, {"clipfrac": clipfrac}


def entropy_bonus(entropy, mask=None) -> torch.Tensor:
    """Mean policy entropy (the ``c_2 S`` term of Schulman et al. 2017, eq. 9); callers SUBTRACT ``coef * bonus``."""
    return masked_mean(entropy, mask)


IS_LEVELS = ("token", "sequence")


def importance_log_ratio(logp, old_logp, mask=None, level: str = "token") -> torch.Tensor:
    """The log importance ratio ``log r`` of each token, ``[B, T]``, at token or sequence level.

    - ``"token"``: ``log r_{i,t} = log pi(o_{i,t}|.) - log pi_old(o_{i,t}|.)`` (PPO, GRPO);
    - ``"sequence"``: every token of completion i gets ``log s_i = (1/|o_i|) sum_t (log pi - log pi_old)``, the
      log of the length-normalised sequence likelihood ratio ``s_i = (pi(o_i|q) / pi_old(o_i|q))^(1/|o_i|)`` of
      GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization", §4.1): one clip decision per completion.
      ``mask`` gives ``|o_i|`` (tokens where it is non-zero; entries off the mask are ignored even when NaN).
    ``old_logp`` is a constant; the gradient flows into ``logp``.
    """
    if level not in IS_LEVELS:
        raise ValueError(f"importance_log_ratio: unknown level {level!r} (expected 'token' or 'sequence')")
    lr = logp - _detach(old_logp)
    if level == "token":
        return lr
    valid = _valid(lr, mask)
    zero = torch.zeros((), dtype=lr.dtype, device=lr.device)
    seq = torch.where(valid, lr, zero).sum(-1, keepdim=True) / valid.sum(-1, keepdim=True).clamp_min(1)
    return seq.expand_as(lr)


def mask_truncated_completions(mask, terminated) -> torch.Tensor:
    """``mask [B, T]`` with the rows of completions that did not terminate zeroed: ``mask * terminated[:, None]``.

    A completion cut at the generation budget (no EOS) has no outcome a reward can judge fairly; leaving it out
    of the loss (DAPO, Yu et al. 2025, §3.4, "overlong filtering"; TRL's ``mask_truncated_completions``) keeps
    the policy from being pushed by the rewards of unfinished answers. Its tokens also leave the token counts of
    the loss aggregation; its reward still counts in its group's baseline.
    """
    m = torch.as_tensor(mask)
    keep = torch.as_tensor(terminated, device=m.device).to(m.dtype)
    return m * keep.reshape(-1, *([1] * (m.dim() - 1)))


def clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high=None, *, mask=None, level: str = "token"):
    """Per-token clipped surrogate loss ``-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)``, unreduced.

    The PPO-clip term (Schulman et al. 2017, eq. 7; ``ppo_clip_loss`` with ``eps_high = eps_low``) with DAPO's
    decoupled bounds (Yu et al. 2025, DAPO, §3.1 "Clip-Higher": a larger ``eps_high`` leaves low-probability
    tokens room to grow). ``r = exp(importance_log_ratio(logp, old_logp, mask, level))``: the token ratio, or
    GSPO's sequence ratio (``level="sequence"``, which needs ``mask``) given to every token of its completion.
    ``advantages`` broadcast against ``logp`` (``[B, 1]`` gives each completion one outcome advantage for all its
    tokens, as in GRPO). ``old_logp`` and ``advantages`` are constants. Returns ``(loss [..], info)``, ``info``
    holding boolean tensors of where the clipped term is the active one (zero gradient): ``low``
    (``r < 1 - eps_low`` and ``A < 0``), ``high`` (``r > 1 + eps_high`` and ``A > 0``), and the ``ratio``.
    """
    eps_high = eps_low if eps_high is None else eps_high
    adv = _detach(advantages)
    ratio = torch.exp(importance_log_ratio(logp, old_logp, mask, level))
    surr = ratio * adv
    surr_clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    loss = -torch.minimum(surr, surr_clipped)
    with torch.no_grad():
        r, a = ratio.detach(), torch.broadcast_to(adv, ratio.shape)
        info = {"low": (r < 1.0 - eps_low) & (a < 0), "high": (r > 1.0 + eps_high) & (a > 0), "ratio": r}
    return loss, info


AGGREGATIONS = ("token", "sequence", "dr_grpo")


def aggregate_token_loss(per_token, mask, mode: str = "token", *, max_length: int | None = None,
                         num_sequences=None, num_tokens=None) -> torch.Tensor:
    """Reduce a per-token loss ``[B, T]`` over completions of different lengths to a scalar.

    - ``"token"``: ``sum_{i,t} l_{i,t} / sum_i |o_i|``, every token weighs the same (Yu et al. 2025, DAPO,
      §3.3 "Token-Level Policy Gradient Loss");
    - ``"sequence"``: ``(1/G) sum_i (1/|o_i|) sum_t l_{i,t}``, each completion's token mean, then the mean over
      completions (Shao et al. 2024, DeepSeekMath, eq. 3): a token of a long completion weighs less;
    - ``"dr_grpo"``: ``sum_{i,t} l_{i,t} / (B * max_length)``, a constant denominator (Liu et al. 2025,
      "Understanding R1-Zero-Like Training" (Dr. GRPO), §3.1), which removes the length normalisation's
      bias (short wrong answers pushed down harder than long ones) without a batch-dependent weight.

    ``num_sequences`` / ``num_tokens`` override the batch's own counts (B and ``sum(mask)``), so that the
    losses of the micro-batches of one minibatch, each reduced with the minibatch's counts, add up to the
    minibatch's loss exactly. ``dr_grpo`` needs ``max_length`` (the generation budget). Masked entries are
    ignored even when they hold NaN.
    """
    m = torch.as_tensor(mask, device=per_token.device).to(per_token.dtype)
    valid = m != 0
    zero = torch.zeros((), dtype=per_token.dtype, device=per_token.device)
    lm = torch.where(valid, per_token * m, zero)
    n_seq = per_token.shape[0] if num_sequences is None else num_sequences
    if mode == "token":
        n_tok = m.sum() if num_tokens is None else num_tokens
        return lm.sum() / torch.clamp(torch.as_tensor(n_tok, dtype=lm.dtype, device=lm.device), min=1.0)
    if mode == "sequence":
        per_seq = lm.sum(-1) / m.sum(-1).clamp_min(1.0)
        return per_seq.sum() / max(float(n_seq), 1.0)
    if mode == "dr_grpo":
        if max_length is None or max_length < 1:
            raise ValueError("aggregate_token_loss: mode 'dr_grpo' needs max_length >= 1")
        return lm.sum() / (max(float(n_seq), 1.0) * max_length)
    raise ValueError(f"aggregate_token_loss: unknown mode {mode!r} (expected one of {', '.join(AGGREGATIONS)})")


def grpo_loss(logp, old_logp, advantages, mask, *, eps_low: float, eps_high: float | None = None,
              beta: float = 0.0, ref_logp=None, aggregation: str = "token", max_length: int | None = None,
              num_sequences=None, num_tokens=None, importance_sampling_level: str = "token"):
    """The GRPO objective, negated (Shao et al. 2024, DeepSeekMath, eq. 3), as a loss to minimise.

    Per token ``l_{i,t} = -min(r A_i, clip(r, 1 - eps_low, 1 + eps_high) A_i) + beta * k3_{i,t}`` with
    ``k3 = pi_ref/pi - log(pi_ref/pi) - 1`` (DeepSeekMath eq. 4; ``pgcore.kl.kl_estimate(.., "k3")``, unbiased
    and >= 0), reduced by ``aggregate_token_loss``. ``advantages`` ``[B]`` are per completion (e.g.
    ``pgcore.advantages.group_advantages``); with ``old_logp = logp.detach()`` (one gradient step per rollout)
    the ratio is exactly 1 and the loss is REINFORCE with the group baseline (plus the KL term). RLOO
    (Ahmadian et al. 2024) is the same loss with leave-one-out advantages. ``beta = 0`` needs no ``ref_logp``.
    ``importance_sampling_level="sequence"`` is GSPO (Zheng et al. 2025): the clipped surrogate on the sequence
    ratio (``importance_log_ratio``); with ``aggregation="sequence"`` it is GSPO's objective (a mean over completions).
    Returns ``(loss, info)``: ``kl`` (token mean of k3, 0 when beta = 0), ``clip_low`` / ``clip_high`` /
    ``clip_region`` (token fractions where the clip is active), ``ratio_mean``, ``ratio_max``.
    """
    adv = _detach(advantages)
    if adv.dim() == logp.dim() - 1:
        adv = adv.unsqueeze(-1)
    per_token, c = clipped_surrogate(logp, old_logp, adv, eps_low, eps_high, mask=mask,
                                     level=importance_sampling_level)
    kl = None
    if beta != 0:
        if ref_logp is None:
            raise ValueError("grpo_loss: beta != 0 needs ref_logp")
        kl = kl_estimate(logp, _detach(ref_logp), "k3")
        per_token = per_token + beta * kl
    loss = aggregate_token_loss(per_token, mask, aggregation, max_length=max_length, num_sequences=num_sequences,
                                num_tokens=num_tokens)
    with torch.no_grad():
        f = lambda b: masked_mean(b.to(logp.dtype), mask)  # noqa: E731
        valid = _valid(c["ratio"], mask)
        rmax = torch.where(valid, c["ratio"], torch.zeros((), dtype=logp.dtype, device=logp.device)).max()
        info = {"kl": masked_mean(kl.detach(), mask) if kl is not None else torch.zeros((), dtype=logp.dtype,
                                                                                         device=logp.device),
                "clip_low": f(c["low"]), "clip_high": f(c["high"]), "clip_region": f(c["low"] | c["high"]),
                "ratio_mean": masked_mean(c["ratio"], mask), "ratio_max": rmax}
    return loss, info


# ------------------------------------------------------------------------------------- off-policy / SAC


def clipped_double_q(q1, q2) -> torch.Tensor:
    """Elementwise ``min(Q1, Q2)`` of twin critics (Fujimoto et al. 2018 (TD3), eq. 10)."""
    return torch.minimum(q1, q2)


def sac_q_target(rewards, next_q, next_logp, *, alpha, gamma, terminated) -> torch.Tensor:
    """Soft Bellman target ``y = r + gamma (1 - d) (Q'(s', a') - alpha log pi(a'|s'))``, ``a' ~ pi(.|s')``.

    Haarnoja et al. 2018a, the target of J_Q with the soft value V(s') = E[Q(s', a') - alpha log pi(a'|s')];
    the temperature alpha and the discount are explicit (docs/errata.md §9). ``next_q`` is the already-reduced
    twin target ``clipped_double_q(q1', q2')`` (Haarnoja et al. 2018b).
    """
    soft_v = next_q - _detach(alpha) * next_logp
    return (rewards + gamma * _not_done(terminated, rewards) * soft_v).detach()


def sac_actor_loss(logp, q, alpha) -> torch.Tensor:
    """Reparameterised SAC policy loss ``mean(alpha log pi(a|s) - Q(s, a))``, ``a = f_phi(eps; s)``.

    Haarnoja et al. 2018a, the reparameterised ``J_pi(phi)`` (KL to the Boltzmann policy of Q with Z
    dropped), with the temperature made explicit; ``alpha`` is a constant for the actor update.
    """
    return (_detach(alpha) * logp - q).mean()


def sac_temperature_loss(log_alpha, logp, target_entropy) -> torch.Tensor:
    """Automatic temperature loss ``-mean(log_alpha * (log pi(a|s) + target_entropy))``.

    Haarnoja et al. 2018b ("SAC algorithms and applications"), eq. 18, parameterised by
    log alpha. Its gradient is ``H_est - target`` with ``H_est = -mean(log pi)``: gradient descent raises
    alpha when the entropy is below the target and lowers it when above.
    """
    return -(log_alpha * (logp + target_entropy).detach()).mean()


# ----------------------------------------------------------------------------------------- DPG / TD3


def td_target(rewards, next_q, *, gamma, terminated) -> torch.Tensor:
    """One-step TD target ``y = r + gamma (1 - d) V'(s')``, detached.

    ``next_q`` is whatever values the next state: ``Q'(s', mu'(s'))`` for DDPG (Lillicrap et al. 2016,
    Algorithm 1: ``y_i = r_i + gamma Q'(s_{i+1}, mu'(s_{i+1}))``), ``min_i Q'_i`` for TD3, ``V(s')`` for IQL's
    ``L_Q`` (Kostrikov et al. 2021). ``terminated`` (1 at a true terminal) stops the bootstrap.
    """
    return (rewards + gamma * _not_done(terminated, rewards) * next_q).detach()


def td3_smoothed_action(next_action, *, noise_std, noise_clip, low, high, generator=None) -> torch.Tensor:
    """Target policy smoothing ``clip(mu'(s') + clip(eps, -c, c), low, high)``, ``eps ~ N(0, noise_std^2)``.

    Fujimoto et al. 2018 (TD3), eq. 14. ``noise_std``/``noise_clip`` are in action units
    (multiply by the action scale beforehand when actions are not in [-1, 1]).
    """
    a = next_action.detach()
    noise = torch.randn(a.shape, generator=generator, dtype=a.dtype, device=a.device) * noise_std
    noise = noise.clamp(-noise_clip, noise_clip)
    low_t = torch.as_tensor(low, dtype=a.dtype, device=a.device)
    high_t = torch.as_tensor(high, dtype=a.dtype, device=a.device)
    return torch.clamp(a + noise, low_t, high_t)


def dpg_actor_loss(q) -> torch.Tensor:
    """Deterministic policy-gradient actor loss ``-mean(Q(s, mu_theta(s)))``.

    Silver et al. 2014, Theorem 1 (deterministic policy gradient); Lillicrap et al. 2016 (DDPG): autograd through
    ``a = mu_theta(s)`` gives ``grad_theta mu(s) grad_a Q(s, a)|_{a=mu(s)}``.
    """
    return -q.mean()


# ------------------------------------------------------------------------------------------- DQN family


def dqn_target(rewards, next_q_target, *, gamma, terminated) -> torch.Tensor:
    """DQN target ``y = r`` if terminal else ``r + gamma max_a' Q(s', a'; phi')``; ``next_q_target`` [..., A].

    Mnih et al. 2015 (DQN), Algorithm 1.
    """
    best = next_q_target.max(dim=-1).values
    return (rewards + gamma * _not_done(terminated, rewards) * best).detach()


def double_dqn_target(rewards, next_q_online, next_q_target, *, gamma, terminated) -> torch.Tensor:
    """Double DQN ``a* = argmax_a' Q(s', a'; phi)`` (online), ``y = r + gamma (1 - d) Q(s', a*; phi')``.

    van Hasselt, Guez & Silver 2016 (Double DQN): select with the online network, evaluate with the target network.
    """
    a_star = next_q_online.argmax(dim=-1, keepdim=True)
    q_eval = next_q_target.gather(-1, a_star).squeeze(-1)
    return (rewards + gamma * _not_done(terminated, rewards) * q_eval).detach()


def epsilon_greedy_probs(q, epsilon) -> torch.Tensor:
    """epsilon-greedy action probabilities over the last dim (Sutton & Barto 2018 §5.4).

    ``1 - eps + eps/|A|`` on the greedy action, ``eps/|A|`` elsewhere; ties go to the first maximiser
    (the ``argmax`` indicator of the greedy policy).
    """
    n = q.shape[-1]
    greedy = torch.nn.functional.one_hot(q.argmax(dim=-1), n).to(q.dtype)
    return (1.0 - epsilon) * greedy + epsilon / n


def polyak_update(target_params, source_params, tau) -> None:
    """In-place ``target <- tau * source + (1 - tau) * target`` (soft target update).

    Lillicrap et al. 2016 (DDPG: ``theta' <- tau theta + (1 - tau) theta'``, tau << 1), also used by SAC and IQL.
    ``tau = 1`` is the periodic hard copy of DQN (Mnih et al. 2015). Accepts iterables of tensors or ``nn.Module``s.
    """
    if isinstance(target_params, torch.nn.Module):
        target_params = target_params.parameters()
    if isinstance(source_params, torch.nn.Module):
        source_params = source_params.parameters()
    tgt = [p.data if isinstance(p, torch.nn.Parameter) else p for p in _as_list(target_params)]
    src = [p.detach() for p in _as_list(source_params)]
    if len(tgt) != len(src):
        raise ValueError(f"polyak_update: {len(tgt)} target tensors but {len(src)} source tensors")
    if not tgt:
        return
    with torch.no_grad():
        if float(tau) == 1.0:
            torch._foreach_copy_(tgt, src)
        else:
            torch._foreach_lerp_(tgt, src, float(tau))


def _as_list(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return list(params)
