"""Shared fixtures-as-functions for the pipelines tests: a very small tiny-Llama and its tokenizer."""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.models import ModelArgs, TinySpec, load_causal_lm, load_tokenizer

# Smaller than the default `tiny` so each test takes seconds on two shared cores.
SMALL = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "vocab_size": 400,
         "max_position_embeddings": 128}


def small_args(**kw) -> ModelArgs:
    return ModelArgs(tiny=TinySpec(**SMALL), **kw)


def small_tok():
    return load_tokenizer(small_args())


def small_model(tok, seed: int = 0, **kw):
    return load_causal_lm(small_args(**kw), tok, seed=seed)


def stage_overrides(tmp_path: Path, **kw) -> dict:
    """Config keys for a fast stage run on the small tiny model and a slice of the built-in task."""
    base = {"output_dir": str(tmp_path / "run"), "quiet": True, "tiny": dict(SMALL), "max_length": 48,
            "builtin_size": 64, "max_eval_samples": 8, "batch_size": 8, "log_every": 1, "save_every": 2,
            "eval_prompts": None}
    base.update(kw)
    return base


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
