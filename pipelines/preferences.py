"""`reins preferences`: sample >= 2 completions per prompt from a policy and label pairs with the gold judge.

Labelling (per prompt, over its `num_samples` scored completions):
- "max_margin": chosen = the highest-scoring, rejected = the lowest; the prompt is skipped when their gold
  scores differ by less than `min_margin` (ambiguous pairs);
- "bradley_terry": two distinct completions drawn at random; the first is chosen with probability
  sigma((s_1 - s_2) / bt_temperature), the Bradley-Terry model (Bradley & Terry 1952) with the gold score as reward,
  so labels are noisy in proportion to how close the scores are.
- "threshold" (`format: unpaired` only): every distinct non-empty completion is a row, desirable when its gold
  score is >= `desirable_threshold`: binary feedback on all samples, as KTO's thumbs-up/down data; the classes
  are as balanced as the policy's samples are (weight the rarer one with kto's desirable/undesirable_weight).
Pairs whose completions are identical text are skipped. Output: a `datasets` DatasetDict with splits
train/test (an empty test split is left out) and columns prompt, chosen, rejected, chosen_score, rejected_score
(conversational prompts get chosen/rejected as one assistant message each), saved to `output_dir/data`
(give that path as `data:` to the reward and dpo stages). `format: unpaired` writes TRL's unpaired (KTO) format
instead, columns prompt, completion, label (bool), score: with max_margin / bradley_terry each pair becomes a
desirable row (chosen) and an undesirable row (rejected), as TRL's `unpair_preference_dataset` turns the same
pairs into KTO data; with threshold, one row per sample as above (give the path as `data:` to kto).
Resumable: prompts are processed in seeded chunks and the rows made so far are checkpointed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from pipelines.common import quiet_libraries
from pipelines.data import BUILTIN, BUILTIN_CHAT, encode_prompt, load_records, normalise_prompts, split_off
from pipelines.generation import GenerationArgs, SamplingPolicy, generate
from pipelines.models import ModelArgs, load_causal_lm, load_tokenizer
from reins.config import RunArgs, check
from reins.entry import stage_main
from reins.errors import DataError
from reins.runio import METRICS_FILE, RunDir, seed_everything


@dataclass
class Config(ModelArgs, RunArgs):
    output_dir: str = field(default="runs/preferences",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    prompts: str = field(default=BUILTIN,
                         metadata={"help": "builtin:sentiment(-chat), or a prompt-only file / datasets dir / Hub id"})
    prompt_split: str = field(default="train",
                              metadata={"help": "split of `prompts` to take the training prompts from"})
    num_train_prompts: int = field(default=1000,
                                   metadata={"help": "prompts to sample completions for (training pairs)"})
    num_test_prompts: int = field(default=200,
                                  metadata={"help": "builtin: held-out items; a file: split off its prompts"})
    num_samples: int = field(default=4, metadata={"help": "completions sampled per prompt"})
    labeling: Literal["max_margin", "bradley_terry", "threshold"] = field(
        default="max_margin",
        metadata={"help": "max_margin (best vs worst by the judge), bradley_terry (sampled label), or threshold "
                          "(format=unpaired: every sample, desirable when its score >= desirable_threshold)"})
    format: Literal["paired", "unpaired"] = field(
        default="paired", metadata={"help": "paired (prompt/chosen/rejected: reward, dpo) or unpaired "
                                            "(prompt/completion/label: kto)"})
    desirable_threshold: float = field(default=0.0,
                                       metadata={"help": "labeling=threshold: the gold score from which a sample "
                                                         "is desirable"})
    min_margin: float = field(default=0.1, metadata={"help": "drop pairs whose judge scores differ by less"})
    bt_temperature: float = field(default=0.1, metadata={"help": "temperature of the Bradley-Terry label sampling"})
    judge: str = field(default="sentiment", metadata={"help": "the gold judge that scores completions (sentiment)"})
    chunk_size: int = field(default=128, metadata={"help": "prompts per checkpoint"})
    generation: GenerationArgs = field(default_factory=GenerationArgs, metadata={"help": "sampling of the completions"})

    def validate(self):
        self.validate_model()
        check(self.num_samples >= 2, f"num_samples must be >= 2, got {self.num_samples}")
        check(self.num_train_prompts >= 1 and self.num_test_prompts >= 0, "prompt counts must be >= 1 / >= 0")
        check(self.min_margin >= 0, "min_margin must be >= 0")
        check(self.bt_temperature > 0, "bt_temperature must be > 0")
        check(self.chunk_size >= 1, "chunk_size must be >= 1")
        check(self.labeling != "threshold" or self.format == "unpaired",
              "labeling=threshold labels single samples: it needs format=unpaired")
        check(math.isfinite(self.desirable_threshold),
              f"desirable_threshold must be finite, got {self.desirable_threshold}")


def label_pair(texts: list[str], scores: list[float], cfg: Config, rng: random.Random) -> tuple[int, int] | None:
    """Indices (chosen, rejected) for one prompt's samples, or None to skip it.

    Empty completions (the policy emitted EOS at once) are never paired: the data stages reject them.
    """
    ok = [i for i, t in enumerate(texts) if t.strip()]
    if len(ok) < 2:
        return None
    if cfg.labeling == "max_margin":
        order = sorted(ok, key=lambda i: scores[i])
        lo, hi = order[0], order[-1]
        if scores[hi] - scores[lo] < cfg.min_margin or texts[hi] == texts[lo]:
            return None
        return hi, lo
    i, j = rng.sample(ok, 2)
    if texts[i] == texts[j]:
        return None
    z = (scores[i] - scores[j]) / cfg.bt_temperature
    p_i = 1.0 / (1.0 + math.exp(-z)) if z > -50 else 0.0
    return (i, j) if rng.random() < p_i else (j, i)


def threshold_rows(split: str, prompt, texts: list[str], scores: list[float], threshold: float) -> list[dict]:
    """One unpaired row per distinct non-empty completion of a prompt, desirable when its score >= threshold."""
    rows, seen = [], set()
    for t, s in zip(texts, scores):
        if t.strip() and t not in seen:
            seen.add(t)
            rows.append({"split": split, "prompt": prompt, "completion": _as_reply(prompt, t), "label": s >= threshold,
                         "score": s})
    return rows


def _as_reply(prompt, text: str):
    """A sampled completion in the prompt's format: a conversational prompt (a message list) gets the completion
    as one assistant message, the conversational preference format (TRL's), so the data stages render it with
    the chat template as it was sampled; a plain-text prompt keeps the plain text."""
    return [{"role": "assistant", "content": text}] if isinstance(prompt, list) else text


def _prompts(cfg: Config) -> tuple[list, list]:
    if cfg.prompts in (BUILTIN, BUILTIN_CHAT):
        from pipelines.task import as_chat, sentiment_prompts

        wrap = as_chat if cfg.prompts == BUILTIN_CHAT else (lambda p: p)
        # Task seed 0 (not the stage seed): the held-out items are the same ones every stage evaluates on.
        return ([wrap(p) for p in sentiment_prompts(cfg.num_train_prompts, seed=0, split="train")],
                [wrap(p) for p in sentiment_prompts(cfg.num_test_prompts, seed=0, split="eval")])
    rows, where = load_records(cfg.prompts, cfg.prompt_split)
    prompts = normalise_prompts(rows, where)
    n = cfg.num_train_prompts + cfg.num_test_prompts
    if len(prompts) < 2:
        raise DataError(f"{where}: need at least 2 prompts, got {len(prompts)}")
    frac = cfg.num_test_prompts / n
    train, test = split_off(prompts[:n], frac, cfg.seed)
    return train, test


def train(cfg: Config) -> dict:
    from pipelines.sharded import check_launch, launched_sharded

    check_launch(launched_sharded(), "preferences", generates=True)
    seed_everything(cfg.seed)
    quiet_libraries(cfg.quiet)
    # Validate every input before the run dir exists: a typo must not leave a config.yaml behind that then
    # refuses the corrected command as "a different run".
    train_p, test_p = _prompts(cfg)
    from pipelines.evaluation import _judge

    judge = _judge(cfg.judge)
    tok = load_tokenizer(cfg)
    if (Path(cfg.output_dir) / METRICS_FILE).is_file():
        done = RunDir(cfg.output_dir, cfg, quiet=cfg.quiet).completed_metrics()
        if done is not None:
            return done
    policy = load_causal_lm(cfg, tok, seed=cfg.seed, trainable=False)
    run = RunDir(cfg.output_dir, cfg, quiet=cfg.quiet)
    if torch.cuda.is_available():
        policy.to("cuda")
    sampler = SamplingPolicy(policy, cfg.generation.sample_dtype)
    policy = sampler.model()   # never trained here: a bf16 copy replaces the float32 model (freed)
    jobs = [("train", p) for p in train_p] + [("test", p) for p in test_p]
    state = run.load_checkpoint() or {"next": 0, "rows": [], "skipped": 0, "scores": []}
    if state["next"] == 0:
        run.log(0, sampler.log_row())
    del sampler
    chunks = range(0, len(jobs), cfg.chunk_size)
    bar = run.progress(len(chunks), state["next"], desc="preferences")
    for c, start in enumerate(chunks):
        if c < state["next"]:
            continue
        part = jobs[start:start + cfg.chunk_size]
        pids = [encode_prompt(tok, p) for _, p in part]
        rep = [ids for ids in pids for _ in range(cfg.num_samples)]
        s = generate(policy, tok, rep, cfg.generation, seed=cfg.seed * 100_003 + c)
        scores = judge(s.texts)
        _label_chunk(part, s.texts, scores, cfg, random.Random(f"{cfg.seed}-{c}"), state)
        state["next"] = c + 1
        run.save_checkpoint(state)
        run.log(c + 1, {"pairs": len(state["rows"]), "skipped": state["skipped"]})
        bar.update(1)
    bar.close()
    if cfg.format == "unpaired":
        return run.finish(_write_unpaired(state, cfg, run.path / "data"))
    return run.finish(_write_paired(state, run.path / "data"))


def _label_chunk(part: list, texts: list[str], scores: list[float], cfg: Config, rng: random.Random,
                 state: dict) -> None:
    """Adds one chunk's rows to the checkpointed state: per prompt, its samples' pair (or threshold rows)."""
    n = cfg.num_samples
    for k, (split, prompt) in enumerate(part):
        texts_k, sc = texts[k * n:(k + 1) * n], scores[k * n:(k + 1) * n]
        state["scores"].extend(sc)
        if cfg.labeling == "threshold":
            rows = threshold_rows(split, prompt, texts_k, sc, cfg.desirable_threshold)
            state["rows"] += rows
            state["skipped"] += not rows
            continue
        pair = label_pair(texts_k, sc, cfg, rng)
        if pair is None:
            state["skipped"] += 1
            continue
        i, j = pair
        state["rows"].append({"split": split, "prompt": prompt, "chosen": _as_reply(prompt, texts_k[i]),
                              "rejected": _as_reply(prompt, texts_k[j]), "chosen_score": sc[i],
                              "rejected_score": sc[j]})


def _write_paired(state: dict, path: Path) -> dict:
    """The preference pairs as a DatasetDict at `path`; the final metrics."""
    counts = _write_splits(state["rows"], ["prompt", "chosen", "rejected", "chosen_score", "rejected_score"], path,
                           "no preference pairs were kept (all prompts skipped); lower min_margin or sample more")
    margins = [r["chosen_score"] - r["rejected_score"] for r in state["rows"]]
    return {"pairs/train": counts["train"], "pairs/test": counts["test"],
            "pairs/skipped": state["skipped"], "samples/gold_mean": sum(state["scores"]) / len(state["scores"]),
            "pairs/margin_mean": sum(margins) / max(1, len(margins)),
            "pairs/chosen_score_mean": sum(r["chosen_score"] for r in state["rows"]) / max(1, len(margins))}


def _write_splits(rows: list[dict], cols: list[str], path: Path, empty: str) -> dict[str, int]:
    """The rows as a DatasetDict (train/test) at `path`; returns the row count of each split."""
    import datasets

    splits = {split: datasets.Dataset.from_list([{k: r[k] for k in cols} for r in rows if r["split"] == split])
              for split in ("train", "test")}
    if len(splits["train"]) == 0:
        raise DataError(empty)
    # An empty split is left out: `datasets` saves it without a data file and then cannot load the directory.
    datasets.DatasetDict({k: v for k, v in splits.items() if len(v)}).save_to_disk(str(path))
    return {k: len(v) for k, v in splits.items()}


def _write_unpaired(state: dict, cfg: Config, path: Path) -> dict:
    """TRL's unpaired (KTO) format from the checkpointed rows; the final metrics."""
    from pipelines.unpaired import unpair

    rows = state["rows"]
    if cfg.labeling != "threshold":  # the pairs, unpaired as TRL does (chosen desirable, rejected undesirable)
        rows = []
        for split in ("train", "test"):
            pairs = [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "split": split,
                      "scores": (r["chosen_score"], r["rejected_score"])} for r in state["rows"] if r["split"] == split]
            for row in unpair(pairs):
                row["score"] = row["scores"][0 if row["label"] else 1]
                rows.append(row)
    counts = _write_splits(rows, ["prompt", "completion", "label", "score"], path,
                           "no unpaired rows were kept (all prompts skipped); lower min_margin or sample more")
    desirable = sum(r["label"] for r in rows)
    return {"rows/train": counts["train"], "rows/test": counts["test"], "rows/desirable": desirable,
            "rows/undesirable": len(rows) - desirable, "prompts/skipped": state["skipped"],
            "samples/gold_mean": sum(state["scores"]) / len(state["scores"])}


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins preferences", stage="preferences")


if __name__ == "__main__":
    raise SystemExit(main())
