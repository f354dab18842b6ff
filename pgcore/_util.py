"""Masked reductions shared by every pgcore module.

Convention (pgcore contract): ``mask`` is a float or bool tensor broadcastable to the data, non-zero = valid.
Masked positions contribute nothing, even when the data there is NaN/inf (padding garbage), because they are
removed with ``torch.where`` rather than multiplied by 0 (``nan * 0`` is ``nan``). A float mask is used as a
weight (``x * mask``); a reduction over an entirely masked slice returns 0, never NaN.
"""

from __future__ import annotations

import torch

__all__ = ["masked_mean", "masked_sum", "masked_var"]


def _prepare(x: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(weighted x with masked entries zeroed, weights)``, both broadcast to a common shape."""
    if mask is None:
        return x, torch.ones_like(x)
    m = mask.to(device=x.device, dtype=x.dtype)
    x, m = torch.broadcast_tensors(x, m)
    valid = m != 0
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(valid, x * m, zero), torch.where(valid, m, zero)


def masked_sum(
    x: torch.Tensor, mask: torch.Tensor | None = None, dim=None, keepdim: bool = False
) -> torch.Tensor:
    """Sum of ``x * mask`` over ``dim`` (all dims when ``None``); masked entries are ignored."""
    xm, _ = _prepare(x, mask)
    if dim is None:
        return xm.sum()
    return xm.sum(dim=dim, keepdim=keepdim)


def masked_mean(
    x: torch.Tensor, mask: torch.Tensor | None = None, dim=None, keepdim: bool = False
) -> torch.Tensor:
    """Weighted mean ``sum(x * mask) / sum(mask)`` over ``dim``; 0 where the mask sums to 0."""
    if mask is None:
        return x.mean() if dim is None else x.mean(dim=dim, keepdim=keepdim)
    xm, m = _prepare(x, mask)
    if dim is None:
        num, den = xm.sum(), m.sum()
    else:
        num, den = xm.sum(dim=dim, keepdim=keepdim), m.sum(dim=dim, keepdim=keepdim)
    # Dividing by a clamped denominator keeps the gradient finite; the where() makes empty slices exactly 0.
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, num / safe, torch.zeros_like(num))


def masked_var(x: torch.Tensor, mask: torch.Tensor | None = None, unbiased: bool = True) -> torch.Tensor:
    """Variance of the valid entries of ``x`` (over all dims).

    With ``unbiased=True`` the Bessel correction ``n / (n - 1)`` is applied, ``n`` = sum of the mask (the unbiased
    sample variance S^2). Returns 0 when fewer than two (unbiased) or zero (biased) entries are valid, instead of
    NaN.
    """
    xm, m = _prepare(x, mask)
    n = m.sum()
    mean = masked_mean(x, mask)
    centered = torch.where(m != 0, x.expand_as(m) - mean, torch.zeros_like(xm))
    ss = (m * centered.square()).sum()
    den = n - 1 if unbiased else n
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, ss / safe, torch.zeros_like(ss))
