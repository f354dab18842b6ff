"""DQN and Double DQN with a target network and replay (Mnih et al. 2015; van Hasselt et al. 2016).

Behaviour: epsilon-greedy (`epsilon_greedy_probs`) with epsilon decayed linearly from `epsilon_start` to
`epsilon_end` over the first `exploration_fraction * total_steps` env steps of the run. Update on a replay minibatch:
    y = dqn_target(r, Q'(s', .), gamma, terminated)                       (double: false)
    y = double_dqn_target(r, Q(s', .), Q'(s', .), gamma, terminated)      (double: true)
    loss = value_loss(Q(s, a), y);  every `target_update_every` updates: polyak_update(Q', Q, tau)
(tau = 1 is the periodic hard copy of Mnih et al. 2015).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from online.offpolicy import OffPolicyConfig
from pgcore.policy_losses import double_dqn_target, dqn_target, epsilon_greedy_probs, polyak_update, value_loss
from reins.config import check
from rl.agent import Agent
from rl.nets import build_actor


@dataclass
class DQNConfig(OffPolicyConfig):
    double: bool = field(default=True, metadata={"help": "double DQN: the online net picks the target action"})
    lr: float = field(default=2.5e-4, metadata={"help": "Adam learning rate"})
    buffer_size: int = field(default=10_000, metadata={"help": "replay buffer capacity (transitions)"})
    batch_size: int = field(default=128, metadata={"help": "replay minibatch size"})
    learning_starts: int = field(default=10_000,
                                 metadata={"help": "env steps of uniformly random actions before learning"})
    train_freq: int = field(default=10, metadata={"help": "vector steps between update rounds"})
    tau: float = field(default=1.0, metadata={"help": "target update rate (1: hard copy every target_update_every)"})
    target_update_every: int = field(default=50, metadata={"help": "gradient updates between target updates"})
    epsilon_start: float = field(default=1.0, metadata={"help": "epsilon-greedy exploration at the start"})
    epsilon_end: float = field(default=0.05, metadata={"help": "epsilon-greedy exploration after the decay"})
    exploration_fraction: float = field(default=0.5,
                                        metadata={"help": "share of total_steps over which epsilon decays linearly"})
    max_grad_norm: float = field(default=10.0, metadata={"help": "clip the global gradient norm to this"})
    hidden: list[int] = field(default_factory=lambda: [120, 84],
                              metadata={"help": "hidden-layer widths of the Q network"})

    def validate(self) -> None:
        super().validate()
        check(0.0 <= self.epsilon_end <= self.epsilon_start <= 1.0,
              "need 0 <= epsilon_end <= epsilon_start <= 1")
        check(0.0 < self.exploration_fraction <= 1.0, "exploration_fraction must be in (0, 1]")
        check(self.target_update_every >= 1, f"target_update_every must be >= 1, got {self.target_update_every}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")


class DQN(Agent):
    def __init__(self, cfg: DQNConfig, spec, gen: torch.Generator, *, total_steps: int):
        super().__init__()
        self.cfg, self.spec, self.gen = cfg, spec, gen
        self.total_steps = total_steps  # the run's length in env steps: horizon of the epsilon schedule
        self.arch = {"kind": "q", "obs_dim": spec.obs_dim, "act_dim": spec.act_dim, "hidden": list(cfg.hidden),
                     "activation": "relu"}
        q = build_actor(self.arch)
        self.register(q=q, q_target=copy.deepcopy(q).requires_grad_(False),
                      optimizer=torch.optim.Adam(q.parameters(), lr=cfg.lr), n_updates=0)
        self.epsilon = cfg.epsilon_start

    def epsilon_at(self, step: int) -> float:
        cfg = self.cfg
        frac = min(step / max(cfg.exploration_fraction * self.total_steps, 1.0), 1.0)
        return cfg.epsilon_start + frac * (cfg.epsilon_end - cfg.epsilon_start)

    @torch.no_grad()
    def explore(self, obs: torch.Tensor, step: int) -> np.ndarray:
        self.epsilon = self.epsilon_at(step)
        probs = epsilon_greedy_probs(self.q(obs), self.epsilon)
        return torch.multinomial(probs, 1, generator=self.gen).squeeze(-1).numpy()

    def update(self, batch: dict, *, step: int) -> dict:
        cfg = self.cfg
        obs, next_obs = batch["observations"], batch["next_observations"]
        with torch.no_grad():
            next_q_target = self.q_target(next_obs)
            if cfg.double:
                y = double_dqn_target(batch["rewards"], self.q(next_obs), next_q_target, gamma=cfg.gamma,
                                      terminated=batch["terminated"])
            else:
                y = dqn_target(batch["rewards"], next_q_target, gamma=cfg.gamma, terminated=batch["terminated"])
        q = self.q(obs).gather(-1, batch["actions"].long().unsqueeze(-1)).squeeze(-1)
        loss, _ = value_loss(q, y)
        self.optimize(self.optimizer, loss, clip_grad_norm=cfg.max_grad_norm)
        self.n_updates += 1
        if self.n_updates % cfg.target_update_every == 0:
            polyak_update(self.q_target, self.q, cfg.tau)
        return {"loss/td": loss.detach(), "q/mean": q.detach().mean(), "epsilon": self.epsilon}

    def export(self) -> dict:
        return {"actor": self.q, "arch": self.arch, "explore": {"epsilon": float(self.cfg.epsilon_end)}}

