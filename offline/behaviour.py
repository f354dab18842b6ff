"""Behaviour sources for `reins collect`: where the random/medium/expert policies and the replay data come from.

- `OnlineRunSource(run_dir)`: an `online/` stage output with `snapshots/index.json` ([{"step", "eval_return"}]),
  `snapshots/step_<N>.pt`, `replay.pt` and `policy.pt`. Expert = the best snapshot (or policy.pt when there are
  no snapshots); medium = the first snapshot whose eval return reaches random + fraction * (expert - random)
  (D4RL: a policy early-stopped at about one third of the expert); medium-replay = the replay transitions
  stored up to the medium snapshot's step.
- `ScriptedPendulumSource()`: an energy-pumping swing-up controller for Pendulum-v1 (no training needed; used by
  tests and the quickstart). Medium mixes it with uniform random actions; medium-replay is a sequence of
  episodes whose random-action probability falls from 1 to the medium level, like a learner's replay buffer.

Every policy is an object with `act(obs [N, d], deterministic=True, rng=None) -> actions [N, k]` (int64
indices [N] in a Discrete env: a DQN run's snapshots act epsilon-greedily, with its final epsilon, when not
deterministic).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reins.errors import DataError
from reins.runio import safe_torch_load


class UniformPolicy:
    def __init__(self, low, high):
        self.low, self.high = np.asarray(low, np.float32), np.asarray(high, np.float32)

    def act(self, obs, deterministic: bool = True, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = rng if rng is not None else np.random.default_rng()
        return rng.uniform(self.low, self.high, size=(len(obs), *self.low.shape)).astype(np.float32)


class UniformDiscretePolicy:
    """Uniformly random action indices of a Discrete(n) space (the random tier and ref_min of Discrete envs)."""

    def __init__(self, n: int):
        self.n = int(n)

    def act(self, obs, deterministic: bool = True, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = rng if rng is not None else np.random.default_rng()
        return rng.integers(0, self.n, size=len(obs)).astype(np.int64)


def uniform_policy(space):
    """The uniform random policy of a gymnasium Box or Discrete action space."""
    if hasattr(space, "n"):
        return UniformDiscretePolicy(space.n)
    return UniformPolicy(space.low, space.high)


def stored_actions(a: np.ndarray, n: int) -> np.ndarray:
    """Actions as a tier stores them: int64 indices [n] for a Discrete space, float32 rows [n, k] for a Box."""
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.integer):
        return a.reshape(n).astype(np.int64)
    return a.reshape(n, -1).astype(np.float32)


class PendulumSwingUp:
    """Energy-based swing-up with a PD catch near the top (Pendulum-v1: g = 10, m = l = 1, |u| <= 2).

    E = theta_dot^2 / 2 + (3g / 2l)(cos theta - 1) is 0 at rest upright; dE/dt = 3 u theta_dot / (m l^2), so
    pushing along theta_dot raises E. With probability `epsilon` an action is uniform random instead;
    non-deterministic acting adds N(0, noise^2) torque noise.
    """

    def __init__(self, epsilon: float = 0.0, noise: float = 0.2):
        self.epsilon, self.noise = float(epsilon), float(noise)

    def act(self, obs, deterministic: bool = True, rng: np.random.Generator | None = None) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        c, s, w = obs[:, 0], obs[:, 1], obs[:, 2]
        energy = 0.5 * w ** 2 + 15.0 * (c - 1.0)
        pump = -0.4 * energy * np.sign(w)
        catch = -(10.0 * np.arctan2(s, c) + 2.0 * w)
        a = np.where(c > 0.85, catch, pump)
        if not deterministic:
            rng = rng if rng is not None else np.random.default_rng()
            a = a + self.noise * rng.standard_normal(a.shape)
        if self.epsilon > 0:
            rng = rng if rng is not None else np.random.default_rng()
            a = np.where(rng.random(a.shape) < self.epsilon, rng.uniform(-2.0, 2.0, a.shape), a)
        return np.clip(a, -2.0, 2.0).astype(np.float32)[:, None]


@dataclass
class Episode:
    """One episode as Minari stores it: observations has one more row than actions."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    seed: int | None = None
    env_index: int | None = None   # replay episodes: the online env that ran it ...
    start_step: int | None = None  # ... and the env step (replay `global_step`) of its first transition

    def __len__(self) -> int:
        return len(self.rewards)


def replay_episodes(replay: dict, up_to_step: int | None = None) -> list[Episode]:
    """Cut an online replay dump (insertion order, interleaved env_index) into per-env episodes.

    An episode ends at terminated or truncated; a break in continuity (next_obs[t] != obs[t+1] for the same
    env, e.g. a buffer that wrapped around) also ends one, marked truncated. A trailing unfinished episode is
    kept and marked truncated (its transitions are real; only the time limit differs).
    """
    need = ("observations", "next_observations", "actions", "rewards", "terminated", "truncated", "env_index",
            "global_step")
    missing = [k for k in need if k not in replay]
    if missing:
        raise DataError(f"replay dump lacks {', '.join(missing)}")
    arr = {k: (v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for k, v in replay.items()}
    keep = np.ones(len(arr["rewards"]), bool) if up_to_step is None else arr["global_step"] < up_to_step
    episodes: list[Episode] = []
    for env in np.unique(arr["env_index"][keep]):
        idx = np.flatnonzero(keep & (arr["env_index"] == env))
        start = 0
        for j in range(len(idx)):
            i = idx[j]
            ended = bool(arr["terminated"][i] or arr["truncated"][i])
            last = j == len(idx) - 1
            broken = not last and not ended and not np.array_equal(arr["next_observations"][i],
                                                                   arr["observations"][idx[j + 1]])
            if ended or broken or last:
                rows = idx[start:j + 1]
                term = arr["terminated"][rows].astype(bool)
                trunc = arr["truncated"][rows].astype(bool) & ~term
                if not ended:
                    trunc[-1] = True
                obs = np.concatenate([arr["observations"][rows], arr["next_observations"][rows[-1:]]])
                acts = stored_actions(arr["actions"][rows], len(rows))
                episodes.append(Episode(obs.astype(np.float32), acts,
                                        arr["rewards"][rows].astype(np.float64), term, trunc,
                                        env_index=int(env), start_step=int(arr["global_step"][rows[0]])))
                start = j + 1
    return episodes


class ScriptedPendulumSource:
    """Scripted "learning curve": snapshots are the controller with random-action probability 1.0, 0.95, ... 0."""

    name = "scripted-pendulum"

    def __init__(self, replay_episodes: int = 100):
        self.n_replay = replay_episodes
        self.medium_epsilon = 1.0

    def expert(self):
        return PendulumSwingUp(0.0)

    def medium(self, threshold: float | None, evaluate) -> tuple:
        """The first "snapshot" (falling epsilon) whose mean return, by `evaluate(policy)`, reaches threshold."""
        for eps in np.round(np.arange(1.0, -1e-9, -0.05), 2):
            ret = evaluate(PendulumSwingUp(float(eps)))
            if threshold is None or ret >= threshold:
                self.medium_epsilon = float(eps)
                return PendulumSwingUp(float(eps)), {"medium/epsilon": float(eps), "medium/eval_return": ret}
        raise DataError(f"scripted pendulum: no epsilon reaches the medium threshold {threshold:.2f}")

    def replay_policies(self) -> list:
        """One policy per replay episode: random-action probability from 1 down to the medium level."""
        eps = np.linspace(1.0, self.medium_epsilon, self.n_replay)
        return [PendulumSwingUp(float(e)) for e in eps]


class OnlineRunSource:
    name = "online"

    def __init__(self, run_dir: str | Path):
        self.run = Path(run_dir)
        if not self.run.is_dir():
            raise DataError(f"behaviour run not found: {self.run}")
        index = self.run / "snapshots" / "index.json"
        self.snapshots = []
        if index.is_file():
            try:
                self.snapshots = sorted(json.loads(index.read_text()), key=lambda r: int(r["step"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise DataError(f"{index}: malformed snapshot index ({e})") from None
        self._medium_step: int | None = None

    def _load(self, path: Path):
        from rl.policy_io import load_policy

        return load_policy(path)

    def _snap(self, row) -> Path:
        return self.run / "snapshots" / f"step_{int(row['step'])}.pt"

    def expert(self):
        if not self.snapshots:
            return self._load(self.run / "policy.pt")
        best = max(self.snapshots, key=lambda r: float(r["eval_return"]))
        return self._load(self._snap(best))

    def medium(self, threshold: float | None, evaluate=None) -> tuple:
        """The first snapshot whose recorded eval return (the online run's own) reaches `threshold`."""
        if not self.snapshots:
            raise DataError(f"{self.run}: no snapshots/index.json; the online run needs save_snapshots=true "
                            "to provide a medium policy")
        hit = [r for r in self.snapshots if threshold is None or float(r["eval_return"]) >= threshold]
        if not hit:
            best = max(float(r["eval_return"]) for r in self.snapshots)
            raise DataError(f"{self.run}: no snapshot reaches the medium threshold {threshold:.2f} "
                            f"(best eval return {best:.2f})")
        row = hit[0]
        self._medium_step = int(row["step"])
        return self._load(self._snap(row)), {"medium/snapshot_step": self._medium_step,
                                             "medium/snapshot_eval_return": float(row["eval_return"])}

    def replay(self) -> list[Episode]:
        path = self.run / "replay.pt"
        if not path.is_file():
            raise DataError(f"{path}: missing; the online run needs save_replay=true for medium-replay")
        return replay_episodes(safe_torch_load(path), self._medium_step)
