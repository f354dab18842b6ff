"""A worked example of GRPO on your own task: word problems whose reward reads the dataset's `answer` column.

The data (made here, seeded, no download): `python -m pipelines.word_problems --out DIR [--chat]` writes
`DIR/train.jsonl` and `DIR/test.jsonl`, rows `{"prompt", "answer", "completion"}`: a one-step word problem with
its numbers in the text ("Mia has 7 shells. Mia finds 5 more. How many shells does Mia have now?"), the answer
as a string, and a reference completion ending in `#### <answer>` (what `reins sft` can teach first). Problems
are (template, a, b) triples with operands in 0..max_operand; a fixed shuffle of all triples puts
`test_fraction` of them in `test`, so no held-out problem (template and numbers) is ever trained on, whatever
the names and objects drawn. `--chat` writes the prompts as one user message that asks for the `####` format
(for instruction-tuned models) and the completion as an assistant message.

The rewards (`reward_funcs: [pipelines.word_problems:correct_answer, pipelines.word_problems:answer_format]`)
use TRL's signature: `correct_answer(completions, answer, **kwargs)` gets the `answer` column aligned with the
completions; it returns None (not applicable) for a row without an answer, 1.0 when the completion's final
answer (the number after the last `####`, else in the last `\\boxed{}`) equals it, else 0.0. With
`eval_prompts: DIR` the grpo stage scores held-out completions with it: `init/rewards/correct_answer` and
`eval/rewards/correct_answer` are the held-out accuracy before and after training (greedy with
`eval.temperature: 0`). `answer_format` gives 1.0 when the completion ends with such a final answer, 0.5 when
it holds one elsewhere, else 0.0.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

NAMES = ["Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Ana", "Ben", "Eva", "Jon"]
THINGS = ["apples", "shells", "coins", "books", "stamps", "marbles", "pens", "cards", "eggs", "kites"]
TEMPLATES = {   # name -> (problem text, answer)
    "gain": ("{n} has {a} {x}. {n} finds {b} more. How many {x} does {n} have now?", lambda a, b: a + b),
    "loss": ("{n} had {a} {x} and gave {b} away. How many {x} does {n} have left?", lambda a, b: a - b),
    "pool": ("A box holds {a} {x} and a bag holds {b} {x}. How many {x} are there in all?", lambda a, b: a + b),
}
INSTRUCTION = "Solve the problem. Write the final answer as a number after '####' on the last line."
_NUMBER = r"(-?\d[\d,]*(?:\.\d+)?)"
_HASH = re.compile(r"####\s*" + _NUMBER)
_BOXED = re.compile(r"\\boxed\{\s*" + _NUMBER + r"\s*\}")


def _triples(max_operand: int) -> list[tuple[str, int, int]]:
    out = []
    for t in TEMPLATES:
        for a in range(max_operand + 1):
            for b in range(max_operand + 1):
                if t != "loss" or b <= a:   # no negative answers
                    out.append((t, a, b))
    return out


def make_rows(n: int, split: str, *, seed: int = 0, max_operand: int = 9, test_fraction: float = 0.2,
              chat: bool = False) -> list[dict]:
    """`n` rows of `split` ("train" or "test"), drawn with `seed` from that split's problems (cycling)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    triples = _triples(max_operand)
    random.Random(f"word-problems-{max_operand}").shuffle(triples)   # the split depends on max_operand only
    n_test = max(1, round(test_fraction * len(triples)))
    pool = triples[:n_test] if split == "test" else triples[n_test:]
    rng = random.Random(f"word-problems-draw-{seed}-{split}")
    rows = []
    while len(rows) < n:
        for t, a, b in rng.sample(pool, len(pool)):
            name = rng.choice(NAMES)
            text, fn = TEMPLATES[t]
            problem = text.format(n=name, a=a, b=b, x=rng.choice(THINGS))
            rows.append(_row(problem, str(fn(a, b)), chat))
    return rows[:n]


def _row(problem: str, answer: str, chat: bool) -> dict:
    if chat:
        return {"prompt": [{"role": "user", "content": f"{problem}\n{INSTRUCTION}"}], "answer": answer,
                "completion": [{"role": "assistant", "content": f"#### {answer}"}]}
    return {"prompt": f"Question: {problem}\nAnswer:", "answer": answer, "completion": f" #### {answer}"}


def write(out: str | Path, *, n_train: int = 2000, n_test: int = 200, seed: int = 0, max_operand: int = 9,
          test_fraction: float = 0.2, chat: bool = False) -> Path:
    """Write `out/train.jsonl` and `out/test.jsonl`; returns `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        rows = make_rows(n, split, seed=seed, max_operand=max_operand, test_fraction=test_fraction, chat=chat)
        tmp = out / f".{split}.jsonl.tmp"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(out / f"{split}.jsonl")
    return out


# ----------------------------------------------------------------------------------------- rewards
def _text(completion) -> str:
    """A completion as text: a string, or TRL's conversational form (a list of messages)."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return completion


def _number(s: str) -> float | None:
    try:
        return float(s.replace(",", ""))
    except ValueError:
        return None


def final_answer(text: str) -> tuple[str, bool] | None:
    """(the final answer, whether the text ends with it): the number after the last `####`, else in the last
    `\\boxed{}`; None when the text has neither."""
    for pattern in (_HASH, _BOXED):
        found = list(pattern.finditer(text))
        if found:
            m = found[-1]
            return m.group(1), not text[m.end():].strip()
    return None


def correct_answer(completions, answer, **kwargs) -> list[float | None]:
    """1.0 where the completion's final answer equals the row's `answer` (as numbers), 0.0 where it differs or
    is missing, None for a row without an answer."""
    out = []
    for c, want in zip(completions, answer):
        if want is None or str(want).strip() == "":
            out.append(None)
            continue
        got = final_answer(_text(c))
        target = _number(str(want).strip())
        out.append(1.0 if got is not None and target is not None and _number(got[0]) == target else 0.0)
    return out


def answer_format(completions, **kwargs) -> list[float]:
    """1.0 where the completion ends with a `#### N` / `\\boxed{N}` final answer, 0.5 where it holds one
    elsewhere, else 0.0."""
    out = []
    for c in completions:
        got = final_answer(_text(c))
        out.append(0.0 if got is None else (1.0 if got[1] else 0.5))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipelines.word_problems",
                                 description="Write a seeded word-problem dataset (train.jsonl, test.jsonl).")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--n-train", type=int, default=2000, help="training rows (problems repeat with other names)")
    ap.add_argument("--n-test", type=int, default=200, help="held-out rows")
    ap.add_argument("--seed", type=int, default=0, help="seed of the draws (not of the train/test split)")
    ap.add_argument("--max-operand", type=int, default=9, help="operands are 0..max_operand")
    ap.add_argument("--test-fraction", type=float, default=0.2, help="share of problems held out")
    ap.add_argument("--chat", action="store_true", help="conversational prompts and completions")
    a = ap.parse_args(argv)
    if a.n_train < 1 or a.n_test < 1 or a.max_operand < 1 or not 0 < a.test_fraction < 1:
        ap.error("--n-train, --n-test and --max-operand must be >= 1 and --test-fraction in (0, 1)")
    out = write(a.out, n_train=a.n_train, n_test=a.n_test, seed=a.seed, max_operand=a.max_operand,
                test_fraction=a.test_fraction, chat=a.chat)
    print(f"wrote {out / 'train.jsonl'} ({a.n_train} rows) and {out / 'test.jsonl'} ({a.n_test} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
