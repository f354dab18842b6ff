"""Switches and metrics that TRL users expect (issue 14, class 7).

- `shuffle: false`: every epoch visits the training file in order, batch k = rows kB .. kB+B-1.
- DPO logs `logits/chosen`, `logits/rejected`, `entropy`, `mean_token_accuracy` and `num_tokens` as TRL defines
  them. The oracle is computed here from scratch: the initial policy's full [B, T, V] logits of plain
  prompt+completion rows (TRL's two-row layout, no `logits_to_keep`), averaged over the completion tokens of the
  first batch, which `shuffle: false` makes known. Step 1's metrics are computed before its update, so they are
  the initial policy's.
"""

from __future__ import annotations

import json

import pytest
import torch

from pipelines import dpo, reward_model, sft
from pipelines.data import normalise_preferences, tokenize_preferences
from pipelines.models import load_causal_lm, load_tokenizer
from pipelines.scoring import completion_batch, pair_logps, sequence_logps, shared_prompt_batch
from pipelines.trainer import Trainer, epoch_order, make_accelerator
from reins.errors import ConfigError
from tests.pipelines.helpers import ragged_pairs, small_model, small_tok, stage_config, write_jsonl

# Pairs of different prompt and completion lengths, so token means differ from means of per-pair means.
PAIRS = [
    {"prompt": "I stayed at the inn and", "chosen": " it was lovely.", "rejected": " it was dirty and loud all night."},
    {"prompt": "The staff", "chosen": " were kind and quick to help us.", "rejected": " were rude."},
    {"prompt": "Our room at the hotel by the lake", "chosen": " was bright.", "rejected": " smelled."},
    {"prompt": "Breakfast", "chosen": " was fresh.", "rejected": " was cold, late and far too small to share."},
    {"prompt": "The view from the terrace was", "chosen": " stunning.", "rejected": " of a car park."},
    {"prompt": "We would", "chosen": " come back.", "rejected": " never return to this place again."},
    {"prompt": "The price for two nights", "chosen": " was fair.", "rejected": " was far too high."},
    {"prompt": "Check-in", "chosen": " took a minute.", "rejected": " took an hour."},
]
B = 4


def test_epoch_order_without_shuffle_is_file_order_every_epoch():
    assert epoch_order([5] * 10, 3, seed=1, epoch=0, group_by_length=False, shuffle=False) == list(range(9))
    assert epoch_order([5] * 10, 3, seed=1, epoch=4, group_by_length=False, shuffle=False) == list(range(9))
    assert epoch_order([5] * 10, 3, seed=1, epoch=0, group_by_length=False) != list(range(9))  # the default


@pytest.mark.parametrize("mod", [sft, reward_model, dpo])
def test_shuffle_false_trains_in_file_order_and_refuses_length_grouping(tmp_path, mod):
    cfg = stage_config(mod, tmp_path, shuffle=False, batch_size=3, max_steps=5)
    seen = []

    def loss_fn(model, examples, denominator):
        seen.extend(e["i"] for e in examples)
        loss = sum(p.sum() for p in model.parameters()) * 0.0
        return loss, {"loss": ("mean", loss.detach(), 1)}

    model = torch.nn.Linear(2, 1)
    Trainer(None, cfg, make_accelerator(cfg), model, [{"i": i} for i in range(7)], loss_fn, seed=0).train()
    assert seen == [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5, 0, 1, 2]  # 2 steps an epoch; row 6 fills no batch
    with pytest.raises(ConfigError, match="group_by_length"):
        stage_config(mod, tmp_path, shuffle=False, group_by_length=True)


def _oracle(model, tok, rows: list[dict]) -> dict:
    """TRL's token-level DPO metrics from full logits of two plain rows per pair."""
    ex, _ = tokenize_preferences(tok, normalise_preferences(rows, "oracle"), "oracle", 48)
    out, tokens = {}, 0
    ent, hit, n_all = 0.0, 0.0, 0
    with torch.no_grad():
        for key in ("chosen", "rejected"):
            vocab_means = []
            for e in ex:
                ids = torch.tensor([e["prompt_ids"] + e[f"{key}_ids"]])
                logits = model(input_ids=ids).logits[0].double()
                p = len(e["prompt_ids"])
                pred = logits[p - 1:-1]  # the positions that predict the completion tokens
                labels = ids[0, p:]
                vocab_means.append(pred.mean(-1))
                logp = torch.log_softmax(pred, -1)
                ent += float(-(logp.exp() * logp).sum())
                hit += float((pred.argmax(-1) == labels).sum())
                n_all += len(labels)
                tokens += ids.shape[1]
            out[f"logits/{key}"] = float(torch.cat(vocab_means).mean())
    out["entropy"], out["mean_token_accuracy"], out["num_tokens"] = ent / n_all, hit / n_all, tokens
    return out


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory) -> str:
    """A policy that predicts some tokens right (a fresh one predicts none: accuracy 0 would test nothing)."""
    tmp = tmp_path_factory.mktemp("sft")
    sft.train(stage_config(sft, tmp, max_steps=12, learning_rate=1e-2, save_every=100))
    return str(tmp / "run" / "model")


@pytest.mark.parametrize("shared_prompt", [True, False])
def test_dpo_token_metrics_equal_trl_definitions(tmp_path, sft_model, shared_prompt):
    data = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    cfg = stage_config(dpo, tmp_path, data=str(data), shuffle=False, batch_size=B, max_steps=2, log_every=1,
               learning_rate=1e-2, shared_prompt=shared_prompt, max_eval_samples=None, model=sft_model)
    final = dpo.train(cfg)
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    step1, step2 = (next(r for r in log if r["step"] == s and "loss" in r) for s in (1, 2))
    tok = load_tokenizer(cfg)
    want = _oracle(load_causal_lm(cfg, tok, seed=cfg.seed), tok, PAIRS[:B])
    assert 0.05 < want["mean_token_accuracy"] < 0.95  # some tokens right, some wrong
    for k in ("logits/chosen", "logits/rejected", "entropy", "mean_token_accuracy"):
        assert step1[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6), k
    assert step1["num_tokens"] == want["num_tokens"]
    # num_tokens is a running total: step 2 adds the second batch (the file's next four rows)
    assert step2["num_tokens"] == want["num_tokens"] + _oracle(load_causal_lm(cfg, tok, seed=cfg.seed), tok,
                                                               PAIRS[B:2 * B])["num_tokens"]
    assert final["train/num_tokens"] == step2["num_tokens"]
    # the per-pair mean of per-sequence means (what was logged before) is a different number on this data
    assert step1["logits/chosen"] != pytest.approx(_per_pair_mean(cfg, tok, PAIRS[:B]), rel=1e-5, abs=1e-6)


def _per_pair_mean(cfg, tok, rows) -> float:
    ex, _ = tokenize_preferences(tok, normalise_preferences(rows, "x"), "x", 48)
    b = completion_batch([e["prompt_ids"] for e in ex], [e["chosen_ids"] for e in ex], tok.pad_token_id)
    with torch.no_grad():
        return float(sequence_logps(load_causal_lm(cfg, tok, seed=cfg.seed), b)["logits_mean"].mean())


def test_pair_entropy_and_accuracy_sums_equal_the_two_row_layout():
    """The shared-prompt row's sums (first rejected token predicted at the prompt's end, empty completions)
    equal those of two plain rows per pair."""
    tok = small_tok()
    P, C, R = ragged_pairs()
    m = small_model(tok, dtype="float64")
    with torch.no_grad():
        got = pair_logps(m, shared_prompt_batch(P, C, R, tok.pad_token_id), with_entropy=True)
        two = sequence_logps(m, completion_batch(P * 2, C + R, tok.pad_token_id), with_entropy=True)
    for k in ("entropy_sum", "correct_sum", "n_tokens"):
        torch.testing.assert_close(got[k], two[k], rtol=0, atol=1e-10, msg=k)
    assert got["entropy_sum"][2] == 0 and got["entropy_sum"][4 + 3] == 0  # the empty completions
