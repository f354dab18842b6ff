"""The built-in "arithmetic" task: seeded addition problems with verifiable rewards (no judge, no download).

A prompt is `What is {a}+{b}? Answer:` with operands in [0, max_operand]; the reference completion is
` {a+b}` then EOS. All (a, b) pairs are split into train/eval (20%) by a fixed shuffle that
depends on max_operand only, so eval problems never appear in training whatever the seeds of the stages; the
seed only orders the draws. The rewards are plain functions of (prompts, completions), as user reward
functions are (`module:function`), and read the answer off the prompt itself:
- `correct_reward`: 1.0 when the last integer in the completion equals a + b, else 0.0 (exact match on the
  parsed number; the last one, so a chatty "37 + 48 = 85" counts);
- `format_reward`: 1.0 when the completion is a bare integer (optional surrounding spaces), else 0.0.
"""

from __future__ import annotations

import random
import re

PROMPT = "What is {a}+{b}? Answer:"
_PROBLEM = re.compile(r"What is (-?\d+)\+(-?\d+)\?")
_INT = re.compile(r"-?\d+")
_BARE_INT = re.compile(r"\s*-?\d+\s*")
EVAL_FRACTION = 0.2


def _split(max_operand: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    random.Random(f"arithmetic-{max_operand}").shuffle(pairs)
    n_eval = max(1, round(EVAL_FRACTION * len(pairs)))
    return pairs[n_eval:], pairs[:n_eval]


def problems(n: int, *, seed: int = 0, split: str = "train", max_operand: int = 99) -> list[tuple[int, int]]:
    """`n` seeded (a, b) problems of `split` ("train" or "eval"), cycling through the split's pairs."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if max_operand < 1:
        raise ValueError(f"max_operand must be >= 1, got {max_operand}")
    pool = _split(max_operand)[0 if split == "train" else 1]
    rng = random.Random(f"arithmetic-draw-{seed}-{split}-{max_operand}")
    order = []
    while len(order) < n:
        block = list(pool)
        rng.shuffle(block)
        order += block
    return order[:n]


def arithmetic_prompts(n: int, *, seed: int = 0, split: str = "train", max_operand: int = 99,
                       chat: bool = False) -> list:
    """The problems' prompts: strings, or (`chat`) one user message each, for instruction-tuned models."""
    out = [PROMPT.format(a=a, b=b) for a, b in problems(n, seed=seed, split=split, max_operand=max_operand)]
    return [[{"role": "user", "content": p}] for p in out] if chat else out


def arithmetic_sft_rows(n: int, seed: int, split: str, *, max_operand: int = 99) -> list[dict]:
    """Prompt/completion rows with the correct answer (SFT data teaching the answer format)."""
    return [{"prompt": PROMPT.format(a=a, b=b), "completion": f" {a + b}"}
            for a, b in problems(n, seed=seed, split=split, max_operand=max_operand)]


def answer(prompt) -> int | None:
    """a + b of an arithmetic prompt (a string, or chat messages whose last turn holds it); None if none."""
    text = prompt[-1]["content"] if isinstance(prompt, list) and prompt else prompt
    m = _PROBLEM.search(text) if isinstance(text, str) else None
    return int(m.group(1)) + int(m.group(2)) if m else None


def parse_answer(completion: str) -> int | None:
    """The last integer in a completion, or None."""
    found = _INT.findall(completion)
    return int(found[-1]) if found else None


def correct_reward(prompts: list, completions: list[str]) -> list[float]:
    """1.0 where the completion's last integer is the prompt's a + b, else 0.0."""
    out = []
    for p, c in zip(prompts, completions):
        want, got = answer(p), parse_answer(c)
        out.append(1.0 if want is not None and got == want else 0.0)
    return out


def format_reward(prompts: list, completions: list[str]) -> list[float]:
    """1.0 where the completion is a bare integer, else 0.0."""
    return [1.0 if _BARE_INT.fullmatch(c) else 0.0 for c in completions]
