"""DDPG and TD3: deterministic actor mu(s) in [-1, 1]^d, Q critic(s), Gaussian exploration noise.

DDPG (Lillicrap et al. 2016; Silver et al. 2014): y = td_target(r, Q'(s', mu'(s')), gamma, terminated); critic
`value_loss(Q(s, a), y)`; actor `dpg_actor_loss(Q(s, mu(s)))` every step; Polyak targets.
TD3 (Fujimoto et al. 2018) adds the three fixes as options: twin critics with
`clipped_double_q` in the target, target policy smoothing (`td3_smoothed_action`) and a delayed actor and
target update (`policy_delay`). `algo: ddpg` uses DDPGConfig (one critic, no smoothing, no delay).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from online.offpolicy import OffPolicyConfig
from pgcore.distributions import scale_action, unscale_action
from pgcore.policy_losses import (
    clipped_double_q,
    dpg_actor_loss,
    polyak_update,
    td3_smoothed_action,
    td_target,
    value_loss,
)
from reins.config import check
from rl.agent import Agent
from rl.nets import EnsembleQ, build_actor


@dataclass
class TD3Config(OffPolicyConfig):
    actor_lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the actor"})
    critic_lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the critics"})
    twin: bool = field(default=True,
                       metadata={"help": "two critics and the minimum of both in the target (clipped double Q)"})
    policy_delay: int = field(default=2, metadata={"help": "critic updates per actor and target update"})
    exploration_noise: float = field(default=0.1,
                                     metadata={"help": "std of the behaviour noise, in [-1, 1] action units"})
    target_noise: float = field(default=0.2, metadata={"help": "target policy smoothing std (0: off)"})
    target_noise_clip: float = field(default=0.5, metadata={"help": "clip of the target smoothing noise"})

    def validate(self) -> None:
        super().validate()
        check(self.policy_delay >= 1, f"policy_delay must be >= 1, got {self.policy_delay}")
        check(self.exploration_noise >= 0, f"exploration_noise must be >= 0, got {self.exploration_noise}")
        check(self.target_noise >= 0, f"target_noise must be >= 0, got {self.target_noise}")


@dataclass
class DDPGConfig(TD3Config):
    twin: bool = field(default=False, metadata={"help": "DDPG: one critic"})
    policy_delay: int = field(default=1, metadata={"help": "DDPG: actor and targets updated with every critic update"})
    target_noise: float = field(default=0.0, metadata={"help": "DDPG: no target policy smoothing"})


class TD3(Agent):
    def __init__(self, cfg: TD3Config, spec, gen: torch.Generator, *, total_steps: int):
        super().__init__()
        self.cfg, self.spec, self.gen = cfg, spec, gen
        self.total_steps = total_steps  # the run's length in env steps (the constructor every agent shares)
        self.arch = {"kind": "deterministic", "obs_dim": spec.obs_dim, "act_dim": spec.act_dim,
                     "hidden": list(cfg.hidden), "activation": "relu"}
        actor = build_actor(self.arch)
        actor_target = copy.deepcopy(actor).requires_grad_(False)
        critic = EnsembleQ(2 if cfg.twin else 1, spec.obs_dim, spec.act_dim, list(cfg.hidden))
        self.register(actor=actor, actor_target=actor_target, critic=critic,
                      critic_target=copy.deepcopy(critic).requires_grad_(False),
                      actor_opt=torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, fused=True),
                      critic_opt=torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, fused=True), n_updates=0)
        self.low = torch.as_tensor(spec.act_low, dtype=torch.float32)
        self.high = torch.as_tensor(spec.act_high, dtype=torch.float32)

    def _q_min(self, q: torch.Tensor) -> torch.Tensor:
        return clipped_double_q(q[0], q[1]) if self.cfg.twin else q[0]

    @torch.no_grad()
    def explore(self, obs: torch.Tensor, step: int) -> np.ndarray:
        a = self.actor(obs)
        noise = torch.randn(a.shape, generator=self.gen) * self.cfg.exploration_noise
        return scale_action((a + noise).clamp(-1.0, 1.0), self.low, self.high).numpy()

    def update(self, batch: dict, *, step: int) -> dict:
        cfg = self.cfg
        obs, next_obs = batch["observations"], batch["next_observations"]
        act = unscale_action(batch["actions"], self.low, self.high).clamp(-1.0, 1.0)
        with torch.no_grad():
            next_a = self.actor_target(next_obs)
            if cfg.target_noise > 0:
                next_a = td3_smoothed_action(next_a, noise_std=cfg.target_noise, noise_clip=cfg.target_noise_clip,
                                             low=-1.0, high=1.0, generator=self.gen)
            y = td_target(batch["rewards"], self._q_min(self.critic_target(next_obs, next_a)), gamma=cfg.gamma,
                          terminated=batch["terminated"])
        q = self.critic(obs, act)
        critic_loss = sum(value_loss(q[i], y)[0] for i in range(q.shape[0]))
        self.optimize(self.critic_opt, critic_loss)
        self.n_updates += 1
        info = {"loss/critic": critic_loss.detach(), "q/mean": q[0].detach().mean()}
        if self.n_updates % cfg.policy_delay == 0:
            self.critic.requires_grad_(False)
            actor_loss = dpg_actor_loss(self.critic(obs, self.actor(obs))[0])
            self.critic.requires_grad_(True)
            self.optimize(self.actor_opt, actor_loss)
            polyak_update(self.critic_target, self.critic, cfg.tau)
            polyak_update(self.actor_target, self.actor, cfg.tau)
            info["loss/actor"] = actor_loss.detach()
        return info

    def export(self) -> dict:
        return {"actor": self.actor, "arch": self.arch, "explore": {"noise_std": self.cfg.exploration_noise}}

