"""`reins ppo`: RLHF with KL-penalised PPO (Ziegler et al. 2019; the N+ implementation details, Huang et al. 2024).

One iteration ("update", the unit of `max_steps`, `save_every`, `eval_every`):
1. rollout: `batch_size` prompts (global; each process takes its share, data position = iteration) are
   completed by the policy (KV-cached sampling, `generation.temperature/top_p/max_new_tokens`, truncated
   after the first EOS, pad != EOS); log-probs of policy and reference are recomputed with logits / temperature;
   values from the value model; reward-model scores (re-tokenised when the RM's tokenizer differs);
   plus, with `reward_funcs`, the weighted sum of reward functions (pipelines.reward_funcs: TRL's signature, each
   prompt's other dataset columns passed as keywords; None = not applicable), added to the score (or the
   whole score without a reward model);
2. rewards: per-token KL penalty plus the transformed score on the last token (pipelines/rollout.py);
   the KL coefficient is fixed, proportional (target, horizon) or halve/double (Schulman et al. 2017 §4);
3. advantages: GAE over response tokens (gamma, lam), whitened (pgcore.advantages);
4. update: `ppo_epochs` passes over `num_minibatches` shuffled minibatches, each split into `grad_accum`
   micro-batches; loss = PPO clipped surrogate + vf_coef * clipped value loss - entropy_coef * entropy
   (pgcore.policy_losses, Schulman et al. 2017, eq. 9), token means over the minibatch, max grad norm.
Metrics use TRL/N+ names (objective/kl, objective/entropy, objective/rlhf_reward, objective/scores,
policy/approxkl, policy/clipfrac, val/clipfrac, val/vpred, loss/policy, loss/value, val/ratio, val/ratio_max,
kl_coef), plus the shared evaluation (eval/gold_reward, eval/kl_to_ref, eval/win_rate_vs_ref,
eval/reward_model_score) every `eval_every` iterations with sample completions logged under `samples`.
Checkpoint after an iteration: policy + value parameters, optimizer, scheduler, KL coefficient, RNG, iteration
(which fixes the data position); a re-run resumes exactly. Non-finite rewards, log-probs, values, losses or
gradients stop the run (NonFiniteError) before anything is checkpointed. Artifacts: `output_dir/model` (the
policy) and `output_dir/value_model`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from pgcore.distributions import entropy_from_logits, token_logprobs
from pgcore.policy_losses import entropy_bonus, ppo_clip_loss, value_loss
from pipelines.common import eval_prompts, open_run
from pipelines.data import BUILTIN
from pipelines.evaluation import EvalArgs, PolicyEvaluator
from pipelines.generation import GenerationArgs, SamplingPolicy, generate
from pipelines.model_card import write_model_card
from pipelines.models import (
    ModelArgs,
    chat_template_trained,
    count_parameters,
    save_model,
)
from pipelines.reward_funcs import (
    agree,
    column_lists,
    reward_matrix,
    weighted_rewards,
)
from pipelines.rlhf_models import build_models, load_reward, resolve_reward_dir
from pipelines.rollout import (
    KLController,
    advantages_and_returns,
    lm_logits,
    rollout_batch,
    score_responses,
    shape_rewards,
    transform_scores,
)
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
from pipelines.sharded import submodule_state
from pipelines.trainer import adamw
from reins.config import RunArgs, check
from reins.entry import stage_main
from reins.errors import ConfigError, NonFiniteError, ReinsError
from reins.runio import check_finite


@dataclass
class Config(SamplingArgs, ModelArgs, RunArgs):
    output_dir: str = field(default="runs/ppo",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    # models (`model` is the SFT policy)
    reward_model: str = field(default="",
                              metadata={"help": "reward stage output dir, or any sequence-classification model dir "
                                                "(may be empty with reward_funcs)"})
    reward_funcs: list[str] = field(default_factory=list,
                                    metadata={"help": "reward functions (as grpo's: builtin:..., module:function "
                                                      "f(prompts, completions, completion_ids, **columns)) whose "
                                                      "weighted sum is added to the reward-model score"})
    reward_weights: list[float] | None = field(default=None,
                                               metadata={"help": "weight of each reward function (default: 1 each)"})
    value_model: str = field(default="auto", metadata={"help": "auto | reward | policy | shared | PATH"})
    ref_model: str | None = field(default=None,
                                  metadata={"help": "default: the initial policy (frozen copy / adapter disabled)"})
    # prompts
    data: str = field(default=BUILTIN,
                      metadata={"help": "prompt-only file / datasets dir / Hub id, builtin:sentiment(-chat)"})
    generation: GenerationArgs = field(default_factory=lambda: GenerationArgs(max_new_tokens=32, temperature=1.0),
                                       metadata={"help": "rollout sampling (max_new_tokens, temperature > 0, top_p, "
                                                         "batch_size)"})
    # reward
    kl_coef: float = field(default=0.05,
                           metadata={"help": "initial coefficient of the per-token KL penalty against the reference"})
    kl_estimator: Literal["k1", "k3"] = field(default="k1",
                                              metadata={"help": "per-token KL estimate: k1 (log-ratio) or k3 "
                                                                "(Schulman's unbiased, >= 0)"})
    kl_control: Literal["fixed", "proportional", "halve_double"] = field(
        default="fixed",
        metadata={"help": "fixed, proportional (Ziegler et al. 2019) or halve_double (Schulman 2017 s4)"})
    kl_target: float = field(default=6.0, metadata={"help": "target KL of the adaptive controllers"})
    kl_horizon: int = field(default=10000, metadata={"help": "horizon (in rollouts) of the proportional controller"})
    missing_eos_penalty: float | None = field(default=None,
                                              metadata={"help": "subtracted from the score of a response without EOS "
                                                                "(None: off)"})
    score_clip: float | None = field(default=None,
                                     metadata={"help": "clip reward-model scores to [-score_clip, score_clip] (None: "
                                                       "off)"})
    score_norm: bool = field(default=False, metadata={"help": "standardise scores over the global rollout batch"})
    whiten_rewards: bool = field(default=False, metadata={"help": "whiten the shaped per-token rewards before GAE"})
    # PPO update
    ppo_epochs: int = field(default=4, metadata={"help": "passes over one rollout batch per iteration"})
    num_minibatches: int = field(default=1,
                                 metadata={"help": "optimizer steps per pass (each a shuffled share of the rollouts)"})
    gamma: float = field(default=1.0, metadata={"help": "discount over response tokens"})
    lam: float = field(default=0.95, metadata={"help": "GAE lambda"})
    cliprange: float = field(default=0.2, metadata={"help": "PPO ratio clip epsilon"})
    cliprange_value: float = field(default=0.2, metadata={"help": "value-prediction clip around the rollout values"})
    vf_coef: float = field(default=0.1, metadata={"help": "weight of the value loss"})
    entropy_coef: float = field(default=0.0, metadata={"help": "weight of the entropy bonus"})
    whiten_advantages: bool = field(default=True, metadata={"help": "whiten advantages over the rollout batch"})
    adam_eps: float = field(default=1e-5, metadata={"help": "Adam epsilon (1e-5, N+ detail 15)"})
    value_learning_rate: float | None = field(default=None,
                                              metadata={"help": "learning rate of the value model (None: "
                                                                "learning_rate)"})
    # evaluation (every eval_every iterations, and before the first and after the last)
    eval_prompts: str | None = field(default=BUILTIN,
                                     metadata={"help": "prompts for the generation eval (None/\"none\": skip it)"})
    eval: EvalArgs = field(default_factory=EvalArgs,
                           metadata={"help": "the generation eval (num_prompts, seed, temperature, max_new_tokens, "
                                             "batch_size, ...)"})
    batch_size: int = field(default=64, metadata={"help": "prompts (rollouts) per iteration, over all processes"})
    learning_rate: float = field(default=3e-6, metadata={"help": "AdamW learning rate of the policy"})

    def validate(self):
        self.validate_model()
        self.validate_optim()
        check(self.generation.temperature > 0, "generation.temperature must be > 0 for PPO (sampling)")
        check(self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}")
        check(self.kl_target > 0 and self.kl_horizon >= 1, "kl_target must be > 0 and kl_horizon >= 1")
        check(self.ppo_epochs >= 1 and self.num_minibatches >= 1, "ppo_epochs and num_minibatches must be >= 1")
        check(0 <= self.gamma <= 1 and 0 <= self.lam <= 1, "gamma and lam must be in [0, 1]")
        check(self.cliprange > 0 and self.cliprange_value > 0, "cliprange and cliprange_value must be > 0")
        check(self.vf_coef >= 0 and self.entropy_coef >= 0, "vf_coef and entropy_coef must be >= 0")
        check(self.missing_eos_penalty is None or self.missing_eos_penalty >= 0, "missing_eos_penalty must be >= 0")
        check(self.score_clip is None or self.score_clip > 0, "score_clip must be > 0")
        check(self.max_prompt_length >= 1, "max_prompt_length must be >= 1")
        check(self.reward_weights is None or len(self.reward_weights) == len(self.reward_funcs),
              f"reward_weights has {len(self.reward_weights or [])} entries for {len(self.reward_funcs)} reward_funcs")



# ----------------------------------------------------------------------------------------- rollout
@dataclass
class Models:
    """The models of a PPO run, on this process's device.

    `ac` is the actor-critic (policy + value, `pipelines.rlhf_models.ActorCritic`) that rollouts sample from and
    checkpoints save; `model` is the same object as prepared by accelerate (DDP-wrapped under several processes),
    which the update steps. `reference` is the frozen reference policy (a copy, or `ac.policy` with its adapter
    disabled); `reward_model` scores responses, re-tokenised by `rm_tok` unless `same_tok`.
    """

    tok: Any
    ac: Any
    model: Any
    reference: Any
    reward_model: Any
    rm_tok: Any
    same_tok: bool
    funcs: list = field(default_factory=list)   # reward functions (pipelines.reward_funcs), summed into the score
    sampler: SamplingPolicy | None = None   # what rollouts sample from (generation.sample_dtype); None: ac.policy


@torch.no_grad()
def rollout(cfg: Config, models: Models, prompts: list, prompt_ids: list[list[int]], *, kl_coef: float, seed: int,
            reduce, columns: list[dict] | None = None) -> tuple[dict, dict, float]:
    """Sample, score and shape one iteration's rollouts on this process. `reduce(t)` sums over processes;
    `columns` are each prompt's other dataset columns (for the reward functions).

    Returns (tensors for the update, metrics, seconds spent sampling).
    """
    tok, ac = models.tok, models.ac
    t0 = time.perf_counter()
    s = generate(models.sampler.model() if models.sampler is not None else ac.policy, tok, prompt_ids,
                 cfg.generation, seed=seed)
    gen_seconds = time.perf_counter() - t0
    batch = rollout_batch(prompt_ids, s.completion_ids, tok.pad_token_id)
    device = next(ac.parameters()).device
    mask = batch["response_mask"].to(device)
    logps, ref_logps, values, ent = _score_tokens(cfg, models, batch, device)
    raw, fn_metrics = _raw_scores(cfg, models, prompts, prompt_ids, s, columns, reduce)
    raw = raw.to(device=device, dtype=logps.dtype)
    finished = torch.tensor(s.finished, device=device)
    N, mean, std = _global_score_stats(raw, (raw, logps, ref_logps, values), len(prompt_ids), reduce)
    scores = transform_scores(raw, finished, missing_eos_penalty=cfg.missing_eos_penalty,
                              score_clip=cfg.score_clip, score_norm=cfg.score_norm, norm_stats=(mean, std))
    rewards, kl, non_score = shape_rewards(logps, ref_logps, scores, mask, kl_coef=kl_coef,
                                           kl_estimator=cfg.kl_estimator)
    adv, ret = advantages_and_returns(rewards, values, mask, gamma=cfg.gamma, lam=cfg.lam,
                                      whiten_rewards=cfg.whiten_rewards, whiten_advantages=cfg.whiten_advantages)
    data = {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device),
            "response": batch["response"].to(device), "response_mask": mask, "logps": logps, "values": values,
            "advantages": adv, "returns": ret}
    lengths = mask.sum(-1).double()
    stats = reduce(torch.stack([kl.sum(-1).double().sum(), ent.sum(-1).double().sum(),
                                non_score.sum(-1).double().sum(), scores.double().sum(), raw.double().sum(),
                                finished.double().sum(), lengths.sum()]))
    names = ["objective/kl", "objective/entropy", "objective/non_score_reward", "objective/scores",
             "objective/raw_scores", "val/eos_rate", "response_length"]
    m = {k: (v / N).item() for k, v in zip(names, stats)}
    m["objective/rlhf_reward"] = m["objective/scores"] + m["objective/non_score_reward"]
    m["rollout/tokens"] = int(stats[-1].item())
    m.update(fn_metrics)
    return data, m, gen_seconds


def _raw_scores(cfg: Config, models: Models, prompts: list, prompt_ids: list[list[int]], s, columns,
                reduce) -> tuple[torch.Tensor, dict]:
    """Each response's score before the transforms: the reward model's, plus the weighted reward functions'
    (TRL's nan-sum of the applicable ones), and the functions' rewards/<name>/mean (all processes)."""
    n = len(prompt_ids)
    raw = torch.zeros(n, dtype=torch.float64)
    if models.reward_model is not None:
        raw += score_responses(models.reward_model, models.rm_tok, prompts, prompt_ids, s.completion_ids, s.texts,
                               s.finished, same_tokenizer=models.same_tok,
                               pad_id=models.tok.pad_token_id).double()
    if not models.funcs:
        return raw, {}
    device = next(models.ac.parameters()).device
    reduce_cpu = lambda t: reduce(t.to(device)).cpu()  # noqa: E731 - collectives need the accelerator's device
    err, per_fn = None, torch.full((n, len(models.funcs)), float("nan"), dtype=torch.float64)
    try:
        per_fn = reward_matrix(models.funcs, prompts, s.texts, s, column_lists(columns or [{}] * n))
        raw += weighted_rewards(per_fn, cfg.weights, models.funcs, s.texts)
    except ReinsError as e:
        err = e
    agree(err, reduce_cpu)
    ok = ~torch.isnan(per_fn)
    sums = reduce_cpu(torch.cat([torch.where(ok, per_fn, torch.zeros((), dtype=torch.float64)).sum(0),
                             ok.double().sum(0)]))
    k = len(models.funcs)
    return raw, {f"rewards/{f.name}/mean": (sums[j] / sums[k + j]).item()
                 for j, f in enumerate(models.funcs) if sums[k + j] > 0}


def _score_tokens(cfg: Config, models: Models, batch: dict, device) -> tuple[torch.Tensor, ...]:
    """Per-token log-probs of policy and reference, values and entropies of the sampled responses (masked)."""
    T = cfg.generation.temperature
    ac, bs = models.ac, cfg.generation.batch_size
    logps, ref_logps, values, ent = [], [], [], []
    was = ac.training
    ac.eval()
    for a in range(0, batch["input_ids"].shape[0], bs):
        sub = to_device({k: v[a:a + bs] for k, v in batch.items() if k != "prompt_width"}, device)
        R = sub["response"].shape[1]
        logits, v = ac(sub["input_ids"], sub["attention_mask"], R)
        m = sub["response_mask"].to(logits.dtype)
        logps.append(token_logprobs(logits, sub["response"], temperature=T, mask=m))
        ent.append(entropy_from_logits(logits, temperature=T) * m)
        values.append(v * m)
        with models.reference.active() as ref:
            ref_logps.append(token_logprobs(lm_logits(ref, sub), sub["response"], temperature=T, mask=m))
    ac.train(was)
    return tuple(torch.cat(x) for x in (logps, ref_logps, values, ent))


def _global_score_stats(raw: torch.Tensor, checked: tuple, n_local: int, reduce) -> tuple[torch.Tensor, float, float]:
    """(number of rollouts, mean, unbiased std) of the raw scores over all processes, after one finiteness verdict
    on `checked` for all processes (a rank raising alone would leave the others waiting)."""
    device = raw.device
    bad = sum(int((~torch.isfinite(x)).sum()) for x in checked)
    n = torch.tensor(float(n_local), dtype=torch.float64, device=device)
    sums = reduce(torch.stack([torch.tensor(float(bad), dtype=torch.float64, device=device), n,
                               raw.double().sum(), raw.double().square().sum()]))
    if sums[0] > 0:
        raise NonFiniteError("non-finite reward-model scores, log-probs or values in the rollout; stopping "
                             "(the last good checkpoint is kept)")
    N = sums[1]
    mean = (sums[2] / N).item()
    std = math.sqrt(max((sums[3] / N - (sums[2] / N) ** 2).item() * N.item() / max(N.item() - 1, 1), 0.0))
    return N, mean, std


# ----------------------------------------------------------------------------------------- update
def ppo_update(cfg: Config, model, optimizer, accelerator, data: dict, *, generator: torch.Generator) -> dict:
    """`ppo_epochs` x `num_minibatches` optimizer steps on this process's rollouts; the mean stats."""
    T = cfg.generation.temperature
    acc_stats = torch.zeros(9, dtype=torch.float64, device=accelerator.device)
    ratio_max = torch.zeros((), dtype=torch.float64, device=accelerator.device)
    steps = Minibatches(cfg, cfg.ppo_epochs, model, optimizer, accelerator, data, generator)
    for n_mb, d in steps:
        m = d["response_mask"].to(d["logps"].dtype)
        with accelerator.accumulate(model):
            logits, values = model(d["input_ids"], d["attention_mask"], d["response"].shape[1])
            logp = token_logprobs(logits, d["response"], temperature=T, mask=m)
            pl, pinfo = ppo_clip_loss(logp, d["logps"], d["advantages"], cfg.cliprange, mask=m)
            vl, vinfo = value_loss(values, d["returns"], old_values=d["values"], clip_eps=cfg.cliprange_value, mask=m)
            with torch.set_grad_enabled(cfg.entropy_coef > 0):
                ent = entropy_bonus(entropy_from_logits(logits, temperature=T), mask=m)
            # Token-mean over the whole minibatch: each micro-batch's mean weighted by its token share;
            # times grad_accum undoes accelerate's division of the loss by it.
            w = m.sum() / n_mb
            loss = (pl + cfg.vf_coef * vl - cfg.entropy_coef * ent) * w
            accelerator.backward(loss * cfg.grad_accum)
        nt = m.sum().double()
        vals = torch.stack([pl.detach(), vl.detach(), pinfo["approxkl"], pinfo["clipfrac"], vinfo["clipfrac"],
                            pinfo["ratio_mean"], (values.detach() * m).sum() / m.sum().clamp_min(1),
                            ent.detach()]).double()
        acc_stats[:8] += vals * nt
        acc_stats[8] += nt
        ratio_max = torch.maximum(ratio_max, pinfo["ratio_max"].double())
    tot = accelerator.reduce(acc_stats, reduction="sum")
    rmax = accelerator.gather(ratio_max.reshape(1)).max()
    names = ["loss/policy", "loss/value", "policy/approxkl", "policy/clipfrac", "val/clipfrac", "val/ratio",
             "val/vpred", "policy/entropy"]
    out = {k: (tot[i] / tot[8].clamp_min(1)).item() for i, k in enumerate(names)}
    out["val/ratio_max"] = float(rmax.reshape(()))
    out["grad_norm"] = float(steps.grad_norm)
    for k in ("loss/policy", "loss/value"):
        check_finite(k, out[k])
    return out


# ----------------------------------------------------------------------------------------- stage
def _optimizer(cfg: Config, ac):
    groups = [{"params": ac.policy_parameters(), "lr": cfg.learning_rate},
              {"params": ac.value_parameters(), "lr": cfg.value_learning_rate or cfg.learning_rate}]
    return adamw(groups, lr=cfg.learning_rate, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


@dataclass
class PPOLoop:
    """One process's PPO run between `setup` and `finish`: the models, the optimisation state, the prompts and
    where the loop is (`step` iterations done; `last`, the latest iteration's metrics)."""

    cfg: Config
    acc: Any
    run: Any
    models: Models
    optimizer: Any
    scheduler: Any
    kl: KLController
    prompts: list
    prompt_ids: list[list[int]]
    total: int
    step: int = 0
    last: dict = field(default_factory=dict)
    evaluator: PolicyEvaluator | None = None
    bar: Any = None  # the progress bar (main process)
    columns: list[dict] = field(default_factory=list)   # each prompt's other dataset columns

    def evaluate(self, at: int) -> dict:
        """The shared generation eval of the policy (main process only), logged at step `at` with samples."""
        return log_evaluation(self.run, self.evaluator, self.models.ac.policy, at)

    def save(self) -> None:
        save_loop(self, self.models.model, kl_coef=self.kl.value)


def train(cfg: Config) -> dict:
    return run_stage(cfg, setup, iteration, finish, desc="ppo")


def _check_inputs(cfg: Config, acc) -> tuple:
    """Every input validated before anything is written: (tokenizer, prompts, their ids, dropped, iterations,
    the prompts' other columns, the reward functions)."""
    world = acc.num_processes
    local = cfg.batch_size // world
    if local * world != cfg.batch_size or local % (cfg.num_minibatches * cfg.grad_accum):
        raise ConfigError(f"batch_size={cfg.batch_size} must be a multiple of num_processes ({world}) x "
                          f"num_minibatches ({cfg.num_minibatches}) x grad_accum ({cfg.grad_accum})")
    if not cfg.reward_model and (not cfg.reward_funcs or cfg.value_model == "reward"):
        raise ConfigError("reward_model must name a reward stage output dir or a sequence-classification model "
                          "(it may be empty only with reward_funcs and a value_model other than reward)")
    return load_inputs(cfg, "responses")


def setup(cfg: Config, acc) -> PPOLoop:
    """Load and validate the inputs, open the run dir, build the models and optimiser, resume from a checkpoint."""
    tok, prompts, prompt_ids, dropped, total, columns, funcs = _check_inputs(cfg, acc)
    reward_model, rm_tok, same_tok = load_reward(cfg, tok) if cfg.reward_model else (None, None, False)
    ac, reference = build_models(cfg, tok, same_tok=same_tok, reward_path=resolve_reward_dir(cfg.reward_model))
    eprompts = eval_prompts(cfg.eval_prompts, cfg.eval.num_prompts) if acc.is_main_process else []
    run = open_run(cfg, acc)  # after every input is validated: bad input writes nothing
    for m in (ac, reward_model, reference.model, *(f.model for f in funcs)):
        if m is not None:
            m.to(acc.device)
    model, optimizer, scheduler, step, last, state = resume_and_prepare(cfg, acc, run, ac, _optimizer(cfg, ac), total)
    kl = KLController(cfg.kl_coef, cfg.kl_control, cfg.kl_target, cfg.kl_horizon)
    if state is not None:
        kl.value = float(state["kl_coef"])
    models = Models(tok, acc.unwrap_model(model), model, reference, reward_model, rm_tok, same_tok, funcs)
    models.sampler = SamplingPolicy(models.ac.policy, cfg.generation.sample_dtype)
    evaluator = PolicyEvaluator(tok, eprompts, reference, cfg.eval, reward_model=reward_model,
                                rm_tok=rm_tok) if eprompts else None
    s = PPOLoop(cfg, acc, run, models, optimizer, scheduler, kl, prompts, prompt_ids, total, step, last, evaluator,
                columns=columns)
    if step == 0 and acc.is_main_process:
        total_p, trainable = count_parameters(ac)
        run.log(0, {"model/parameters": total_p, "model/trainable": trainable, "data/prompts": len(prompts),
                    "data/dropped_prompts": dropped, "reward_model/same_tokenizer": same_tok,
                    **models.sampler.log_row()})
        init_eval = s.evaluate(0)
        if init_eval:
            run.log(0, {f"init/{k[5:]}": v for k, v in init_eval.items()})
    return s


def iteration(s: PPOLoop) -> dict:
    """One PPO iteration: rollout, update, KL controller and scheduler step, then log / evaluate / checkpoint as
    due. Returns its metrics."""
    cfg, acc = s.cfg, s.acc
    world, rank = acc.num_processes, acc.process_index
    reduce = (lambda t: acc.reduce(t, reduction="sum")) if world > 1 else (lambda t: t)
    mine = local_prompt_indices(cfg, len(s.prompts), s.step, acc)
    t0 = time.perf_counter()
    coef = s.kl.value
    data, m, gen_s = rollout(cfg, s.models, [s.prompts[i] for i in mine], [s.prompt_ids[i] for i in mine],
                             kl_coef=coef, seed=rollout_seed(cfg.seed, s.step, rank), reduce=reduce,
                             columns=[s.columns[i] for i in mine])
    t1 = time.perf_counter()
    m.update(ppo_update(cfg, s.models.model, s.optimizer, acc, data,
                        generator=update_generator(cfg.seed, s.step, rank)))
    t2 = time.perf_counter()
    m["kl_coef"] = coef
    m["lr"] = s.scheduler.get_last_lr()[0]
    s.kl.update(m["objective/kl"], cfg.batch_size)
    s.scheduler.step()
    s.step += 1
    m["episode"] = s.step * cfg.batch_size
    end_iteration(s, m, perf_metrics(m["rollout/tokens"], world, t0, t1, t2, gen_s),
                  score=f"{m['objective/scores']:.3f}", kl=f"{m['objective/kl']:.3f}")
    return m


def finish(s: PPOLoop) -> dict:
    """Save the policy and value model with their model cards, run the final evaluation, write metrics.json."""
    run, ac, tok = s.run, s.models.ac, s.models.tok

    def save(full):
        save_model(ac.policy, tok, run.path / "model", state_dict=submodule_state(full, "policy."))
        if ac.critic is not None:
            save_model(ac.critic, tok, run.path / "value_model", state_dict=submodule_state(full, "critic."))

    def cards(metrics):
        chat = chat_template_trained(tok)
        write_model_card(run.path / "model", stage="ppo", config=run.config, metrics=metrics, chat_trained=chat,
                         run_dir=run.path)
        if ac.critic is not None:
            write_model_card(run.path / "value_model", stage="ppo-value", config=run.config, metrics=metrics,
                             chat_trained=chat, run_dir=run.path)

    return finish_loop(s, s.models.model, save, cards)


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins ppo", stage="ppo")


if __name__ == "__main__":
    raise SystemExit(main())
