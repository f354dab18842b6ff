"""The built-in task (seeded corpus, held-out items, gold judge) and model/tokenizer loading."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.models import (
    TINY_CHAT_TEMPLATE,
    ModelArgs,
    ensure_pad_token,
    load_causal_lm,
    load_tokenizer,
    resolve_model,
    save_model,
)
from pipelines.task import gold_reward, sentiment_corpus, sentiment_prompts
from reins.config import from_dict
from reins.errors import DataError
from tests.pipelines.helpers import small_args, small_tok


def test_corpus_is_seeded_balanced_and_eval_items_are_held_out():
    a, b = sentiment_corpus(600, seed=3), sentiment_corpus(600, seed=3)
    assert a == b and a != sentiment_corpus(600, seed=4)
    pos = sum(r.polarity > 0 for r in a) / len(a)
    assert 0.4 < pos < 0.6
    assert len({r.domain for r in a}) == 6
    train_prompts = {r.prompt for r in a}
    eval_prompts = set(sentiment_prompts(200, seed=3, split="eval"))
    assert eval_prompts and not (train_prompts & eval_prompts)
    assert all(r.completion.startswith(" ") for r in a)


def test_gold_judge_orders_sentiment():
    pos, neg, neutral = gold_reward([" the room was spotless. I loved it.", " the room was dirty. I hated it.", " "])
    assert pos > 0.5 and neg < -0.5 and neutral == 0.0
    # The corpus labels agree with the judge on most reviews (the judge is a noisy but informative oracle).
    rows = sentiment_corpus(300, seed=0)
    scores = gold_reward([r.completion for r in rows])
    agree = sum((s > 0) == (r.polarity > 0) for s, r in zip(scores, rows)) / len(rows)
    assert agree > 0.85


def test_tiny_tokenizer_pad_eos_template_and_round_trip(tmp_path):
    tok = small_tok()
    assert tok.pad_token_id != tok.eos_token_id and tok.pad_token == "<|pad|>"
    assert tok.chat_template == TINY_CHAT_TEMPLATE
    text = "I stayed at the Harbour Inn last week and the room was spotless."
    assert tok.decode(tok(text)["input_ids"]) == text
    default = load_tokenizer(ModelArgs())
    assert len(default(text)["input_ids"]) <= 16  # BPE trained on the task: words are mostly single tokens
    model = load_causal_lm(small_args(), tok, seed=0)
    save_model(model, tok, tmp_path / "m")
    again = load_causal_lm(small_args(model=str(tmp_path / "m")), load_tokenizer(small_args(model=str(tmp_path / "m"))))
    for (n, p), (_, q) in zip(model.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), n


def test_default_tiny_model_size_and_seeding():
    args = ModelArgs()
    tok = load_tokenizer(args)
    m = load_causal_lm(args, tok, seed=0)
    n = sum(p.numel() for p in m.parameters())
    assert 5e5 <= n <= 5e6
    m2 = load_causal_lm(args, tok, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), m2.parameters()))


def test_lora_adapter_on_tiny_saves_its_base_and_reloads(tmp_path):
    tok = small_tok()
    args = from_dict(ModelArgs, {"tiny": dict(small_args().tiny.__dict__), "lora": {"r": 2,
                                 "target_modules": ["q_proj", "v_proj"]}})
    model = load_causal_lm(args, tok, seed=0)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.fill_(0.01)
    save_model(model, tok, tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (tmp_path / "adapter" / "base" / "config.json").is_file()
    assert cfg["base_model_name_or_path"].endswith("base")
    again = load_causal_lm(small_args(model=str(tmp_path / "adapter")), tok, trainable=False)
    ids = torch.tensor([tok("I stayed at the inn")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-6)


def test_resolve_model_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a model directory"):
        resolve_model(str(tmp_path / "empty"))
    import os

    os.environ["REINS_MODEL_DIR"] = str(tmp_path / "cache")
    try:
        with pytest.raises(DataError, match="reins fetch-model smollm2-135m-instruct"):
            resolve_model("smollm2-135m-instruct")
    finally:
        del os.environ["REINS_MODEL_DIR"]


def test_ensure_pad_token_never_uses_eos():
    tok = small_tok()
    tok.pad_token = tok.eos_token  # the common pad == EOS setup (hides where completions end)
    ensure_pad_token(tok)
    assert tok.pad_token_id != tok.eos_token_id


def test_attention_implementations_agree():
    tok = small_tok()
    ids = torch.tensor([tok("I stayed at the Harbour Inn and the room was spotless.")["input_ids"]])
    out = {}
    for impl in ("eager", "sdpa"):
        model = load_causal_lm(small_args(attn_implementation=impl, dtype="float64"), tok, seed=0)
        assert model.config._attn_implementation == impl
        with torch.no_grad():
            out[impl] = model(input_ids=ids).logits
    assert torch.allclose(out["eager"], out["sdpa"], atol=1e-6)  # measured gap ~5e-8 even in float64
