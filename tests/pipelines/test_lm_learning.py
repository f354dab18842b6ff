"""Seeded learning checks on the built-in sentiment task with the small tiny-Llama: a reward model's held-out
accuracy and DPO's held-out `rewards/accuracies` start near chance (0.5) and end at 0.75 or more."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from pipelines import dpo
from pipelines import reward_model as reward
from pipelines.common import evaluate_examples
from pipelines.data import normalise_preferences, tokenize_preferences
from pipelines.models import freeze, load_causal_lm, load_reward_model, load_tokenizer
from pipelines.scoring import Reference
from reins.config import from_dict
from tests.pipelines.helpers import SMALL

N_EVAL = 48


def _cfg(mod, tmp_path, **kw):
    base = {"output_dir": str(tmp_path / "run"), "quiet": True, "tiny": dict(SMALL), "max_length": 48,
            "builtin_size": 256, "max_eval_samples": N_EVAL, "batch_size": 16, "save_every": 1000, "max_steps": 24,
            "eval_prompts": None, "seed": 0, **kw}
    names = {f.name for f in dataclasses.fields(mod.Config)}
    return from_dict(mod.Config, {k: v for k, v in base.items() if k in names})


def _held_out(mod, cfg, tok):
    """The pairs the stage evaluates on (the built-in task's eval split)."""
    rows = normalise_preferences(mod.builtin_pairs(N_EVAL, cfg.seed, "eval"), "builtin")
    return tokenize_preferences(tok, rows, "builtin", cfg.max_length)[0]


def _accuracy(model, loss_fn, examples, key):
    return evaluate_examples(model, loss_fn, examples, batch_size=16, count_fn=lambda e: 1)[key]


def test_reward_model_held_out_accuracy_rises_from_chance(tmp_path):
    cfg = _cfg(reward, tmp_path, learning_rate=3e-3)
    tok = load_tokenizer(cfg)
    loss_fn = reward.make_loss_fn(tok.pad_token_id, cfg)
    before = _accuracy(load_reward_model(cfg, tok, seed=cfg.seed), loss_fn, _held_out(reward, cfg, tok),
                       "eval/accuracy")   # the stage's own starting model
    m = reward.train(cfg)
    assert 0.3 <= before <= 0.7
    assert m["eval/accuracy"] >= 0.75 and m["eval/accuracy"] >= before + 0.2
    assert m["train/loss"] < 0.6931   # below log 2, the loss of a reward model that cannot tell the two apart


def test_dpo_held_out_reward_accuracy_rises_from_chance(tmp_path):
    cfg = _cfg(dpo, tmp_path, learning_rate=1e-3)
    tok = load_tokenizer(cfg)
    examples = _held_out(dpo, cfg, tok)
    # At the start the policy is its reference (every implicit reward is 0, a tie). Chance, the level training
    # has to beat: the mean accuracy of the policy nudged in four random directions away from its start.
    start = load_causal_lm(cfg, tok, seed=cfg.seed)   # the stage's own starting model
    loss_fn = dpo.make_loss_fn(tok.pad_token_id, cfg, Reference(freeze(copy.deepcopy(start))))
    nudged = []
    for s in range(4):
        g, policy = torch.Generator().manual_seed(s), copy.deepcopy(start)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 1e-3)
        nudged.append(_accuracy(policy, loss_fn, examples, "eval/rewards/accuracies"))
    chance = sum(nudged) / 4
    m = dpo.train(cfg)
    assert 0.3 <= chance <= 0.7
    assert m["eval/rewards/accuracies"] >= 0.75 and m["eval/rewards/accuracies"] >= chance + 0.2
    assert m["eval/rewards/margins"] > 0 and m["eval/loss"] < 0.6931   # log 2: the loss at the start



@pytest.mark.parametrize("fraction", [0.25, 0.0])
def test_reward_holds_out_eval_fraction_of_a_file_without_eval_split(tmp_path, fraction):
    import json

    rows = reward.builtin_pairs(40, 0, "train")
    assert len(rows) % 4 == 0   # a quarter is a whole number of pairs
    n_eval = int(len(rows) * fraction)
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = reward.train(_cfg(reward, tmp_path, data=str(path), eval_fraction=fraction, max_steps=1, learning_rate=1e-3))
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    counts = next(r for r in log if "data/train_pairs" in r)
    assert (counts["data/train_pairs"], counts["data/eval_pairs"]) == (len(rows) - n_eval, n_eval)
    assert ("eval/accuracy" in m) == (n_eval > 0)
