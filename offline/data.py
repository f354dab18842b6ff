"""Offline datasets as D4RL-style transitions, validated, normalised and held on the training device.

    ds = load_dataset("local/pendulum/medium-replay-v0")      # an id under $MINARI_DATASETS_PATH, or a path
    tr = to_transitions(ds)                                    # numpy arrays, one row per transition
    norm = Normalization.fit(tr, normalize_obs=True, iql_reward_scale=True)
    buf = DeviceBuffer(norm.apply(tr), device="cuda")          # tensors on the device
    batch = buf.sample(256, generator)                         # indices drawn on the device

The transition view (that of D4RL's `qlearning_dataset`, Fu et al. 2020, read from Minari episodes): per episode
observations = obs[:-1], next_observations = obs[1:], terminals = terminations (the bootstrap mask) and
timeouts = truncations. A truncated episode keeps its last transition with terminal = 0: Minari stores the
final observation, so there is no reason to drop it as D4RL's `qlearning_dataset` had to.

People's own files (D4RL-style HDF5/npz, Parquet/JSONL step tables: offline.sources) are read into the same
`Steps` columns as Minari episodes and go through the one validator, `steps_to_transitions`; its docstring
says how episodes and next observations are derived where a file does not give them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reins.errors import ConfigError, DataError

OBS_STD_EPS = 1e-3  # CORL's eps on the observation std: constant features would otherwise divide by ~0
ACTION_CLIP = 1.0 - 1e-5  # original IQL clips data actions so atanh / log-probs stay finite


# ------------------------------------------------------------------------------------------- loading
def datasets_root() -> Path:
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def _local_ids(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    # Hidden directories (collect's staging roots) hold half-written datasets, never listed as available.
    return sorted(str(p.parent.relative_to(root)) for p in root.rglob("data")
                  if (p / "metadata.json").is_file() and not any(part.startswith(".")
                                                                  for part in p.relative_to(root).parts))


def resolve_dataset_path(dataset: str) -> Path:
    """The `data/` directory of a local Minari dataset given its id or a filesystem path."""
    if not dataset:
        raise DataError("no dataset given: set dataset=<minari id or path>")
    p = Path(dataset).expanduser()
    for cand in (p, p / "data"):
        if cand.is_dir() and (cand / "metadata.json").is_file():
            return cand
    root = datasets_root()
    cand = root / dataset / "data"
    if (cand / "metadata.json").is_file():
        return cand
    known = _local_ids(root)
    shown = ", ".join(known[:8]) + (" ..." if len(known) > 8 else "") if known else "none"
    raise DataError(f"unknown dataset '{dataset}': not a Minari dataset path and not found under "
                    f"MINARI_DATASETS_PATH={root} (local datasets: {shown})")


def load_dataset(dataset: str):
    """Open a local Minari dataset (hdf5 or arrow) by id or path; never downloads."""
    import minari

    path = resolve_dataset_path(dataset)
    try:
        return minari.MinariDataset(path)
    except Exception as e:  # noqa: BLE001 - minari raises assorted errors for unreadable storage
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: cannot read Minari dataset: {first[:200]}") from None


# ------------------------------------------------------------------------------------------- transitions
@dataclass
class Transitions:
    """A D4RL-style transition table (numpy, float32 arrays) plus what evaluation needs to know."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminals: np.ndarray  # 1.0 where the episode terminated: no bootstrap from next_observations
    timeouts: np.ndarray  # 1.0 where the episode was truncated: bootstrap as usual
    episode_ids: np.ndarray  # int64, the row's episode index in the dataset
    episode_returns: np.ndarray  # one undiscounted return per episode
    action_low: np.ndarray
    action_high: np.ndarray
    dataset_id: str = ""
    env_id: str | None = None
    eval_env_id: str | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    metadata: dict = field(default_factory=dict)
    eval_env_spec: object = None  # gymnasium EnvSpec stored in the dataset (kwargs, time limit), if any
    observation_space: object = None  # the dataset's declared gymnasium spaces (Box obs; Box or Discrete actions)
    action_space: object = None  # None for a file source: its action box is inferred (see action_bounds_inferred)
    action_bounds_inferred: bool = False  # action_low/high read off the data, not declared; an eval env's win

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def discrete(self) -> bool:
        """Discrete actions: `actions` is an int64 vector of action indices (no action box)."""
        return self.actions.ndim == 1

    @property
    def n_actions(self) -> int | None:
        return int(self.action_space.n) if self.discrete else None

    @property
    def act_dim(self) -> int:
        """The width of the action: a Box's flat size, or the number of discrete actions."""
        return self.n_actions if self.discrete else int(self.actions.shape[1])


STEP_FIELDS = ("observations", "actions", "rewards", "terminals", "timeouts")


# ------------------------------------------------------------------------------------------- the validator
@dataclass
class Steps:
    """One source's per-step columns before validation. Every loader fills one (Minari episodes here, people's
    files in offline.sources) and `steps_to_transitions` turns it into Transitions, so every source gets the
    same checks and the same one-line errors.

    columns: observations (n, d), actions (n, k), or (n,) integers for discrete actions, rewards, terminals and
    timeouts (n,), optionally next_observations (n, d). episode_ends marks each episode's last row where the
    source knows its episodes (Minari's episodes, a table's episode_id); None: an episode ends where
    terminals | timeouts is set (D4RL's and d3rlpy's reading). locate(row) -> (where, position) names a row in
    messages, e.g. ("steps.jsonl", "line 18"); labels maps a field to the source's own name for it.
    """

    name: str
    columns: dict
    episode_ends: np.ndarray | None = None
    locate: Any = None
    labels: dict = field(default_factory=dict)
    observation_space: object = None  # declared spaces; None: inferred from the data
    action_space: object = None
    info: dict = field(default_factory=dict)  # Transitions fields the source knows (ids, env spec, scores)

    def where(self, row: int) -> tuple[str, str]:
        return self.locate(row) if self.locate is not None else (self.name, f"row {row}")

    def label(self, key: str) -> str:
        return self.labels.get(key, key)


def _check_lengths(st: Steps) -> int:
    missing = [k for k in STEP_FIELDS if k not in st.columns]
    if missing:
        raise DataError(f"{st.name}: missing {', '.join(repr(st.label(k)) for k in missing)} (a step source needs "
                        f"{', '.join(st.label(k) for k in STEP_FIELDS)}; next observations are optional)")
    shapes = {k: np.shape(v) for k, v in st.columns.items()}
    n = shapes["observations"][0] if shapes["observations"] else 0
    for k in (*STEP_FIELDS, "next_observations"):
        if k in shapes and (not shapes[k] or shapes[k][0] != n):
            rows = shapes[k][0] if shapes[k] else "no"
            raise DataError(f"{st.name}: '{st.label(k)}' has {rows} rows but '{st.label('observations')}' has {n} "
                            "(one row per step)")
    if n == 0:
        raise DataError(f"{st.name}: no steps")
    return n


def _numeric(st: Steps, key: str, a: np.ndarray) -> np.ndarray:
    if a.dtype.kind not in "biuf":
        raise DataError(f"{st.name}: '{st.label(key)}' must be numeric, got {a.dtype}")
    return a


def _check_finite(st: Steps, key: str, a: np.ndarray) -> None:
    if a.dtype.kind != "f":
        return
    bad = ~np.isfinite(a)
    if bad.any():
        where, pos = st.where(int(np.argwhere(bad)[0][0]))
        raise DataError(f"{where}: non-finite {st.label(key)} at {pos}")


def _observations(st: Steps, key: str, n: int) -> np.ndarray:
    a = _numeric(st, key, np.asarray(st.columns[key]))
    a = a.reshape(n, 1) if a.ndim == 1 else a
    if a.ndim != 2:
        raise DataError(f"{st.name}: only flat observations are supported ('{st.label(key)}' has shape {a.shape})")
    _check_finite(st, key, a)
    return a.astype(np.float32)


def _flags(st: Steps, key: str, n: int) -> np.ndarray:
    a = _numeric(st, key, np.asarray(st.columns[key]))
    a = a.reshape(n) if a.shape == (n, 1) else a
    if a.shape != (n,):
        raise DataError(f"{st.name}: '{st.label(key)}' has shape {a.shape}, expected ({n},) (one per step)")
    bad = ~((a == 0) | (a == 1))
    if bad.any():
        row = int(np.argmax(bad))
        where, pos = st.where(row)
        raise DataError(f"{where}: {st.label(key)} at {pos} is {a[row].item()!r}, expected 0 or 1 (false or true)")
    return a.astype(np.float32)


def _actions(st: Steps, n: int) -> tuple[np.ndarray, object]:
    """Box actions as float32 (n, k); Discrete ones (declared, or integer-typed in an undeclared file) as
    int64 indices (a - space.start) with their space."""
    import gymnasium as gym

    a = _numeric(st, "actions", np.asarray(st.columns["actions"]))
    space = st.action_space
    if isinstance(space, gym.spaces.Discrete) or (space is None and a.dtype.kind in "iu"
                                                   and a.shape in ((n,), (n, 1))):
        a = a.reshape(n).astype(np.int64)
        start = int(space.start) if space is not None else 0
        count = int(space.n) if space is not None else int(a.max()) + 1
        bad = (a < start) | (a >= start + count)
        if bad.any():
            where, pos = st.where(int(np.argmax(bad)))
            raise DataError(f"{where}: discrete {st.label('actions')} at {pos} is {a[np.argmax(bad)]}, outside "
                            f"[{start}, {start + count - 1}]")
        return a - start, space if space is not None else gym.spaces.Discrete(count)
    a = a.reshape(n, 1) if a.ndim == 1 else a
    if a.ndim != 2:
        raise DataError(f"{st.name}: only flat actions are supported ('{st.label('actions')}' has shape {a.shape})")
    _check_finite(st, "actions", a)
    return a.astype(np.float32), space


def _episode_ends(st: Steps, term: np.ndarray, trunc: np.ndarray) -> np.ndarray:
    flagged = (term + trunc) > 0
    if st.episode_ends is None:
        ends = flagged.copy()
    else:
        ends = np.asarray(st.episode_ends, dtype=bool).copy()
        early = flagged & ~ends
        if early.any():
            where, pos = st.where(int(np.argmax(early)))
            raise DataError(f"{where}: termination/truncation at {pos} before the episode's last step")
    ends[-1] = True  # rows after the last flag: an episode the source cut off (it ends unterminated)
    return ends


def _inferred_box(act: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An undeclared action box: [-1, 1] (D4RL's convention) per dimension whose data fit in it, else the
    symmetric box that holds the data."""
    b = np.maximum(1.0, np.abs(act).max(axis=0)).astype(np.float32)
    return -b, b


def steps_to_transitions(st: Steps) -> Transitions:
    """Validate one source's steps and derive the D4RL transition view.

    Episodes end at episode_ends or, without them, at terminals | timeouts; rows after the last end form one
    more episode, cut off by the source. With next observations given, every row is a transition. Without,
    next_observations[i] = observations[i + 1] (D4RL's `qlearning_dataset`; zeros after a terminal last row,
    where the value is masked anyway), and the last row of an episode that did not terminate (a timeout, or a
    cut) is dropped: its next observation is unknown (D4RL `terminate_on_end=False`, d3rlpy's transition
    count). Episode returns sum every reward of the episode, dropped rows included.
    """
    n = _check_lengths(st)
    obs = _observations(st, "observations", n)
    nxt = _observations(st, "next_observations", n) if "next_observations" in st.columns else None
    if nxt is not None and nxt.shape != obs.shape:
        raise DataError(f"{st.name}: '{st.label('next_observations')}' is {nxt.shape[1]}-wide but "
                        f"'{st.label('observations')}' is {obs.shape[1]}-wide")
    act, act_space = _actions(st, n)
    rew = _numeric(st, "rewards", np.asarray(st.columns["rewards"]))
    rew = rew.reshape(n) if rew.shape == (n, 1) else rew
    if rew.shape != (n,):
        raise DataError(f"{st.name}: '{st.label('rewards')}' has shape {rew.shape}, expected ({n},)")
    _check_finite(st, "rewards", rew)
    term, trunc = _flags(st, "terminals", n), _flags(st, "timeouts", n)
    ends = _episode_ends(st, term, trunc)
    episode = np.concatenate([[0], np.cumsum(ends[:-1])]).astype(np.int64)
    starts = np.flatnonzero(np.concatenate([[True], ends[:-1]]))
    rew64 = rew.astype(np.float64)
    returns = np.array([rew64[a:b].copy().sum() for a, b in zip(starts, [*starts[1:], n])], dtype=np.float64)
    if nxt is None:
        nxt = np.zeros_like(obs)
        nxt[:-1] = obs[1:]
        keep = ~(ends & (term == 0))
        if not keep.any():
            raise DataError(f"{st.name}: no transitions: no next observations are given and every episode is one "
                            "step long and ends unterminated")
    else:
        keep = np.ones(n, dtype=bool)
    pick = (lambda x: x) if keep.all() else (lambda x: x[keep])
    info = dict(st.info)
    if act.ndim == 1:
        low = high = np.zeros(0, np.float32)
    elif act_space is not None:
        d = act.shape[1]
        low = np.broadcast_to(np.asarray(act_space.low, np.float32).reshape(-1), (d,)).copy()
        high = np.broadcast_to(np.asarray(act_space.high, np.float32).reshape(-1), (d,)).copy()
    else:
        (low, high), info["action_bounds_inferred"] = _inferred_box(act), True
    return Transitions(
        observations=pick(obs), actions=pick(act), rewards=pick(rew.astype(np.float32)),
        next_observations=pick(nxt), terminals=pick(term), timeouts=pick(trunc), episode_ids=pick(episode),
        episode_returns=returns, action_low=low, action_high=high, observation_space=st.observation_space,
        action_space=act_space if act.ndim == 1 or st.action_space is not None else None,
        **{"dataset_id": st.name, **info})


# ------------------------------------------------------------------------------------------- Minari episodes
def _flag(x, n: int, name: str, where: str) -> np.ndarray:
    a = np.asarray(x)
    if a.shape != (n,):
        raise DataError(f"{where}: {name} has shape {a.shape}, expected ({n},) (one per action)")
    return a


def episode_rows(ep, where: str = "episode", discrete: bool = False) -> dict[str, np.ndarray]:
    """One Minari episode's rows for `Steps`, after the checks of its structure (N + 1 observations, one
    reward and flag per action)."""
    obs = np.asarray(ep.observations)
    act = np.asarray(ep.actions)
    n = len(act)
    if obs.ndim != 2 or act.ndim not in (1, 2) or (discrete and act.ndim != 1):
        raise DataError(f"{where}: only flat Box observations and flat Box or Discrete actions are supported "
                        f"(observations {obs.shape}, actions {act.shape})")
    if len(obs) != n + 1:
        raise DataError(f"{where}: {len(obs)} observations for {n} actions; expected {n + 1} "
                        "(Minari stores the final observation)")
    if n == 0:
        raise DataError(f"{where}: empty episode")
    rew = np.asarray(ep.rewards, dtype=np.float64)
    if rew.shape != (n,):
        raise DataError(f"{where}: rewards has shape {rew.shape}, expected ({n},) (one per action)")
    term = _flag(ep.terminations, n, "terminations", where)
    trunc = _flag(ep.truncations, n, "truncations", where)
    act = act if discrete else act.astype(np.float64).reshape(n, -1)
    return {"observations": obs[:-1].astype(np.float64), "next_observations": obs[1:].astype(np.float64),
            "actions": act, "rewards": rew, "terminals": term, "timeouts": trunc}


def _env_id(spec) -> str | None:
    return getattr(spec, "id", None) if spec is not None else None


def _read_episodes(ds):
    """`ds.iterate_episodes()`, with a storage that cannot be read (a truncated HDF5 file, a corrupt arrow
    part) reported as one DataError naming the data directory and the reader's complaint."""
    it = None
    while True:
        try:
            it = it if it is not None else iter(ds.iterate_episodes())  # the arrow reader opens files here
            ep = next(it)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - h5py/pyarrow raise assorted errors for unreadable files
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            where = getattr(ds.storage, "data_path", "dataset")
            raise DataError(f"{where}: cannot read the dataset's episodes (corrupt or truncated file?): "
                            f"{first[:200]}") from None
        yield ep


def to_transitions(ds, *, name: str = "") -> Transitions:
    """The D4RL-style view of a whole MinariDataset, with the dataset's spaces and reference scores."""
    import gymnasium as gym

    name = name or str(getattr(ds.spec, "dataset_id", "dataset"))
    obs_space, act_space = ds.observation_space, ds.action_space
    discrete = isinstance(act_space, gym.spaces.Discrete)
    if not (isinstance(act_space, gym.spaces.Box) or discrete) or not isinstance(obs_space, gym.spaces.Box):
        raise DataError(f"{name}: only Box observation spaces and Box or Discrete action spaces are supported "
                        f"(got {type(obs_space).__name__}, {type(act_space).__name__})")
    obs_dim = int(np.prod(obs_space.shape))
    act_dim = 1 if discrete else int(np.prod(act_space.shape))
    parts: dict[str, list] = {k: [] for k in (*STEP_FIELDS, "next_observations")}
    ep_of_row, step_of_row, ends = [], [], []
    for k, ep in enumerate(_read_episodes(ds)):
        where = f"{name}: episode {getattr(ep, 'id', k)}"
        rows = episode_rows(ep, where, discrete)
        width = 1 if discrete else rows["actions"].shape[1]
        if rows["observations"].shape[1] != obs_dim or width != act_dim:
            raise DataError(f"{where}: observation/action width {rows['observations'].shape[1]}/{width} does not "
                            f"match the dataset spaces {obs_dim}/{act_dim}")
        for key, v in rows.items():
            parts[key].append(v)
        m = len(rows["rewards"])
        ep_of_row.append(np.full(m, getattr(ep, "id", k)))
        step_of_row.append(np.arange(m))
        ends.append(np.arange(m) == m - 1)
    if not ends:
        raise DataError(f"{name}: dataset has no episodes")
    ep_of_row, step_of_row = np.concatenate(ep_of_row), np.concatenate(step_of_row)
    if not discrete:
        low, high = (np.asarray(x, np.float64).reshape(-1) for x in (act_space.low, act_space.high))
        if not (np.isfinite(low).all() and np.isfinite(high).all() and (high > low).all()):
            raise DataError(f"{name}: the action space must be bounded (low < high, finite)")
    meta = dict(ds.storage.metadata)
    eval_spec = _eval_env_spec(ds)
    st = Steps(name, {k: np.concatenate(v) for k, v in parts.items()}, episode_ends=np.concatenate(ends),
               locate=lambda r: (f"{name}: episode {ep_of_row[r]}", f"step {step_of_row[r]}"),
               observation_space=obs_space, action_space=act_space,
               info=dict(dataset_id=str(meta.get("dataset_id", name)), env_id=_env_id(ds.env_spec),
                         eval_env_id=_env_id(eval_spec) or _env_id(ds.env_spec),
                         ref_min_score=_opt_float(meta.get("ref_min_score")),
                         ref_max_score=_opt_float(meta.get("ref_max_score")), metadata=meta,
                         eval_env_spec=eval_spec or ds.env_spec))
    return steps_to_transitions(st)


def _eval_env_spec(ds):
    """The dataset's evaluation env spec (Minari's `eval_env`), or None when it names none. Minari 0.5 exposes
    it only through `recover_environment(eval_env=True)`, which builds the env; the parsed spec it builds from
    is read instead (`_eval_env_spec`, or a public `eval_env_spec` where a release has one)."""
    return getattr(ds, "eval_env_spec", None) or getattr(ds, "_eval_env_spec", None)


def _opt_float(x) -> float | None:
    return None if x is None else float(x)


def load_transitions(dataset: str, *, obs_columns: list[str] | None = None,
                     action_columns: list[str] | None = None) -> Transitions:
    """A Minari dataset (id or path), or a file offline.sources reads (D4RL-style .hdf5/.h5 or .npz, a
    .parquet/.jsonl table of steps; the column options name a table's observation/action columns)."""
    from offline.sources import is_file_source, read_steps

    if is_file_source(dataset):
        return steps_to_transitions(read_steps(dataset, obs_columns=obs_columns, action_columns=action_columns))
    return to_transitions(load_dataset(dataset), name=dataset)


def reference_scores(tr: Transitions, ref_min: float | None = None, ref_max: float | None = None,
                     *, required: bool) -> tuple[float, float] | None:
    """(ref_min, ref_max) from explicit values or the dataset; DataError when required and missing."""
    lo = ref_min if ref_min is not None else tr.ref_min_score
    hi = ref_max if ref_max is not None else tr.ref_max_score
    if lo is None or hi is None:
        if required:
            raise DataError(f"{tr.dataset_id}: no ref_min_score/ref_max_score stored, so a normalised score "
                            "cannot be computed; set ref_min_score= and ref_max_score=, or normalize_score=false")
        return None
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi == lo:
        raise DataError(f"{tr.dataset_id}: reference scores must be finite and differ (min {lo}, max {hi})")
    return float(lo), float(hi)


# ------------------------------------------------------------------------------------------- normalisation
@dataclass
class Normalization:
    """What training applied to the data; the observation part travels with the saved policy.

    - observations: (s - mean) / std with std + 1e-3 (CORL);
    - actions: affinely mapped from the action space [low, high] to [-1, 1] and clipped to +-(1 - 1e-5);
    - rewards: r * reward_mult * reward_scale + reward_bias, where reward_mult is 1000 / (max return - min
      return) over trajectories when IQL's locomotion scaling is on (Kostrikov et al. 2021, App. B), else 1.
    """

    obs_mean: np.ndarray
    obs_std: np.ndarray
    action_low: np.ndarray
    action_high: np.ndarray
    reward_mult: float = 1.0
    reward_scale: float = 1.0
    reward_bias: float = 0.0

    @classmethod
    def fit(cls, tr: Transitions, *, normalize_obs: bool = True, iql_reward_scale: bool = False,
            reward_scale: float = 1.0, reward_bias: float = 0.0) -> Normalization:
        d = tr.obs_dim
        if normalize_obs:
            mean = tr.observations.mean(0).astype(np.float32)
            std = (tr.observations.std(0) + OBS_STD_EPS).astype(np.float32)
        else:
            mean, std = np.zeros(d, np.float32), np.ones(d, np.float32)
        mult = 1.0
        if iql_reward_scale:
            spread = float(tr.episode_returns.max() - tr.episode_returns.min())
            if spread <= 0:
                raise DataError(f"{tr.dataset_id}: all episode returns are equal; IQL reward scaling "
                                "1000/(max-min) is undefined (set normalize_reward=false)")
            mult = 1000.0 / spread
        return cls(mean, std, tr.action_low.copy(), tr.action_high.copy(), mult, float(reward_scale),
                   float(reward_bias))

    def obs(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.obs_mean) / self.obs_std).astype(np.float32)

    def action_to_unit(self, a: np.ndarray) -> np.ndarray:
        unit = 2.0 * (a - self.action_low) / (self.action_high - self.action_low) - 1.0
        return np.clip(unit, -ACTION_CLIP, ACTION_CLIP).astype(np.float32)

    def action_from_unit(self, u: np.ndarray) -> np.ndarray:
        return (self.action_low + (np.asarray(u) + 1.0) * 0.5 * (self.action_high - self.action_low)).astype(
            np.float32)

    def reward(self, r: np.ndarray) -> np.ndarray:
        return (r * (self.reward_mult * self.reward_scale) + self.reward_bias).astype(np.float32)

    def apply(self, tr: Transitions) -> dict[str, np.ndarray]:
        return {
            "observations": self.obs(tr.observations), "next_observations": self.obs(tr.next_observations),
            "actions": tr.actions if tr.discrete else self.action_to_unit(tr.actions),  # indices stay indices
            "rewards": self.reward(tr.rewards),
            "terminals": tr.terminals.astype(np.float32),
        }

    def state_dict(self) -> dict:
        return {"obs_mean": torch.from_numpy(self.obs_mean), "obs_std": torch.from_numpy(self.obs_std),
                "action_low": torch.from_numpy(self.action_low), "action_high": torch.from_numpy(self.action_high),
                "reward_mult": self.reward_mult, "reward_scale": self.reward_scale, "reward_bias": self.reward_bias}

    @classmethod
    def from_state_dict(cls, s: dict) -> Normalization:
        return cls(s["obs_mean"].numpy(), s["obs_std"].numpy(), s["action_low"].numpy(),
                   s["action_high"].numpy(), float(s["reward_mult"]), float(s["reward_scale"]),
                   float(s["reward_bias"]))


# ------------------------------------------------------------------------------------------- device buffer
class DeviceBuffer:
    """The transition table as tensors on one device; minibatch indices are drawn there too (no host copy)."""

    def __init__(self, arrays: dict[str, np.ndarray], device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.data = {k: torch.as_tensor(v, device=self.device) for k, v in arrays.items()}
        self.size = len(self.data["rewards"])

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(self.size, (batch_size,), device=self.device, generator=generator)
        return {k: v.index_select(0, idx) for k, v in self.data.items()}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available")
    return torch.device(name)
