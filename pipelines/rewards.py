"""Reward functions of the grpo stage: verifiable rewards, the gold judge, reward models and user callables.

`reward_funcs` entries:
- `builtin:arithmetic` (exact match of the parsed answer) and `builtin:arithmetic_format` (a bare integer),
  pipelines.arithmetic;
- `builtin:gold`: the sentiment task's gold judge (VADER compound of the completion, pipelines.task);
- a directory: a reward model (a `reward` stage's output dir or any sequence-classification model), scored as
  PPO scores it (pipelines.ppo_rollout.score_responses: at the EOS of a stopped completion, re-tokenised when
  its tokenizer differs from the policy's);
- `module:function`: any importable Python callable `(prompts, completions) -> list[float]`, one float per
  completion (`prompts[i]` is the prompt of `completions[i]`, a string or chat messages). This imports and
  runs the user's code (like `trust_remote_code` for models): a recipe naming one runs whatever that module
  does. The module is looked up with the current directory first on `sys.path`, the same under `reins grpo`
  and `python -m pipelines.grpo` (as `python -m` does, and TRL users' scripts expect).
The reward of a completion is the `reward_weights`-weighted sum. Every function's output is checked on every
call: a function that raises, returns something that is not one number per completion, or returns NaN/inf is a
one-line error naming it (ReinsError; NonFiniteError for NaN/inf).
"""

from __future__ import annotations

import importlib
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


@dataclass
class RewardFunction:
    """One entry of `reward_funcs`: `call(prompts, texts, samples)` -> one value per completion."""

    name: str
    spec: str
    call: Callable[[list, list[str], Any], Any]
    model: Any = None      # a reward model (moved to the device by the stage)


def _builtin(spec: str) -> RewardFunction:
    if spec in ("builtin:arithmetic", "builtin:arithmetic_format"):
        from pipelines import arithmetic

        fn = arithmetic.correct_reward if spec == "builtin:arithmetic" else arithmetic.format_reward
        return RewardFunction(spec.split(":", 1)[1], spec, lambda p, t, s: fn(p, t))
    if spec == "builtin:gold":
        from pipelines.task import gold_reward

        return RewardFunction("gold", spec, lambda p, t, s: gold_reward(t))
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
    return RewardFunction(attr, spec, lambda p, t, s: fn(p, t))


def _cwd_first_on_path() -> None:
    """Put the current directory first on sys.path, where `python -m` puts it; the `reins` console script puts
    its own bin/ there instead, so the same `module:function` would be found by one and not the other."""
    cwd = os.getcwd()
    if sys.path[:1] not in ([cwd], [""]):
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()


def _reward_model(spec: str, cfg, tok) -> RewardFunction:
    from types import SimpleNamespace

    from pipelines.ppo_models import load_reward
    from pipelines.ppo_rollout import score_responses

    model, rm_tok, same = load_reward(SimpleNamespace(**{**vars(cfg), "reward_model": spec}), tok)
    p = Path(spec)
    name = p.parent.name if p.name == "model" else p.name

    def call(prompts, texts, s):
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


def call_reward(f: RewardFunction, prompts: list, texts: list[str], samples=None) -> list[float]:
    """`f`'s rewards for the completions, checked: one finite number per completion, else a one-line error."""
    where = f"reward function {f.name!r} ({f.spec})"
    try:
        out = f.call(prompts, texts, samples)
    except ReinsError:
        raise
    except Exception as e:  # noqa: BLE001 - user code: report it as one line naming the function
        raise DataError(f"{where} raised {type(e).__name__}: {first_line(e)}") from None
    if isinstance(out, torch.Tensor):
        out = out.detach().cpu().reshape(-1).tolist()
    try:
        values = [float(v) for v in out]
    except (TypeError, ValueError):
        raise DataError(f"{where} must return one number per completion, got {type(out).__name__}") from None
    if len(values) != len(texts):
        raise DataError(f"{where} returned {len(values)} values for {len(texts)} completions")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise NonFiniteError(f"{where} returned {values[bad[0]]} for completion {bad[0]} ({texts[bad[0]]!r}); "
                             "stopping (the last good checkpoint is kept)")
    return values


def reward_matrix(funcs: list[RewardFunction], prompts: list, texts: list[str], samples=None) -> torch.Tensor:
    """[N, F] float64: every function's checked rewards for the N completions."""
    cols = [call_reward(f, prompts, texts, samples) for f in funcs]
    return torch.tensor(cols, dtype=torch.float64).T.reshape(len(texts), len(funcs))


def probe(funcs: list[RewardFunction], prompts: list) -> None:
    """Call every non-model reward function once on (prompts, empty completions), so a function that raises,
    returns the wrong number of values or NaN fails before the run writes anything."""
    for f in funcs:
        if f.model is None:
            call_reward(f, list(prompts), [""] * len(prompts))
