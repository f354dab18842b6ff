"""IQL and CQL gradient updates per second: reins (offline/iql.py, offline/cql.py) vs d3rlpy 2.8.1.

Identical work: the same transition table (driver-written, Hopper-v5 sizes: obs 11, actions 3 in [-1, 1],
episodes of 1000 steps), no observation/reward scaling, `hidden` ReLU MLPs for actor, twin critics and (IQL)
value net, batch size, gamma 0.99, tau 0.005, threads. A step is what each library's training loop does per
update: reins samples on the device from `offline.data.DeviceBuffer` and calls `update`; d3rlpy calls
`dataset.sample_transition_batch(batch)` then `algo.update(batch)` (its `fit` loop without the logger).
Hyperparameters follow d3rlpy's defaults on both sides:
- IQL: lr 3e-4 (actor, critics, value), expectile 0.7, beta 3, max weight 100, Gaussian actor with a
  state-independent log-std in [-5, 2], no actor lr schedule (d3rlpy has none by default).
- CQL: actor lr 1e-4, critic lr 3e-4, temperature lr 1e-4 from 1.0, Lagrange alpha' lr 1e-4 from 1.0 with
  threshold 10 and conservative weight 5, 10 sampled actions with importance sampling, no entropy backup.
Final loss: IQL critic loss (Q MSE sum), CQL actor loss, mean over the last block (reported by both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import count_flops, serve, start_worker

OBS, ACT, EPISODE = 11, 3, 1000
SIZES = {
    "small": {"algos": ["iql", "cql"], "hidden": [64, 64], "batch": 64, "transitions": 5000, "warmup": 10,
              "blocks": 4, "block_steps": 25},
    "full": {"algos": ["iql", "cql"], "hidden": [256, 256], "batch": 256, "transitions": 100_000, "warmup": 50,
             "blocks": 6, "block_steps": 200},
}
TARGET = 3.0  # issue 6 / issue 8: >= 3x d3rlpy
PEER = "d3rlpy"


def prepare(size: str, workdir: Path, threads: int, device: str, seed: int = 0) -> list[dict]:
    cfg = SIZES[size]
    n = cfg["transitions"]
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n + 1, OBS)).astype(np.float32)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[EPISODE - 1::EPISODE] = True
    timeouts[-1] = True
    data = {"observations": obs[:-1], "next_observations": obs[1:],
            "actions": rng.uniform(-0.99, 0.99, (n, ACT)).astype(np.float32),
            "rewards": rng.standard_normal(n).astype(np.float32),
            "terminals": np.zeros(n, dtype=np.float32), "timeouts": timeouts}
    path = workdir / "offline-transitions.npz"
    np.savez(path, **data)
    out = []
    for algo in cfg["algos"]:
        spec = {"name": f"{algo}_vs_d3rlpy", "algo": algo, "hidden": cfg["hidden"], "batch": cfg["batch"],
                "data": str(path), "threads": threads, "device": device, "seed": seed, "warmup": cfg["warmup"]}
        out.append({"spec": spec, "blocks": cfg["blocks"], "block_steps": cfg["block_steps"], "items_per_step": 1,
                    "unit": "updates/s", "target": TARGET, "peer": PEER, "venv": "d3rlpy",
                    "size_desc": f"Hopper sizes, {cfg['hidden']} MLPs, batch {cfg['batch']}, {n} transitions"})
    return out


def _ours(spec: dict):
    import torch

    from offline import cql, iql
    from offline.data import DeviceBuffer

    d = np.load(spec["data"])
    device = torch.device(spec["device"])
    torch.manual_seed(spec["seed"])
    arrays = {k: d[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals")}
    buf = DeviceBuffer(arrays, device)
    gen = torch.Generator(device=device).manual_seed(spec["seed"])
    h, b = list(spec["hidden"]), spec["batch"]
    if spec["algo"] == "iql":
        cfg = iql.Config(hidden=h, batch_size=b, gamma=0.99, tau=0.005, expectile=0.7, beta=3.0, max_weight=100.0,
                         actor="gaussian", actor_lr=3e-4, critic_lr=3e-4, value_lr=3e-4, actor_cosine=False,
                         normalize_obs=False)
        algo, key = iql.IQL(cfg, OBS, ACT, device), "loss/q"
    else:
        cfg = cql.Config(hidden=h, q_hidden=h, batch_size=b, gamma=0.99, tau=0.005, policy_lr=1e-4, qf_lr=3e-4,
                         alpha_lr=1e-4, alpha=1.0, auto_alpha=True, backup_entropy=False, cql_alpha=5.0,
                         cql_n_actions=10, cql_importance_sample=True, cql_lagrange=True,
                         cql_target_action_gap=10.0, cql_log_alpha_prime_init=0.0, cql_alpha_prime_lr=1e-4,
                         bc_steps=0, normalize_obs=False)
        algo, key = cql.CQL(cfg, OBS, ACT, device), "loss/actor"

    def step():
        return algo.update(buf.sample(b, gen))[key]

    flops, _ = count_flops(step)
    return step, flops, {"torch": torch.__version__}


def _peer(spec: dict):
    import d3rlpy
    import torch
    from d3rlpy.models.encoders import VectorEncoderFactory

    d = np.load(spec["data"])
    d3rlpy.seed(spec["seed"])
    dataset = d3rlpy.dataset.MDPDataset(d["observations"], d["actions"], d["rewards"], d["terminals"],
                                        d["timeouts"], action_space=d3rlpy.ActionSpace.CONTINUOUS)
    enc = VectorEncoderFactory(hidden_units=list(spec["hidden"]))
    b = spec["batch"]
    if spec["algo"] == "iql":
        algo = d3rlpy.algos.IQLConfig(batch_size=b, gamma=0.99, tau=0.005, n_critics=2, expectile=0.7,
                                      weight_temp=3.0, max_weight=100.0, actor_learning_rate=3e-4,
                                      critic_learning_rate=3e-4, actor_encoder_factory=enc,
                                      critic_encoder_factory=enc, value_encoder_factory=enc,
                                      ).create(device=_d3_device(spec["device"]))
        key = "critic_loss"
    else:
        algo = d3rlpy.algos.CQLConfig(batch_size=b, gamma=0.99, tau=0.005, n_critics=2, actor_learning_rate=1e-4,
                                      critic_learning_rate=3e-4, temp_learning_rate=1e-4, alpha_learning_rate=1e-4,
                                      initial_temperature=1.0, initial_alpha=1.0, alpha_threshold=10.0,
                                      conservative_weight=5.0, n_action_samples=10, soft_q_backup=False,
                                      actor_encoder_factory=enc, critic_encoder_factory=enc,
                                      ).create(device=_d3_device(spec["device"]))
        key = "actor_loss"
    algo.build_with_dataset(dataset)

    def step():
        return algo.update(dataset.sample_transition_batch(b))[key]

    flops, _ = count_flops(step)
    return step, flops, {"torch": torch.__version__, "d3rlpy": d3rlpy.__version__}


def _d3_device(device: str):
    return "cuda:0" if device.startswith("cuda") else False


def main(argv=None) -> int:
    side, spec, out, clock = start_worker(argv)
    step, flops, versions = (_ours if side == "ours" else _peer)(spec)
    serve(clock, step)
    clock.final(out, flops_per_step=flops, versions=versions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
