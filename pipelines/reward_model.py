"""`reins reward`: a Bradley-Terry reward model on preference pairs.

Loss (pgcore.preference_losses.bradley_terry_loss): -mean log sigma(r(x, y_w) - r(x, y_l) - margin)
+ center_coef * mean((r_w + r_l)^2) (Rafailov et al. 2023, eq. 2; margin from a `margin` column when `use_margin`,
Llama 2; centering, Eisenstein et al. 2023). The model is AutoModelForSequenceClassification (num_labels=1)
initialised from `model` (the SFT model), scoring the EOS token of prompt+completion; chosen and rejected go
through one forward, by default (`shared_prompt`) as one row [prompt | chosen | rejected] per pair with a 4-D
attention mask (prompt processed once, little padding; scores equal the two-row layout's to rounding).
Metrics use TRL's names: loss, accuracy, margin, mean_reward, min_reward, max_reward;
eval/accuracy on the held-out pairs. Artifact: `output_dir/model` (merged if trained with LoRA).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pgcore.preference_losses import bradley_terry_loss
from pipelines.common import lm_evaluate_fn, log_start, open_run, start_lm_stage, train_and_finish
from pipelines.data import (
    DataArgs,
    chat_roles,
    load_split_pair,
    normalise_preferences,
    split_off,
    tokenize_preferences,
)
from pipelines.models import ModelArgs, load_reward_model, load_tokenizer
from pipelines.scoring import pair_batch, pair_reward_scores, reward_scores, shared_prompt_on
from pipelines.trainer import TrainArgs, Trainer
from reins.config import RunArgs, check
from reins.entry import stage_main
from reins.errors import DataError


@dataclass
class Config(TrainArgs, DataArgs, ModelArgs, RunArgs):
    output_dir: str = field(default="runs/reward",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    center_coef: float = field(default=0.0,
                               metadata={"help": "TRL center_rewards_coefficient (0.01 recommended when used)"})
    use_margin: bool = field(default=False, metadata={"help": "subtract the data's `margin` column inside the sigmoid"})
    eval_fraction: float = field(default=0.1, metadata={"help": "held-out share when the data has no eval split"})
    eval_batch_size: int = field(default=64, metadata={"help": "pairs per forward pass of the evaluation"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (peak, after warm-up)"})
    num_epochs: float = field(default=2.0, metadata={"help": "passes over the training data (max_steps overrides it)"})
    shared_prompt: bool = field(default=True,
                                metadata={"help": "one row per pair, prompt once (off under flash_attention_2: no "
                                                  "4-D masks)"})

    def validate(self):
        self.validate_model()
        self.validate_data()
        self.validate_train()
        check(self.center_coef >= 0, "center_coef must be >= 0")
        check(0 <= self.eval_fraction < 1, "eval_fraction must be in [0, 1)")


def builtin_pairs(n: int, seed: int, split: str) -> list[dict]:
    """The built-in task as preference pairs: a positive row's opening and completion (chosen) with a negative row's
    completion (rejected). The two rows come from different openings, so the rejected text continues another prompt;
    what separates the pair is its sentiment."""
    from pipelines.task import sentiment_corpus

    rows = sentiment_corpus(2 * n, seed=seed, split="train" if split == "train" else "eval")
    pos = [r for r in rows if r.polarity > 0]
    neg = [r for r in rows if r.polarity < 0]
    return [{"prompt": p.prompt, "chosen": p.completion, "rejected": q.completion}
            for p, q in zip(pos, neg) if p.completion != q.completion][:n]


def make_loss_fn(pad_id: int, cfg: Config):
    shared = shared_prompt_on(cfg)

    def loss_fn(model, examples: list[dict], denominator: float):
        n = len(examples)
        device = next(model.parameters()).device
        b = pair_batch(examples, pad_id, device, shared=shared)
        r = pair_reward_scores(model, b) if "segments" in b else reward_scores(model, b)
        if r is None:  # no `score` head to read per-token scores from: two rows per pair
            r = reward_scores(model, pair_batch(examples, pad_id, device, shared=False))
        rc, rr = r[:n], r[n:]
        margin = None
        if cfg.use_margin:
            margin = torch.tensor([e.get("margin", 0.0) for e in examples], dtype=r.dtype, device=r.device)
        loss, info = bradley_terry_loss(rc, rr, margin=margin, center_coef=cfg.center_coef)
        stats = {"loss": ("mean", loss.detach() * n, n), "accuracy": ("mean", info["accuracy"] * n, n),
                 "margin": ("mean", info["margin"] * n, n), "mean_reward": ("mean", info["mean_reward"] * n, n),
                 "min_reward": ("min", info["min_reward"]), "max_reward": ("max", info["max_reward"])}
        # loss is a mean over this micro-batch; times n / denominator makes it the global-batch mean's share.
        return loss * (n / denominator), stats
    return loss_fn


def train(cfg: Config) -> dict:
    acc, done = start_lm_stage(cfg)
    if done is not None:  # a finished run: return its metrics, no retraining
        return done
    tok = load_tokenizer(cfg)
    train_rows, tw, eval_rows, ew = load_split_pair(cfg, seed=cfg.seed, builtin=builtin_pairs)
    train_rows = normalise_preferences(train_rows, tw, roles=chat_roles(tok))
    if eval_rows is None and cfg.eval_fraction > 0:
        train_rows, eval_rows = split_off(train_rows, cfg.eval_fraction, cfg.seed)
        ew = tw + " (held-out split)"
    elif eval_rows is not None:
        eval_rows = normalise_preferences(eval_rows, ew, roles=chat_roles(tok))
    if cfg.use_margin and "margin" not in train_rows[0]:
        raise DataError(f"{tw}: use_margin=true but the data has no 'margin' column")
    train_ex, tstats = tokenize_preferences(tok, train_rows, tw, cfg.max_length, cfg.on_overlong)
    eval_ex = tokenize_preferences(tok, eval_rows, ew, cfg.max_length, cfg.on_overlong)[0] if eval_rows else []
    model = load_reward_model(cfg, tok, seed=cfg.seed)
    run = open_run(cfg, acc, n_train=len(train_ex))  # after every input is validated: bad input writes nothing
    loss_fn = make_loss_fn(tok.pad_token_id, cfg)
    trainer = Trainer(run, cfg, acc, model, train_ex, loss_fn, seed=cfg.seed)
    log_start(run, acc, trainer, model, {"data/train_pairs": len(train_ex), "data/eval_pairs": len(eval_ex),
                                         **tstats.as_metrics("data")})

    evaluate = lm_evaluate_fn(trainer, loss_fn, eval_ex, batch_size=cfg.eval_batch_size, count_fn=lambda e: 1)
    # Under LoRA, save a plain sequence classifier (merged): PPO and evaluation load it directly.
    export = (lambda m: m.merge_and_unload()) if cfg.lora is not None else (lambda m: m)
    return train_and_finish(trainer, run, acc, tok, evaluate, eval_every=cfg.eval_every, stage="reward", export=export)


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins reward", stage="reward")


if __name__ == "__main__":
    raise SystemExit(main())
