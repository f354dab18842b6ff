"""group_by_length: the same examples per epoch, batches of similar length, less padding, exact resume."""

from __future__ import annotations

import random

import torch

from pipelines import dpo
from pipelines.models import load_causal_lm, load_tokenizer
from pipelines.trainer import GROUP_MEGABATCHES, Trainer, epoch_order, example_length, make_accelerator
from tests.pipelines.helpers import stage_config


def _lengths(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(5, 200) for _ in range(n)]


def _padded(order: list[int], lengths: list[int], B: int) -> int:
    return sum(B * max(lengths[i] for i in order[b:b + B]) for b in range(0, len(order), B))


def test_plain_order_is_the_seeded_permutation_that_earlier_runs_used():
    # runs saved before group_by_length existed must resume on the same batches
    lengths, B = _lengths(103), 8
    g = torch.Generator().manual_seed(5 * 1_000_003 + 2)
    assert epoch_order(lengths, B, seed=5, epoch=2, group_by_length=False) == \
        torch.randperm(103, generator=g)[:96].tolist()


def test_grouped_epoch_visits_the_same_examples_with_less_padding():
    lengths, B = _lengths(1000), 8
    for epoch in range(3):
        plain = epoch_order(lengths, B, seed=0, epoch=epoch, group_by_length=False)
        grouped = epoch_order(lengths, B, seed=0, epoch=epoch, group_by_length=True)
        assert sorted(grouped) == sorted(plain) and len(set(grouped)) == len(grouped) == 1000 // B * B
        real = sum(lengths[i] for i in plain)
        # uniform lengths 5..200: a random batch of 8 pads to ~180 on average, a sorted one to ~its own length
        assert _padded(grouped, lengths, B) < 1.1 * real < 0.7 * _padded(plain, lengths, B)
        batches = [grouped[b:b + B] for b in range(0, len(grouped), B)]
        spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
        assert max(spans) <= 40  # 400 examples per mega-batch over 196 lengths: ~4 per batch step
        assert max(lengths[i] for i in batches[0]) == max(lengths[i] for i in grouped)  # longest first
        tops = [max(lengths[i] for i in b) for b in batches[1:]]
        assert tops != sorted(tops) and tops != sorted(tops, reverse=True)  # batch order is shuffled
    assert epoch_order(lengths, B, seed=0, epoch=0, group_by_length=True) != \
        epoch_order(lengths, B, seed=0, epoch=1, group_by_length=True)
    assert epoch_order(lengths, B, seed=0, epoch=1, group_by_length=True) == \
        epoch_order(lengths, B, seed=0, epoch=1, group_by_length=True)


def test_grouping_stays_within_mega_batches():
    lengths, B = list(range(2 * GROUP_MEGABATCHES * 4)), 4  # exactly two mega-batches
    plain = epoch_order(lengths, B, seed=1, epoch=0, group_by_length=False)
    grouped = epoch_order(lengths, B, seed=1, epoch=0, group_by_length=True)
    mega = GROUP_MEGABATCHES * B
    halves = [set(plain[:mega]), set(plain[mega:])]
    for b in range(0, len(grouped), B):  # each batch comes from one mega-batch of the plain permutation
        assert any(set(grouped[b:b + B]) <= h for h in halves)


def test_trainer_feeds_grouped_batches_and_counts_tokens_of_pairs(tmp_path):
    cfg = stage_config(dpo, tmp_path, max_steps=1, group_by_length=True, batch_size=4)
    tok = load_tokenizer(cfg)
    model = load_causal_lm(cfg, tok, seed=cfg.seed)
    exs, _ = dpo.tokenize_preferences(tok, dpo.normalise_preferences(dpo.builtin_pairs(64, 0, "train"), "b"),
                                      "b", 48)
    assert example_length(exs[0]) == sum(len(exs[0][k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))
    loss_fn = dpo.make_loss_fn(tok.pad_token_id, cfg, dpo.Reference(adapter_host=model))
    t = Trainer(None, cfg, make_accelerator(cfg), model, exs, loss_fn, seed=0)
    lengths = [example_length(e) for e in exs]
    order = [i for s in range(t.steps_per_epoch) for i in t.global_batch(s)]
    assert order == epoch_order(lengths, 4, seed=0, epoch=0, group_by_length=True)
    assert _padded(order, lengths, 4) < _padded(epoch_order(lengths, 4, seed=0, epoch=0, group_by_length=False),
                                                lengths, 4)
