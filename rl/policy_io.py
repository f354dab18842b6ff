"""The one policy file format of reins: a trained actor (online or offline) in one safe `.pt` file, loaded back as
a `Policy` that acts on numpy batches (`load_policy(path).act(obs, deterministic, rng)`).

File format "reins-policy-v2" (a plain dict; loadable with `torch.load(weights_only=True)`):
    format, algo, env_id, arch (an `rl.nets` actor spec), state_dict (actor tensors),
    observation_space {type, low, high} | None, action_space {type: "box", low, high} | {type: "discrete", n},
    obs_norm: None | {mean, var, clip, eps} (online running statistics: clip((obs - mean) / sqrt(var + eps))) |
              {mean, std} (offline: fixed dataset statistics, (obs - mean) / std in their float32),
    unit_actions: False (online: the Policy maps the actor's outputs to the env, per kind, in float64) | True
              (offline: `actor.act(x)` is in [-1, 1] and maps affinely to the action box in the box's dtype),
    explore {noise_std | epsilon} (behaviour noise for act(..., deterministic=False) of deterministic /
    value-based online actors), meta (plain extras, e.g. step, eval_return, dataset_id).

`offline/` uses `load_policy(path).act(...)` to generate behaviour data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pgcore.distributions import scale_action
from reins.errors import DataError
from reins.runio import atomic_torch_save, safe_torch_load
from rl.envs import EnvSpec
from rl.nets import build_actor

FORMAT = "reins-policy-v2"


def policy_dict(*, actor: nn.Module, arch: dict, algo: str, spec: EnvSpec | None = None, env_id: str = "",
                action_space: dict | None = None, observation_space: dict | None = None,
                obs_norm: dict | None = None, unit_actions: bool = False, explore: dict | None = None,
                meta: dict | None = None) -> dict:
    """The policy file's contents (see the module docstring); `Policy(policy_dict(...))` acts without a file.
    An online agent passes its env `spec`; an offline stage passes env_id and the spaces."""
    if spec is not None:
        env_id, action_space, observation_space = (spec.env_id, spec.action_space_dict(),
                                                   spec.observation_space_dict())
    return {
        "format": FORMAT,
        "algo": algo,
        "env_id": env_id,
        "arch": dict(arch),
        "state_dict": {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()},
        "observation_space": observation_space,
        "action_space": action_space,
        "obs_norm": obs_norm,
        "unit_actions": bool(unit_actions),
        "explore": dict(explore or {}),
        "meta": dict(meta or {}),
    }


def save_policy(path: str | Path, **kwargs) -> None:
    """Write the actor and everything needed to act with it to `path` (atomic write); `policy_dict`'s keywords."""
    atomic_torch_save(policy_dict(**kwargs), path)


class Policy:
    """A loaded actor. `act(obs [N, obs_dim]) -> actions` valid for `env.step` (Box-clipped / int)."""

    def __init__(self, data: dict, device: str | torch.device = "cpu"):
        self.source_format = data.get("format")
        self.data = data
        self.env_id: str = data["env_id"]
        self.algo: str = data["algo"]
        self.arch: dict = data["arch"]
        self.meta: dict = data.get("meta", {})
        self.device = torch.device(device)
        with torch.device("meta"):  # no random init: it would be overwritten, and it would draw from torch's RNG
            self.actor = build_actor(self.arch)
        self.actor.load_state_dict({k: v.clone() for k, v in data["state_dict"].items()}, assign=True)
        self.actor.to(self.device).eval()
        space = data["action_space"]
        self.discrete = space["type"] == "discrete"
        if self.discrete:
            self.n_actions = int(space["n"])
        else:
            self.low = space["low"].numpy()
            self.high = space["high"].numpy()
        self.obs_norm = data.get("obs_norm")
        self.unit_actions = bool(data.get("unit_actions", False))
        self.explore = data.get("explore", {})

    def normalize(self, obs: np.ndarray) -> torch.Tensor:
        n = self.obs_norm
        if n is not None and "std" in n:  # fixed statistics of an offline dataset, applied in float32
            x = ((np.asarray(obs, dtype=np.float32) - n["mean"].numpy()) / n["std"].numpy()).astype(np.float32)
            return torch.as_tensor(x, device=self.device)
        obs = np.asarray(obs, dtype=np.float64).reshape(len(obs), -1)
        if n is not None:
            obs = np.clip((obs - n["mean"].numpy()) / np.sqrt(n["var"].numpy() + n["eps"]), -n["clip"], n["clip"])
        return torch.as_tensor(obs, dtype=torch.float32, device=self.device)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True,
            rng: np.random.Generator | None = None) -> np.ndarray:
        """Actions for a batch of observations. Stochastic actions draw from `rng` (numpy), except those of a
        `unit_actions` actor, which samples with torch's global generator."""
        obs = np.asarray(obs)
        if obs.ndim == 1:
            raise ValueError("Policy.act expects a batch of observations [N, obs_dim]")
        if not deterministic and rng is None:
            rng = np.random.default_rng()
        x = self.normalize(obs)
        if self.unit_actions:
            u = self.actor.act(x, deterministic=deterministic).float().cpu().numpy()
            u = torch.from_numpy(u.astype(np.result_type(u, self.low)))  # the box's dtype when it is wider
            return scale_action(u, self.low, self.high).numpy().astype(np.float32)
        kind = self.arch["kind"]
        n = x.shape[0]
        if kind in ("categorical", "q"):
            out = self.actor(x)
            greedy = out.argmax(dim=-1).numpy()
            if deterministic:
                return greedy.astype(np.int64)
            if kind == "categorical":
                p = torch.softmax(out.double(), dim=-1).numpy()
                u = rng.random((n, 1))
                return np.minimum((np.cumsum(p, axis=-1) < u).sum(axis=-1), self.n_actions - 1).astype(np.int64)
            eps = float(self.explore.get("epsilon", 0.0))
            rand = rng.integers(0, self.n_actions, size=n)
            return np.where(rng.random(n) < eps, rand, greedy).astype(np.int64)
        if kind == "gaussian":
            mean, log_std = self.actor(x)
            a = mean.numpy().astype(np.float64)
            if not deterministic:
                a = a + np.exp(log_std.numpy()) * rng.standard_normal(a.shape)
        elif kind == "tanh_gaussian":
            mean, log_std = self.actor(x)
            u = mean.numpy().astype(np.float64)
            if not deterministic:
                u = u + np.exp(log_std.numpy()) * rng.standard_normal(u.shape)
            a = scale_action(torch.from_numpy(np.tanh(u)), self.low, self.high).numpy()
        elif kind == "deterministic":
            a = self.actor(x).numpy().astype(np.float64)
            if not deterministic:
                a = a + float(self.explore.get("noise_std", 0.0)) * rng.standard_normal(a.shape)
            a = scale_action(torch.from_numpy(np.clip(a, -1.0, 1.0)), self.low, self.high).numpy()
        else:
            raise DataError(f"policy of unknown kind {kind!r}")
        return np.clip(a, self.low, self.high).astype(np.float32)


def load_policy(path: str | Path, device: str | torch.device = "cpu") -> Policy:
    """Load a policy file; DataError if it is missing or not one."""
    data = safe_torch_load(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a reins policy file (expected format {FORMAT})")
    try:
        return Policy(data, device)
    except (KeyError, RuntimeError, ValueError, TypeError) as e:
        raise DataError(f"{path}: malformed policy file: {str(e).splitlines()[0]}") from None


def export_portable(policy: Policy, out_dir: str | Path) -> dict:
    """Write `policy` as rl.portable's policy.safetensors + policy.json (numpy-only loading); returns the
    spec. Only 1-D Box observations: the spec applies no flattening or one-hot encoding of other spaces (an
    offline dataset's observations are such a Box)."""
    from rl import portable

    if not policy.unit_actions:
        _require_box_observations(policy.env_id)
    kind = policy.arch["kind"]
    linears, activation = portable.linear_layers(policy.actor.net)
    tensors = portable.portable_tensors(linears, out_rows=policy.arch["act_dim"] if kind == "tanh_gaussian" else None)
    dim = linears[0].in_features
    n = policy.obs_norm
    if n is not None and "std" in n:
        tensors.update(portable.obs_tensors(n["mean"].numpy(), n["std"].numpy()))
    elif n is not None:
        std = np.sqrt(n["var"].double().numpy() + n["eps"])
        tensors.update(portable.obs_tensors(n["mean"].double().numpy(), std, float(n["clip"])))
    else:
        tensors.update(portable.obs_tensors(np.zeros(dim), np.ones(dim)))
    if policy.discrete:
        output = "argmax"
    else:
        output = "clip" if kind == "gaussian" else "tanh"  # every other Box actor acts as tanh(head)
        tensors.update(portable.box_tensors(policy.low, policy.high))
    meta = {"algo": policy.algo, "source_format": policy.source_format, **{k: v for k, v in policy.meta.items()
                                                             if isinstance(v, (int, float, str))}}
    portable.write_portable(out_dir, env_id=policy.env_id, activation=activation, output=output, tensors=tensors,
                            meta=meta)
    return json.loads((Path(out_dir) / portable.SPEC).read_text())


def _require_box_observations(env_id: str) -> None:
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except Exception as e:  # noqa: BLE001 - any failure to build the env: say which env
        raise DataError(f"cannot export: env '{env_id}' cannot be created ({str(e).splitlines()[0]})") from None
    space = env.observation_space
    env.close()
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise DataError(f"cannot export: env '{env_id}' has {space} observations; the portable policy takes "
                        "1-D Box observations only")
