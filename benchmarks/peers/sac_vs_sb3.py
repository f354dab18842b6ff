"""SAC gradient updates per second: reins (online/sac.py) vs Stable-Baselines3 SAC, identical work.

Both sides get the same replay content (random transitions with the observation/action sizes of the named
env, written by the driver), the same networks (actor and twin critics, `hidden` ReLU MLPs), batch size,
learning rates (3e-4 everywhere), gamma 0.99, tau 0.005, automatic temperature starting at 0.2 with target
entropy -act_dim, one actor + temperature + critic + Polyak step per update, and the same thread count.
A step is one gradient update, called one at a time as each library's own loop does with train_freq=1,
gradient_steps=1 (reins: `SAC.update(buffer.sample(...))`; SB3: `model.train(gradient_steps=1)`).
Final loss: the mean critic loss (0.5 * sum of the two critics' MSE in both libraries) over the last block.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.common import BlockClock, count_flops, serve, start_worker

# obs_dim, act_dim, action bound of the envs whose sizes we borrow (Pendulum-v1, Hopper-v5)
ENVS = {"Pendulum-v1": (3, 1, 2.0), "Hopper-v5": (11, 3, 1.0)}
SIZES = {
    "small": {"envs": ["Pendulum-v1"], "hidden": [64, 64], "batch": 64, "transitions": 2000, "warmup": 20,
              "blocks": 4, "block_steps": 50},
    "full": {"envs": ["Pendulum-v1", "Hopper-v5"], "hidden": [256, 256], "batch": 256, "transitions": 50_000,
             "warmup": 100, "blocks": 6, "block_steps": 300},
}
TARGET = 2.0  # issue 3 / issue 8: >= 2x SB3
PEER = "stable-baselines3"


def prepare(size: str, workdir: Path, threads: int, device: str, seed: int = 0) -> list[dict]:
    """One comparison per env: its spec (written to disk by run_all) plus how to read the result."""
    cfg = SIZES[size]
    out = []
    for env_id in cfg["envs"]:
        obs_dim, act_dim, bound = ENVS[env_id]
        rng = np.random.default_rng(seed)
        n = cfg["transitions"]
        data = {"observations": rng.standard_normal((n, obs_dim)).astype(np.float32),
                "next_observations": rng.standard_normal((n, obs_dim)).astype(np.float32),
                "actions_unit": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
                "rewards": rng.standard_normal(n).astype(np.float32),
                "terminated": (rng.random(n) < 0.01)}
        path = workdir / f"sac-{env_id}.npz"
        np.savez(path, **data)
        b, h = cfg["batch"], cfg["hidden"]
        spec = {"name": f"sac_vs_sb3/{env_id}", "env_id": env_id, "obs_dim": obs_dim, "act_dim": act_dim,
                "bound": bound, "hidden": h, "batch": b, "data": str(path), "threads": threads, "device": device,
                "seed": seed, "lr": 3e-4, "warmup": cfg["warmup"]}
        out.append({"spec": spec, "blocks": cfg["blocks"], "block_steps": cfg["block_steps"], "items_per_step": 1,
                    "unit": "updates/s", "target": TARGET, "peer": PEER, "venv": "bench",
                    "size_desc": f"{env_id} sizes, {h} MLPs, batch {b}"})
    return out


def _ours(spec: dict, clock: BlockClock):
    import torch

    from online.buffer import ReplayBuffer
    from online.sac import SAC, SACConfig
    from rl.envs import EnvSpec

    d = np.load(spec["data"])
    od, ad, bound = spec["obs_dim"], spec["act_dim"], spec["bound"]
    es = EnvSpec(env_id=spec["env_id"], obs_dim=od, obs_low=np.full(od, -np.inf), obs_high=np.full(od, np.inf),
                 discrete=False, act_dim=ad, act_low=np.full(ad, -bound, dtype=np.float32),
                 act_high=np.full(ad, bound, dtype=np.float32))
    torch.manual_seed(spec["seed"])
    gen = torch.Generator().manual_seed(spec["seed"])
    lr = spec["lr"]
    agent = SAC(SACConfig(hidden=list(spec["hidden"]), batch_size=spec["batch"], actor_lr=lr, critic_lr=lr,
                          alpha_lr=lr, alpha=0.2, gamma=0.99, tau=0.005), es, gen,
                total_steps=len(d["rewards"]))
    n = len(d["rewards"])
    buf = ReplayBuffer(n, od, ad, False)
    buf.add(d["observations"], d["next_observations"], d["actions_unit"] * bound, d["rewards"], d["terminated"],
            np.zeros(n, dtype=bool), 0)
    batch = spec["batch"]

    def step():
        return agent.update(buf.sample(batch, gen), step=0)["loss/critic"].detach()

    flops, _ = count_flops(step)
    return step, flops, {"torch": torch.__version__}


def _peer(spec: dict, clock: BlockClock):
    import gymnasium as gym
    import stable_baselines3
    import torch
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    od, ad, bound = spec["obs_dim"], spec["act_dim"], spec["bound"]

    class BoxEnv(gym.Env):  # only the spaces matter: the replay buffer is filled directly
        observation_space = gym.spaces.Box(-np.inf, np.inf, (od,), np.float32)
        action_space = gym.spaces.Box(-bound, bound, (ad,), np.float32)

        def reset(self, *, seed=None, options=None):
            return np.zeros(od, np.float32), {}

        def step(self, action):
            return np.zeros(od, np.float32), 0.0, False, False, {}

    d = np.load(spec["data"])
    n = len(d["rewards"])
    model = SAC("MlpPolicy", BoxEnv(), learning_rate=spec["lr"], buffer_size=n, learning_starts=0,
                batch_size=spec["batch"], tau=0.005, gamma=0.99, train_freq=1, gradient_steps=1,
                ent_coef="auto_0.2", target_entropy="auto", policy_kwargs={"net_arch": list(spec["hidden"])},
                device=spec["device"], seed=spec["seed"], verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))
    rb = model.replay_buffer
    rb.observations[:, 0] = d["observations"]
    rb.next_observations[:, 0] = d["next_observations"]
    rb.actions[:, 0] = d["actions_unit"]  # SB3 stores actions rescaled to [-1, 1]
    rb.rewards[:, 0] = d["rewards"]
    rb.dones[:, 0] = d["terminated"]
    rb.timeouts[:] = 0
    rb.full, rb.pos = True, 0
    batch = spec["batch"]

    def step():
        model.train(gradient_steps=1, batch_size=batch)
        return model.logger.name_to_value["train/critic_loss"]

    flops, _ = count_flops(step)
    return step, flops, {"torch": torch.__version__, "stable_baselines3": stable_baselines3.__version__}


def main(argv=None) -> int:
    side, spec, out, clock = start_worker(argv)
    step, flops, versions = (_ours if side == "ours" else _peer)(spec, clock)
    serve(clock, step)
    clock.final(out, flops_per_step=flops, versions=versions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

