"""Stage losses against hand computation: one unpadded sequence at a time, explicit softmax, float64.

The stages batch, pad, concatenate chosen+rejected and mask; these oracles do none of that, so any error in
padding, position ids, the completion mask, pooling or normalisation shows up as a mismatch.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pipelines import dpo, reward_model, sft
from pipelines.models import freeze, load_reward_model
from pipelines.scoring import Reference, completion_batch
from tests.pipelines.helpers import hand_logp, logsig, pair_examples, small_args, small_model, small_tok


@pytest.fixture(scope="module")
def tok():
    return small_tok()


def test_sft_loss_is_token_mean_nll(tok):
    model = small_model(tok, dtype="float64")
    exs = [{"prompt_ids": e["prompt_ids"], "completion_ids": e["chosen_ids"]} for e in pair_examples(tok)]
    nll = -sum(hand_logp(model, e["prompt_ids"], e["completion_ids"]) for e in exs)
    n = sum(len(e["completion_ids"]) for e in exs)
    loss, stats = sft.make_loss_fn(tok.pad_token_id)(model, exs, float(n))
    assert loss.item() == pytest.approx(nll / n, rel=1e-10)
    assert stats["loss"][1].item() / stats["loss"][2].item() == pytest.approx(nll / n, rel=1e-10)
    assert sft.n_predicted(exs[0]) == len(exs[0]["completion_ids"])
    assert sft.n_predicted({"prompt_ids": [], "completion_ids": [3, 4, 5]}) == 2


@pytest.mark.parametrize("loss_type,eps,ref_free", [("sigmoid", 0.0, False), ("ipo", 0.0, False),
                                                    ("robust", 0.1, False), ("hinge", 0.0, False),
                                                    ("sigmoid", 0.0, True)])
def test_dpo_loss_matches_hand_computation(tok, loss_type, eps, ref_free):
    policy = small_model(tok, seed=0, dtype="float64")
    ref_model = freeze(small_model(tok, seed=1, dtype="float64"))
    exs = pair_examples(tok)
    beta = 0.3
    cfg = dpo.Config(output_dir="unused", beta=beta, loss_type=loss_type, label_smoothing=eps,
                     reference_free=ref_free)
    loss, stats = dpo.make_loss_fn(tok.pad_token_id, cfg, Reference(ref_model))(policy, exs, 2.0)
    hand, rc_sum = [], 0.0
    for e in exs:
        pc, pr = hand_logp(policy, e["prompt_ids"], e["chosen_ids"]), hand_logp(policy, e["prompt_ids"],
                                                                                  e["rejected_ids"])
        qc, qr = (hand_logp(ref_model, e["prompt_ids"], e["chosen_ids"]),
                  hand_logp(ref_model, e["prompt_ids"], e["rejected_ids"]))
        if ref_free:
            qc = qr = 0.0
        h = (pc - qc) - (pr - qr)
        if loss_type == "sigmoid":
            hand.append(-logsig(beta * h))
        elif loss_type == "robust":  # Chowdhury et al. 2024
            hand.append((-(1 - eps) * logsig(beta * h) + eps * logsig(-beta * h)) / (1 - 2 * eps))
        elif loss_type == "hinge":
            hand.append(max(0.0, 1 - beta * h))
        else:  # IPO with per-token averaged log-ratios (TRL semantics)
            h = (pc - qc) / len(e["chosen_ids"]) - (pr - qr) / len(e["rejected_ids"])
            hand.append((h - 1 / (2 * beta)) ** 2)
        rc_sum += beta * (pc - qc)
    assert loss.item() == pytest.approx(sum(hand) / 2, rel=1e-9)
    assert stats["rewards/chosen"][1].item() / 2 == pytest.approx(rc_sum / 2, rel=1e-9)


def test_dpo_at_init_is_ln2_and_precomputed_reference_agrees(tok, tmp_path):
    policy = small_model(tok, seed=0, dtype="float64")
    reference = Reference(freeze(copy.deepcopy(policy)))
    cfg = dpo.Config(output_dir="unused", beta=0.1)
    exs = pair_examples(tok)
    loss_fn = dpo.make_loss_fn(tok.pad_token_id, cfg, reference)
    loss, stats = loss_fn(policy, exs, 2.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-12)
    assert stats["rewards/margins"][1].item() == pytest.approx(0.0, abs=1e-12)
    # Precomputed (cached) reference log-probs give the same loss, and a second call reuses the cache file.
    path = dpo.attach_ref_logps(exs, reference, tok.pad_token_id, tmp_path, batch_size=1, is_main=True,
                                wait=lambda: None)
    policy2 = small_model(tok, seed=5, dtype="float64")
    cached, _ = loss_fn(policy2, exs, 2.0)
    online, _ = loss_fn(policy2, [{k: v for k, v in e.items() if not k.startswith("ref_")} for e in exs], 2.0)
    assert cached.item() == pytest.approx(online.item(), rel=1e-12)
    mtime = path.stat().st_mtime_ns
    assert dpo.attach_ref_logps(exs, reference, tok.pad_token_id, tmp_path, batch_size=1, is_main=True,
                                wait=lambda: None) == path
    assert path.stat().st_mtime_ns == mtime


def test_lora_disabled_adapter_reference_equals_base_copy(tok):
    base = small_model(tok, seed=0, dtype="float64")
    base_copy = freeze(copy.deepcopy(base))
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    exs = pair_examples(tok)
    cfg = dpo.Config(output_dir="unused")
    b = completion_batch([e["prompt_ids"] for e in exs], [e["chosen_ids"] for e in exs], tok.pad_token_id)
    via_adapter = Reference(adapter_host=peft_model).logps(b)["logps"]
    via_copy = Reference(base_copy).logps(b)["logps"]
    assert torch.allclose(via_adapter, via_copy, rtol=0, atol=1e-12)
    with torch.no_grad():  # the adapter is active again afterwards (and non-trivial: init_lora_weights=False)
        policy_logps = dpo.sequence_logps(peft_model, b)["logps"]
    assert not torch.allclose(policy_logps, via_copy)
    del cfg


def test_reward_loss_matches_hand_bradley_terry(tok):
    args = small_args(dtype="float64")
    rm = load_reward_model(args, tok, seed=3)
    exs = pair_examples(tok)

    def score(p, c):
        with torch.no_grad():
            return rm(input_ids=torch.tensor([p + c])).logits[0, 0].item()

    rc = [score(e["prompt_ids"], e["chosen_ids"]) for e in exs]
    rr = [score(e["prompt_ids"], e["rejected_ids"]) for e in exs]
    cfg = reward_model.Config(output_dir="unused", center_coef=0.01)
    loss, stats = reward_model.make_loss_fn(tok.pad_token_id, cfg)(rm, exs, 2.0)
    hand = sum(math.log1p(math.exp(-(a - b))) + 0.01 * (a + b) ** 2 for a, b in zip(rc, rr)) / 2
    assert loss.item() == pytest.approx(hand, rel=1e-9)
    assert stats["accuracy"][1].item() / 2 == sum(a > b for a, b in zip(rc, rr)) / 2
    assert stats["max_reward"][1].item() == pytest.approx(max(rc + rr), rel=1e-9)
