"""`reins sft`: supervised fine-tuning of a causal LM, loss on completion tokens only (or all tokens of `text`).

Loss: token-mean negative log-likelihood over the completion tokens of the global batch,
-sum_{i,t} m_{i,t} log pi(y_{i,t} | x_i, y_{i,<t}) / sum_{i,t} m_{i,t} (the supervised step the
RLHF pipeline starts from, Ouyang et al. 2022 §3.5). `assistant_only_loss` trains every assistant turn of a
conversation (pipelines/sft_data.py), not only the last. Packing (optional) puts several examples in one
max_length row: `bfd` packs whole examples that never attend to each other (same loss and gradient as unpacked,
less padding); `wrapped` (plain text only) concatenates all texts, EOS-separated, and cuts max_length blocks.
Default: the tiny model on the built-in sentiment corpus. Artifact: `output_dir/model` (save_pretrained).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipelines.common import eval_prompts, lm_evaluate_fn, log_start, open_run, start_lm_stage, train_and_finish
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
from pipelines.models import ModelArgs, load_causal_lm, load_tokenizer
from pipelines.prompts import ARITHMETIC
from pipelines.scoring import _additive_mask, completion_batch, sequence_logps, to_device
from pipelines.sft_data import (
    as_sequence,
    chat_conversations,
    n_targets,
    pack_bfd,
    sequence_batch,
    tokenize_assistant_turns,
)
from pipelines.trainer import TrainArgs, Trainer, example_length
from reins.config import RunArgs, check
from reins.entry import stage_main
from reins.errors import DataError


@dataclass
class Config(TrainArgs, DataArgs, ModelArgs, RunArgs):
    output_dir: str = field(default="runs/sft",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    packing: bool = field(default=False,
                          metadata={"help": "put several examples in each max_length row (less padding; batch_size "
                                            "then counts rows); see packing_strategy"})
    packing_strategy: Literal["bfd", "wrapped"] = field(
        default="bfd", metadata={"help": "bfd: whole examples, best-fit decreasing, each attending only to itself "
                                         "(positions restart at 0; loss and gradient as unpacked); wrapped: plain "
                                         "`text` only, all texts concatenated and cut into max_length blocks"})
    assistant_only_loss: bool = field(
        default=False, metadata={"help": "conversational data: train every assistant turn (not system, user or "
                                         "tool turns); false: the last assistant turn (the completion) only"})
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
        check(not (self.packing and self.packing_strategy == "wrapped" and self.assistant_only_loss),
              "packing_strategy=wrapped trains every token of plain text; it cannot be combined with "
              "assistant_only_loss=true (use packing_strategy=bfd)")


def pack(examples: list[dict], block: int) -> list[dict]:
    """Concatenate prompt+completion ids of all examples and cut into `block`-token pieces (last one dropped)."""
    stream = [t for e in examples for t in e["prompt_ids"] + e["completion_ids"]]
    return [{"prompt_ids": [], "completion_ids": stream[s:s + block]}
            for s in range(0, len(stream) - block + 1, block)]


def n_predicted(ex: dict) -> int:
    """Completion tokens that carry a loss (the very first token of a prompt-less sequence has no context)."""
    if "loss_mask" in ex:
        return n_targets(ex)
    return len(ex["completion_ids"]) - (1 if not ex["prompt_ids"] else 0)


def make_loss_fn(pad_id: int, attention: str = "mask"):
    """The SFT loss on prompt/completion examples, or on sequence examples and packed rows (sft_data), whose
    examples are kept apart by a 4-D mask (attention="mask") or by position_ids alone ("position_ids")."""
    def loss_fn(model, examples: list[dict], denominator: float):
        p = next(model.parameters())
        if "loss_mask" in examples[0]:
            b = to_device(sequence_batch(examples, pad_id, attention=attention), p.device)
            if "allowed" in b:
                b["attention_mask"] = _additive_mask(b.pop("allowed"), p.dtype)
        else:
            b = completion_batch([e["prompt_ids"] for e in examples], [e["completion_ids"] for e in examples],
                                 pad_id)
            b = to_device(b, p.device)
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


def _tokenize(cfg: Config, tok, rows: list[dict], where: str, roles) -> tuple[list[dict], object]:
    """Training examples of `rows`: prompt/completion ids, or with assistant_only_loss sequence examples whose
    loss mask covers every assistant turn."""
    if cfg.assistant_only_loss:
        return tokenize_assistant_turns(tok, chat_conversations(rows, where, roles=roles), where, cfg.max_length,
                                        cfg.on_overlong)
    return tokenize_sft(tok, normalise_sft(rows, where, roles=roles), where, cfg.max_length, cfg.on_overlong)


def _pack(cfg: Config, examples: list[dict], where: str) -> list[dict]:
    """`examples` as the rows the Trainer batches: themselves, or packed by `packing_strategy`."""
    if not cfg.packing:
        return examples
    if cfg.packing_strategy == "wrapped":
        if any(e.get("prompt_ids") for e in examples):
            raise DataError(f"{where}: packing_strategy=wrapped is for plain `text` data (it trains on every token "
                            f"and lets examples attend to each other); this data has prompts: use "
                            f"packing_strategy=bfd")
        return pack(examples, cfg.max_length)
    return pack_bfd([e if "loss_mask" in e else as_sequence(e) for e in examples], cfg.max_length)


def train(cfg: Config) -> dict:
    acc, done = start_lm_stage(cfg)
    if done is not None:  # a finished run: return its metrics, no retraining
        return done
    tok = load_tokenizer(cfg)
    train_rows, tw, eval_rows, ew = load_split_pair(cfg, seed=cfg.seed, **_builtin(cfg))
    roles = chat_roles(tok)
    train_ex, tstats = _tokenize(cfg, tok, train_rows, tw, roles)
    eval_ex = _tokenize(cfg, tok, eval_rows, ew, roles)[0] if eval_rows else []
    train_ex, eval_ex = _pack(cfg, train_ex, tw), _pack(cfg, eval_ex, ew)
    fill = {"data/packed_fill": sum(map(example_length, train_ex)) / max(1, len(train_ex) * cfg.max_length)
            } if cfg.packing else {}  # the share of row tokens that are real tokens
    prompts = eval_prompts(cfg.eval_prompts, cfg.eval.num_prompts) if acc.is_main_process else []
    model = load_causal_lm(cfg, tok, seed=cfg.seed)
    run = open_run(cfg, acc, n_train=len(train_ex))  # after every input is validated: bad input writes nothing
    flash = "flash" in (cfg.attn_implementation or "")  # transformers' varlen path takes position_ids alone
    loss_fn = make_loss_fn(tok.pad_token_id, attention="position_ids" if flash else "mask")
    trainer = Trainer(run, cfg, acc, model, train_ex, loss_fn, seed=cfg.seed, count_fn=n_predicted)
    log_start(run, acc, trainer, model, {"data/train_rows": len(train_ex), **tstats.as_metrics("data"), **fill})
    evaluator = PolicyEvaluator(tok, prompts, None, cfg.eval) if prompts else None

    evaluate = lm_evaluate_fn(trainer, loss_fn, eval_ex, batch_size=cfg.eval.batch_size, count_fn=n_predicted,
                              evaluator=evaluator)
    return train_and_finish(trainer, run, acc, tok, evaluate, eval_every=cfg.eval_every, stage="sft")


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins sft", stage="sft")


if __name__ == "__main__":
    raise SystemExit(main())
