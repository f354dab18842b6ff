"""`reins grpo`: group-relative policy optimisation (GRPO, Shao et al. 2024) and RLOO (Ahmadian et al. 2024).

One iteration ("update", the unit of `max_steps`, `save_every`, `eval_every`):
1. rollout: `batch_size` prompts (global; each process takes its share, data position = iteration), each
   completed `num_generations` times by the policy (KV-cached sampling, truncated after the first EOS;
   pipelines.generation), laid out as PPO's rollouts (pipelines.rollout.rollout_batch);
2. rewards: every `reward_funcs` entry scores every completion (pipelines.reward_funcs: verifiable rewards such as
   `builtin:arithmetic`, the gold judge, reward models, user `module:function` callables with TRL's signature,
   fed each prompt's other dataset columns), checked and summed with `reward_weights` (None rewards left out);
   plus DAPO's soft overlong penalty (`overlong_buffer_len`, pgcore.advantages.soft_overlong_penalty);
3. advantages: one per completion from its group of `num_generations` (pgcore.advantages.group_advantages):
   `advantage: grpo` r - mean (divided by the group std, the batch std or nothing: `scale_rewards`, Dr. GRPO)
   or `rloo` r - mean of the others; computed over the global batch (all processes);
4. update: `num_iterations` passes over `num_minibatches` shuffled minibatches, each split into `grad_accum`
   micro-batches; loss = pgcore.policy_losses.grpo_loss: the clipped surrogate (`epsilon`, `epsilon_high`:
   DAPO clip-higher; on token ratios or GSPO's sequence ratio, `importance_sampling_level`) plus `beta` x k3 KL
   to the reference, aggregated by `loss_type` (token | sequence | dr_grpo), with the minibatch's counts in
   every micro-batch; `mask_truncated_completions` leaves completions without EOS out of it. With one pass and
   one minibatch the old log-probs are the current ones, detached: the ratio is exactly 1. `beta: 0` loads no
   reference model.
Metrics use TRL's GRPOTrainer names (reward, reward_std, frac_reward_zero_std, rewards/<name>/mean|std, kl,
entropy, clip_ratio/low_mean|high_mean|region_mean, completions/mean_length|min_length|max_length|clipped_ratio|
mean_terminated_length, num_tokens, loss, grad_norm) plus an evaluation on held-out prompts every `eval_every`
iterations and at both ends (eval/reward, eval/rewards/<name>, eval/accuracy on builtin:arithmetic; the gold
judge, KL and win rate on builtin:sentiment). Checkpoint after an iteration: trainable parameters, optimizer,
scheduler, RNG, iteration, token count; a re-run resumes exactly. A bad reward function stops the run with a
one-line error naming it (probed on empty completions before anything is written); non-finite log-probs,
losses or gradients stop it (NonFiniteError) before anything is checkpointed. Artifact: `output_dir/model`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from pgcore.advantages import group_advantages, soft_overlong_penalty
from pgcore.distributions import entropy_from_logits, token_logprobs
from pgcore.policy_losses import grpo_loss, mask_truncated_completions
from pipelines.common import open_run
from pipelines.data import BUILTIN, BUILTIN_CHAT
from pipelines.evaluation import EvalArgs, PolicyEvaluator
from pipelines.generation import GenerationArgs, SamplingPolicy, generate
from pipelines.model_card import write_model_card
from pipelines.models import (
    ModelArgs,
    chat_template_trained,
    count_parameters,
    save_model,
)
from pipelines.prompts import ARITHMETIC, builtin_prompts, prompt_rows
from pipelines.reward_funcs import (
    RewardFunction,
    agree,
    check_columns,
    column_lists,
    reward_matrix,
    reward_stats,
    weighted_rewards,
)
from pipelines.rlhf_models import build_policy
from pipelines.rollout import lm_logits, response_logits, rollout_batch
from pipelines.sampling import (
    Minibatches,
    SamplingArgs,
    end_iteration,
    finish_loop,
    load_inputs,
    local_prompt_indices,
    log_evaluation,
    perf_metrics,
    resume_and_prepare,
    rollout_seed,
    run_stage,
    save_loop,
    update_generator,
)
from pipelines.scoring import to_device
from pipelines.trainer import adamw
from reins.config import RunArgs, check
from reins.entry import stage_main
from reins.errors import ConfigError, NonFiniteError, ReinsError
from reins.runio import check_finite

AUTO = "auto"


@dataclass
class Config(SamplingArgs, ModelArgs, RunArgs):
    output_dir: str = field(default="runs/grpo",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    ref_model: str | None = field(default=None,
                                  metadata={"help": "default: the initial policy (frozen copy / adapter disabled); "
                                                    "beta > 0"})
    # prompts
    data: str = field(default=ARITHMETIC,
                      metadata={"help": "builtin:arithmetic(-chat) | builtin:sentiment(-chat) | prompt file / dir"})
    max_operand: int = field(default=99, metadata={"help": "builtin:arithmetic operands are 0..max_operand"})
    generation: GenerationArgs = field(default_factory=lambda: GenerationArgs(max_new_tokens=8, temperature=1.0),
                                       metadata={"help": "rollout sampling (max_new_tokens, temperature > 0, top_p, "
                                                         "batch_size)"})
    num_generations: int = field(default=8, metadata={"help": "completions per prompt (the group)"})
    # rewards
    reward_funcs: list[str] = field(default_factory=lambda: ["builtin:arithmetic", "builtin:arithmetic_format"],
                                    metadata={"help": "reward functions summed into each completion's reward: "
                                                      "builtin:... names, reward model dirs, module:function "
                                                      "callables f(prompts, completions, completion_ids, "
                                                      "**columns) -> list[float | None]"})
    reward_weights: list[float] | None = field(default=None,
                                               metadata={"help": "weight of each reward function (default: 1 each); "
                                                                 "a None reward is left out of the sum"})
    overlong_buffer_len: int | None = field(
        default=None, metadata={"help": "DAPO soft overlong penalty: a completion longer than generation."
                                        "max_new_tokens - overlong_buffer_len tokens loses overlong_penalty x "
                                        "(excess / overlong_buffer_len) reward (None: off)"})
    overlong_penalty: float = field(default=1.0,
                                    metadata={"help": "the soft overlong penalty at max_new_tokens (DAPO: 1)"})
    # advantages and loss
    advantage: Literal["grpo", "rloo"] = field(default="grpo",
                                               metadata={"help": "grpo (group mean baseline) or rloo (leave-one-out "
                                                                 "baseline)"})
    scale_rewards: Literal["group", "batch", "none", "auto"] = field(
        default=AUTO, metadata={"help": "auto: group for grpo, none for rloo"})
    epsilon: float = field(default=0.2,
                           metadata={"help": "ratio clip epsilon (the lower side; and the upper unless epsilon_high)"})
    epsilon_high: float | None = field(default=None, metadata={"help": "DAPO clip-higher; default: epsilon"})
    num_iterations: int = field(default=1, metadata={"help": "update passes over one rollout batch"})
    num_minibatches: int = field(default=1, metadata={"help": "optimizer steps per pass over the rollout batch"})
    beta: float = field(default=0.0, metadata={"help": "k3 KL coefficient; 0 loads no reference model"})
    loss_type: Literal["token", "sequence", "dr_grpo"] = field(
        default="token",
        metadata={"help": "token (mean over all tokens), sequence (per completion), dr_grpo (fixed length)"})
    importance_sampling_level: Literal["token", "sequence"] = field(
        default="token", metadata={"help": "token: per-token ratios (GRPO); sequence: GSPO's ratio, exp of the "
                                           "completion's mean token log-ratio, clipped per completion"})
    mask_truncated_completions: bool = field(
        default=False, metadata={"help": "leave completions cut at max_new_tokens (no EOS) out of the loss (their "
                                         "rewards still count in the group baseline)"})
    # evaluation (every eval_every iterations, and before the first and after the last)
    eval_prompts: str | None = field(default=AUTO,
                                     metadata={"help": "auto: the built-in task's held-out prompts; a file; none"})
    eval: EvalArgs = field(default_factory=lambda: EvalArgs(num_prompts=64, max_new_tokens=8),
                           metadata={"help": "the generation eval (num_prompts, seed, temperature, max_new_tokens, "
                                             "batch_size, ...)"})
    batch_size: int = field(default=16,
                            metadata={"help": "prompts per iteration over all processes (x num_generations rollouts)"})
    learning_rate: float = field(default=1e-5, metadata={"help": "AdamW learning rate of the policy"})

    def validate(self):
        self.validate_model()
        self.validate_optim()
        check(self.generation.temperature > 0, "generation.temperature must be > 0 for GRPO (sampling)")
        check(self.num_generations >= 2, f"num_generations must be >= 2 (a group), got {self.num_generations}")
        check(len(self.reward_funcs) >= 1, "reward_funcs must name at least one reward function")
        check(self.reward_weights is None or len(self.reward_weights) == len(self.reward_funcs),
              f"reward_weights has {len(self.reward_weights or [])} entries for {len(self.reward_funcs)} reward_funcs")
        check(self.epsilon > 0 and (self.epsilon_high is None or self.epsilon_high > 0),
              "epsilon and epsilon_high must be > 0")
        check(self.num_iterations >= 1 and self.num_minibatches >= 1, "num_iterations and num_minibatches must be >= 1")
        check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        check(self.max_prompt_length >= 1 and self.max_operand >= 1, "max_prompt_length and max_operand must be >= 1")
        check(self.ref_model is None or self.beta > 0, "ref_model is only used with beta > 0")
        check(self.overlong_buffer_len is None or 1 <= self.overlong_buffer_len <= self.generation.max_new_tokens,
              f"overlong_buffer_len must be in [1, generation.max_new_tokens={self.generation.max_new_tokens}], "
              f"got {self.overlong_buffer_len}")
        check(self.overlong_penalty > 0 and math.isfinite(self.overlong_penalty),
              f"overlong_penalty must be a finite number > 0, got {self.overlong_penalty}")

    @property
    def scale(self) -> str:
        return self.scale_rewards if self.scale_rewards != AUTO else ("group" if self.advantage == "grpo" else "none")


# ----------------------------------------------------------------------------------------- rollout
def _logps(model, batch: dict, T: float, bs: int, device) -> torch.Tensor:
    """Response-token log-probs [B, R] (0 off the mask) in chunks of `bs`, no gradient."""
    out = []
    for a in range(0, batch["input_ids"].shape[0], bs):
        sub = to_device({k: v[a:a + bs] for k, v in batch.items() if k != "prompt_width"}, device)
        out.append(token_logprobs(lm_logits(model, sub), sub["response"], temperature=T,
                                  mask=sub["response_mask"].float()))
    return torch.cat(out)


@torch.no_grad()
def rollout(cfg: Config, policy, reference, funcs: list[RewardFunction], tok, prompts: list,
            prompt_ids: list[list[int]], *, seed: int, acc, columns: list[dict] | None = None,
            sampler: SamplingPolicy | None = None) -> tuple[dict, dict, float]:
    """Sample, score and compute advantages of one iteration's groups on this process; `columns` are each
    prompt's other dataset columns (passed to the reward functions, repeated for each completion). Samples come
    from `sampler.model()` (generation.sample_dtype) when given, else from `policy`; log-probs always from `policy`.

    Returns (tensors for the update, metrics over all processes, seconds spent sampling).
    """
    G, T, world = cfg.num_generations, cfg.generation.temperature, acc.num_processes
    reduce = (lambda t: acc.reduce(t.to(acc.device), reduction="sum").cpu()) if world > 1 else (lambda t: t)
    gather = (lambda t: acc.gather(t.to(acc.device)).cpu()) if world > 1 else (lambda t: t)
    rep_prompts = [p for p in prompts for _ in range(G)]
    rep_ids = [p for p in prompt_ids for _ in range(G)]
    rep_cols = column_lists([c for c in (columns or [{}] * len(prompts)) for _ in range(G)])
    t0 = time.perf_counter()
    s = generate(sampler.model() if sampler is not None else policy, tok, rep_ids, cfg.generation, seed=seed)
    gen_seconds = time.perf_counter() - t0
    err, per_fn = None, torch.zeros(len(rep_ids), len(funcs), dtype=torch.float64)
    rewards = torch.zeros(len(rep_ids), dtype=torch.float64)
    try:
        per_fn = reward_matrix(funcs, rep_prompts, s.texts, s, rep_cols)
        rewards = weighted_rewards(per_fn, cfg.weights, funcs, s.texts)
    except ReinsError as e:
        err = e
    agree(err, reduce)
    overlong = None
    if cfg.overlong_buffer_len is not None:
        overlong = soft_overlong_penalty([len(c) for c in s.completion_ids], cfg.generation.max_new_tokens,
                                         cfg.overlong_buffer_len, cfg.overlong_penalty)
        rewards = rewards + overlong
    everyone = gather(rewards)            # whole groups per process, in process order
    n = len(rep_ids)
    adv = group_advantages(everyone, G, kind=cfg.advantage, scale=cfg.scale)[acc.process_index * n:][:n]
    batch = rollout_batch(rep_ids, s.completion_ids, tok.pad_token_id)
    device = acc.device
    bs = cfg.generation.batch_size
    data = {k: v.to(device) for k, v in batch.items() if k != "prompt_width"}
    data["advantages"] = adv.to(device=device, dtype=torch.float32)
    bad = 0
    if cfg.num_iterations > 1 or cfg.num_minibatches > 1:   # else the update's own log-probs, detached
        was = policy.training
        policy.eval()
        data["old_logps"] = _logps(policy, batch, T, bs, device)
        policy.train(was)
        bad += int((~torch.isfinite(data["old_logps"])).sum())
    if cfg.beta > 0:
        with reference.active() as ref:
            data["ref_logps"] = _logps(ref, batch, T, bs, device)
        bad += int((~torch.isfinite(data["ref_logps"])).sum())
    if reduce(torch.tensor([float(bad)], dtype=torch.float64)).item() > 0:
        raise NonFiniteError("non-finite log-probs in the rollout; stopping (the last good checkpoint is kept)")
    if cfg.mask_truncated_completions:   # after the log-probs: only the loss (and its token counts) drops them
        data["response_mask"] = mask_truncated_completions(data["response_mask"],
                                                           torch.tensor(s.finished, device=device))
    m = _rollout_metrics(cfg, funcs, per_fn, everyone, s, gather)
    if overlong is not None:
        m["rewards/overlong_penalty/mean"] = gather(overlong).mean().item()
    return data, m, gen_seconds


def _rollout_metrics(cfg: Config, funcs, per_fn: torch.Tensor, everyone: torch.Tensor, s, gather) -> dict:
    """TRL's reward and completion metrics over the global batch."""
    groups = everyone.view(-1, cfg.num_generations)
    std = groups.std(-1)
    m = {"reward": everyone.mean().item(), "reward_std": std.mean().item(),
         "frac_reward_zero_std": (groups == groups[:, :1]).all(-1).double().mean().item()}
    cols = gather(per_fn)
    for j, f in enumerate(funcs):
        st = reward_stats(cols[:, j])   # over the completions it applied to (None: to none of them)
        if st is not None:
            m[f"rewards/{f.name}/mean"], m[f"rewards/{f.name}/std"] = st
    lengths = gather(torch.tensor([len(c) for c in s.completion_ids], dtype=torch.float64))
    done = gather(torch.tensor(s.finished, dtype=torch.float64)) > 0.5   # (gloo gathers no bool tensors)
    m["completions/mean_length"] = lengths.mean().item()
    m["completions/min_length"] = lengths.min().item()
    m["completions/max_length"] = lengths.max().item()
    m["completions/clipped_ratio"] = 1.0 - done.double().mean().item()
    m["completions/mean_terminated_length"] = lengths[done].mean().item() if done.any() else 0.0
    m["rollout/tokens"] = int(lengths.sum().item())
    return m


# ----------------------------------------------------------------------------------------- update
def grpo_update(cfg: Config, model, optimizer, accelerator, data: dict, *, generator: torch.Generator) -> dict:
    """`num_iterations` x `num_minibatches` optimizer steps on this process's rollouts; the mean stats."""
    T = cfg.generation.temperature
    stats = torch.zeros(7, dtype=torch.float64, device=accelerator.device)
    steps = Minibatches(cfg, cfg.num_iterations, model, optimizer, accelerator, data, generator)
    for n_tok, d in steps:
        m = d["response_mask"].float()
        with accelerator.accumulate(model):
            logits = response_logits(model, d)
            logp = token_logprobs(logits, d["response"], temperature=T, mask=m)
            old = d["old_logps"] if "old_logps" in d else logp.detach()
            loss, info = grpo_loss(logp, old, d["advantages"], m, eps_low=cfg.epsilon,
                                   eps_high=cfg.epsilon_high, beta=cfg.beta, ref_logp=d.get("ref_logps"),
                                   aggregation=cfg.loss_type, max_length=cfg.generation.max_new_tokens,
                                   num_sequences=steps.size, num_tokens=n_tok,
                                   importance_sampling_level=cfg.importance_sampling_level)
            # times grad_accum undoes accelerate's division: the micro losses already sum to the minibatch's
            accelerator.backward(loss * cfg.grad_accum)
        with torch.no_grad():
            ent = (entropy_from_logits(logits.detach(), temperature=T) * m).sum() / m.sum().clamp_min(1)
        nt = m.sum().double()
        stats[0] += loss.detach().double()   # the micro losses of a minibatch sum to its loss
        stats[1:6] += torch.stack([info["kl"], info["clip_low"], info["clip_high"], info["clip_region"],
                                   ent]).double() * nt
        stats[6] += nt
    tot = accelerator.reduce(stats, reduction="sum")
    n_steps = cfg.num_iterations * cfg.num_minibatches * accelerator.num_processes
    out = {"loss": (tot[0] / n_steps).item()}   # the mean minibatch loss
    for i, k in enumerate(["kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                           "entropy"], start=1):
        out[k] = (tot[i] / tot[6].clamp_min(1)).item()
    out["grad_norm"] = float(steps.grad_norm)
    check_finite("loss", out["loss"])
    if cfg.beta == 0:
        del out["kl"]
    return out


# ----------------------------------------------------------------------------------------- evaluation
class GroupEvaluator:
    """The policy's completions of held-out prompts (`eval.temperature`, 0 = greedy; fixed seed), scored by every
    reward function: eval/reward (weighted sum), eval/rewards/<name>, eval/accuracy (builtin:arithmetic), and
    for the sentiment task the shared gold-judge evaluation (pipelines.evaluation)."""

    def __init__(self, cfg: Config, tok, prompts: list, funcs, reference, sentiment: bool,
                 columns: list[dict] | None = None):
        from pipelines.data import encode_prompt

        self.cfg, self.tok, self.funcs, self.prompts = cfg, tok, funcs, prompts[: cfg.eval.num_prompts]
        self.columns = column_lists((columns or [{}] * len(prompts))[: cfg.eval.num_prompts])
        self.ids = [encode_prompt(tok, p) for p in self.prompts]
        e = cfg.eval
        self.gen = GenerationArgs(max_new_tokens=e.max_new_tokens, temperature=e.temperature, batch_size=e.batch_size)
        self.gold = PolicyEvaluator(tok, self.prompts, reference, e) if sentiment else None

    @torch.no_grad()
    def __call__(self, policy) -> tuple[dict, list[dict]]:
        s = generate(policy, self.tok, self.ids, self.gen, seed=self.cfg.eval.seed)
        mat = reward_matrix(self.funcs, self.prompts, s.texts, s, self.columns)
        total = weighted_rewards(mat, self.cfg.weights, self.funcs, s.texts)
        m = {"eval/reward": total.mean().item()}
        for j, f in enumerate(self.funcs):
            st = reward_stats(mat[:, j])
            if st is not None:
                m[f"eval/rewards/{f.name}"] = st[0]
            if f.spec == "builtin:arithmetic" and st is not None:
                m["eval/accuracy"] = st[0]
        m["eval/completion_length"] = sum(map(len, s.completion_ids)) / len(s.completion_ids)
        if self.gold is not None:
            gm, _ = self.gold(policy)
            m.update({k: v for k, v in gm.items() if k not in m})
        n = self.cfg.eval.num_samples_logged
        samples = [{"prompt": p if isinstance(p, str) else str(p), "completion": t, "reward": r}
                   for p, t, r in zip(self.prompts[:n], s.texts, total.tolist())]
        return m, samples


def eval_prompt_set(cfg: Config, tok=None) -> tuple[list, list[dict], str | None]:
    """(prompts, their other dataset columns, their source) of `eval_prompts`: auto = the training data's
    built-in held-out prompts (none for a file), none, a built-in task or a prompt file / dataset (its `test`
    split); built-in prompts with seed 0, as every stage's evaluation."""
    src = cfg.eval_prompts
    if src == AUTO:
        src = cfg.data
        if builtin_prompts(src, 1, seed=0, split="eval") is None:
            return [], [], None
    if src in (None, "", "none"):
        return [], [], None
    got = builtin_prompts(src, cfg.eval.num_prompts, seed=0, split="eval", max_operand=cfg.max_operand)
    if got is not None:
        return got, [{} for _ in got], src
    prompts, columns, _ = prompt_rows(src, "test", tok)
    return prompts[: cfg.eval.num_prompts], columns[: cfg.eval.num_prompts], src


# ----------------------------------------------------------------------------------------- stage
@dataclass
class GRPOLoop:
    """One process's GRPO run between `setup` and `finish`: the policy (`policy`, and `model` as prepared by
    accelerate), the frozen reference (None at beta 0), the reward functions, the optimisation state, the prompts
    and where the loop is (`step` iterations done, `num_tokens` seen; `last`, the latest iteration's metrics;
    `init`, the evaluation before the first)."""

    cfg: Config
    acc: Any
    run: Any
    tok: Any
    policy: Any
    model: Any
    reference: Any
    funcs: list[RewardFunction]
    optimizer: Any
    scheduler: Any
    prompts: list
    prompt_ids: list[list[int]]
    total: int
    step: int = 0
    num_tokens: int = 0
    last: dict = field(default_factory=dict)
    init: dict = field(default_factory=dict)
    evaluator: GroupEvaluator | None = None
    bar: Any = None  # the progress bar (main process)
    columns: list[dict] = field(default_factory=list)   # each prompt's other dataset columns
    sampler: SamplingPolicy | None = None   # what rollouts sample from (generation.sample_dtype)

    def evaluate(self, at: int) -> dict:
        """The held-out evaluation of the policy (main process only), logged at step `at` with samples."""
        return log_evaluation(self.run, self.evaluator, self.policy, at)

    def save(self) -> None:
        save_loop(self, self.model, num_tokens=self.num_tokens, init_metrics=self.init)


def train(cfg: Config) -> dict:
    return run_stage(cfg, setup, iteration, finish, desc=cfg.advantage)


def _check_inputs(cfg: Config, acc) -> tuple:
    """Every input validated before anything is written: (tokenizer, prompts, their ids, dropped, iterations,
    reward functions, evaluation prompts, their source, the prompts' and the evaluation prompts' columns)."""
    world = acc.num_processes
    local = cfg.batch_size // world
    rows = local * cfg.num_generations
    if local * world != cfg.batch_size or rows % (cfg.num_minibatches * cfg.grad_accum):
        raise ConfigError(f"batch_size={cfg.batch_size} must be a multiple of num_processes ({world}), and "
                          f"batch_size / num_processes x num_generations ({cfg.num_generations}) a multiple of "
                          f"num_minibatches ({cfg.num_minibatches}) x grad_accum ({cfg.grad_accum})")
    tok, prompts, prompt_ids, dropped, total, columns, funcs = load_inputs(cfg, "completions",
                                                                           max_operand=cfg.max_operand)
    eprompts, ecolumns, esource = eval_prompt_set(cfg, tok) if acc.is_main_process else ([], [], None)
    if eprompts:
        check_columns(funcs, list(column_lists(ecolumns)), f"eval_prompts {esource}")
    return tok, prompts, prompt_ids, dropped, total, funcs, eprompts, esource, columns, ecolumns


def setup(cfg: Config, acc) -> GRPOLoop:
    """Validate the inputs, open the run dir, build the policy (and reference) and optimiser, resume from a
    checkpoint, log the initial evaluation."""
    tok, prompts, prompt_ids, dropped, total, funcs, eprompts, esource, columns, ecolumns = _check_inputs(cfg, acc)
    run = open_run(cfg, acc)   # after validation: bad input writes nothing
    policy, reference = build_policy(cfg, tok, with_reference=cfg.beta > 0)
    for m in (policy, *(f.model for f in funcs), reference.model if reference is not None else None):
        if m is not None:
            m.to(acc.device)
    optimizer = adamw([{"params": [p for p in policy.parameters() if p.requires_grad]}], lr=cfg.learning_rate,
                      weight_decay=cfg.weight_decay)
    model, optimizer, scheduler, step, last, state = resume_and_prepare(cfg, acc, run, policy, optimizer, total)
    num_tokens, init = 0, {}
    if state is not None:
        num_tokens, init = int(state["num_tokens"]), dict(state.get("init_metrics", {}))
    evaluator = GroupEvaluator(cfg, tok, eprompts, funcs, reference, sentiment=esource in (BUILTIN, BUILTIN_CHAT),
                               columns=ecolumns) if eprompts else None
    s = GRPOLoop(cfg, acc, run, tok, acc.unwrap_model(model), model, reference, funcs, optimizer, scheduler, prompts,
                prompt_ids, total, step, num_tokens, last, init, evaluator, columns=columns,
                sampler=SamplingPolicy(acc.unwrap_model(model), cfg.generation.sample_dtype))
    if step == 0 and acc.is_main_process:
        total_p, trainable = count_parameters(policy)
        run.log(0, {"model/parameters": total_p, "model/trainable": trainable, "data/prompts": len(prompts),
                    "data/dropped_prompts": dropped, "reference/loaded": reference is not None,
                    **s.sampler.log_row()})
        s.init = {f"init/{k[5:]}": v for k, v in s.evaluate(0).items()}
        if s.init:
            run.log(0, s.init)
    return s


def iteration(s: GRPOLoop) -> dict:
    """One GRPO iteration: rollout, update, scheduler step, then log / evaluate / checkpoint as due. Returns its
    metrics."""
    cfg, acc = s.cfg, s.acc
    world, rank = acc.num_processes, acc.process_index
    mine = local_prompt_indices(cfg, len(s.prompts), s.step, acc)
    t0 = time.perf_counter()
    data, m, gen_s = rollout(cfg, s.policy, s.reference, s.funcs, s.tok, [s.prompts[i] for i in mine],
                             [s.prompt_ids[i] for i in mine], seed=rollout_seed(cfg.seed, s.step, rank), acc=acc,
                             columns=[s.columns[i] for i in mine], sampler=s.sampler)
    t1 = time.perf_counter()
    m.update(grpo_update(cfg, s.model, s.optimizer, acc, data, generator=update_generator(cfg.seed, s.step, rank)))
    t2 = time.perf_counter()
    m["lr"] = s.scheduler.get_last_lr()[0]
    s.scheduler.step()
    s.step += 1
    s.num_tokens += int(acc.reduce(data["attention_mask"].sum().to(acc.device), reduction="sum").item()) \
        if world > 1 else int(data["attention_mask"].sum().item())
    m["num_tokens"] = s.num_tokens
    m["episode"] = s.step * cfg.batch_size * cfg.num_generations
    end_iteration(s, m, perf_metrics(m["rollout/tokens"], world, t0, t1, t2, gen_s), reward=f"{m['reward']:.3f}")
    return m


def finish(s: GRPOLoop) -> dict:
    """Save the policy, run the final evaluation, write metrics.json."""
    run = s.run

    def cards(metrics):
        write_model_card(run.path / "model", stage="grpo", config=run.config, metrics=metrics,
                         chat_trained=chat_template_trained(s.tok), run_dir=run.path)

    return finish_loop(s, s.model, lambda full: save_model(s.policy, s.tok, run.path / "model", state_dict=full),
                       cards, extra=s.init)


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins grpo", stage="grpo")


if __name__ == "__main__":
    raise SystemExit(main())
