"""Checks of the evaluation env against the data, D4RL-style normalised scores, and multi-seed aggregation.

- `check_env_fits(env, tr)`: the evaluation env exists and its spaces fit the dataset (episodes themselves are run
  by `rl.envs.evaluate`, shared with the online agents).
- `normalized_score(R, ref_min, ref_max) = 100 (R - ref_min) / (ref_max - ref_min)` (D4RL convention; the same
  as `minari.get_normalized_score` x 100).
- `aggregate(scores)`: mean, std, IQM (the 25%-trimmed mean, Agarwal et al. 2021), a percentile-bootstrap
  95% CI of the mean, and rliable's stratified-bootstrap 95% CI of the IQM, for runs over several seeds.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np

from reins.errors import ConfigError, DataError
from rl.envs import gym_make

# The parts of a recorded env spec that decide which code runs: they must equal the registered spec's.
_CODE_FIELDS = ("entry_point", "kwargs", "additional_wrappers", "vector_entry_point")


def dataset_eval_env(spec, dataset: str, *, trust: bool = False):
    """The evaluation env of a dataset's recorded gymnasium EnvSpec, made from gymnasium's registry by id.

    A dataset is a file people download, and a spec names code (an entry point, its kwargs, wrappers) that
    `gymnasium.make(spec)` imports and calls. Unless `trust` (trust_dataset_env=true), the recorded spec must
    name a registered env id and equal the registered spec in entry point, kwargs and wrappers; then the
    registry's own spec is returned (with the recorded time limit, a number). Anything else is one ConfigError,
    raised before any of it is imported."""
    import gymnasium as gym

    if trust:
        return spec
    env_id = getattr(spec, "id", None)
    hint = "set eval_env=<a gymnasium id> to evaluate elsewhere, or trust_dataset_env=true to run the code it names"
    registered = gym.registry.get(env_id) if isinstance(env_id, str) else None
    if registered is None:
        raise ConfigError(f"{dataset}: the dataset's env spec names env '{env_id}', which is not registered in "
                          f"gymnasium here; reins makes evaluation envs from the registry only: {hint}")
    for name in _CODE_FIELDS:
        recorded, own = getattr(spec, name, None), getattr(registered, name, None)
        if _plain(recorded) != _plain(own):
            raise ConfigError(f"{dataset}: the dataset's env spec for '{env_id}' differs from gymnasium's "
                              f"registered one in {name} ({_short(recorded)} vs {_short(own)}): {hint}")
    steps = getattr(spec, "max_episode_steps", None)
    if steps is not None and not (isinstance(steps, int) and steps > 0):
        raise ConfigError(f"{dataset}: the dataset's env spec has max_episode_steps={steps!r}; expected a "
                          "positive integer")
    return dataclasses.replace(registered, max_episode_steps=steps)


def _plain(x):
    """A comparable form of a spec field (a WrapperSpec, a callable entry point, tuples vs lists)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return _plain(dataclasses.asdict(x))
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if callable(x):
        return f"{getattr(x, '__module__', '?')}:{getattr(x, '__qualname__', repr(x))}"
    return x


def _short(x) -> str:
    text = json.dumps(_plain(x), default=repr)
    return text if len(text) <= 80 else text[:77] + "..."


def check_env_fits(env, tr) -> None:
    """Make `env` once, before any training, and check that the data `tr` fits it: Box spaces whose flat widths
    equal the data's, and the action bounds (and any finite observation bounds) the dataset declares equal the
    env's. A mismatch is one DataError naming both sides, instead of a crash at the first evaluation after
    training; an env that cannot be made (unknown id, package not installed) is reported here too."""
    import gymnasium as gym

    e = gym_make(env, "evaluation env")
    try:
        obs_sp, act_sp = e.observation_space, e.action_space
    finally:
        e.close()
    name, ds = getattr(env, "id", env), tr.dataset_id
    if tr.discrete:
        if not isinstance(act_sp, gym.spaces.Discrete) or int(act_sp.n) != tr.n_actions:
            raise DataError(f"{ds}: the data has Discrete({tr.n_actions}) actions but env '{name}' has the action "
                            f"space {act_sp}; set eval_env to the env the data was recorded in")
        pairs = (("observation", obs_sp, tr.obs_dim),)
    else:
        pairs = (("observation", obs_sp, tr.obs_dim), ("action", act_sp, tr.act_dim))
    for what, sp, width in pairs:  # the kind of space first: a Discrete env is not a shape mismatch
        if not isinstance(sp, gym.spaces.Box):
            raise DataError(f"{ds}: the data has {width}-wide Box {what}s but env '{name}' has a "
                            f"{type(sp).__name__} {what} space ({sp}); set eval_env to the env the data was "
                            "recorded in")
    for what, sp, width in pairs:
        n = int(np.prod(sp.shape))
        if n != width:
            raise DataError(f"{ds}: the data's {what}s are {width}-wide but env '{name}' has {n}-wide {what}s "
                            f"(shape {tuple(sp.shape)}); set eval_env to the env the data was recorded in")
    if not tr.discrete:
        _check_bounds(ds, name, "action", tr.action_space, act_sp)
    _check_bounds(ds, name, "observation", tr.observation_space, obs_sp)


def adopt_env_action_box(env, tr) -> None:
    """A file source declares no action box (offline.data infers one from the data): take the evaluation env's,
    so the policy acts on the env's scale, once every data action is checked to lie inside it."""
    if not tr.action_bounds_inferred:
        return
    e = gym_make(env, "evaluation env")
    try:
        sp = e.action_space
    finally:
        e.close()
    low = np.broadcast_to(np.asarray(sp.low, np.float32).reshape(-1), (tr.act_dim,)).copy()
    high = np.broadcast_to(np.asarray(sp.high, np.float32).reshape(-1), (tr.act_dim,)).copy()
    if not (np.isfinite(low).all() and np.isfinite(high).all()):
        return  # an unbounded env box says nothing: keep the inferred one
    slack = 1e-3 * (high - low)  # float error and tiny overshoots are clipped by the normalisation, not refused
    out = (tr.actions < low - slack) | (tr.actions > high + slack)
    if out.any():
        row, j = (int(x) for x in np.argwhere(out)[0])
        raise DataError(f"{tr.dataset_id}: transition {row} has action[{j}] = {tr.actions[row, j]:g}, outside env "
                        f"'{getattr(env, 'id', env)}''s bounds [{low[j]:g}, {high[j]:g}]; set eval_env to the env "
                        "the data was recorded in")
    tr.action_low, tr.action_high, tr.action_bounds_inferred = low, high, False


def _check_bounds(ds: str, name: str, what: str, data_sp, env_sp) -> None:
    """The dataset's declared bounds equal the env's, where both are finite (an unbounded declaration says
    nothing about the env)."""
    if data_sp is None:
        return
    lo_d, hi_d = (np.asarray(x, np.float64).reshape(-1) for x in (data_sp.low, data_sp.high))
    lo_e, hi_e = (np.broadcast_to(np.asarray(x, np.float64).reshape(-1), lo_d.shape) for x in (env_sp.low,
                                                                                               env_sp.high))
    both = np.isfinite(lo_d) & np.isfinite(hi_d) & np.isfinite(lo_e) & np.isfinite(hi_e)
    bad = both & ~(np.isclose(lo_d, lo_e, rtol=1e-6, atol=1e-6) & np.isclose(hi_d, hi_e, rtol=1e-6, atol=1e-6))
    if bad.any():
        j = int(np.argmax(bad))
        raise DataError(f"{ds}: the data's {what} bounds in dimension {j} are [{lo_d[j]:g}, {hi_d[j]:g}] but env "
                        f"'{name}' has [{lo_e[j]:g}, {hi_e[j]:g}]; set eval_env to the env the data was recorded in")


def normalized_score(returns, ref_min: float, ref_max: float):
    return 100.0 * (np.asarray(returns, dtype=np.float64) - ref_min) / (ref_max - ref_min)


def iqm(x) -> float:
    """Interquartile mean: the mean of the middle 50% (drop floor(n/4) from each end, like trim_mean(x, .25))."""
    x = np.sort(np.asarray(x, dtype=np.float64).ravel())
    if x.size == 0:
        raise ValueError("iqm of an empty sample")
    k = int(0.25 * x.size)
    return float(x[k:x.size - k].mean())


def bootstrap_ci(x, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean."""
    x = np.asarray(x, dtype=np.float64).ravel()
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _iqm_rows(m: np.ndarray) -> np.ndarray:
    m = np.sort(m, axis=1)
    k = int(0.25 * m.shape[1])
    return m[:, k:m.shape[1] - k].mean(axis=1)


def stratified_bootstrap_ci(scores_by_task, *, statistic: str = "iqm", n_boot: int = 2000, level: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """rliable's interval estimate (Agarwal et al. 2021): each replicate resamples the runs with replacement
    within every task (the strata) separately, pools them, and takes the statistic (IQM over all pooled runs, or
    their mean); the CI is the replicates' percentile interval. With one task it is the plain bootstrap of the
    statistic over seeds."""
    tasks = [np.asarray(t, dtype=np.float64).ravel() for t in scores_by_task]
    if not tasks or any(t.size == 0 for t in tasks):
        raise ValueError("stratified bootstrap needs at least one run in every task")
    rng = np.random.default_rng(seed)
    reps = np.concatenate([t[rng.integers(0, t.size, size=(n_boot, t.size))] for t in tasks], axis=1)
    stats = _iqm_rows(reps) if statistic == "iqm" else reps.mean(axis=1)
    lo, hi = np.quantile(stats, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def aggregate(scores, *, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    x = np.asarray(scores, dtype=np.float64).ravel()
    lo, hi = bootstrap_ci(x, n_boot=n_boot, seed=seed)
    iqm_lo, iqm_hi = stratified_bootstrap_ci([x], n_boot=n_boot, seed=seed)
    return {"n": int(x.size), "mean": float(x.mean()), "std": float(x.std(ddof=1)) if x.size > 1 else 0.0,
            "iqm": iqm(x), "ci95_low": lo, "ci95_high": hi, "iqm_ci95_low": iqm_lo, "iqm_ci95_high": iqm_hi}


def aggregate_runs(run_dirs: list[str | Path], keys: tuple[str, ...] = (
        "eval/normalized_score", "eval/normalized_score_best", "eval/return_mean", "eval/return_mean_best"),
        ) -> dict[str, float]:
    """Aggregate the final metrics.json of several runs (one per seed) into '<key>/<stat>' entries; the
    `eval/*_last{K}` means are aggregated too wherever every run has them."""
    rows = []
    for d in run_dirs:
        p = Path(d) / "metrics.json"
        if not p.is_file():
            raise DataError(f"{p}: missing (run not finished)")
        rows.append(json.loads(p.read_text()))
    out: dict[str, float] = {}
    last_k = sorted({k for r in rows for k in r if re.fullmatch(r"eval/(normalized_score|return_mean)_last\d+", k)})
    for key in (*keys, *last_k):
        vals = [r[key] for r in rows if r.get(key) is not None]
        if len(vals) == len(rows) and vals:
            out.update({f"{key}/{k}": v for k, v in aggregate(vals).items()})
    return out
