"""Reward functions of the grpo and ppo stages: verifiable rewards, the gold judge, reward models and user callables.

`reward_funcs` entries:
- `builtin:arithmetic` (exact match of the parsed answer) and `builtin:arithmetic_format` (a bare integer),
  pipelines.arithmetic;
- `builtin:gold`: the sentiment task's gold judge (VADER compound of the completion, pipelines.task);
- a directory: a reward model (a `reward` stage's output dir or any sequence-classification model), scored as
  PPO scores it (pipelines.rollout.score_responses: at the EOS of a stopped completion, re-tokenised when
  its tokenizer differs from the policy's);
- `module:function`: any importable Python callable with TRL's signature
  `f(prompts, completions, completion_ids, **columns) -> list[float | None]`, one value per completion
  (`prompts[i]` is the prompt of `completions[i]`, a string or chat messages; every other column of the prompt
  dataset arrives as a keyword list aligned with the completions, as TRL passes it). Arguments go by keyword:
  a function with `**kwargs` gets all of them, one without gets those it names, so an old
  `(prompts, completions)` function keeps working; a required parameter that is none of these is a one-line
  error before the run starts. Completions of conversational prompts arrive as TRL gives them,
  `[{"role": "assistant", "content": text}]`, except to a function taking only `(prompts, completions)`
  (reins' original signature), which gets the text.
The reward of a completion is the `reward_weights`-weighted sum of its rewards; a `None` reward means "not
applicable to this sample" and is left out of the sum (TRL's nan-sum rule), and a completion for which every
function returned None is a one-line error. Every function's output is checked on every call: a function that
raises, returns something that is not one number (or None) per completion, or returns NaN/inf is a one-line
error naming it (ReinsError; NonFiniteError for NaN/inf).
A `module:function` reward imports and runs the user's code (like `trust_remote_code` for models): a recipe
naming one runs whatever that module does. The module is looked up with the current directory first on
`sys.path`, the same under `reins grpo` and `python -m pipelines.grpo` (as `python -m` does, and TRL users'
scripts expect).
"""

from __future__ import annotations

import importlib
import inspect
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reins.errors import ConfigError, DataError, NonFiniteError, ReinsError, first_line

_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
FORMS = ("builtin:arithmetic", "builtin:arithmetic_format", "builtin:gold", "a reward model directory",
         "module:function")


# Dataset columns TRL does not pass on as keywords (the completion is the sampled one; TRL drops these too).
NOT_PASSED = ("prompt", "completion", "completion_ids")


@dataclass
class RewardFunction:
    """One entry of `reward_funcs`: `call(prompts, texts, samples, columns)` -> one value (or None) per
    completion; `columns` maps each extra dataset column to its values, aligned with `texts`."""

    name: str
    spec: str
    call: Callable[[list, list[str], Any, dict], Any]
    model: Any = None      # a reward model (moved to the device by the stage)
    needs: tuple[str, ...] = ()   # required keyword parameters that must be dataset columns


def _builtin(spec: str) -> RewardFunction:
    if spec in ("builtin:arithmetic", "builtin:arithmetic_format"):
        from pipelines import arithmetic

        fn = arithmetic.correct_reward if spec == "builtin:arithmetic" else arithmetic.format_reward
        return RewardFunction(spec.split(":", 1)[1], spec, lambda p, t, s, c: fn(p, t))
    if spec == "builtin:gold":
        from pipelines.task import gold_reward

        return RewardFunction("gold", spec, lambda p, t, s, c: gold_reward(t))
    raise ConfigError(f"reward_funcs: unknown built-in reward {spec!r} (known: builtin:arithmetic, "
                      "builtin:arithmetic_format, builtin:gold)")


def _user_callable(spec: str) -> RewardFunction:
    module, attr = spec.split(":", 1)
    try:
        _cwd_first_on_path()
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure is a bad spec
        raise ConfigError(f"reward_funcs: cannot import module {module!r} of {spec!r}: "
                          f"{type(e).__name__}: {first_line(e)}") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise ConfigError(f"reward_funcs: {spec!r}: module {module!r} has no callable {attr!r}")
    call, needs = keyword_call(fn, spec)
    return RewardFunction(attr, spec, call, needs=needs)


_GIVEN = ("prompts", "completions", "completion_ids")


def keyword_call(fn, spec: str) -> tuple[Callable, tuple[str, ...]]:
    """(call(prompts, texts, samples, columns), the dataset columns `fn` requires) for a user reward function,
    called TRL's way: `fn(prompts=, completions=, completion_ids=, **columns)`, each keyword only if `fn` takes it
    (all of them with `**kwargs`). Raises ConfigError for a positional-only parameter without a default."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):   # no signature (some C callables): pass everything
        params = [inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    named = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    for p in params:
        if p.kind is p.POSITIONAL_ONLY and p.default is p.empty:
            raise ConfigError(f"reward_funcs: {spec!r}: parameter {p.name!r} is positional-only; reward "
                              f"functions are called with keywords ({', '.join(_GIVEN)}, dataset columns)")
    needs = tuple(p.name for p in params if p.name in named and p.default is p.empty and p.name not in _GIVEN)
    text_only = not var_kw and named <= {"prompts", "completions"}   # reins' original (prompts, completions)

    def call(prompts, texts, samples, columns):
        completions = texts
        if not text_only and any(isinstance(p, list) for p in prompts):
            completions = [[{"role": "assistant", "content": t}] for t in texts]
        ids = samples.completion_ids if samples is not None else [[] for _ in texts]
        kw = {**columns, "prompts": prompts, "completions": completions, "completion_ids": ids}
        return fn(**(kw if var_kw else {k: v for k, v in kw.items() if k in named}))

    return call, needs


def _cwd_first_on_path() -> None:
    """Put the current directory first on sys.path, where `python -m` puts it; the `reins` console script puts
    its own bin/ there instead, so the same `module:function` would be found by one and not the other."""
    cwd = os.getcwd()
    if sys.path[:1] not in ([cwd], [""]):
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()


def _reward_model(spec: str, cfg, tok) -> RewardFunction:
    from types import SimpleNamespace

    from pipelines.rlhf_models import load_reward
    from pipelines.rollout import score_responses

    model, rm_tok, same = load_reward(SimpleNamespace(**{**vars(cfg), "reward_model": spec}), tok)
    p = Path(spec)
    name = p.parent.name if p.name == "model" else p.name

    def call(prompts, texts, s, columns):
        return score_responses(model, rm_tok, prompts, s.prompt_ids, s.completion_ids, texts, s.finished,
                               same_tokenizer=same, pad_id=tok.pad_token_id).tolist()

    return RewardFunction(name or "reward_model", spec, call, model=model)


def resolve_reward_funcs(specs: list[str], cfg, tok) -> list[RewardFunction]:
    """The reward functions named by `specs` (imported / loaded; nothing called yet), with unique names."""
    out = []
    for spec in specs:
        if spec.startswith("builtin:"):
            f = _builtin(spec)
        elif Path(spec).expanduser().is_dir():
            f = _reward_model(str(Path(spec).expanduser()), cfg, tok)
        elif _CALLABLE.fullmatch(spec):
            f = _user_callable(spec)
        else:
            raise ConfigError(f"reward_funcs: {spec!r} is none of: {', '.join(FORMS)}")
        out.append(f)
    seen: dict[str, int] = {}
    for f in out:
        k = seen[f.name] = seen.get(f.name, 0) + 1
        if k > 1:
            f.name = f"{f.name}_{k}"
    return out


def check_columns(funcs: list[RewardFunction], columns: list[str], where: str) -> None:
    """Every column a reward function requires is in the prompt data `where` (else a one-line ConfigError)."""
    for f in funcs:
        missing = [c for c in f.needs if c not in columns]
        if missing:
            have = ", ".join(columns) or "none besides the prompt"
            raise ConfigError(f"reward function {f.name!r} ({f.spec}) needs column {missing[0]!r}, which {where} "
                              f"does not have (its columns: {have})")


def column_lists(columns: list[dict]) -> dict[str, list]:
    """Per-prompt column dicts as TRL's keyword lists: {column: [value of each prompt]} (None where missing)."""
    keys = list(dict.fromkeys(k for c in columns for k in c))
    return {k: [c.get(k) for c in columns] for k in keys}


def _value(v) -> float | None:
    if v is None:
        return None
    if isinstance(v, float | int) or hasattr(v, "__float__"):
        return float(v)
    raise TypeError


def call_reward(f: RewardFunction, prompts: list, texts: list[str], samples=None,
                columns: dict | None = None) -> list[float | None]:
    """`f`'s rewards for the completions, checked: one finite number or None per completion, else a one-line
    error."""
    where = f"reward function {f.name!r} ({f.spec})"
    try:
        out = f.call(prompts, texts, samples, columns or {})
    except ReinsError:
        raise
    except Exception as e:  # noqa: BLE001 - user code: report it as one line naming the function
        raise DataError(f"{where} raised {type(e).__name__}: {first_line(e)}") from None
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().reshape(-1).tolist()
    try:
        values = [_value(v) for v in out]
    except (TypeError, ValueError):
        raise DataError(f"{where} must return one number (or None) per completion, got "
                        f"{type(out).__name__}") from None
    if len(values) != len(texts):
        raise DataError(f"{where} returned {len(values)} values for {len(texts)} completions")
    bad = [i for i, v in enumerate(values) if v is not None and not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"{where} returned {values[bad[0]]} for completion {bad[0]} ({texts[bad[0]]!r}); "
                             "stopping (the last good checkpoint is kept)")
    return values


def reward_matrix(funcs: list[RewardFunction], prompts: list, texts: list[str], samples=None,
                  columns: dict | None = None) -> torch.Tensor:
    """[N, F] float64: every function's checked rewards for the N completions, NaN where one returned None."""
    nan = float("nan")
    cols = [[nan if v is None else v for v in call_reward(f, prompts, texts, samples, columns)] for f in funcs]
    return torch.tensor(cols, dtype=torch.float64).T.reshape(len(texts), len(funcs))


def weighted_rewards(per_fn: torch.Tensor, weights: list[float], funcs: list[RewardFunction],
                     texts: list[str]) -> torch.Tensor:
    """[N] the weighted sum of each completion's applicable rewards (NaN = None = left out, TRL's nan-sum).
    A completion that no function applies to is a one-line DataError."""
    applicable = ~torch.isnan(per_fn)
    none = (~applicable.any(-1)).nonzero()
    if len(none):
        i = int(none[0])
        raise DataError(f"completion {i} ({texts[i][:60]!r}) has no applicable reward: every reward function "
                        f"({', '.join(f.name for f in funcs)}) returned None for it")
    w = torch.tensor(weights, dtype=torch.float64)
    return torch.where(applicable, per_fn, torch.zeros((), dtype=torch.float64)) @ w


def reward_stats(col: torch.Tensor) -> tuple[float, float] | None:
    """(mean, std) of one function's applicable rewards (TRL's nanmean / nanstd); None if none applied."""
    v = col[~torch.isnan(col)]
    if not len(v):
        return None
    return v.mean().item(), (v.std().item() if len(v) > 1 else 0.0)


def agree(error: ReinsError | None, reduce) -> None:
    """Raise on every process when any process hit an error (a rank raising alone would leave the others
    waiting in the next collective); `reduce(t)` sums a float64 tensor over processes."""
    n = reduce(torch.tensor([1.0 if error is not None else 0.0], dtype=torch.float64))
    if error is not None:
        raise error
    if n.item() > 0:
        raise ReinsError("a reward function failed on another process (its message is in that process's output)")


def probe(funcs: list[RewardFunction], prompts: list, columns: dict | None = None) -> None:
    """Call every non-model reward function once on (prompts, empty completions), so a function that raises,
    returns the wrong number of values or NaN fails before the run writes anything."""
    for f in funcs:
        if f.model is None:
            call_reward(f, list(prompts), [""] * len(prompts), None, columns)
