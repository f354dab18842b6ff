"""The shared-prompt pair layout ([prompt | chosen | rejected] in one row, 4-D mask) against the two-row layout.

Oracle: `sequence_logps` / `reward_scores` on the ordinary right-padded two-row batch, which tests/pipelines/
test_losses.py checks against per-sequence hand computations. Float64, so agreement is to rounding.
"""

from __future__ import annotations

import copy

import pytest
import torch

from pipelines import dpo, reward_model
from pipelines.models import freeze, load_reward_model
from pipelines.scoring import (
    Reference,
    completion_batch,
    pair_logps,
    pair_reward_scores,
    reward_scores,
    sequence_logps,
    shared_prompt_batch,
)
from tests.pipelines.helpers import small_args, small_model, small_tok


def _pairs(seed: int = 1):
    g = torch.Generator().manual_seed(seed)

    def rnd(n):
        return torch.randint(3, 390, (n,), generator=g).tolist()
    # ragged on purpose: 1-token prompt, 1-token completions, rejected longer and shorter than chosen
    P = [rnd(n) for n in (3, 7, 1, 5)]
    C = [rnd(n) for n in (4, 1, 9, 6)]
    R = [rnd(n) for n in (6, 8, 2, 1)]
    return P, C, R


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_pair_logps_and_grads_equal_two_row_layout(impl):
    tok = small_tok()
    P, C, R = _pairs()
    m = small_model(tok, dtype="float64", attn_implementation=impl)
    ref = sequence_logps(m, completion_batch(P * 2, C + R, tok.pad_token_id))
    g_ref = torch.autograd.grad((ref["logps"] * torch.arange(1.0, 9.0, dtype=torch.float64)).sum(),
                                list(m.parameters()))
    got = pair_logps(m, shared_prompt_batch(P, C, R, tok.pad_token_id))
    g_got = torch.autograd.grad((got["logps"] * torch.arange(1.0, 9.0, dtype=torch.float64)).sum(),
                                list(m.parameters()))
    # eager attention runs its softmax in float32, so it agrees to ~1e-7 rather than to float64 rounding
    tol = 1e-12 if impl == "sdpa" else 1e-6
    torch.testing.assert_close(got["logps"], ref["logps"], rtol=0, atol=tol)
    torch.testing.assert_close(got["logits_mean"], ref["logits_mean"], rtol=0, atol=tol)
    assert got["n_tokens"].tolist() == [4, 1, 9, 6, 6, 8, 2, 1]
    # transformers' RMSNorm computes in float32 even in a float64 model, so gradients summed over differently
    # shaped batches agree to ~1e-7 relative, not to float64 rounding; a masking error would be O(1)
    scale = max(g.abs().max().item() for g in g_ref)
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * scale)


def test_rejected_does_not_see_chosen():
    """Changing a chosen token leaves every rejected log-prob unchanged (and changes the chosen ones)."""
    tok = small_tok()
    P, C, R = _pairs()
    m = small_model(tok, dtype="float64")
    a = pair_logps(m, shared_prompt_batch(P, C, R, tok.pad_token_id))["logps"]
    C2 = [[(t % 380) + 5 for t in c] for c in C]
    b = pair_logps(m, shared_prompt_batch(P, C2, R, tok.pad_token_id))["logps"]
    torch.testing.assert_close(a[4:], b[4:], rtol=0, atol=1e-12)
    assert (a[:4] - b[:4]).abs().min() > 1e-6


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_pair_reward_scores_equal_two_row_layout(impl):
    tok = small_tok()
    P, C, R = _pairs(2)
    rm = load_reward_model(small_args(dtype="float64", attn_implementation=impl), tok)
    ref = reward_scores(rm, completion_batch(P * 2, C + R, tok.pad_token_id))
    got = pair_reward_scores(rm, shared_prompt_batch(P, C, R, tok.pad_token_id))
    assert got is not None
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    assert (got[:4] - got[4:]).abs().min() > 1e-6  # chosen and rejected read at different positions


def _examples(P, C, R):
    return [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in zip(P, C, R)]


def test_dpo_and_reward_losses_same_with_and_without_shared_prompt():
    tok = small_tok()
    exs = _examples(*_pairs(3))
    policy = small_model(tok, seed=4, dtype="float64")
    reference = Reference(freeze(small_model(tok, seed=5, dtype="float64")))
    out = {}
    for shared in (True, False):
        cfg = dpo.Config(output_dir="unused", beta=0.2, shared_prompt=shared)
        pol = copy.deepcopy(policy)
        loss, stats = dpo.make_loss_fn(tok.pad_token_id, cfg, reference)(pol, exs, 4.0)
        loss.backward()
        out[shared] = (loss.item(), {k: v[1].item() for k, v in stats.items()},
                       [p.grad.clone() for p in pol.parameters()])
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-10)
    assert out[True][1] == pytest.approx(out[False][1], rel=1e-9, abs=1e-12)
    scale = max(g.abs().max().item() for g in out[False][2])
    for a, b in zip(out[True][2], out[False][2]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * scale)

    rm = load_reward_model(small_args(dtype="float64"), tok)
    losses = [reward_model.make_loss_fn(tok.pad_token_id, reward_model.Config(output_dir="unused", shared_prompt=s))(
        rm, exs, 4.0)[0].item() for s in (True, False)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-10)


def test_empty_prompt_falls_back_to_two_rows():
    tok = small_tok()
    P, C, R = _pairs(4)
    P[1] = []
    with pytest.raises(ValueError, match="non-empty prompt"):
        shared_prompt_batch(P, C, R, tok.pad_token_id)
    exs = _examples(P, C, R)
    policy = small_model(tok, seed=4, dtype="float64")
    reference = Reference(freeze(small_model(tok, seed=5, dtype="float64")))
    a = dpo.make_loss_fn(tok.pad_token_id, dpo.Config(output_dir="u", shared_prompt=True), reference)(policy, exs, 4.0)
    b = dpo.make_loss_fn(tok.pad_token_id, dpo.Config(output_dir="u", shared_prompt=False), reference)(policy, exs, 4.0)
    assert a[0].item() == pytest.approx(b[0].item(), rel=1e-12)
