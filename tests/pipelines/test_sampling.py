"""The loop helpers ppo and grpo share (pipelines.sampling): each process's prompt share, the log / evaluate /
checkpoint cadence, the pad-token check, and the config fields both stages take from SamplingArgs."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from pipelines import grpo, ppo
from pipelines.prompts import iteration_prompts
from pipelines.sampling import SamplingArgs, check_tokenizer, local_prompt_indices, log_eval_save
from reins.errors import ConfigError


def test_process_shares_partition_the_iteration_slice():
    cfg = SimpleNamespace(batch_size=6, seed=3)
    for step in (0, 1, 7):   # 7 crosses into the second epoch of 40 // 6 = 6 iterations
        shares = [local_prompt_indices(cfg, 40, step, SimpleNamespace(num_processes=3, process_index=r))
                  for r in range(3)]
        assert [len(s) for s in shares] == [2, 2, 2]
        assert sum(shares, []) == iteration_prompts(40, 6, step, 3)


class _Run:
    def __init__(self):
        self.logged = []

    def log(self, step, metrics, *, tb_prefix=""):
        self.logged.append((step, tb_prefix))


def test_log_eval_save_cadence():
    cfg = SimpleNamespace(log_every=2, eval_every=2, save_every=3)
    evals, saves = [], []
    s = SimpleNamespace(cfg=cfg, acc=SimpleNamespace(is_main_process=True), run=_Run(), total=5, last={},
                        evaluate=evals.append, save=lambda: saves.append(s.step))
    for step in range(1, 6):
        s.step = step
        log_eval_save(s, {"x": step}, {}, tb_prefix="train/")
    assert [st for st, _ in s.run.logged] == [2, 4, 5]   # and the last
    assert {p for _, p in s.run.logged} == {"train/"}
    assert evals == [2, 4]                               # not the last: finish evaluates
    assert saves == [3, 5]                               # and the last
    assert s.last == {"x": 5}


def test_check_tokenizer_rejects_pad_equal_to_eos():
    check_tokenizer(SimpleNamespace(pad_token_id=0, eos_token_id=1), "m", "completions")
    for pad in (None, 1):
        with pytest.raises(ConfigError, match="m: the tokenizer needs a pad token distinct from EOS .*completions"):
            check_tokenizer(SimpleNamespace(pad_token_id=pad, eos_token_id=1), "m", "completions")


def test_both_stages_take_the_shared_fields_unchanged():
    shared = {f.name: f for f in dataclasses.fields(SamplingArgs)}
    for stage in (ppo.Config, grpo.Config):
        own = {f.name: f for f in dataclasses.fields(stage)}
        for name in ("train_split", "builtin_size", "max_train_samples", "max_prompt_length", "log_every",
                     "save_every", "max_grad_norm"):
            assert own[name].default == shared[name].default
            assert own[name].metadata["help"] == shared[name].metadata["help"]
        assert own["log_every"].metadata["help"] == "iterations between log.jsonl rows"
        assert (own["log_every"].default, own["save_every"].default) == (1, 10)
