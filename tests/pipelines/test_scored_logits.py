"""The LM head runs only at the positions that are scored (`logits_to_keep` as a boolean mask).

Oracle: the same functions on the full [B, T, V] logits (a wrapper model that does not take `logits_to_keep`
gets them), in float64, so values and gradients agree to rounding. A hook on `lm_head` shows how many positions
it really computes.
"""

from __future__ import annotations

import pytest
import torch

from pgcore.distributions import token_logprobs
from pipelines.scoring import (
    FullLogits,
    completion_batch,
    logits_to_keep_support,
    pair_logps,
    sequence_logps,
    shared_prompt_batch,
)
from tests.pipelines.helpers import ragged_pairs, small_model, small_tok


def _rows_through_head(model):
    seen = []
    h = model.lm_head.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[:-1].numel()))
    return seen, h


def _grads(model, values):
    w = torch.arange(1.0, values.numel() + 1, dtype=values.dtype)
    return torch.autograd.grad((values * w).sum(), [p for p in model.parameters() if p.requires_grad])


def _close_grads(a, b):
    scale = max(g.abs().max().item() for g in b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6 * scale)


def test_support_detection():
    tok = small_tok()
    m = small_model(tok, dtype="float64")
    assert logits_to_keep_support(m) == "mask"
    assert logits_to_keep_support(FullLogits(m)) is None


def test_support_detection_asks_the_modules_slicing_helper(monkeypatch):
    # A transformers release whose helper treats a 2-D tensor as positions only (no boolean masks) must get the
    # full-logits path, though its forward still has a `logits_to_keep` argument.
    import sys

    from pipelines import scoring

    tok = small_tok()
    m = small_model(tok, dtype="float64")
    mod = sys.modules[type(m).__module__]

    def positions_only(hidden_states, logits_to_keep):
        if isinstance(logits_to_keep, int):
            logits_to_keep = slice(-logits_to_keep, None)
        return hidden_states[:, logits_to_keep, :]

    monkeypatch.setattr(mod, "slice_logits_to_keep", positions_only)
    scoring._keep_support.cache_clear()
    try:
        assert logits_to_keep_support(m) == "last"
    finally:
        monkeypatch.undo()
        scoring._keep_support.cache_clear()
    assert logits_to_keep_support(m) == "mask"


def test_sequence_logps_head_on_completion_positions_only():
    tok = small_tok()
    P, C, _ = ragged_pairs()
    m = small_model(tok, dtype="float64")
    b = completion_batch(P, C, tok.pad_token_id)
    full = sequence_logps(FullLogits(m), b, with_entropy=True, temperature=0.7)
    g_full = _grads(m, full["logps"])
    seen, h = _rows_through_head(m)
    got = sequence_logps(m, b, with_entropy=True, temperature=0.7)
    h.remove()
    assert seen == [sum(len(c) for c in C)]  # 11 positions, not B x T = 4 x 11
    assert b["input_ids"].numel() > seen[0]
    for k in ("logps", "token_logps", "mask", "n_tokens", "logits_mean", "entropy", "correct"):
        torch.testing.assert_close(got[k], full[k], rtol=0, atol=1e-12, msg=k)
    _close_grads(_grads(m, got["logps"]), g_full)


def test_pair_logps_head_on_scored_positions_only():
    tok = small_tok()
    P, C, R = ragged_pairs(8)
    m = small_model(tok, dtype="float64")
    b = shared_prompt_batch(P, C, R, tok.pad_token_id)
    full = pair_logps(FullLogits(m), b)
    g_full = _grads(m, full["logps"])
    seen, h = _rows_through_head(m)
    got = pair_logps(m, b)
    h.remove()
    # every completion token is predicted from one position; the first rejected token of a pair whose chosen
    # is empty is predicted from the last prompt token, which then is a kept position of its own
    expected = sum(len(c) + len(r) for c, r in zip(C, R)) - sum(len(r) > 0 for r in R) + sum(
        len(c) == 0 < len(r) for c, r in zip(C, R))
    assert seen == [expected] and expected < b["input_ids"].numel()
    for k in ("logps", "n_tokens", "logits_mean"):
        torch.testing.assert_close(got[k], full[k], rtol=0, atol=1e-12, msg=k)
    _close_grads(_grads(m, got["logps"]), g_full)
    # and both equal the plain two-row layout's log-probs
    two = sequence_logps(m, completion_batch(P * 2, C + R, tok.pad_token_id))
    torch.testing.assert_close(got["logps"], two["logps"], rtol=0, atol=1e-12)


def test_all_empty_completions_fall_back_to_full_logits():
    tok = small_tok()
    m = small_model(tok, dtype="float64")
    b = completion_batch([[5, 6, 7], [8]], [[], []], tok.pad_token_id)
    out = sequence_logps(m, b)
    assert out["logps"].tolist() == [0.0, 0.0] and out["n_tokens"].tolist() == [0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_token_logprobs_on_flattened_positions(dtype):
    """[N, V] half logits over more positions than one float32 chunk: same as float32 math, rounded once."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2500, 50, generator=g) * 3).to(dtype)
    labels = torch.randint(0, 50, (2500,), generator=g)
    ref = torch.log_softmax(logits.float() / 0.9, -1).gather(-1, labels[:, None])[:, 0]
    got = token_logprobs(logits, labels, temperature=0.9)
    assert got.dtype == dtype and got.shape == (2500,)
    torch.testing.assert_close(got.float(), ref.to(dtype).float(), rtol=0, atol=0)


def test_ppo_response_logits_same_for_a_model_without_logits_to_keep():
    """PPO asks for the last R + 1 positions' logits only; a model that cannot be asked gets them sliced."""
    from pipelines.rollout import lm_logits, rollout_batch

    tok = small_tok()
    P, C, _ = ragged_pairs(9)
    m = small_model(tok, dtype="float64")
    b = rollout_batch(P, [c or [5] for c in C], tok.pad_token_id)
    a, full = lm_logits(m, b), lm_logits(FullLogits(m), b)
    assert a.shape == full.shape == (len(P), b["response"].shape[1], m.config.vocab_size)
    torch.testing.assert_close(a, full, rtol=0, atol=1e-12)
