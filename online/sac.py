"""SAC: twin soft Q critics, tanh-Gaussian actor, automatic temperature (Haarnoja et al. 2018a;
Haarnoja et al. 2018b for the twin critics and the temperature loss).

Per update, on a replay minibatch (actions mapped to [-1, 1]):
    critic:  y = sac_q_target(r, min(Q1', Q2')(s', a'), log pi(a'|s'), alpha, gamma, terminated),
             a' ~ pi(.|s');  loss = value_loss(Q1(s, a), y) + value_loss(Q2(s, a), y)
    actor:   a ~ pi(.|s) reparameterised;  loss = sac_actor_loss(log pi(a|s), min(Q1, Q2)(s, a), alpha)
    alpha:   sac_temperature_loss(log_alpha, log pi(a|s), target_entropy = -act_dim by default)
    targets: polyak_update(Q', Q, tau)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch

from online.offpolicy import OffPolicyConfig
from pgcore.distributions import TanhGaussian, scale_action, unscale_action
from pgcore.policy_losses import (
    clipped_double_q,
    polyak_update,
    sac_actor_loss,
    sac_q_target,
    sac_temperature_loss,
    value_loss,
)
from reins.config import check
from rl.agent import Agent
from rl.nets import EnsembleQ, build_actor


@dataclass
class SACConfig(OffPolicyConfig):
    actor_lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the actor"})
    critic_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the critics"})
    alpha: float = field(default=0.2, metadata={"help": "initial (autotune) or fixed temperature"})
    autotune: bool = field(default=True, metadata={"help": "tune the temperature alpha towards target_entropy"})
    alpha_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of log alpha"})
    target_entropy: float | None = field(default=None, metadata={"help": "default -act_dim"})
    policy_freq: int = field(default=1, metadata={"help": "actor/alpha updates every this many critic updates"})

    def validate(self) -> None:
        super().validate()
        check(self.actor_lr > 0 and self.critic_lr > 0, "actor_lr and critic_lr must be > 0")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        check(self.policy_freq >= 1, f"policy_freq must be >= 1, got {self.policy_freq}")


class SAC(Agent):
    def __init__(self, cfg: SACConfig, spec, gen: torch.Generator, *, total_steps: int):
        super().__init__()
        self.cfg, self.spec, self.gen = cfg, spec, gen
        self.total_steps = total_steps  # the run's length in env steps (the constructor every agent shares)
        self.arch = {"kind": "tanh_gaussian", "obs_dim": spec.obs_dim, "act_dim": spec.act_dim,
                     "hidden": list(cfg.hidden), "activation": "relu"}
        actor = build_actor(self.arch)
        critic = EnsembleQ(2, spec.obs_dim, spec.act_dim, list(cfg.hidden))
        log_alpha = torch.tensor(float(np.log(cfg.alpha)), requires_grad=True)
        self.register(actor=actor, critic=critic, critic_target=copy.deepcopy(critic).requires_grad_(False),
                      log_alpha=log_alpha,
                      actor_opt=torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, fused=True),
                      critic_opt=torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, fused=True),
                      alpha_opt=torch.optim.Adam([log_alpha], lr=cfg.alpha_lr, fused=True), n_updates=0)
        self.target_entropy = (-float(spec.act_dim) if cfg.target_entropy is None else cfg.target_entropy)
        self.low = torch.as_tensor(spec.act_low, dtype=torch.float32)
        self.high = torch.as_tensor(spec.act_high, dtype=torch.float32)

    def _dist(self, obs: torch.Tensor) -> TanhGaussian:
        mean, log_std = self.actor(obs)
        return TanhGaussian(mean, log_std)

    @torch.no_grad()
    def explore(self, obs: torch.Tensor, step: int) -> np.ndarray:
        a, _ = self._dist(obs).sample(self.gen)
        return scale_action(a, self.low, self.high).clamp(self.low, self.high).numpy()

    def update(self, batch: dict, *, step: int) -> dict:
        cfg = self.cfg
        obs, next_obs = batch["observations"], batch["next_observations"]
        act = unscale_action(batch["actions"], self.low, self.high).clamp(-1.0, 1.0)
        alpha = self.log_alpha.detach().exp()
        with torch.no_grad():
            next_a, next_logp = self._dist(next_obs).sample(self.gen)
            q1_t, q2_t = self.critic_target(next_obs, next_a)
            y = sac_q_target(batch["rewards"], clipped_double_q(q1_t, q2_t), next_logp, alpha=alpha,
                             gamma=cfg.gamma, terminated=batch["terminated"])
        q1, q2 = self.critic(obs, act)
        critic_loss = value_loss(q1, y)[0] + value_loss(q2, y)[0]
        self.optimize(self.critic_opt, critic_loss)
        self.n_updates += 1
        info = {"loss/critic": critic_loss.detach(), "q/mean": q1.detach().mean()}
        if self.n_updates % cfg.policy_freq == 0:
            a, logp = self._dist(obs).rsample(self.gen)
            self.critic.requires_grad_(False)  # the actor step must not touch the critics' grads
            q_pi = clipped_double_q(*self.critic(obs, a))
            self.critic.requires_grad_(True)
            actor_loss = sac_actor_loss(logp, q_pi, alpha)
            self.optimize(self.actor_opt, actor_loss)
            info.update({"loss/actor": actor_loss.detach(), "policy/entropy": -logp.detach().mean()})
            if cfg.autotune:
                alpha_loss = sac_temperature_loss(self.log_alpha, logp.detach(), self.target_entropy)
                self.optimize(self.alpha_opt, alpha_loss)
        polyak_update(self.critic_target, self.critic, cfg.tau)
        info["alpha"] = alpha
        return info

    def export(self) -> dict:
        return {"actor": self.actor, "arch": self.arch}
