"""User reward functions (`module:function`) for the grpo stage tests: good, bad and switchable ones."""

from __future__ import annotations

import math

# `flaky` returns NaN from this call on (None: never); the tests set and reset it.
NAN_FROM_CALL: int | None = None
CALLS = {"flaky": 0}


def length_penalty(prompts, completions):
    """-0.01 per character: a deterministic second reward to sum with the verifiable one."""
    return [-0.01 * len(c) for c in completions]


def flaky(prompts, completions):
    """length_penalty, or NaN everywhere once NAN_FROM_CALL calls have been made."""
    CALLS["flaky"] += 1
    if NAN_FROM_CALL is not None and CALLS["flaky"] >= NAN_FROM_CALL:
        return [math.nan] * len(completions)
    return length_penalty(prompts, completions)


def constant(prompts, completions):
    return [0.5] * len(completions)


def raises(prompts, completions):
    raise KeyError("answer")


def wrong_length(prompts, completions):
    return [1.0] * (len(completions) + 1)


def returns_nan(prompts, completions):
    return [math.nan for _ in completions]


def not_numbers(prompts, completions):
    return ["good" for _ in completions]


# TRL-style functions reading a dataset column (the tests' prompt files have `answer` and `tag` columns).
ANSWERS: dict = {}   # prompt -> the answer its file row holds; set by the tests
SEEN: list = []      # (prompt, answer, tag, completion_ids) of every completion scored by `aligned`


def aligned(prompts, completions, completion_ids, answer, **kwargs):
    """1.0 where the `answer` keyword is the answer of the completion's own prompt (columns aligned), else 0.0."""
    SEEN.extend(zip(prompts, answer, kwargs["tag"], completion_ids))
    return [1.0 if ANSWERS.get(str(p)) == a else 0.0 for p, a in zip(prompts, answer)]


def even_only(completions, answer, **kwargs):
    """2.0 for a row whose answer is even, None (not applicable) for an odd one."""
    return [2.0 if int(a) % 2 == 0 else None for a in answer]


def needs_solution(completions, solution):
    """Requires a `solution` column the prompt files do not have."""
    return [0.0 for _ in completions]
