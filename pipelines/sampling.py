"""What the sampling stages (ppo, grpo) share: the prompt and cadence config fields, the input checks done before
the run dir is opened, each iteration's prompt share and seeds, and the loop around setup / iteration / finish.

Also the update's minibatch schedule and the loop's resume, checkpoint, iteration end and finish. A stage's loop
state (ppo.PPOLoop, grpo.GRPOLoop: its models, optimiser and loop position) provides `cfg`, `acc`, `run`,
`optimizer`, `scheduler`, `step`, `total`, `last`, `bar`, `evaluate(at)` and `save()`; the helpers here take it as
that.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from pipelines.common import start_lm_stage
from pipelines.prompts import iteration_prompts, load_prompts
from pipelines.trainer import OptimArgs, drop_trainer_only_keys
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

    def run_config_view(self, d: dict) -> dict:
        """ModelArgs' view without the Trainer-only keys a config.yaml saved before OptimArgs holds."""
        return drop_trainer_only_keys(super().run_config_view(d))

    @property
    def weights(self) -> list[float]:
        """The weight of each of the stage's `reward_funcs` (`reward_weights`, default 1 each)."""
        return list(self.reward_weights) if self.reward_weights is not None else [1.0] * len(self.reward_funcs)


# ----------------------------------------------------------------------------------------- inputs
def check_tokenizer(tok, model: str, what: str) -> None:
    """Sampling needs a pad token distinct from EOS; `what` names the sampled texts in the error."""
    if tok.pad_token_id is None or tok.pad_token_id == tok.eos_token_id:
        raise ConfigError(f"{model}: the tokenizer needs a pad token distinct from EOS (pad == EOS hides where "
                          f"{what} end)")


def load_inputs(cfg: SamplingArgs, what: str, **kw) -> tuple:
    """The tokenizer, the prompts and the reward functions, checked before the run dir is opened: (tokenizer,
    prompts, their ids, dropped, iterations, each prompt's other columns, reward functions). `what` names the
    sampled texts in the tokenizer's error; `kw` goes to prompts.load_prompts."""
    from pipelines.models import load_tokenizer
    from pipelines.reward_funcs import check_columns, column_lists, probe, resolve_reward_funcs

    tok = load_tokenizer(cfg)
    check_tokenizer(tok, cfg.model, what)
    prompts, prompt_ids, dropped, total, columns = load_stage_prompts(cfg, tok, **kw)
    funcs = resolve_reward_funcs(cfg.reward_funcs, cfg, tok)
    check_columns(funcs, list(column_lists(columns)), cfg.data)
    probe(funcs, prompts[:2], column_lists(columns[:2]))
    return tok, prompts, prompt_ids, dropped, total, columns, funcs


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


# ----------------------------------------------------------------------------------------- update
class Minibatches:
    """The update's schedule over one rollout batch: `passes` shuffled passes, each `num_minibatches` optimizer
    steps, each split into `grad_accum` micro-batches. Iterating yields (the minibatch's response-token count,
    a micro-batch of `data`); after a minibatch's last micro-batch the gradient is clipped to `max_grad_norm`,
    checked finite, and the optimizer steps. `grad_norm` is the last step's, `size` the minibatch's rows."""

    def __init__(self, cfg: SamplingArgs, passes: int, model, optimizer, accelerator, data: dict,
                 generator: torch.Generator):
        self.cfg, self.passes, self.model, self.optimizer, self.acc = cfg, passes, model, optimizer, accelerator
        self.data, self.generator = data, generator
        self.n = data["input_ids"].shape[0]
        self.size = self.n // cfg.num_minibatches
        self.grad_norm = None

    def __iter__(self):
        from reins.runio import check_finite

        cfg, data, mb = self.cfg, self.data, self.size
        micro = mb // cfg.grad_accum
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
        self.model.train()
        for _ in range(self.passes):
            perm = torch.randperm(self.n, generator=self.generator).tolist()
            for k in range(cfg.num_minibatches):
                idx = perm[k * mb:(k + 1) * mb]
                n_tok = data["response_mask"][idx].sum().clamp_min(1)
                for a in range(cfg.grad_accum):
                    yield n_tok, {key: v[idx[a * micro:(a + 1) * micro]] for key, v in data.items()}
                self.grad_norm = self.acc.clip_grad_norm_(params, max_norm)
                check_finite("gradient norm", self.grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------- stage
def resume_and_prepare(cfg: SamplingArgs, acc, run, module, optimizer, total: int) -> tuple:
    """The LR scheduler, the checkpoint restored into `module`, optimizer and scheduler (if there is one), then
    accelerate's `prepare`: (prepared model, prepared optimizer, scheduler, step, last metrics, checkpoint or
    None)."""
    from pipelines.trainer import lr_lambda

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total))
    step, state, last = 0, run.load_checkpoint(), {}
    if state is not None:
        step, last = restore(state, module, optimizer, scheduler)
    # The scheduler is not prepared: accelerate would step it once per process (as pipelines.trainer notes).
    model, optimizer = acc.prepare(module, optimizer)
    if acc.is_main_process:
        run.truncate_log(step)
    return model, optimizer, scheduler, step, last, state


def save_loop(s, model, **extra) -> None:
    """The loop's checkpoint: trainable parameters of `model`, optimizer, scheduler, RNG, step, last metrics and
    the stage's `extra` entries. Every process gathers (a collective under sharding, pipelines.sharded); the main
    process writes."""
    from pipelines.models import trainable_state
    from pipelines.sharded import optimizer_for_save, state_for_save
    from reins.runio import get_rng_state

    params = state_for_save(s.acc, model, trainable_state)
    optim = optimizer_for_save(s.acc, model, s.optimizer)
    if s.acc.is_main_process:
        s.run.save_checkpoint({"step": s.step, "model": params, "optimizer": optim,
                               "scheduler": s.scheduler.state_dict(), "rng": get_rng_state(),
                               "last_metrics": s.last, **extra})
    s.acc.wait_for_everyone()


def end_iteration(s, m: dict, perf: dict, **postfix) -> None:
    """The bar's step and `postfix` (main process), then log / evaluate / checkpoint as due (`log_eval_save`)."""
    if s.bar is not None:
        s.bar.update(1)
        s.bar.set_postfix(**postfix)
    log_eval_save(s, m, perf, tb_prefix="train/")


def finish_loop(s, model, save, cards, extra: dict | None = None) -> dict:
    """The end of a sampling stage: the parameters gathered (every process); then on the main process
    `save(full_state_dict)` writes the artifacts, the final evaluation runs, `cards(metrics)` writes the model
    cards and metrics.json comes last; returns the metrics on every process. `extra` joins the metrics."""
    from pipelines.common import broadcast_metrics
    from pipelines.prompts import param_sync_gap
    from pipelines.sharded import model_state_dict

    acc, run = s.acc, s.run
    gap = param_sync_gap(acc, model)
    full = model_state_dict(acc, model)  # every process gathers under sharding (None otherwise)
    final = None
    if acc.is_main_process:
        save(full)
        ev = s.evaluate(s.step)
        metrics = {**{f"train/{k}": v for k, v in s.last.items()}, **(extra or {}), **ev, "steps": s.step,
                   "dist/world_size": acc.num_processes, "dist/param_sync_gap": gap}
        cards(metrics)
        final = run.finish(metrics)  # last: its presence means complete
    acc.wait_for_everyone()
    return broadcast_metrics(acc, final)


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
