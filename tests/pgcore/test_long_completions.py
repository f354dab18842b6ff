"""GRPO on long completions, in float64 against hand values: DAPO's soft overlong penalty, masking truncated
completions out of the loss, and GSPO's sequence-level importance ratio (value, clipping and gradient)."""

import math

import pytest
import torch

from pgcore.advantages import soft_overlong_penalty
from pgcore.policy_losses import clipped_surrogate, grpo_loss, importance_log_ratio, mask_truncated_completions

DT = torch.float64


def _t(x):
    return torch.tensor(x, dtype=DT)


def _close(a, b, atol=1e-12):
    torch.testing.assert_close(a, b if isinstance(b, torch.Tensor) else _t(b), rtol=0, atol=atol)


# ---------------------------------------------------------------- DAPO soft overlong penalty
def test_soft_overlong_penalty_hand_values():
    # L_max = 20, L_cache = 4: free up to 16 tokens, then linear to -penalty at 20, capped beyond.
    lengths = [0, 10, 16, 17, 18, 19, 20, 25]
    _close(soft_overlong_penalty(lengths, 20, 4), [0, 0, 0, -0.25, -0.5, -0.75, -1.0, -1.0])
    _close(soft_overlong_penalty(lengths, 20, 4, penalty=0.5), [0, 0, 0, -0.125, -0.25, -0.375, -0.5, -0.5])
    # buffer = the whole budget: penalty proportional to the length
    _close(soft_overlong_penalty([0, 1, 3, 8], 8, 8, penalty=2.0), [0, -0.25, -0.75, -2.0])
    for bad in (0, 21):
        with pytest.raises(ValueError, match="buffer_len"):
            soft_overlong_penalty(lengths, 20, bad)


# ---------------------------------------------------------------- truncated completions
def test_mask_truncated_completions_zeroes_the_rows_without_eos():
    mask = _t([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    _close(mask_truncated_completions(mask, torch.tensor([True, False, True])),
           [[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    # the masked row leaves the loss and the token count: token mean of -A over the 4 remaining tokens
    logp = torch.zeros(3, 4, dtype=DT, requires_grad=True)
    adv = _t([1.0, 5.0, -2.0])
    m = mask_truncated_completions(mask, [1, 0, 1])
    loss, _ = grpo_loss(logp, logp.detach(), adv, m, eps_low=0.2)
    _close(loss, -(3 * 1.0 + 1 * -2.0) / 4)
    (g,) = torch.autograd.grad(loss, logp)
    assert (g[1] == 0).all() and g[0, 0] == -0.25 and g[2, 0] == 0.5


# ---------------------------------------------------------------- GSPO sequence-level ratio
def test_sequence_log_ratio_is_the_mean_token_log_ratio_of_each_completion():
    logp = _t([[-1.0, -2.0, -0.5, 7.0], [-0.2, -0.4, 0.0, 0.0]])
    old = _t([[-1.5, -1.0, -0.2, float("nan")], [-0.1, -0.3, 0.0, 0.0]])   # NaN off the mask is ignored
    mask = _t([[1, 1, 1, 0], [1, 1, 0, 0]])
    tok = importance_log_ratio(logp, old, mask, "token")
    _close(tok[:, :3], [[0.5, -1.0, -0.3], [-0.1, -0.1, 0.0]])
    seq = importance_log_ratio(logp, old, mask, "sequence")
    # (0.5 - 1.0 - 0.3) / 3 = -0.8/3 on every token of completion 0; (-0.1 - 0.1) / 2 = -0.1 on completion 1
    _close(seq, [[-0.8 / 3] * 4, [-0.1] * 4])
    with pytest.raises(ValueError, match="level"):
        importance_log_ratio(logp, old, mask, "sentence")


def test_gspo_clips_whole_completions_and_its_gradient_is_the_sequence_ratio_times_the_mean_score():
    old = _t([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    logp = torch.tensor([[-0.7, -1.0, -1.0], [-2.3, -1.7, -2.0]], dtype=DT, requires_grad=True)
    mask = _t([[1, 1, 1], [1, 1, 0]])
    adv = _t([[1.0], [-1.0]])
    # completion 0: log s = 0.3/3 = 0.1; completion 1: (-0.3 + 0.3)/2 = 0 -> s = 1
    per_tok, info = clipped_surrogate(logp, old, adv, 0.05, mask=mask, level="sequence")
    s0 = math.exp(0.1)   # > 1 + 0.05: clipped for A > 0, on every token of completion 0
    _close(per_tok.detach(), [[-1.05] * 3, [1.0] * 3])
    assert info["high"][0].all() and not info["high"][1].any() and not info["low"].any()
    # the token ratio would clip only the first token of completion 0 and the first of completion 1 (r = e^-0.3)
    _, tinfo = clipped_surrogate(logp, old, adv, 0.05, mask=mask, level="token")
    assert tinfo["high"][0].tolist() == [True, False, False] and tinfo["low"][1].tolist() == [True, False, False]
    # unclipped (wide eps): d/dlogp_t of -s_i A_i = -A_i s_i / |o_i| on each valid token
    loss, _ = grpo_loss(logp, old, adv[:, 0], mask, eps_low=10.0, aggregation="sequence",
                        importance_sampling_level="sequence")
    # sequence aggregation: mean over completions of the token mean, = -(s0 * 1 + 1 * -1) / 2
    _close(loss, -(s0 - 1.0) / 2)
    (g,) = torch.autograd.grad(loss, logp)
    _close(g, [[-s0 / 3 / 2] * 3, [1 / 2 / 2, 1 / 2 / 2, 0.0]])


def test_gspo_equals_grpo_on_policy():
    # ratio 1 everywhere: the same loss and (token aggregation) the same gradient
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(4, 5, dtype=DT, generator=g).requires_grad_()
    adv = torch.randn(4, dtype=DT, generator=g)
    mask = _t([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    grads = []
    for level in ("token", "sequence"):
        loss, _ = grpo_loss(logp, logp.detach(), adv, mask, eps_low=0.2, importance_sampling_level=level)
        grads.append(torch.autograd.grad(loss, logp)[0])
    _close(grads[0], grads[1], atol=1e-15)
