"""`reins kto`: Kahneman-Tversky optimisation (Ethayarajh et al. 2024) of a (SFT) policy on unpaired feedback.

Data: TRL's unpaired format, rows of `prompt`, `completion` and a boolean `label` (desirable or not), standard or
conversational; paired preference data is unpaired as TRL does (pipelines/unpaired.py). The built-in default is
the built-in sentiment pairs, unpaired.
Loss: pgcore.preference_losses.kto_loss on sequence log-probs (sum over completion tokens) of the policy and the
reference: desirable_weight (1 - sigma(beta (r - z0))) for a desirable completion, undesirable_weight
(1 - sigma(beta (z0 - r))) for an undesirable one, r = log pi(y|x) - log pi_ref(y|x), averaged over the batch.
The reference point z0 (`kto_reference_point`) is estimated as TRL's KTOTrainer does: within each process's
micro-batch, example i's prompt is paired with example i-1's completion (the last with the first's), so the
mismatched completions are the batch's own; z0 is the mean of log pi - log pi_ref over those pairs, detached,
averaged over processes and clamped at 0. It therefore depends on how the global batch is split (processes x
grad_accum), as TRL's does, and a micro-batch needs at least 2 examples. With `shuffle=false` (TRL's default
sequential sampling) and one micro-batch per step, the pairs are TRL's.
The reference is a frozen copy of the initial policy, `ref_model`, or under LoRA the adapter-disabled policy;
`precompute_ref_logps` scores it once before training (both the matched and the mismatched pairs, so it needs
`shuffle=false`, as TRL's precomputation needs sequential sampling) and caches the result on disk.
Metrics use TRL's names: loss, kl, rewards/chosen, rewards/rejected (beta r averaged over the desirable /
undesirable examples), logps/chosen, logps/rejected, logits/chosen, logits/rejected (token means), entropy,
num_tokens, grad_norm (a step without desirable, or undesirable, examples reports 0 for that class's means);
held-out examples give eval/... of the same (and eval/rewards/margins); the shared generation evaluation adds
eval/gold_reward, eval/kl_to_ref, eval/win_rate_vs_ref.
Artifact: `output_dir/model` (the full model, or the adapter under LoRA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pgcore.preference_losses import kto_loss, kto_reference_point
from pipelines.common import eval_prompts, lm_evaluate_fn, log_start, open_run, start_lm_stage, train_and_finish
from pipelines.data import DataArgs, load_examples
from pipelines.evaluation import PolicyEvaluator
from pipelines.models import ModelArgs, load_causal_lm, load_tokenizer
from pipelines.reference import ReferenceEvalArgs, build_reference, cached_ref_logps, eval_reward_model
from pipelines.scoring import Reference, completion_batch, sequence_logps, to_device
from pipelines.trainer import TrainArgs, Trainer
from pipelines.unpaired import builtin_unpaired, normalise_unpaired, tokenize_unpaired
from reins.config import RunArgs, check
from reins.entry import stage_main
from reins.errors import ConfigError


@dataclass
class Config(ReferenceEvalArgs, TrainArgs, DataArgs, ModelArgs, RunArgs):
    output_dir: str = field(default="runs/kto",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    beta: float = field(default=0.1,
                        metadata={"help": "inverse temperature of the implicit reward beta * log(pi / pi_ref)"})
    desirable_weight: float = field(default=1.0,
                                    metadata={"help": "weight lambda_D of the desirable examples' losses (raise the "
                                                      "rarer class: lambda_D n_D / (lambda_U n_U) in [1, 4/3])"})
    undesirable_weight: float = field(default=1.0,
                                      metadata={"help": "weight lambda_U of the undesirable examples' losses"})
    precompute_ref_logps: bool = field(default=False,
                                       metadata={"help": "score the reference once before training and cache it "
                                                         "(needs shuffle=false: the mismatched pairs must be fixed)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (peak, after warm-up)"})

    def validate(self):
        self.validate_model()
        self.validate_data()
        self.validate_train()
        check(self.beta > 0 and math.isfinite(self.beta), f"beta must be > 0, got {self.beta}")
        for key in ("desirable_weight", "undesirable_weight"):
            v = getattr(self, key)
            check(v > 0 and math.isfinite(v), f"{key} must be > 0, got {v}")
        check(not self.precompute_ref_logps or not self.shuffle,
              "precompute_ref_logps=true needs shuffle=false: the KL pairs (each prompt with the previous "
              "example's completion in its micro-batch) change with every shuffled epoch")


def kl_examples(examples: list[dict]) -> tuple[list[list[int]], list[list[int]]]:
    """The mismatched pairs of a micro-batch: example i's prompt with example i-1's completion (the first
    example takes the last one's), TRL's rotation; one example is its own pair."""
    prompts = [e["prompt_ids"] for e in examples]
    completions = [e["completion_ids"] for e in examples]
    return prompts, completions[-1:] + completions[:-1]


def make_loss_fn(pad_id: int, cfg: Config, reference: Reference | None, *, reduce_mean=None):
    """The KTO loss of a micro-batch; `reduce_mean(t)` averages a scalar over processes (training only)."""

    def loss_fn(model, examples: list[dict], denominator: float):
        n = len(examples)
        device = next(model.parameters()).device
        b = to_device(completion_batch([e["prompt_ids"] for e in examples],
                                       [e["completion_ids"] for e in examples], pad_id), device)
        kb = to_device(completion_batch(*kl_examples(examples), pad_id), device)
        r = sequence_logps(model, b, with_entropy=True)
        with torch.no_grad():  # z0 is a constant of the loss: no graph for the mismatched pairs
            kl_pol = sequence_logps(model, kb)["logps"]
        pol = r["logps"]
        if "ref_logps" in examples[0]:
            _check_precomputed_pairs(examples)
            ref = torch.tensor([e["ref_logps"] for e in examples], dtype=pol.dtype, device=device)
            kl_ref = torch.tensor([e["ref_kl_logps"] for e in examples], dtype=pol.dtype, device=device)
        else:
            ref = reference.logps(b)["logps"].to(pol.dtype)
            kl_ref = reference.logps(kb)["logps"].to(pol.dtype)
        z0 = kto_reference_point(kl_pol, kl_ref, reduce_mean=reduce_mean if model.training else None)
        label = torch.tensor([e["label"] for e in examples], device=device)
        losses, rewards = kto_loss(pol, ref, label, z0, beta=cfg.beta, desirable_weight=cfg.desirable_weight,
                                   undesirable_weight=cfg.undesirable_weight)
        return losses.sum() / denominator, _stats(losses, rewards, pol, r, label, z0, n)
    return loss_fn


def _stats(losses, rewards, pol, r, label, z0, n: int) -> dict:
    """TRL's KTO metrics as (kind, sum, count): means over the desirable / undesirable examples, token means."""
    d = label.to(pol.dtype)
    u = 1.0 - d
    nt = r["n_tokens"]
    lg = r["logits_mean"] * nt  # per sequence: the sum over its completion tokens of the mean logit
    return {"loss": ("mean", losses.detach().sum(), n), "kl": ("mean", z0 * n, n),
            "rewards/chosen": ("mean", (rewards * d).sum(), d.sum()),
            "rewards/rejected": ("mean", (rewards * u).sum(), u.sum()),
            "logps/chosen": ("mean", (pol.detach() * d).sum(), d.sum()),
            "logps/rejected": ("mean", (pol.detach() * u).sum(), u.sum()),
            "logits/chosen": ("mean", (lg * d).sum(), (nt * d).sum()),
            "logits/rejected": ("mean", (lg * u).sum(), (nt * u).sum()),
            "entropy": ("mean", r["entropy_sum"].sum(), nt.sum())}


def _check_precomputed_pairs(examples: list[dict]) -> None:
    """The micro-batch's mismatched pairs are the ones the reference was scored on (else the cache is stale)."""
    for j, e in enumerate(examples):
        if e["kl_partner"] != examples[j - 1]["index"]:
            raise ConfigError("precomputed reference log-probs were scored on other mismatched pairs than this "
                              "batch's; rerun without precompute_ref_logps")


def example_tokens(example: dict) -> int:
    """Input tokens of an example as TRL counts them for `num_tokens`: prompt + completion, no padding (the
    mismatched pair's forward is not counted)."""
    return len(example["prompt_ids"]) + len(example["completion_ids"])


def assign_kl_partners(examples: list[dict], chunk: int) -> None:
    """Fix each example's mismatched partner for file-order batches of `chunk` examples: the previous example
    in its chunk (the chunk's last for its first), as `kl_examples` pairs them at run time."""
    for s in range(0, len(examples), chunk):
        block = list(range(s, min(s + chunk, len(examples))))
        for j, i in enumerate(block):
            examples[i]["index"] = i
            examples[i]["kl_partner"] = block[j - 1]


def attach_ref_logps(examples: list[dict], reference: Reference, pad_id: int, cache_dir: Path, *,
                     batch_size: int, is_main: bool, wait) -> Path:
    """Add ref_logps (matched pairs) and ref_kl_logps (the example's prompt with its partner's completion) to
    each example, computed once and cached on disk under a hash of the reference weights and of the pairs."""
    prompts = [e["prompt_ids"] for e in examples]
    mine = [e["completion_ids"] for e in examples]
    theirs = [examples[e["kl_partner"]]["completion_ids"] for e in examples]
    cached, path = cached_ref_logps(reference, prompts, {"matched": mine, "mismatched": theirs},
                                    [prompts, mine, theirs], pad_id, cache_dir / "kto_ref_logps",
                                    batch_size=batch_size, is_main=is_main, wait=wait)
    for i, e in enumerate(examples):
        e["ref_logps"], e["ref_kl_logps"] = float(cached["matched"][i]), float(cached["mismatched"][i])
    return path


def _micro_batch(cfg: Config, world: int) -> int:
    micro = cfg.batch_size // (world * cfg.grad_accum)
    if micro < 2:
        raise ConfigError(f"batch_size={cfg.batch_size} over {world} process(es) x grad_accum={cfg.grad_accum} "
                          f"gives {micro} example(s) per micro-batch; KTO's reference point pairs each example with "
                          f"another of its micro-batch, so it needs at least 2")
    return micro


def train(cfg: Config) -> dict:
    acc, done = start_lm_stage(cfg)
    if done is not None:  # a finished run: return its metrics, no retraining
        return done
    tok = load_tokenizer(cfg)
    train_ex, tstats, eval_ex = load_examples(cfg, tok, seed=cfg.seed, builtin=builtin_unpaired,
                                              normalise=normalise_unpaired, tokenize=tokenize_unpaired)
    micro = _micro_batch(cfg, acc.num_processes)
    prompts = eval_prompts(cfg.eval_prompts, cfg.eval.num_prompts) if acc.is_main_process else []
    rm, rm_tok = eval_reward_model(cfg, prompts, acc.device)
    policy = load_causal_lm(cfg, tok, seed=cfg.seed)
    reference = build_reference(cfg, policy, tok)
    if reference.model is not None:
        reference.model.to(acc.device)
    run = open_run(cfg, acc, n_train=len(train_ex))  # after every input is validated: bad input writes nothing
    if cfg.precompute_ref_logps:
        cache = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else run.path / "cache"
        for exs, chunk in ((train_ex, micro), (eval_ex, cfg.eval.batch_size)):
            if exs:
                assign_kl_partners(exs, chunk)
                attach_ref_logps(exs, reference, tok.pad_token_id, cache, batch_size=cfg.eval.batch_size,
                                 is_main=acc.is_main_process, wait=acc.wait_for_everyone)
    reduce_mean = (lambda t: acc.reduce(t, reduction="mean")) if acc.num_processes > 1 else None
    loss_fn = make_loss_fn(tok.pad_token_id, cfg, reference, reduce_mean=reduce_mean)
    trainer = Trainer(run, cfg, acc, policy, train_ex, loss_fn, seed=cfg.seed, tokens_fn=example_tokens)
    n_des = sum(e["label"] for e in train_ex)
    log_start(run, acc, trainer, policy, {"data/train_examples": len(train_ex), "data/train_desirable": n_des,
                                          "data/train_undesirable": len(train_ex) - n_des,
                                          "data/eval_examples": len(eval_ex), **tstats.as_metrics("data")})
    evaluator = PolicyEvaluator(tok, prompts, reference, cfg.eval, reward_model=rm, rm_tok=rm_tok) if prompts else None
    held_out = lm_evaluate_fn(trainer, loss_fn, eval_ex, batch_size=cfg.eval.batch_size, count_fn=lambda e: 1,
                              evaluator=evaluator)

    def evaluate() -> dict:
        m = held_out()
        if "eval/rewards/chosen" in m and "eval/rewards/rejected" in m:
            m["eval/rewards/margins"] = m["eval/rewards/chosen"] - m["eval/rewards/rejected"]
        return m

    return train_and_finish(trainer, run, acc, tok, evaluate, eval_every=cfg.eval_every, stage="kto")


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins kto", stage="kto")


if __name__ == "__main__":
    raise SystemExit(main())
