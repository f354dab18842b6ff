"""Save a trained actor to one safe `.pt` file and load it back as a `Policy` that acts on numpy batches.

File format "reins-policy-v1" (a plain dict; loadable with `torch.load(weights_only=True)`):
    format, algo, env_id, arch (the `online.nets` spec), state_dict (actor tensors),
    observation_space {type, low, high}, action_space {type: "box", low, high} | {type: "discrete", n},
    obs_norm {mean, var, clip, eps} | None, explore {noise_std | epsilon} (behaviour noise for act(...,
    deterministic=False) of deterministic / value-based actors), meta (plain extras, e.g. step, eval_return).

`offline/` uses `load_policy(path).act(obs, deterministic, rng)` to generate behaviour data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from online.envs import EnvSpec
from online.nets import build_actor
from pgcore.distributions import scale_action
from reins.errors import DataError
from reins.runio import atomic_torch_save, safe_torch_load

FORMAT = "reins-policy-v1"


def policy_dict(*, actor: nn.Module, arch: dict, spec: EnvSpec, algo: str, obs_norm: dict | None = None,
                explore: dict | None = None, meta: dict | None = None) -> dict:
    """The policy file's contents (see the module docstring); `Policy(policy_dict(...))` acts without a file."""
    return {
        "format": FORMAT,
        "algo": algo,
        "env_id": spec.env_id,
        "arch": dict(arch),
        "state_dict": {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()},
        "observation_space": spec.observation_space_dict(),
        "action_space": spec.action_space_dict(),
        "obs_norm": obs_norm,
        "explore": dict(explore or {}),
        "meta": dict(meta or {}),
    }


def save_policy(path: str | Path, *, actor: nn.Module, arch: dict, spec: EnvSpec, algo: str,
                obs_norm: dict | None = None, explore: dict | None = None, meta: dict | None = None) -> None:
    """Write the actor and everything needed to act with it to `path` (atomic write)."""
    atomic_torch_save(policy_dict(actor=actor, arch=arch, spec=spec, algo=algo, obs_norm=obs_norm,
                                  explore=explore, meta=meta), path)


class Policy:
    """A loaded actor. `act(obs [N, obs_dim]) -> actions` valid for `env.step` (Box-clipped / int)."""

    def __init__(self, data: dict):
        self.data = data
        self.env_id: str = data["env_id"]
        self.algo: str = data["algo"]
        self.arch: dict = data["arch"]
        self.meta: dict = data.get("meta", {})
        self.actor = build_actor(self.arch)
        self.actor.load_state_dict(data["state_dict"])
        self.actor.eval()
        space = data["action_space"]
        self.discrete = space["type"] == "discrete"
        if self.discrete:
            self.n_actions = int(space["n"])
        else:
            self.low = space["low"].numpy()
            self.high = space["high"].numpy()
        self.obs_norm = data.get("obs_norm")
        self.explore = data.get("explore", {})

    def normalize(self, obs: np.ndarray) -> torch.Tensor:
        obs = np.asarray(obs, dtype=np.float64).reshape(len(obs), -1)
        if self.obs_norm is not None:
            mean, var = self.obs_norm["mean"].numpy(), self.obs_norm["var"].numpy()
            obs = np.clip((obs - mean) / np.sqrt(var + self.obs_norm["eps"]), -self.obs_norm["clip"],
                          self.obs_norm["clip"])
        return torch.as_tensor(obs, dtype=torch.float32)

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True,
            rng: np.random.Generator | None = None) -> np.ndarray:
        obs = np.asarray(obs)
        if obs.ndim == 1:
            raise ValueError("Policy.act expects a batch of observations [N, obs_dim]")
        if not deterministic and rng is None:
            rng = np.random.default_rng()
        x = self.normalize(obs)
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


def load_policy(path: str | Path) -> Policy:
    """Load a policy file written by `save_policy`; DataError if it is missing or not one."""
    data = safe_torch_load(path)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise DataError(f"{path}: not a reins policy file (expected format {FORMAT})")
    try:
        return Policy(data)
    except (KeyError, RuntimeError, ValueError) as e:
        raise DataError(f"{path}: malformed policy file: {str(e).splitlines()[0]}") from None


def export_portable(policy: Policy, out_dir: str | Path) -> dict:
    """Write `policy` as online.portable's policy.safetensors + policy.json (numpy-only loading); returns the
    spec. Only 1-D Box observations: the spec applies no flattening or one-hot encoding of other spaces."""
    from online import portable

    _require_box_observations(policy.env_id)
    kind = policy.arch["kind"]
    net = policy.actor.trunk if kind == "tanh_gaussian" else policy.actor.net
    linears, activation = portable.linear_layers(net)
    tensors = portable.portable_tensors(linears, out_rows=policy.arch["act_dim"] if kind == "tanh_gaussian" else None)
    dim = linears[0].in_features
    if policy.obs_norm is not None:
        n = policy.obs_norm
        std = np.sqrt(n["var"].double().numpy() + n["eps"])
        tensors.update(portable.obs_tensors(n["mean"].double().numpy(), std, float(n["clip"])))
    else:
        tensors.update(portable.obs_tensors(np.zeros(dim), np.ones(dim)))
    if policy.discrete:
        output = "argmax"
    else:
        output = "clip" if kind == "gaussian" else "tanh"  # tanh_gaussian's mode and deterministic are tanh(x)
        tensors.update(portable.box_tensors(policy.low, policy.high))
    meta = {"algo": policy.algo, "source_format": FORMAT, **{k: v for k, v in policy.meta.items()
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
