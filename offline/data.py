"""Minari datasets as D4RL-style transitions, validated, normalised and held on the training device.

    ds = load_dataset("local/pendulum/medium-replay-v0")      # an id under $MINARI_DATASETS_PATH, or a path
    tr = to_transitions(ds)                                    # numpy arrays, one row per transition
    norm = Normalization.fit(tr, normalize_obs=True, iql_reward_scale=True)
    buf = DeviceBuffer(norm.apply(tr), device="cuda")          # tensors on the device
    batch = buf.sample(256, generator)                         # indices drawn on the device

The transition view (that of D4RL's `qlearning_dataset`, Fu et al. 2020, read from Minari episodes): per episode
observations = obs[:-1], next_observations = obs[1:], terminals = terminations (the bootstrap mask) and
timeouts = truncations. A truncated episode keeps its last transition with terminal = 0: Minari stores the
final observation, so there is no reason to drop it as D4RL's `qlearning_dataset` had to.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

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
    observation_space: object = None  # the dataset's declared gymnasium spaces (Box)
    action_space: object = None

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def obs_dim(self) -> int:
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        return int(self.actions.shape[1])


def _flag(x, n: int, name: str, where: str) -> np.ndarray:
    a = np.asarray(x)
    if a.shape != (n,):
        raise DataError(f"{where}: {name} has shape {a.shape}, expected ({n},) (one per action)")
    return a.astype(np.float32)


def episode_to_transitions(ep, where: str = "episode") -> dict[str, np.ndarray]:
    """One Minari episode -> D4RL transition rows, validating its shapes and values."""
    obs = np.asarray(ep.observations, dtype=np.float64)
    act = np.asarray(ep.actions, dtype=np.float64)
    n = len(act)
    if obs.ndim != 2 or act.ndim not in (1, 2):
        raise DataError(f"{where}: only flat Box observations/actions are supported "
                        f"(observations {obs.shape}, actions {act.shape})")
    act = act.reshape(n, -1)
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
    for name, arr in (("observations", obs), ("actions", act), ("rewards", rew)):
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"{where}: non-finite {name} at step {row}")
    if (term[:-1] + trunc[:-1]).any():
        row = int(np.argmax(term[:-1] + trunc[:-1]))
        raise DataError(f"{where}: termination/truncation at step {row} before the episode's last step")
    return {
        "observations": obs[:-1].astype(np.float32), "next_observations": obs[1:].astype(np.float32),
        "actions": act.astype(np.float32), "rewards": rew.astype(np.float32),
        "terminals": term, "timeouts": trunc, "return": float(rew.sum()),
    }


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
    if not isinstance(act_space, gym.spaces.Box) or not isinstance(obs_space, gym.spaces.Box):
        raise DataError(f"{name}: only Box observation and action spaces are supported "
                        f"(got {type(obs_space).__name__}, {type(act_space).__name__})")
    obs_dim, act_dim = int(np.prod(obs_space.shape)), int(np.prod(act_space.shape))
    parts: dict[str, list] = {k: [] for k in ("observations", "next_observations", "actions", "rewards",
                                              "terminals", "timeouts", "episode_ids")}
    returns = []
    for k, ep in enumerate(_read_episodes(ds)):
        where = f"{name}: episode {getattr(ep, 'id', k)}"
        rows = episode_to_transitions(ep, where)
        if rows["observations"].shape[1] != obs_dim or rows["actions"].shape[1] != act_dim:
            raise DataError(f"{where}: observation/action width {rows['observations'].shape[1]}/"
                            f"{rows['actions'].shape[1]} does not match the dataset spaces {obs_dim}/{act_dim}")
        returns.append(rows.pop("return"))
        for key, v in rows.items():
            parts[key].append(v)
        parts["episode_ids"].append(np.full(len(rows["rewards"]), k, dtype=np.int64))
    if not returns:
        raise DataError(f"{name}: dataset has no episodes")
    meta = dict(ds.storage.metadata)
    low = np.broadcast_to(np.asarray(act_space.low, np.float32).reshape(-1), (act_dim,)).copy()
    high = np.broadcast_to(np.asarray(act_space.high, np.float32).reshape(-1), (act_dim,)).copy()
    if not (np.isfinite(low).all() and np.isfinite(high).all() and (high > low).all()):
        raise DataError(f"{name}: the action space must be bounded (low < high, finite)")
    return Transitions(
        **{k: np.concatenate(v) for k, v in parts.items()},
        episode_returns=np.asarray(returns, dtype=np.float64), action_low=low, action_high=high,
        dataset_id=str(meta.get("dataset_id", name)), env_id=_env_id(ds.env_spec),
        eval_env_id=_env_id(_eval_env_spec(ds)) or _env_id(ds.env_spec),
        ref_min_score=_opt_float(meta.get("ref_min_score")), ref_max_score=_opt_float(meta.get("ref_max_score")),
        metadata=meta, eval_env_spec=_eval_env_spec(ds) or ds.env_spec,
        observation_space=obs_space, action_space=act_space,
    )


def _eval_env_spec(ds):
    """The dataset's evaluation env spec (Minari's `eval_env`), or None when it names none. Minari 0.5 exposes
    it only through `recover_environment(eval_env=True)`, which builds the env; the parsed spec it builds from
    is read instead (`_eval_env_spec`, or a public `eval_env_spec` where a release has one)."""
    return getattr(ds, "eval_env_spec", None) or getattr(ds, "_eval_env_spec", None)


def _opt_float(x) -> float | None:
    return None if x is None else float(x)


def load_transitions(dataset: str) -> Transitions:
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
            "actions": self.action_to_unit(tr.actions), "rewards": self.reward(tr.rewards),
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
