"""Plain helpers shared by the pipelines tests: a very small tiny-Llama and its tokenizer, fast stage configs,
the hand oracles of the loss tests, the toy GRPO/PPO runs, the update oracles' rollout batch and gradient recorder."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from pipelines.data import encode_completion, encode_prompt
from pipelines.models import ModelArgs, TinySpec, load_causal_lm, load_reward_model, load_tokenizer, save_model
from reins.config import from_dict
from reins.runio import RunDir

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


def stage_config(mod, tmp_path: Path, **kw):
    """Stage module `mod`'s Config from stage_overrides(tmp_path, **kw), keeping only the keys that stage has."""
    names = {f.name for f in dataclasses.fields(mod.Config)}
    return from_dict(mod.Config, {k: v for k, v in stage_overrides(tmp_path, **kw).items() if k in names})


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Hand oracles of the loss tests: two preference pairs, one unpadded float64 forward per sequence.
PAIRS = [("I stayed at the Harbour Inn last week and", " the room was spotless. I loved it.",
          " the room was dirty."),
         ("We ate at Luigi's and", " the pasta was delicious.", " the pasta was bland and the waiter was rude.")]


def pair_examples(tok) -> list[dict]:
    """PAIRS tokenised as the preference stages hold them (prompt_ids, chosen_ids, rejected_ids)."""
    out = []
    for p, c, r in PAIRS:
        out.append({"prompt_ids": encode_prompt(tok, p), "chosen_ids": encode_completion(tok, p, c),
                    "rejected_ids": encode_completion(tok, p, r)})
    return out


def hand_logp(model, prompt_ids, completion_ids) -> float:
    """sum_t log softmax(logits)[y_t] over completion tokens, from one unpadded forward."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    probs = torch.exp(logits) / torch.exp(logits).sum(-1, keepdim=True)
    total = 0.0
    for t in range(len(prompt_ids), len(prompt_ids) + len(completion_ids)):
        total += math.log(probs[t - 1, ids[0, t]].item())
    return total


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def ragged_pairs(seed=7):
    """Random token ids (P, C, R) of four prompt/chosen/rejected triples."""
    g = torch.Generator().manual_seed(seed)

    def rnd(n):
        return torch.randint(3, 390, (n,), generator=g).tolist()
    # ragged; pair 2 has an empty chosen, pair 3 an empty rejected completion
    P = [rnd(n) for n in (3, 7, 2, 5)]
    C = [rnd(n) for n in (4, 1, 0, 6)]
    R = [rnd(n) for n in (6, 8, 3, 0)]
    return P, C, R


# The toy GRPO and PPO runs: small untrained models saved once per process, three-iteration configs.
@lru_cache(maxsize=1)
def grpo_toy_policy() -> str:
    root = Path(tempfile.mkdtemp(prefix="reins-grpo-toy-"))
    args = ModelArgs(tiny=TinySpec(**SMALL))
    tok = load_tokenizer(args)
    save_model(load_causal_lm(args, tok, seed=0), tok, root / "policy")
    return str(root / "policy")


def grpo_toy_cfg(out: Path, **kw) -> dict:
    return {"output_dir": str(out), "quiet": True, "seed": 0, "model": grpo_toy_policy(), "max_operand": 9,
            "batch_size": 4, "num_generations": 4, "max_steps": 3, "learning_rate": 1e-3, "save_every": 1,
            "beta": 0.04, "num_iterations": 2, "epsilon_high": 0.28,
            "reward_funcs": ["builtin:arithmetic", "tests.pipelines.grpo_rewards:flaky"], "reward_weights": [1.0, 0.5],
            "generation": {"max_new_tokens": 4, "batch_size": 16},
            "eval": {"num_prompts": 4, "max_new_tokens": 4, "temperature": 0.0}, **kw}


def log_rows(out: Path) -> list[dict]:
    """A run's log.jsonl rows."""
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def grpo_train_rows(out: Path) -> list[dict]:
    return [r for r in log_rows(out) if "frac_reward_zero_std" in r]


@lru_cache(maxsize=1)
def ppo_toy_models() -> dict[str, str]:
    """Untrained small policy, reward model (same tokenizer) and reward model with another vocabulary."""
    root = Path(tempfile.mkdtemp(prefix="reins-ppo-toy-"))
    args = ModelArgs(tiny=TinySpec(**SMALL))
    tok = load_tokenizer(args)
    save_model(load_causal_lm(args, tok, seed=0), tok, root / "policy")
    save_model(load_reward_model(args, tok, seed=1), tok, root / "reward" / "model")   # a reward stage's layout
    fargs = ModelArgs(tiny=TinySpec(**{**SMALL, "vocab_size": 520}))
    ftok = load_tokenizer(fargs)
    save_model(load_reward_model(fargs, ftok, seed=2), ftok, root / "rm_foreign")
    return {"policy": str(root / "policy"), "rm": str(root / "reward"), "rm_foreign": str(root / "rm_foreign")}


def ppo_toy_cfg(out: Path, **kw) -> dict:
    m = ppo_toy_models()
    return {"output_dir": str(out), "quiet": True, "seed": 0, "model": m["policy"], "reward_model": m["rm"],
            "builtin_size": 64, "batch_size": 8, "max_steps": 3, "learning_rate": 1e-3, "save_every": 1,
            "ppo_epochs": 2, "num_minibatches": 2, "missing_eos_penalty": 0.5,
            "generation": {"max_new_tokens": 6, "batch_size": 8}, "eval": {"num_prompts": 4, "max_new_tokens": 6},
            **kw}


def ppo_train_rows(out: Path) -> list[dict]:
    return [r for r in log_rows(out) if "objective/kl" in r]


# ----------------------------------------------------------------------------------------- PPO/GRPO update oracles
# One rollout batch's prompts and responses for the update-step oracles (tests/pipelines/test_stage_oracles.py,
# test_grpo_options.py).
PROMPT_IDS = [[7, 8, 9], [11, 12], [13], [14, 15]]
RESPONSES = [[20, 21, 1], [30, 31], [40, 41, 42, 43], [50]]   # unequal lengths: 3, 2, 4, 1 tokens


class GradRecorder:
    """Stands in for the optimizer: keeps the gradient of each step, changes nothing."""

    def __init__(self, params):
        self.params, self.grads = list(params), []

    def step(self):
        self.grads.append([p.grad.detach().clone() for p in self.params])

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None


class StopRun(Exception):
    """What `crash_at_step` raises in place of a run's log line."""


@contextlib.contextmanager
def crash_at_step(step: int):
    """The block's run stops (StopRun, which the block must raise) when it is about to log `step`, after the
    checkpoints saved before it: a killed run, for the resume tests. RunDir.log is restored on leaving."""
    orig = RunDir.log

    def crash(self, s, metrics, **kw):
        if s == step:
            raise StopRun()
        orig(self, s, metrics, **kw)

    RunDir.log = crash
    try:
        with pytest.raises(StopRun):
            yield
    finally:
        RunDir.log = orig
