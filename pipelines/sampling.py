"""What the sampling stages (ppo, grpo) share: the prompt and cadence config fields, the input checks done before
the run dir is opened, each iteration's prompt share and seeds, and the loop around setup / iteration / finish.

A stage's loop state (ppo.PPOLoop, grpo.GRPOLoop: its models, optimiser and loop position) provides `cfg`, `acc`,
`run`, `step`, `total`, `last`, `bar`, `evaluate(at)` and `save()`; the helpers here take it as that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pipelines.common import start_lm_stage
from pipelines.prompts import iteration_prompts, load_prompts
from pipelines.trainer import OptimArgs
from reins.errors import ConfigError
from reins.runio import set_rng_state


@dataclass
class SamplingArgs(OptimArgs):
    """Config fields of the stages that sample from the policy every iteration (one iteration = one optimizer
    schedule step, the unit of `max_steps`, `log_every`, `save_every`, `eval_every`)."""

    train_split: str = field(default="train", metadata={"help": "split of `data` to take prompts from"})
    builtin_size: int = field(default=2000, metadata={"help": "prompts of the built-in task's training set"})
    max_train_samples: int | None = field(default=None, metadata={"help": "use at most this many prompts (None: all)"})
    max_prompt_length: int = field(default=64,
                                   metadata={"help": "longer prompts are dropped (counted in data/dropped_prompts)"})
    log_every: int = field(default=1, metadata={"help": "iterations between log.jsonl rows"})
    save_every: int = field(default=10, metadata={"help": "iterations between checkpoints"})


# ----------------------------------------------------------------------------------------- inputs
def check_tokenizer(tok, model: str, what: str) -> None:
    """Sampling needs a pad token distinct from EOS; `what` names the sampled texts in the error."""
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        raise ConfigError(f"{model}: the tokenizer needs a pad token distinct from EOS (pad == EOS hides where "
                          f"{what} end)")


def load_stage_prompts(cfg: SamplingArgs, tok, **kw) -> tuple[list, list[list[int]], int, int, list[dict]]:
    """(prompts, their token ids, number dropped, iterations, each prompt's other dataset columns) of `cfg.data`;
    `kw` goes to prompts.load_prompts. Raises ConfigError when `batch_size` exceeds the prompts."""
    prompts, ids, dropped, columns = load_prompts(cfg.data, tok, split=cfg.train_split,
                                                  builtin_size=cfg.builtin_size, seed=cfg.seed,
                                                  max_train_samples=cfg.max_train_samples,
                                                  max_prompt_length=cfg.max_prompt_length, **kw)
    if len(prompts) < cfg.batch_size:
        raise ConfigError(f"batch_size={cfg.batch_size} is larger than the {len(prompts)} prompts")
    per_epoch = len(prompts) // cfg.batch_size
    total = cfg.max_steps or max(1, math.ceil(cfg.num_epochs * per_epoch))
    return prompts, ids, dropped, total, columns


# ----------------------------------------------------------------------------------------- iteration
def local_prompt_indices(cfg: SamplingArgs, n_prompts: int, step: int, acc) -> list[int]:
    """This process's share of iteration `step`'s prompts (the global slice, cut into num_processes pieces)."""
    local = cfg.batch_size // acc.num_processes
    idx = iteration_prompts(n_prompts, cfg.batch_size, step, cfg.seed)
    return idx[acc.process_index * local:(acc.process_index + 1) * local]


def rollout_seed(seed: int, step: int, rank: int) -> int:
    """The sampling seed of iteration `step` on process `rank`."""
    return seed * 1_000_003 + step * 7919 + rank


def update_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """The minibatch-shuffling generator of iteration `step` on process `rank`."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step * 7919 + 17 * rank + 1)


def perf_metrics(rollout_tokens: int, world: int, t0: float, t1: float, t2: float, gen_seconds: float) -> dict:
    """Timings of one iteration (rollout t0..t1, of which sampling `gen_seconds`; update t1..t2), for log.jsonl
    only: metrics.json must not depend on the machine's speed."""
    return {"perf/rollout_tokens_per_s": rollout_tokens / world / max(t1 - t0, 1e-9),
            "perf/generation_tokens_per_s": rollout_tokens / world / max(gen_seconds, 1e-9),
            "perf/update_s": t2 - t1, "perf/rollout_s": t1 - t0}


def log_eval_save(s, m: dict, perf: dict, *, tb_prefix: str = "") -> None:
    """After iteration `s.step`: log it (every `log_every` and the last), evaluate (every `eval_every`, not the
    last: `finish` does), checkpoint (every `save_every` and the last)."""
    cfg, acc, step, total = s.cfg, s.acc, s.step, s.total
    s.last = m
    if acc.is_main_process and (step % cfg.log_every == 0 or step == total):
        s.run.log(step, {**m, **perf}, tb_prefix=tb_prefix)
    if cfg.eval_every and step % cfg.eval_every == 0 and step < total and acc.is_main_process:
        s.evaluate(step)
    if step % cfg.save_every == 0 or step == total:
        s.save()


def log_evaluation(run, evaluator, policy, at: int) -> dict:
    """`evaluator(policy)`'s metrics (none without an evaluator), logged at step `at` with its samples."""
    if evaluator is None:
        return {}
    m, samples = evaluator(policy)
    run.log(at, {**m, "samples": samples})
    return m


def restore(state: dict, module, optimizer, scheduler) -> tuple[int, dict]:
    """Load a checkpoint's trainable parameters, optimizer, scheduler and RNG; (step, last metrics)."""
    from pipelines.models import load_trainable_state

    load_trainable_state(module, state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"]), dict(state.get("last_metrics", {}))   # a kill after the final save keeps them


# ----------------------------------------------------------------------------------------- stage
def run_stage(cfg: SamplingArgs, setup, iteration, finish, *, desc: str) -> dict:
    """A sampling stage: a finished run's metrics, else setup, `iteration` until `total`, finish."""
    acc, done = start_lm_stage(cfg)
    if done is not None:  # a finished run: return its metrics, no retraining
        return done
    s = setup(cfg, acc)
    s.bar = s.run.progress(s.total, s.step, desc=desc) if acc.is_main_process else None
    while s.step < s.total:
        iteration(s)
    if s.bar is not None:
        s.bar.close()
    return finish(s)
