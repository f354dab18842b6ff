"""The policy file an offline stage writes (`policy.pt`, `policy_best.pt`), in reins' one policy format.

`policy_state` fills `rl.policy_io`'s "reins-policy-v2" dict: the actor (an `rl.nets` spec), the dataset's
observation normalisation (fixed mean/std) and action box, and `unit_actions` (the actor acts in [-1, 1], mapped
affinely onto the box). `rl.policy_io.load_policy(path).act(obs)` then takes raw environment observations
[N, obs_dim] and returns actions in the environment's action box, as for an online policy; a Discrete policy
returns int64 action indices (its actor's argmax, or a categorical sample).
"""

from __future__ import annotations

from pathlib import Path

import torch

from offline.data import Normalization
from reins.runio import atomic_torch_save
from rl.policy_io import policy_dict


def policy_state(actor: torch.nn.Module, spec: dict, norm: Normalization, *, env_id: str | None,
                 dataset_id: str, algo: str, n_actions: int | None = None) -> dict:
    """The policy file of `actor`; with `n_actions`, a Discrete policy ("q": greedy in Q, "categorical": the most
    likely action, or a sample) that returns action indices."""
    def tensor(x):
        return torch.from_numpy(x.copy())

    if n_actions is not None:
        return policy_dict(actor=actor, arch=spec, algo=algo, env_id=env_id or "",
                           action_space={"type": "discrete", "n": int(n_actions)},
                           obs_norm={"mean": tensor(norm.obs_mean), "std": tensor(norm.obs_std)},
                           meta={"dataset_id": dataset_id})
    return policy_dict(actor=actor, arch=spec, algo=algo, env_id=env_id or "",
                       action_space={"type": "box", "low": tensor(norm.action_low), "high": tensor(norm.action_high)},
                       obs_norm={"mean": tensor(norm.obs_mean), "std": tensor(norm.obs_std)}, unit_actions=True,
                       meta={"dataset_id": dataset_id})


def save_policy(path: str | Path, state: dict) -> None:
    atomic_torch_save(state, path)
