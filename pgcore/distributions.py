"""Log-probabilities and entropies of the policy distributions pgcore agents use.

- token-level categorical policies of language models (``token_logprobs``, ``entropy_from_logits``);
- diagonal Gaussian and tanh-squashed Gaussian policies for bounded continuous actions (``TanhGaussian``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "token_logprobs",
    "entropy_from_logits",
    "TanhGaussian",
    "diag_gaussian_log_prob",
    "scale_action",
    "unscale_action",
]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_LOG2 = math.log(2.0)
_HALF_CHUNK = 1024  # positions per float32 block in token_logprobs for half-precision logits


def _gather_minus_lse(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    if temperature != 1.0:
        logits = logits / temperature
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def token_logprobs(logits, labels, *, temperature=1.0, mask=None) -> torch.Tensor:
    """``log softmax(logits / temperature)[labels]`` per position; ``[..., V]`` logits, ``[...]`` labels.

    Token log-probabilities of a sequence policy: log pi(y|x) = sum_t log pi(y_t | x, y_<t) (the sequence
    log-probability in the DPO loss, Rafailov et al. 2023, eq. 7). Computed as ``gather - logsumexp`` so no
    [B, T, V] log-softmax copy is kept. Half-precision logits are processed in float32 (logsumexp in bf16 loses ~2
    digits), `_HALF_CHUNK` positions at a time, and cast back. Any leading shape works, also flattened [N, V]
    logits of the scored positions only. Masked positions return 0 and their labels may be anything (e.g. -100).
    """
    labels = labels.to(torch.long)
    valid = None
    if mask is not None:
        valid = torch.broadcast_to(torch.as_tensor(mask, device=logits.device) != 0, labels.shape)
        labels = torch.where(valid, labels, torch.zeros_like(labels))
    if logits.dtype in (torch.float16, torch.bfloat16) and logits.dim() > 1:
        # float32 in chunks of positions, so no full-size float32 copy of [..., V] exists at once
        flat, flat_lab = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
        out = torch.cat([
            _gather_minus_lse(chunk.float(), lab, temperature).to(logits.dtype)
            for chunk, lab in zip(flat.split(_HALF_CHUNK), flat_lab.split(_HALF_CHUNK))
        ]).reshape(labels.shape)
    else:
        out = _gather_minus_lse(logits, labels, temperature)
    if valid is not None:
        out = torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))
    return out


def entropy_from_logits(logits, *, temperature=1.0) -> torch.Tensor:
    """Entropy ``H = -sum_a p(a) log p(a)`` of ``softmax(logits / temperature)`` over the last dim.

    The entropy bonus of PPO (``S[pi_theta](s_t)``, Schulman et al. 2017, eq. 9) for categorical / token policies.
    Actions with probability 0 (logit -inf) contribute 0.
    """
    if temperature != 1.0:
        logits = logits / temperature
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    terms = torch.where(p > 0, p * logp, torch.zeros((), dtype=p.dtype, device=p.device))
    return -terms.sum(dim=-1)


def diag_gaussian_log_prob(x, mean, log_std) -> torch.Tensor:
    """``log N(x; mu, diag(sigma^2))`` summed over the last dim.

    The Gaussian policy of Williams 1992 (Sutton & Barto 2018 §13.7):
    ``ln pi = -1/2 (a - mu)^T Sigma^-1 (a - mu) - 1/2 ln|Sigma| + const`` with the constant ``-d/2 ln(2 pi)``
    included.
    """
    z = (x - mean) * torch.exp(-log_std)
    return (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(dim=-1)


class TanhGaussian:
    """``a = tanh(u)``, ``u ~ N(mean, diag(exp(log_std)^2))``: a policy on the box (-1, 1)^d.

    Haarnoja et al. 2018a, "Soft Actor-Critic", App. C (enforcing action bounds). Change of variables::

        log pi(a|s) = log N(u; mu, sigma) - sum_i log(1 - tanh(u_i)^2)
        log(1 - tanh(u)^2) = 2 (log 2 - u - softplus(-2u))      (finite for any u; 1 - tanh^2 underflows)

    Use ``scale_action`` to map to [low, high] (that adds the constant ``-sum log((high - low)/2)`` to the
    density, irrelevant for gradients). ``entropy()`` is the entropy of the unbounded base Gaussian, not of the
    squashed policy.
    """

    def __init__(self, mean: torch.Tensor, log_std: torch.Tensor):
        self.mean, self.log_std = torch.broadcast_tensors(mean, log_std)
        self.std = torch.exp(self.log_std)

    @staticmethod
    def log_abs_det_jacobian(pre_tanh: torch.Tensor) -> torch.Tensor:
        """``sum_i log(1 - tanh(u_i)^2)`` over the last dim, computed stably."""
        return (2.0 * (_LOG2 - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(dim=-1)

    def rsample(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised sample ``a = tanh(mean + std * eps)``; returns ``(a, log pi(a))``.

        Both outputs are differentiable w.r.t. mean and log_std (the reparameterisation ``a_t = f_phi(eps_t; s_t)``
        of Haarnoja et al. 2018a).
        """
        m = self.mean
        eps = torch.randn(m.shape, generator=generator, dtype=m.dtype, device=m.device)
        u = self.mean + self.std * eps
        return torch.tanh(u), self.log_prob(pre_tanh=u)

    def sample(self, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Like ``rsample`` but detached (for acting)."""
        with torch.no_grad():
            return self.rsample(generator)

    def log_prob(self, action: torch.Tensor | None = None, pre_tanh: torch.Tensor | None = None):
        """``log pi(a)`` summed over the last dim; pass ``pre_tanh`` (u) whenever available.

        From ``action`` alone, u = atanh(a) with ``a`` clamped to ``±(1 - machine eps)`` so |a| = 1 (from
        float rounding of tanh) stays finite; this loses accuracy for |u| beyond ~9 (float32) / ~18 (float64).
        """
        if pre_tanh is None:
            if action is None:
                raise ValueError("TanhGaussian.log_prob needs action or pre_tanh")
            lim = 1.0 - torch.finfo(action.dtype).eps
            pre_tanh = torch.atanh(action.clamp(-lim, lim))
        return diag_gaussian_log_prob(pre_tanh, self.mean, self.log_std) - self.log_abs_det_jacobian(pre_tanh)

    def mode(self) -> torch.Tensor:
        """Deterministic action ``tanh(mean)`` (used for evaluation)."""
        return torch.tanh(self.mean)

    def entropy(self) -> torch.Tensor:
        """Entropy of the base Gaussian ``sum_i (1/2 + 1/2 ln(2 pi) + log_std_i)``."""
        return (0.5 + _LOG_SQRT_2PI + self.log_std).sum(dim=-1)


def scale_action(a, low, high) -> torch.Tensor:
    """Affine map from [-1, 1] to [low, high]: ``low + (a + 1) (high - low) / 2``."""
    low = torch.as_tensor(low, dtype=a.dtype, device=a.device)
    high = torch.as_tensor(high, dtype=a.dtype, device=a.device)
    return low + (a + 1.0) * (high - low) / 2.0


def unscale_action(a, low, high) -> torch.Tensor:
    """Inverse of ``scale_action``: ``2 (a - low) / (high - low) - 1`` maps [low, high] to [-1, 1]."""
    low = torch.as_tensor(low, dtype=a.dtype, device=a.device)
    high = torch.as_tensor(high, dtype=a.dtype, device=a.device)
    return 2.0 * (a - low) / (high - low) - 1.0
