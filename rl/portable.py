"""A policy as two files any numpy user can act with: `policy.safetensors` (weights) and `policy.json` (spec).

Every reins actor, online or offline, acts deterministically as the same small computation:

    x = clip((obs - obs_mean) / obs_std, -obs_clip, obs_clip)
    x = W_{L-1} act(... act(W_0 x + b_0) ...) + b_{L-1}          (act: tanh or relu between layers)
    action = argmax(x)                                           output "argmax" (Discrete)
           = clip(mid + half * tanh(x), low, high)               output "tanh"   (squashed Box actors)
           = clip(x, low, high)                                  output "clip"   (unsquashed Gaussian means)

so the export keeps only what this needs: the Linear layers (a squashed Gaussian's head cut to its mean rows),
the observation normalisation and the action box. `EXAMPLE` (also in README.md) is the whole loader.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch import nn

from reins.errors import DataError

FORMAT = "reins-portable-policy-v1"
WEIGHTS, SPEC = "policy.safetensors", "policy.json"
ACTIVATIONS = {nn.Tanh: "tanh", nn.ReLU: "relu"}

EXAMPLE = '''\
import json, gymnasium as gym, numpy as np
from safetensors.numpy import load_file
spec, w = json.load(open("policy/policy.json")), load_file("policy/policy.safetensors")
def act(obs):  # one observation -> the policy's deterministic action
    x = np.clip((obs - w["obs_mean"]) / w["obs_std"], -w["obs_clip"], w["obs_clip"])
    for i in range(spec["layers"]):
        x = x @ w[f"weight_{i}"].T + w[f"bias_{i}"]
        if i < spec["layers"] - 1: x = np.tanh(x) if spec["activation"] == "tanh" else np.maximum(x, 0)
    if spec["output"] == "argmax": return int(np.argmax(x))
    return np.clip(w["mid"] + w["half"] * np.tanh(x) if spec["output"] == "tanh" else x, w["low"], w["high"])
env, done, ret = gym.make(spec["env_id"]), False, 0.0
obs, _ = env.reset(seed=0)
while not done:
    obs, r, term, trunc, _ = env.step(act(obs)); done, ret = term or trunc, ret + r
print(f"return {ret:.1f}")
'''


def linear_layers(net: nn.Sequential) -> tuple[list[nn.Linear], str]:
    """The Linear layers of an MLP (Linear, activation[, Dropout], ..., Linear) and its activation's name."""
    linears, acts = [], set()
    for m in net:
        if isinstance(m, nn.Linear):
            linears.append(m)
        elif type(m) in ACTIVATIONS:
            acts.add(ACTIVATIONS[type(m)])
        elif not isinstance(m, nn.Dropout):  # dropout is the identity when acting
            raise DataError(f"cannot export a network with a {type(m).__name__} layer")
    if len(acts) > 1:
        raise DataError(f"cannot export a network mixing activations {sorted(acts)}")
    if not linears or any(a.out_features != b.in_features for a, b in zip(linears[:-1], linears[1:])):
        raise DataError("cannot export: the network is not one straight MLP")
    return linears, (acts.pop() if acts else "relu")


def portable_tensors(linears: list[nn.Linear], *, out_rows: int | None = None) -> dict[str, np.ndarray]:
    """weight_i [out, in] / bias_i of each layer; `out_rows` keeps only the first rows of the last layer (the
    mean half of a Gaussian head that outputs [mean, log_std])."""
    out = {}
    for i, lin in enumerate(linears):
        w, b = lin.weight.detach().float().cpu(), lin.bias.detach().float().cpu()
        if i == len(linears) - 1 and out_rows is not None:
            w, b = w[:out_rows], b[:out_rows]
        out[f"weight_{i}"], out[f"bias_{i}"] = w.numpy().copy(), b.numpy().copy()
    return out


def box_tensors(low: np.ndarray, high: np.ndarray) -> dict[str, np.ndarray]:
    low, high = np.asarray(low, np.float64), np.asarray(high, np.float64)
    return {"low": low.astype(np.float32), "high": high.astype(np.float32),
            "mid": ((high + low) / 2).astype(np.float32), "half": ((high - low) / 2).astype(np.float32)}


def obs_tensors(mean: np.ndarray, std: np.ndarray, clip: float = float("inf")) -> dict[str, np.ndarray]:
    return {"obs_mean": np.asarray(mean, np.float32), "obs_std": np.asarray(std, np.float32),
            "obs_clip": np.asarray(clip, np.float32)}


def write_portable(out_dir: str | Path, *, env_id: str, activation: str, output: str, tensors: dict,
                   meta: dict) -> None:
    """policy.safetensors + policy.json in `out_dir` (which the caller has checked is new or empty)."""
    from safetensors.numpy import save_file

    layers = sum(1 for k in tensors if k.startswith("weight_"))
    if output not in ("argmax", "tanh", "clip") or activation not in ("tanh", "relu"):
        raise ValueError(f"unknown output {output!r} or activation {activation!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out_dir / WEIGHTS),
              metadata={"format": FORMAT})
    spec = {"format": FORMAT, "env_id": env_id, "layers": layers, "activation": activation, "output": output,
            **meta}
    (out_dir / SPEC).write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")


def act_portable(spec: dict, w: dict[str, np.ndarray], obs: np.ndarray) -> np.ndarray:
    """`EXAMPLE`'s act for a batch [N, obs_dim] (what tests compare with the reins policy's own act)."""
    x = np.clip((obs - w["obs_mean"]) / w["obs_std"], -w["obs_clip"], w["obs_clip"])
    for i in range(spec["layers"]):
        x = x @ w[f"weight_{i}"].T + w[f"bias_{i}"]
        if i < spec["layers"] - 1:
            x = np.tanh(x) if spec["activation"] == "tanh" else np.maximum(x, 0)
    if spec["output"] == "argmax":
        return np.argmax(x, axis=-1)
    y = w["mid"] + w["half"] * np.tanh(x) if spec["output"] == "tanh" else x
    return np.clip(y, w["low"], w["high"])


def readme(spec: dict, source: str) -> str:
    return (f"# Policy for {spec['env_id'] or 'its environment'} (exported by reins)\n\n"
            f"Source: `{source}` ({spec.get('algo', '?')}). `policy.safetensors` holds the weights, `policy.json`"
            " the spec; acting needs numpy and safetensors only (gymnasium for the environment):\n\n"
            f"```python\n{EXAMPLE}```\n")
