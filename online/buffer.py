"""A circular replay buffer of transitions (s, a, r, s', terminated, truncated) for the off-policy agents.

`next_observations` is always the true successor (the final observation when an episode ended), and only
`terminated` stops the bootstrap; `truncated` is kept for bookkeeping (replay memory of Mnih et al. 2015;
time-limit handling: Pardo et al. 2018). Sampling draws indices from a torch.Generator so it
is reproducible and checkpointable.
"""

from __future__ import annotations

import numpy as np
import torch

FIELDS = ("observations", "next_observations", "actions", "rewards", "terminated", "truncated", "env_index",
          "global_step")


class ReplayBuffer:
    def __init__(self, capacity: int, obs_dim: int, act_dim: int, discrete: bool):
        self.capacity = int(capacity)
        self.data = {
            "observations": np.zeros((capacity, obs_dim), dtype=np.float32),
            "next_observations": np.zeros((capacity, obs_dim), dtype=np.float32),
            "actions": (np.zeros((capacity,), dtype=np.int64) if discrete
                        else np.zeros((capacity, act_dim), dtype=np.float32)),
            "rewards": np.zeros((capacity,), dtype=np.float32),
            "terminated": np.zeros((capacity,), dtype=np.bool_),
            "truncated": np.zeros((capacity,), dtype=np.bool_),
            "env_index": np.zeros((capacity,), dtype=np.int64),
            "global_step": np.zeros((capacity,), dtype=np.int64),
        }
        self.pos = 0      # next slot to write
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, next_obs, actions, rewards, terminated, truncated, global_step: int) -> None:
        """Add one vector-env step: every array has a leading num_envs dimension."""
        n = len(rewards)
        idx = (self.pos + np.arange(n)) % self.capacity
        d = self.data
        d["observations"][idx] = np.asarray(obs).reshape(n, -1)
        d["next_observations"][idx] = np.asarray(next_obs).reshape(n, -1)
        d["actions"][idx] = actions
        d["rewards"][idx] = rewards
        d["terminated"][idx] = terminated
        d["truncated"][idx] = truncated
        d["env_index"][idx] = np.arange(n)
        d["global_step"][idx] = global_step
        self.pos = int((self.pos + n) % self.capacity)
        self.size = int(min(self.size + n, self.capacity))

    def mark_last_truncated(self, n: int) -> None:
        """Mark the last `n` transitions (one vector step) as truncated unless they terminated."""
        idx = (self.pos - 1 - np.arange(min(n, self.size))) % self.capacity
        d = self.data
        d["truncated"][idx] = np.logical_or(d["truncated"][idx], ~d["terminated"][idx])

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, self.size, (batch_size,), generator=generator).numpy()
        return {k: torch.from_numpy(self.data[k][idx]) for k in ("observations", "next_observations", "actions",
                                                                 "rewards", "terminated")}

    def _order(self) -> np.ndarray:
        """Slot indices in insertion order (oldest first)."""
        if self.size < self.capacity:
            return np.arange(self.size)
        return (self.pos + np.arange(self.capacity)) % self.capacity

    def export(self) -> dict[str, torch.Tensor]:
        """All stored transitions in insertion order, as tensors (the `replay.pt` format)."""
        order = self._order()
        return {k: torch.from_numpy(np.ascontiguousarray(v[order])) for k, v in self.data.items()}

    def state_dict(self) -> dict:
        return {"transitions": self.export(), "size": self.size, "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        n = int(state["size"])
        for k, v in state["transitions"].items():
            self.data[k][:n] = v.numpy()
        self.size = n
        self.pos = n % self.capacity
        # Re-inserting in insertion order maps slot i to transition i, so sampling indices differ from the
        # original run only when the buffer had wrapped: keep the original slot layout in that case.
        if n == self.capacity:
            order = (int(state["pos"]) + np.arange(n)) % n
            for k in self.data:
                vals = self.data[k][:n].copy()
                self.data[k][order] = vals
            self.pos = int(state["pos"])
