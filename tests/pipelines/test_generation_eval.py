"""Sampling (EOS truncation, seeding), the shared LM evaluation, and reward scoring across tokenizers."""

from __future__ import annotations

import copy

import pytest
import torch

from pipelines.data import encode_prompt
from pipelines.evaluation import EvalArgs, PolicyEvaluator, score_texts
from pipelines.generation import GenerationArgs, generate, truncate_after_eos
from pipelines.models import ModelArgs, freeze, load_reward_model, load_tokenizer
from pipelines.scoring import Reference
from tests.pipelines.helpers import small_args, small_model, small_tok

PROMPTS = ["I stayed at the Harbour Inn last week and", "We ate at Luigi's on Friday and",
           "I watched The Silent River yesterday and"]


@pytest.fixture(scope="module")
def tok():
    return small_tok()


def test_truncate_after_eos():
    assert truncate_after_eos([5, 6, 1, 7, 0, 0], eos_id=1, pad_id=0) == ([5, 6, 1], True)
    assert truncate_after_eos([5, 6, 7], eos_id=1, pad_id=0) == ([5, 6, 7], False)


def test_generate_is_seeded_truncated_and_leaves_global_rng_alone(tok):
    model = small_model(tok)
    pids = [encode_prompt(tok, p) for p in PROMPTS]
    args = GenerationArgs(max_new_tokens=12, batch_size=2)
    torch.manual_seed(7)
    before = torch.get_rng_state()
    a = generate(model, tok, pids, args, seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    b = generate(model, tok, pids, args, seed=3)
    assert a.completion_ids == b.completion_ids
    for c, f in zip(a.completion_ids, a.finished):
        assert len(c) <= 12 and (tok.eos_token_id in c) == f
        if f:
            assert c.index(tok.eos_token_id) == len(c) - 1
        assert tok.pad_token_id not in c
    # Left padding + explicit position ids: a prompt sampled alone gives the same completion greedily.
    greedy = GenerationArgs(max_new_tokens=8, temperature=0.0, batch_size=8)
    batched = generate(model, tok, pids, greedy, seed=0).completion_ids
    alone = [generate(model, tok, [p], greedy, seed=0).completion_ids[0] for p in pids]
    assert batched == alone


def test_eval_of_the_reference_itself_is_exact(tok):
    policy = small_model(tok)
    ref = Reference(freeze(copy.deepcopy(policy)))
    ev = PolicyEvaluator(tok, PROMPTS, ref, EvalArgs(num_prompts=3, max_new_tokens=10))
    m, samples = ev(policy)
    assert m["eval/kl_to_ref"] == pytest.approx(0.0, abs=1e-6)
    assert m["eval/kl_to_ref_k3"] == pytest.approx(0.0, abs=1e-6)
    assert m["eval/win_rate_vs_ref"] == 0.5  # identical samples: every comparison is a tie
    assert m["eval/gold_reward"] == m["eval/ref_gold_reward"]
    assert len(samples) == 3 and samples[0]["prompt"] == PROMPTS[0]
    # Each logged sample carries the reference's completion of the same prompt (before vs after training).
    assert [s["ref_completion"] for s in samples] == [s["completion"] for s in samples]
    assert [s["ref_gold"] for s in samples] == [s["gold"] for s in samples]
    other = small_model(tok, seed=9)
    m2, samples2 = ev(other)
    assert m2["eval/kl_to_ref_k3"] >= 0.0 and m2["eval/kl_to_ref"] != 0.0
    assert m2["eval/ref_gold_reward"] == m["eval/ref_gold_reward"]  # reference samples are cached/fixed
    assert [s["ref_completion"] for s in samples2] == [s["ref_completion"] for s in samples]
    assert [s["completion"] for s in samples2] != [s["completion"] for s in samples]


def test_report_sample_line_shows_the_reference_beside_the_policy():
    from pipelines.report import _sample_line

    item = {"prompt": "We ate at Luigi's and", "completion": " it was great.", "gold": 0.62,
            "ref_completion": " it was cold.\n", "ref_gold": -0.1}
    assert _sample_line(item) == ("We ate at Luigi's and **it was great.** (gold +0.62); "
                                  "reference: **it was cold.** (gold -0.10)")
    del item["ref_completion"], item["ref_gold"]
    assert _sample_line(item) == "We ate at Luigi's and **it was great.** (gold +0.62)"
    item["prompt"] = [{"role": "user", "content": "Continue: We ate at Luigi's and"}]  # conversational prompt
    assert _sample_line(item) == "Continue: We ate at Luigi's and **it was great.** (gold +0.62)"


def test_reward_model_scores_with_its_own_tokenizer(tok):
    """A reward model with a different tokenizer scores re-tokenised text (PPO's decode/re-encode bridge)."""
    rm_args = ModelArgs(tiny=small_args().tiny.__class__(hidden_size=32, num_layers=1, num_heads=2,
                                                         intermediate_size=64, vocab_size=600))
    rm_tok = load_tokenizer(rm_args)
    assert len(rm_tok) != len(tok)
    rm = load_reward_model(rm_args, rm_tok, seed=2)
    completions = [" the room was spotless.", " the pasta was bland."]
    got = score_texts(rm, rm_tok, PROMPTS[:2], completions)
    for i, (p, c) in enumerate(zip(PROMPTS[:2], completions)):
        ids = rm_tok(p + c, add_special_tokens=False)["input_ids"] + [rm_tok.eos_token_id]
        with torch.no_grad():
            want = rm(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert got[i].item() == pytest.approx(want, abs=1e-5)
