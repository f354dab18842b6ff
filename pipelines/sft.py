"""`reins sft`: supervised fine-tuning of a causal LM, loss on completion tokens only (or all tokens of `text`).

Loss: token-mean negative log-likelihood over the completion tokens of the global batch,
-sum_{i,t} m_{i,t} log pi(y_{i,t} | x_i, y_{i,<t}) / sum_{i,t} m_{i,t} (the supervised step the
RLHF pipeline starts from, Ouyang et al. 2022 §3.5). Packing (optional) concatenates all sequences, EOS-separated,
into max_length blocks and trains on every token.
Default: the tiny model on the built-in sentiment corpus. Artifact: `output_dir/model` (save_pretrained).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.common import eval_prompts, lm_evaluate_fn, open_run, start_lm_stage, train_and_finish
from pipelines.data import (
    BUILTIN,
    DataArgs,
    builtin_sft_rows,
    chat_roles,
    load_split_pair,
    normalise_sft,
    tokenize_sft,
)
from pipelines.evaluation import EvalArgs, PolicyEvaluator
from pipelines.models import ModelArgs, count_parameters, load_causal_lm, load_tokenizer
from pipelines.prompts import ARITHMETIC
from pipelines.scoring import completion_batch, sequence_logps, to_device
from pipelines.trainer import TrainArgs, Trainer
from reins.config import RunArgs
from reins.entry import stage_main


@dataclass
class Config(TrainArgs, DataArgs, ModelArgs, RunArgs):
    output_dir: str = field(default="runs/sft",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    packing: bool = field(default=False,
                          metadata={"help": "concatenate examples into full max_length rows (no padding)"})
    eval_prompts: str | None = field(default=BUILTIN,
                                     metadata={"help": "prompts for the generation eval (None/\"none\": skip it)"})
    eval: EvalArgs = field(default_factory=EvalArgs,
                           metadata={"help": "the generation eval (num_prompts, seed, temperature, max_new_tokens, "
                                             "batch_size, ...)"})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate (peak, after warm-up)"})
    max_operand: int = field(default=99,
                             metadata={"help": "data: builtin:arithmetic (correct answers): operands 0..max_operand"})

    def validate(self):
        self.validate_model()
        self.validate_data()
        self.validate_train()


def pack(examples: list[dict], block: int) -> list[dict]:
    """Concatenate prompt+completion ids of all examples and cut into `block`-token pieces (last one dropped)."""
    stream = [t for e in examples for t in e["prompt_ids"] + e["completion_ids"]]
    return [{"prompt_ids": [], "completion_ids": stream[s:s + block]}
            for s in range(0, len(stream) - block + 1, block)]


def n_predicted(ex: dict) -> int:
    """Completion tokens that carry a loss (the very first token of a prompt-less sequence has no context)."""
    return len(ex["completion_ids"]) - (1 if not ex["prompt_ids"] else 0)


def make_loss_fn(pad_id: int):
    def loss_fn(model, examples: list[dict], denominator: float):
        b = completion_batch([e["prompt_ids"] for e in examples], [e["completion_ids"] for e in examples], pad_id)
        dev = next(model.parameters()).device
        b = to_device(b, dev)
        r = sequence_logps(model, b, with_entropy=True)
        nll = -r["token_logps"].sum()
        n = r["mask"].sum()
        stats = {"loss": ("mean", nll.detach(), n), "entropy": ("mean", r["entropy"].sum(), n),
                 "mean_token_accuracy": ("mean", r["correct"].sum(), n), "num_tokens": ("mean", n, 1.0)}
        return nll / denominator, stats
    return loss_fn


def _builtin(cfg: Config) -> dict:
    """The built-in rows `data` names: the sentiment corpus, or arithmetic problems with their answers."""
    if cfg.data != ARITHMETIC:
        return {"builtin": builtin_sft_rows}
    from pipelines.arithmetic import arithmetic_sft_rows

    return {"builtin": lambda n, seed, split: arithmetic_sft_rows(n, seed, split, max_operand=cfg.max_operand),
            "builtin_name": ARITHMETIC}


def train(cfg: Config) -> dict:
    acc, done = start_lm_stage(cfg)
    if done is not None:  # a finished run: return its metrics, no retraining
        return done
    tok = load_tokenizer(cfg)
    train_rows, tw, eval_rows, ew = load_split_pair(cfg, seed=cfg.seed, **_builtin(cfg))
    roles = chat_roles(tok)
    train_ex, tstats = tokenize_sft(tok, normalise_sft(train_rows, tw, roles=roles), tw, cfg.max_length,
                                    cfg.on_overlong)
    eval_ex = []
    if eval_rows:
        eval_ex, _ = tokenize_sft(tok, normalise_sft(eval_rows, ew, roles=roles), ew, cfg.max_length, cfg.on_overlong)
    if cfg.packing:
        train_ex, eval_ex = pack(train_ex, cfg.max_length), pack(eval_ex, cfg.max_length)
    prompts = eval_prompts(cfg.eval_prompts, cfg.eval.num_prompts) if acc.is_main_process else []
    model = load_causal_lm(cfg, tok, seed=cfg.seed)
    run = open_run(cfg, acc, n_train=len(train_ex))  # after every input is validated: bad input writes nothing
    loss_fn = make_loss_fn(tok.pad_token_id)
    trainer = Trainer(run, cfg, acc, model, train_ex, loss_fn, seed=cfg.seed, count_fn=n_predicted)
    if acc.is_main_process and trainer.resumed_from == 0:
        total, trainable = count_parameters(model)
        run.log(0, {"model/parameters": total, "model/trainable": trainable, "data/train_rows": len(train_ex),
                    **tstats.as_metrics("data")})
    evaluator = PolicyEvaluator(tok, prompts, None, cfg.eval) if prompts else None

    evaluate = lm_evaluate_fn(trainer, loss_fn, eval_ex, batch_size=cfg.eval.batch_size, count_fn=n_predicted,
                              evaluator=evaluator)
    return train_and_finish(trainer, run, acc, tok, evaluate, eval_every=cfg.eval_every, stage="sft")


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins sft", stage="sft")


if __name__ == "__main__":
    raise SystemExit(main())
