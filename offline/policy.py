"""The policy an offline stage writes (`policy.pt`): actor weights plus the data normalisation it needs.

`load_offline_policy(path).act(obs)` takes raw environment observations [N, obs_dim] and returns actions in
the environment's action box, so evaluation and `reins collect` can use it like an online/ policy.
The file is a plain dict of tensors/numbers/strings, loaded with weights_only=True.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from offline.data import Normalization
from offline.nets import build_actor
from reins.errors import DataError
from reins.runio import atomic_torch_save, safe_torch_load

FORMAT = "reins-offline-policy-v1"


class OfflinePolicy:
    """Actor + normalisation; `act` maps raw observations to environment actions (numpy in, numpy out)."""

    def __init__(self, actor: torch.nn.Module, norm: Normalization, *, env_id: str | None = None,
                 spec: dict | None = None):
        self.actor = actor.eval()
        self.norm = norm
        self.env_id = env_id
        self.spec = spec or {}
        self.device = next(actor.parameters()).device

    @torch.no_grad()
    def act(self, obs: np.ndarray, deterministic: bool = True, rng=None) -> np.ndarray:
        x = torch.as_tensor(self.norm.obs(np.asarray(obs, dtype=np.float32)), device=self.device)
        u = self.actor.act(x, deterministic=deterministic)
        return self.norm.action_from_unit(u.float().cpu().numpy())


def policy_state(actor: torch.nn.Module, spec: dict, norm: Normalization, *, env_id: str | None,
                 dataset_id: str, algo: str) -> dict:
    return {
        "format": FORMAT, "algo": algo, "spec": dict(spec), "env_id": env_id or "", "dataset_id": dataset_id,
        "state_dict": {k: v.detach().cpu().clone() for k, v in actor.state_dict().items()},
        "normalization": norm.state_dict(),
    }


def save_policy(path: str | Path, state: dict) -> None:
    atomic_torch_save(state, path)


def policy_from_state(state: dict, device: str | torch.device = "cpu") -> OfflinePolicy:
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError("not a reins offline policy file (missing format tag)")
    spec = dict(state["spec"])
    actor = build_actor(spec.pop("kind"), spec.pop("obs_dim"), spec.pop("act_dim"), spec.pop("hidden"), **spec)
    actor.load_state_dict(state["state_dict"])
    actor.to(device)
    return OfflinePolicy(actor, Normalization.from_state_dict(state["normalization"]),
                         env_id=state.get("env_id") or None, spec=dict(state["spec"]))


def load_offline_policy(path: str | Path, device: str | torch.device = "cpu") -> OfflinePolicy:
    return policy_from_state(safe_torch_load(path), device)


def export_portable(policy: OfflinePolicy, out_dir: str | Path, *, algo: str = "", dataset_id: str = "") -> dict:
    """Write `policy` as online.portable's policy.safetensors + policy.json (numpy-only loading); returns the
    spec. Every offline actor acts as tanh(head) scaled to the action box (the tanh-Gaussian's mode keeps the
    mean half of its head)."""
    import json

    from online import portable

    kind = policy.actor.kind
    linears, activation = portable.linear_layers(policy.actor.net)
    act_dim = len(policy.norm.action_low)
    tensors = portable.portable_tensors(linears, out_rows=act_dim if kind == "tanh_gaussian" else None)
    tensors.update(portable.obs_tensors(policy.norm.obs_mean, policy.norm.obs_std))
    tensors.update(portable.box_tensors(policy.norm.action_low, policy.norm.action_high))
    portable.write_portable(out_dir, env_id=policy.env_id or "", activation=activation, output="tanh",
                            tensors=tensors, meta={"algo": algo, "dataset_id": dataset_id, "source_format": FORMAT})
    return json.loads((Path(out_dir) / portable.SPEC).read_text())
