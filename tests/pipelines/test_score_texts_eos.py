"""Reward-model scores of cut-off completions: no closing EOS / end of turn (as PPO's objective/scores)."""

from __future__ import annotations

import copy

import pytest
import torch

from pipelines import evaluation
from pipelines.data import encode_prompt
from pipelines.evaluation import EvalArgs, PolicyEvaluator, score_texts
from pipelines.generation import GenerationArgs, Samples, generate
from pipelines.models import load_reward_model
from pipelines.scoring import completion_batch, reward_scores
from tests.pipelines.helpers import small_args, small_model, small_tok

PROMPTS = ["I stayed at the Harbour Inn last week and", "We ate at Luigi's on Friday and",
           "I watched The Silent River yesterday and"]
TEXTS = [" the room was", " the pasta was bland.", " it was"]


@pytest.fixture(scope="module")
def tok():
    return small_tok()


@pytest.fixture(scope="module")
def rm(tok):
    return load_reward_model(small_args(), tok, seed=3, trainable=False)


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def _score(rm, tok, pids: list[int], cids: list[int]) -> float:
    """The reward model's score of one hand-built sequence (no batching, no padding)."""
    b = completion_batch([pids], [cids], tok.pad_token_id)
    with torch.no_grad():
        return reward_scores(rm, b)[0].item()


def test_cut_off_text_is_scored_without_eos(tok, rm):
    eos = tok.eos_token_id
    got = score_texts(rm, tok, PROMPTS, TEXTS, ended=[False, True, False])
    default = score_texts(rm, tok, PROMPTS, TEXTS)
    for i, (p, c) in enumerate(zip(PROMPTS, TEXTS)):
        pids = _ids(tok, p)
        cut, closed = _score(rm, tok, pids, _ids(tok, c)), _score(rm, tok, pids, _ids(tok, c) + [eos])
        assert cut != pytest.approx(closed, abs=1e-4)  # the test can tell the two encodings apart
        assert got[i].item() == pytest.approx(closed if i == 1 else cut, abs=1e-5)
        assert default[i].item() == pytest.approx(closed, abs=1e-5)  # ended=None: every completion ended
    assert torch.equal(score_texts(rm, tok, PROMPTS, TEXTS, ended=[True] * 3), default)
    with pytest.raises(ValueError, match="ended has 2 entries"):
        score_texts(rm, tok, PROMPTS, TEXTS, ended=[True, False])


@pytest.mark.parametrize("tail", ["<|endoftext|>", "<|endoftext|>\n"])
def test_cut_off_chat_completion_drops_the_end_of_turn(tok, rm, tail):
    """The chat template closes the assistant turn; a cut-off completion is scored without that closing text."""
    ctok = copy.deepcopy(tok)
    ctok.chat_template = ("{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}"
                          + tail + "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    prompts = [[{"role": "user", "content": "Review the Harbour Inn."}],
               [{"role": "user", "content": "Review Luigi's."}]]
    texts = ["The room was", "The pasta was bland."]
    got = score_texts(rm, ctok, prompts, texts, ended=[False, True])
    for i, (p, c) in enumerate(zip(prompts, texts)):
        pids = _ids(ctok, f"<|user|>{p[0]['content']}{tail}<|assistant|>")
        assert pids == encode_prompt(ctok, p)
        closed_ids, cut_ids = _ids(ctok, c + tail), _ids(ctok, c)
        assert closed_ids[: len(cut_ids)] == cut_ids and closed_ids[len(cut_ids)] == ctok.eos_token_id
        cut, closed = _score(rm, ctok, pids, cut_ids), _score(rm, ctok, pids, closed_ids)
        assert cut != pytest.approx(closed, abs=1e-4)
        assert got[i].item() == pytest.approx(closed if i == 1 else cut, abs=1e-5)


def _hand_mean(rm, tok, texts, finished) -> float:
    return sum(_score(rm, tok, _ids(tok, p), _ids(tok, t) + ([tok.eos_token_id] if f else []))
               for p, t, f in zip(PROMPTS, texts, finished)) / len(texts)


def test_evaluator_scores_with_the_generated_eos_flags(tok, rm, monkeypatch):
    """PolicyEvaluator passes generation's `finished` through as `ended` (a fake generate fixes the flags)."""
    finished = [False, True, False]

    def fake_generate(model, tok_, prompt_ids, args, *, seed):
        cids = [_ids(tok, t) + ([tok.eos_token_id] if f else []) for t, f in zip(TEXTS, finished)]
        return Samples(prompt_ids=prompt_ids, completion_ids=cids, texts=list(TEXTS), finished=list(finished))

    monkeypatch.setattr(evaluation, "generate", fake_generate)
    ev = PolicyEvaluator(tok, PROMPTS, None, EvalArgs(num_prompts=3), reward_model=rm, rm_tok=tok)
    m, _ = ev(small_model(tok))
    assert m["eval/eos_rate"] == pytest.approx(1 / 3)
    assert m["eval/reward_model_score"] == pytest.approx(_hand_mean(rm, tok, TEXTS, finished), abs=1e-5)
    assert m["eval/reward_model_score"] != pytest.approx(_hand_mean(rm, tok, TEXTS, [True] * 3), abs=1e-4)


def test_evaluator_with_real_generation_cut_off(tok, rm):
    policy = small_model(tok)
    args = EvalArgs(num_prompts=3, max_new_tokens=3)
    s = generate(policy, tok, [encode_prompt(tok, p) for p in PROMPTS],
                 GenerationArgs(max_new_tokens=3, temperature=args.temperature, batch_size=args.batch_size),
                 seed=args.seed)
    assert not all(s.finished)  # 3 tokens of an untrained model: cut off
    m, _ = PolicyEvaluator(tok, PROMPTS, None, args, reward_model=rm)(policy)
    assert m["eval/reward_model_score"] == pytest.approx(_hand_mean(rm, tok, s.texts, s.finished), abs=1e-5)
