"""What SAC, TD3, DDPG and DQN share: the replay loop (Mnih et al. 2015 replay memory; Lillicrap et al. 2016).

Each vector step: act (uniformly random for the first `learning_starts` env steps, then the agent's
exploration policy), store (s, a, r, s'_true, terminated, truncated) per env, and every `train_freq` vector
steps run `gradient_steps` updates on minibatches sampled uniformly from the buffer. Actions are stored in
env units; the agents map Box actions to [-1, 1] themselves. Observations are stored raw and normalised at
sample time when `normalize_obs` is on.

For `offline/`: `save_snapshots` evaluates and writes `snapshots/step_<N>.pt` (+ `snapshots/index.json`)
every `snapshot_every` env steps; `save_replay` writes `replay.pt` (the buffer in insertion order) at the end.
In `replay.pt`, `global_step` is the number of env steps taken before the transition's vector step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from online.buffer import ReplayBuffer
from reins.config import check
from reins.runio import atomic_torch_save


@dataclass
class OffPolicyConfig:
    num_envs: int = field(default=1, metadata={"help": "environments stepped together"})
    buffer_size: int = field(default=1_000_000, metadata={"help": "replay buffer capacity (transitions)"})
    batch_size: int = field(default=256, metadata={"help": "replay minibatch size"})
    learning_starts: int = field(default=5_000,
                                 metadata={"help": "env steps of uniformly random actions before learning"})
    train_freq: int = field(default=1, metadata={"help": "vector steps between update rounds"})
    gradient_steps: int = field(default=1, metadata={"help": "updates per round"})
    gamma: float = field(default=0.99, metadata={"help": "discount"})
    tau: float = field(default=0.005, metadata={"help": "Polyak rate of the target networks"})
    hidden: list[int] = field(default_factory=lambda: [256, 256],
                              metadata={"help": "hidden-layer widths of actor and critics"})
    normalize_obs: bool = field(default=False, metadata={"help": "running mean/std normalisation of observations"})

    def validate(self) -> None:
        check(self.num_envs >= 1, f"num_envs must be >= 1, got {self.num_envs}")
        check(self.buffer_size >= 1, f"buffer_size must be >= 1, got {self.buffer_size}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.learning_starts >= 0, f"learning_starts must be >= 0, got {self.learning_starts}")
        check(self.train_freq >= 1, f"train_freq must be >= 1, got {self.train_freq}")
        check(self.gradient_steps >= 0, f"gradient_steps must be >= 0, got {self.gradient_steps}")
        check(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")
        check(0.0 < self.tau <= 1.0, f"tau must be in (0, 1], got {self.tau}")
        check(all(h >= 1 for h in self.hidden), f"hidden sizes must be >= 1, got {self.hidden}")


def random_actions(spec, n: int, gen: torch.Generator) -> np.ndarray:
    """Uniform actions drawn from the run's generator (reproducible, unlike action_space.sample())."""
    if spec.discrete:
        return torch.randint(0, spec.act_dim, (n,), generator=gen).numpy()
    u = torch.rand((n, spec.act_dim), generator=gen, dtype=torch.float64).numpy()
    return (spec.act_low + u * (spec.act_high - spec.act_low)).astype(np.float32)


def train_off_policy(h, agent) -> dict:
    cfg, acfg = h.cfg, agent.cfg
    spec = h.spec
    buffer = ReplayBuffer(acfg.buffer_size, spec.obs_dim, spec.act_dim, spec.discrete)
    obs, extra = h.start(agent)
    if extra is not None:
        buffer.load_state_dict(extra["buffer"])
    info: dict = dict(h.resumed_info)
    vector_steps = h.step // h.num_envs
    while h.step < cfg.total_steps:
        h.obs_norm.update(obs)
        if h.step < acfg.learning_starts:
            actions = random_actions(spec, h.num_envs, h.gen)
        else:
            actions = agent.explore(h.norm_obs(obs), h.step)
        step_before = h.step
        next_obs, real_next, rewards, _, term, trunc = h.env_step(actions)
        buffer.add(obs, real_next, actions, rewards, term, trunc, step_before)
        obs = next_obs
        vector_steps += 1
        if h.step >= acfg.learning_starts and vector_steps % acfg.train_freq == 0 and len(buffer) > 0:
            for _ in range(acfg.gradient_steps):
                batch = buffer.sample(acfg.batch_size, h.gen)
                if h.obs_norm.enabled:
                    for k in ("observations", "next_observations"):
                        batch[k] = h.norm_obs(batch[k].numpy())
                info = agent.update(batch, step=h.step)
                h.check_update(agent, info)
                h.updates += 1
        h.periodic(agent, info, snapshots=cfg.save_snapshots)
        if h.checkpoint_due():
            # The segment boundary cuts the running episodes: their last transition becomes a truncation.
            buffer.mark_last_truncated(h.num_envs)
            obs = h.save_checkpoint(agent, extra={"buffer": buffer.state_dict()}, info=info)
    buffer.mark_last_truncated(h.num_envs)  # the end of the run cuts the episodes still running
    if cfg.save_replay:
        atomic_torch_save(buffer.export(), h.run.path / "replay.pt")
    return h.finish(agent, info, extra={"buffer": buffer.state_dict()})
