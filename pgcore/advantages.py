"""Returns and advantage estimators on batch-first, time-last tensors ``[..., T]``.

Indexing convention (as in Schulman et al. 2016, not the ``R_{t+1}`` indexing of Sutton & Barto 2018):
``rewards[..., t] = r_t`` is the reward received for acting at step t, ``values[..., t] = V(s_t)`` and
``G_t = r_t + gamma * G_{t+1}``.

End-of-episode handling follows Pardo et al. 2018, "Time Limits in Reinforcement Learning":
- ``dones`` / ``terminated``: the episode ended in a terminal state, whose value is 0 -> no bootstrap.
- ``truncated``: the episode was cut by a time limit -> bootstrap from V(final observation), which the caller
  passes in ``next_values`` (gae) or ``bootstrap`` (returns), but never carry the recursion past the cut.
- ``mask``: padding (e.g. right-padded token rows). A masked position outputs 0 and acts as the end of its
  row for everything before it, so garbage in padding never leaks into valid positions.
"""

from __future__ import annotations

import torch

from ._util import masked_mean, masked_var

__all__ = ["discounted_returns", "reward_to_go", "n_step_returns", "gae", "whiten", "group_advantages",
           "soft_overlong_penalty"]


def _as(x, like: torch.Tensor) -> torch.Tensor | None:
    """``x`` as a tensor with ``like``'s dtype/device (bool masks become 0./1.), or None."""
    if x is None:
        return None
    return torch.as_tensor(x, device=like.device).to(like.dtype)


def _shift_left(x: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
    """``out[..., t] = x[..., t + 1]`` and ``out[..., T - 1] = fill``."""
    return torch.cat([x[..., 1:], fill.expand(x.shape[:-1]).unsqueeze(-1).to(x.dtype)], dim=-1)


def discounted_returns(rewards, gamma, *, dones=None, bootstrap=None, mask=None) -> torch.Tensor:
    """Discounted return-to-go ``G_t = r_t + gamma * (1 - done_t) * G_{t+1}``, ``G_T := bootstrap``.

    Sutton & Barto 2018, eq. 3.9 (return recursion), done-masked. ``bootstrap`` ([...], default 0) is the
    value of the state after the last step (e.g. V(s_T) for a truncated rollout). With a ``mask``, masked
    positions return 0 and cut the recursion; ``bootstrap`` is only used by rows whose last position is valid.
    """
    r = rewards
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    d = _as(dones, r)
    m = None if mask is None else torch.as_tensor(mask, device=r.device).to(torch.bool)
    shape = r.shape
    for t in (d, m):
        if t is not None:
            shape = torch.broadcast_shapes(shape, t.shape)
    r = r.expand(shape)
    nxt = zero.expand(shape[:-1]) if bootstrap is None else _as(bootstrap, r).expand(shape[:-1])
    out = []
    for t in range(shape[-1] - 1, -1, -1):
        cont = 1.0 if d is None else 1.0 - d.expand(shape)[..., t]
        g = r[..., t] + gamma * cont * nxt
        if m is not None:
            g = torch.where(m.expand(shape)[..., t], g, zero)
        out.append(g)
        nxt = g
    return torch.stack(out[::-1], dim=-1)


def reward_to_go(rewards, gamma=1.0, mask=None) -> torch.Tensor:
    """Reward-to-go ``G_t = sum_{t'>=t} gamma^(t'-t) r_{t'}`` within a row.

    The reward-to-go weight of the causal policy gradient (Williams 1992; Sutton & Barto 2018 §13.3). This is
    ``discounted_returns`` with no dones and no bootstrap.
    """
    return discounted_returns(rewards, gamma, mask=mask)


def n_step_returns(rewards, values, gamma, n, *, dones=None, bootstrap=None) -> torch.Tensor:
    """N-step return ``R_t^(n) = sum_{k<h} gamma^k r_{t+k} + gamma^h V(s_{t+h})``, ``h = min(n, T - t)``.

    Sutton & Barto 2018, eq. 7.1: n = 1 is the TD target, n >= T the Monte Carlo
    return (plus the bootstrap). Near the end of the rollout the horizon shrinks to the remaining steps and
    ``V(s_T) := bootstrap`` (default 0). A done at step t+k (k < h) stops both the reward sum and the
    bootstrap (terminal value 0).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    r = rewards
    v = values.to(r.dtype)
    shape = torch.broadcast_shapes(r.shape, v.shape)
    d = _as(dones, r)
    if d is not None:
        shape = torch.broadcast_shapes(shape, d.shape)
    r, v = r.expand(shape), v.expand(shape)
    T = shape[-1]
    boot = torch.zeros(shape[:-1], dtype=r.dtype, device=r.device)
    if bootstrap is not None:
        boot = _as(bootstrap, r).expand(shape[:-1])
    v_ext = torch.cat([v, boot.unsqueeze(-1)], dim=-1)  # [..., T + 1], v_ext[T] = V(s_T)
    pad = torch.zeros((*shape[:-1], n), dtype=r.dtype, device=r.device)
    r_ext = torch.cat([r, pad], dim=-1)  # rewards past T are 0
    d_ext = torch.cat([torch.zeros(shape, dtype=r.dtype, device=r.device) if d is None else d.expand(shape),
                       pad], dim=-1)
    alive = torch.ones(shape, dtype=r.dtype, device=r.device)
    total = torch.zeros(shape, dtype=r.dtype, device=r.device)
    for k in range(min(n, T)):
        total = total + (gamma**k) * alive * r_ext[..., k:k + T]
        alive = alive * (1.0 - d_ext[..., k:k + T])
    t_idx = torch.arange(T, device=r.device)
    h = torch.clamp(T - t_idx, max=n)  # effective horizon per position
    disc = torch.as_tensor(gamma, dtype=r.dtype, device=r.device) ** h.to(r.dtype)
    boot_v = v_ext.gather(-1, (t_idx + h).expand(shape))
    return total + disc * alive * boot_v


def gae(rewards, values, *, gamma, lam, next_values=None, terminated=None, truncated=None, mask=None):
    """Generalized advantage estimation; returns ``(advantages, returns)`` of shape ``[..., T]``.

    Schulman et al. 2016, eq. 16: ``A_t = sum_l (gamma lam)^l delta_{t+l}``, truncated at the end of the row
    as in PPO (Schulman et al. 2017, eq. 11), computed by the equivalent backward recursion (so the k-step
    forms of docs/errata.md §4 never appear):

        delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - end_t) * valid_{t+1} * A_{t+1}
        end_t   = terminated_t OR truncated_t

    ``next_values[..., t] = V(s_{t+1})``. When None it is ``values`` shifted left with 0 after the last
    position, and 0 after the last valid position of a masked row (right-padded token sequences: the last
    token is terminal). On truncation the caller passes V(final observation) in ``next_values`` so the step
    bootstraps while the recursion is cut; on termination the next value is ignored.

    Value targets ``returns = A + V``: the lambda-return (Sutton & Barto 2018 §12.1) with V as its bootstrap.
    Schulman et al. 2016 §5 regress V on Monte-Carlo returns instead; this target is the one PPO
    implementations use. Masked positions get advantage 0 and return 0. Loops over T only; batch rows are
    vectorised.
    """
    r = rewards
    v = values.to(r.dtype)
    zero = torch.zeros((), dtype=r.dtype, device=r.device)
    term = _as(terminated, r)
    trunc = _as(truncated, r)
    valid = None if mask is None else torch.as_tensor(mask, device=r.device).to(torch.bool)
    shape = torch.broadcast_shapes(r.shape, v.shape)
    for x in (term, trunc, valid, None if next_values is None else next_values):
        if x is not None:
            shape = torch.broadcast_shapes(shape, x.shape)
    r, v = r.expand(shape), v.expand(shape)
    if valid is not None:
        valid = valid.expand(shape)
        # Padding may hold garbage (even NaN): replace it before any arithmetic touches it. Zeroed values
        # also make the default next value 0 after the last valid position.
        r = torch.where(valid, r, zero)
        v = torch.where(valid, v, zero)
    if next_values is None:
        nv = _shift_left(v, zero)
    else:
        nv = next_values.to(r.dtype).expand(shape)
    not_term = torch.ones(shape, dtype=r.dtype, device=r.device) if term is None else 1.0 - term.expand(shape)
    delta = r + gamma * not_term * nv - v
    cont = not_term if trunc is None else not_term * (1.0 - trunc.expand(shape))
    coef = gamma * lam * cont
    adv = []
    last = torch.zeros(shape[:-1], dtype=r.dtype, device=r.device)
    for t in range(shape[-1] - 1, -1, -1):
        last = delta[..., t] + coef[..., t] * last
        if valid is not None:
            # A masked position outputs 0, so the recursion of the position before it stops there.
            last = torch.where(valid[..., t], last, zero)
        adv.append(last)
    advantages = torch.stack(adv[::-1], dim=-1)
    returns = advantages + v
    if valid is not None:
        returns = torch.where(valid, returns, zero)
    return advantages, returns


def whiten(x, mask=None, *, shift_mean=True, eps=1e-8) -> torch.Tensor:
    """Masked standardisation ``(x - mean) / sqrt(var + eps)`` over all valid entries.

    Advantage normalisation is standard PPO practice (e.g. OpenAI baselines, ``baselines/ppo2/model.py``).
    ``var`` is the unbiased masked variance. With ``shift_mean=False`` the mean is added back, so only the
    scale changes (used for reward whitening in RLHF, Ziegler et al. 2019). Masked entries are set to 0.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    if mask is not None:
        valid = torch.as_tensor(mask, device=x.device) != 0
        out = torch.where(valid, out, torch.zeros((), dtype=x.dtype, device=x.device))
    return out


def group_advantages(rewards, group_size: int, *, kind: str = "grpo", scale: str = "group",
                     eps: float = 1e-4) -> torch.Tensor:
    """Outcome advantages of ``G = group_size`` completions per prompt, from a group baseline; ``[N]`` -> ``[N]``.

    REINFORCE with a baseline computed from the other samples of the same prompt (Williams 1992's baseline,
    estimated per prompt). ``rewards`` is ``[N]`` with ``N = n_prompts * G``, each prompt's G
    completions consecutive (rows ``i*G .. i*G+G-1``).

    - ``kind="grpo"``: ``A_i = r_i - mean(r_group)`` (Shao et al. 2024, DeepSeekMath, §4.1.2: the outcome-
      supervision advantage ``(r_i - mean(r)) / std(r)``, given to every token of completion i);
    - ``kind="rloo"``: ``A_i = r_i - (sum_{j != i} r_j) / (G - 1)``, the leave-one-out baseline (Kool et al.
      2019, "Buy 4 REINFORCE samples, get a baseline for free!"; Ahmadian et al. 2024, "Back to Basics",
      the RLOO estimator). The baseline does not depend on sample i, so the
      policy-gradient estimate stays unbiased; ``A_i = G/(G-1) (r_i - mean)``, so GRPO's own-sample-inclusive
      mean shrinks the expected gradient by ``(G-1)/G``.

    Then divided by a scale: ``"group"`` the group's standard deviation (unbiased, Bessel-corrected) plus
    ``eps`` (DeepSeekMath); ``"batch"`` the standard deviation of all N rewards plus ``eps``; ``"none"`` no
    scaling (Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr. GRPO), §3.1: the std division
    up-weights prompts that are nearly always or never solved). A group whose rewards are all equal carries no
    signal: its advantages are exactly 0 (its computed mean can differ from the equal values by rounding).
    """
    if kind not in ("grpo", "rloo"):
        raise ValueError(f"group_advantages: unknown kind {kind!r} (expected 'grpo' or 'rloo')")
    if scale not in ("group", "batch", "none"):
        raise ValueError(f"group_advantages: unknown scale {scale!r} (expected 'group', 'batch' or 'none')")
    G = int(group_size)
    if G < 2 or rewards.dim() != 1 or rewards.shape[0] % G:
        raise ValueError(f"group_advantages: need group_size >= 2 dividing the {tuple(rewards.shape)} rewards, "
                         f"got {group_size}")
    r = rewards.view(-1, G)
    mean = r.mean(-1, keepdim=True)
    adv = r - mean if kind == "grpo" else r - (r.sum(-1, keepdim=True) - r) / (G - 1)
    if scale == "group":
        adv = adv / (r.std(-1, keepdim=True) + eps)
    elif scale == "batch":
        adv = adv / (rewards.std() + eps)
    flat = (r == r[:, :1]).all(-1, keepdim=True)
    return torch.where(flat, torch.zeros((), dtype=adv.dtype, device=adv.device), adv).reshape(-1)


def soft_overlong_penalty(lengths, max_length: int, buffer_len: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO's soft overlong punishment (Yu et al. 2025, §3.4 "Overlong Reward Shaping"), added to the reward.

    With ``L_max = max_length`` (the generation budget) and ``L_cache = buffer_len``, a completion of ``|y|``
    tokens gets ``0`` while ``|y| <= L_max - L_cache``, then ``-penalty * (|y| - (L_max - L_cache)) / L_cache``,
    linear in how far it has entered the last ``L_cache`` tokens (``-penalty`` at ``|y| = L_max``), and
    ``-penalty`` beyond ``L_max``. ``penalty = 1`` is the paper's scale (verl's ``penalty_factor``).
    ``lengths`` ``[N]`` count completion tokens (EOS included); returned as float64.
    """
    if not 1 <= buffer_len <= max_length:
        raise ValueError(f"soft_overlong_penalty: need 1 <= buffer_len <= max_length, got {buffer_len}, "
                         f"{max_length}")
    n = torch.as_tensor(lengths, dtype=torch.float64)
    over = (n - (max_length - buffer_len)).clamp(0.0, float(buffer_len))
    return -float(penalty) * over / buffer_len
