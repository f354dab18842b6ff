"""`reins dpo`: direct preference optimisation from a (SFT) policy and preference pairs.

Loss: pgcore.preference_losses.dpo_loss on sequence log-probs (sum over completion tokens) of the policy and
the reference, loss_type in {sigmoid, robust, ipo, hinge, simpo}, beta, label_smoothing, reference_free (Rafailov
et al. 2023, eq. 7; variants in pgcore). `simpo` (Meng et al. 2024) compares length-averaged log-probs with the
margin `simpo_gamma` and loads no reference model at all (no eval/kl_to_ref then). `rpo_alpha` adds alpha times
the chosen completions' NLL (TRL's token mean over the micro-batch's chosen tokens; Pang et al. 2024), logged as
nll_loss. Chosen and rejected go through ONE concatenated
forward; by default (`shared_prompt`) that forward holds each pair as one row [prompt | chosen | rejected] with a
4-D attention mask, so the prompt is processed once and padding mostly disappears (log-probs equal the two-row
layout's to rounding; see pipelines.scoring.shared_prompt_batch). The reference is a frozen copy of the initial
policy, or, under LoRA, the same model with its adapter disabled (no second copy).
`precompute_ref_logps` computes the reference log-probs once before training and caches them
on disk, keyed by a hash of the reference weights and of the tokenised data.
Metrics use TRL's names and definitions: loss, rewards/{chosen,rejected,margins,accuracies},
logps/{chosen,rejected}, logits/{chosen,rejected} (the policy's logits averaged over vocabulary and every chosen
/ rejected completion token of the batch), entropy and mean_token_accuracy (the policy's predictive entropy and
argmax == token, averaged over every completion token of the batch, chosen and rejected), num_tokens (input
tokens trained on so far, prompt counted once per completion, no padding), grad_norm; plus the shared
evaluation (eval/gold_reward, eval/kl_to_ref, eval/win_rate_vs_ref, ...) and held-out pair metrics
(eval/rewards/accuracies, ...).
Artifact: `output_dir/model` (the full model, or the adapter under LoRA).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from pgcore.preference_losses import chosen_nll_loss, dpo_loss
from pipelines.common import eval_prompts, lm_evaluate_fn, log_start, open_run, start_lm_stage, train_and_finish
from pipelines.data import DataArgs, load_examples, normalise_preferences, tokenize_preferences
from pipelines.evaluation import PolicyEvaluator
from pipelines.models import ModelArgs, load_causal_lm, load_tokenizer
from pipelines.reference import ReferenceEvalArgs, build_reference, cached_ref_logps, eval_reward_model
from pipelines.reward_model import builtin_pairs
from pipelines.scoring import (
    Reference,
    pair_batch,
    pair_logps,
    sequence_logps,
    shared_prompt_on,
)
from pipelines.trainer import TrainArgs, Trainer
from reins.config import RunArgs, check
from reins.entry import stage_main


@dataclass
class Config(ReferenceEvalArgs, TrainArgs, DataArgs, ModelArgs, RunArgs):
    output_dir: str = field(default="runs/dpo",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    beta: float = field(default=0.1,
                        metadata={"help": "inverse temperature of the implicit reward beta * log(pi / pi_ref)"})
    loss_type: Literal["sigmoid", "robust", "ipo", "hinge", "simpo"] = field(
        default="sigmoid", metadata={"help": "sigmoid (DPO), robust (label noise), ipo (squared), hinge (SLiC), "
                                             "simpo (length-averaged, no reference model; the SimPO paper uses "
                                             "beta 2 to 2.5, TRL's CPO keeps 0.1)"})
    simpo_gamma: float = field(default=0.5,
                               metadata={"help": "simpo: the target reward margin gamma (TRL CPOConfig default)"})
    rpo_alpha: float | None = field(default=None,
                                    metadata={"help": "weight of the NLL of the chosen completions added to the "
                                                      "loss (RPO; None: off)"})
    label_smoothing: float = field(default=0.0,
                                   metadata={"help": "assumed share of flipped labels (sigmoid / robust losses)"})
    reference_free: bool = field(default=False,
                                 metadata={"help": "compare the policy's log-probs alone (a uniform reference)"})
    shared_prompt: bool = field(default=True,
                                metadata={"help": "one row per pair, prompt once (off under flash_attention_2: no "
                                                  "4-D masks)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (peak, after warm-up)"})

    def validate(self):
        self.validate_model()
        self.validate_data()
        self.validate_train()
        check(self.beta > 0, f"beta must be > 0, got {self.beta}")
        check(0 <= self.label_smoothing < 0.5, f"label_smoothing must be in [0, 0.5), got {self.label_smoothing}")
        check(self.rpo_alpha is None or (math.isfinite(self.rpo_alpha) and self.rpo_alpha >= 0),
              f"rpo_alpha must be >= 0 (or None), got {self.rpo_alpha}")
        check(math.isfinite(self.simpo_gamma), f"simpo_gamma must be finite, got {self.simpo_gamma}")
        if self.loss_type == "simpo":
            for key in ("ref_model", "precompute_ref_logps", "reference_free"):
                check(not getattr(self, key), f"{key} has no effect with loss_type=simpo (it uses no reference "
                                              f"model); leave it unset")

    @property
    def uses_reference(self) -> bool:
        return self.loss_type != "simpo"


def make_loss_fn(pad_id: int, cfg: Config, reference: Reference | None):
    shared = shared_prompt_on(cfg)

    def loss_fn(model, examples: list[dict], denominator: float):
        n = len(examples)
        b = pair_batch(examples, pad_id, next(model.parameters()).device, shared=shared)
        # one forward for all 2n completions: one row per pair, or [chosen rows; rejected rows]
        r = pair_logps(model, b, with_entropy=True) if "segments" in b else sequence_logps(model, b, with_entropy=True)
        pc, pr = r["logps"][:n], r["logps"][n:]
        if cfg.reference_free or not cfg.uses_reference:
            rc = rr = torch.zeros_like(pc)
        elif "ref_chosen_logps" in examples[0]:
            rc = torch.tensor([e["ref_chosen_logps"] for e in examples], dtype=pc.dtype, device=pc.device)
            rr = torch.tensor([e["ref_rejected_logps"] for e in examples], dtype=pc.dtype, device=pc.device)
        else:
            ref = (reference.pair_logps(b) if "segments" in b else reference.logps(b))["logps"].to(pc.dtype)
            rc, rr = ref[:n], ref[n:]
        losses, chosen_r, rejected_r = dpo_loss(
            pc, pr, rc, rr, beta=cfg.beta, loss_type=cfg.loss_type, label_smoothing=cfg.label_smoothing,
            reference_free=cfg.reference_free, chosen_lengths=r["n_tokens"][:n],
            rejected_lengths=r["n_tokens"][n:], simpo_gamma=cfg.simpo_gamma)
        nll = None
        if cfg.rpo_alpha:  # a batch-level term: each pair carries its share, so its mean adds alpha * nll
            nll = chosen_nll_loss(pc, r["n_tokens"][:n])
            losses = losses + cfg.rpo_alpha * nll
        # TRL's token-level metrics: means over every completion token of the batch (chosen and rejected)
        nt = r["n_tokens"]
        lg_sum = r["logits_mean"] * nt  # the sum over a sequence's completion tokens of its mean logit
        stats = {"loss": ("mean", losses.detach().sum(), n),
                 "rewards/chosen": ("mean", chosen_r.sum(), n), "rewards/rejected": ("mean", rejected_r.sum(), n),
                 "rewards/margins": ("mean", (chosen_r - rejected_r).sum(), n),
                 "rewards/accuracies": ("mean", (chosen_r > rejected_r).to(pc.dtype).sum(), n),
                 "logps/chosen": ("mean", pc.detach().sum(), n), "logps/rejected": ("mean", pr.detach().sum(), n),
                 "logits/chosen": ("mean", lg_sum[:n].sum(), nt[:n].sum()),
                 "logits/rejected": ("mean", lg_sum[n:].sum(), nt[n:].sum()),
                 "entropy": ("mean", r["entropy_sum"].sum(), nt.sum()),
                 "mean_token_accuracy": ("mean", r["correct_sum"].sum(), nt.sum())}
        if nll is not None:
            stats["nll_loss"] = ("mean", nll.detach() * n, n)
        return losses.sum() / denominator, stats
    return loss_fn


def pair_input_tokens(example: dict) -> int:
    """Input tokens of a pair as TRL counts them for `num_tokens`: two rows, prompt + chosen and prompt +
    rejected, without padding (whatever layout the forward uses)."""
    return 2 * len(example["prompt_ids"]) + len(example["chosen_ids"]) + len(example["rejected_ids"])


def attach_ref_logps(examples: list[dict], reference: Reference, pad_id: int, cache_dir: Path, *,
                     batch_size: int, is_main: bool, wait) -> Path:
    """Add ref_chosen_logps / ref_rejected_logps to each example, computed once and cached on disk."""
    sides = {"chosen": [e["chosen_ids"] for e in examples], "rejected": [e["rejected_ids"] for e in examples]}
    cached, path = cached_ref_logps(reference, [e["prompt_ids"] for e in examples], sides,
                                    [[e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]] for e in examples],
                                    pad_id, cache_dir / "ref_logps", batch_size=batch_size, is_main=is_main, wait=wait)
    for i, e in enumerate(examples):
        e["ref_chosen_logps"] = float(cached["chosen"][i])
        e["ref_rejected_logps"] = float(cached["rejected"][i])
    return path


def train(cfg: Config) -> dict:
    acc, done = start_lm_stage(cfg)
    if done is not None:  # a finished run: return its metrics, no retraining
        return done
    tok = load_tokenizer(cfg)
    train_ex, tstats, eval_ex = load_examples(cfg, tok, seed=cfg.seed, builtin=builtin_pairs,
                                              normalise=normalise_preferences, tokenize=tokenize_preferences)
    prompts = eval_prompts(cfg.eval_prompts, cfg.eval.num_prompts) if acc.is_main_process else []
    rm, rm_tok = eval_reward_model(cfg, prompts, acc.device)
    policy = load_causal_lm(cfg, tok, seed=cfg.seed)
    # simpo: no second model, no reference forwards
    reference = build_reference(cfg, policy, tok) if cfg.uses_reference else None
    if reference is not None and reference.model is not None:
        reference.model.to(acc.device)
    run = open_run(cfg, acc, n_train=len(train_ex))  # after every input is validated: bad input writes nothing
    if cfg.precompute_ref_logps and not cfg.reference_free:
        cache = Path(cfg.ref_cache_dir) if cfg.ref_cache_dir else run.path / "cache"
        for exs in (train_ex, eval_ex):
            if exs:
                attach_ref_logps(exs, reference, tok.pad_token_id, cache, batch_size=cfg.eval.batch_size,
                                 is_main=acc.is_main_process, wait=acc.wait_for_everyone)
    train_ref = reference
    if cfg.torch_compile and reference is not None and reference.model is not None and not cfg.precompute_ref_logps:
        train_ref = Reference(torch.compile(reference.model, dynamic=True))  # the loss's reference forwards
    loss_fn = make_loss_fn(tok.pad_token_id, cfg, train_ref)
    trainer = Trainer(run, cfg, acc, policy, train_ex, loss_fn, seed=cfg.seed, tokens_fn=pair_input_tokens)
    log_start(run, acc, trainer, policy, {"data/train_pairs": len(train_ex), "data/eval_pairs": len(eval_ex),
                                          **tstats.as_metrics("data")})
    evaluator = PolicyEvaluator(tok, prompts, reference, cfg.eval, reward_model=rm, rm_tok=rm_tok) if prompts else None

    evaluate = lm_evaluate_fn(trainer, loss_fn, eval_ex, batch_size=cfg.eval.batch_size, count_fn=lambda e: 1,
                              evaluator=evaluator)
    return train_and_finish(trainer, run, acc, tok, evaluate, eval_every=cfg.eval_every, stage="dpo")


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins dpo", stage="dpo")


if __name__ == "__main__":
    raise SystemExit(main())
