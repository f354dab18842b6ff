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

from online.nets import EnsembleQ, build_actor
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


class SAC:
    def __init__(self, cfg: SACConfig, spec, gen: torch.Generator, *, total_steps: int):
        self.cfg, self.spec, self.gen = cfg, spec, gen
        self.total_steps = total_steps  # the run's length in env steps (the constructor every agent shares)
        self.arch = {"kind": "tanh_gaussian", "obs_dim": spec.obs_dim, "act_dim": spec.act_dim,
                     "hidden": list(cfg.hidden), "activation": "relu"}
        self.actor = build_actor(self.arch)
        self.critic = EnsembleQ(2, spec.obs_dim, spec.act_dim, list(cfg.hidden))
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = torch.tensor(float(np.log(cfg.alpha)), requires_grad=True)
        self.target_entropy = (-float(spec.act_dim) if cfg.target_entropy is None else cfg.target_entropy)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=cfg.alpha_lr, fused=True)
        self.n_updates = 0
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
        self.critic_opt.zero_grad()
        critic_loss.backward()
        self.critic_opt.step()
        self.n_updates += 1
        info = {"loss/critic": critic_loss.detach(), "q/mean": q1.detach().mean()}
        if self.n_updates % cfg.policy_freq == 0:
            a, logp = self._dist(obs).rsample(self.gen)
            self.critic.requires_grad_(False)  # the actor step must not touch the critics' grads
            q_pi = clipped_double_q(*self.critic(obs, a))
            self.critic.requires_grad_(True)
            actor_loss = sac_actor_loss(logp, q_pi, alpha)
            self.actor_opt.zero_grad()
            actor_loss.backward()
            self.actor_opt.step()
            info.update({"loss/actor": actor_loss.detach(), "policy/entropy": -logp.detach().mean()})
            if cfg.autotune:
                alpha_loss = sac_temperature_loss(self.log_alpha, logp.detach(), self.target_entropy)
                self.alpha_opt.zero_grad()
                alpha_loss.backward()
                self.alpha_opt.step()
        polyak_update(self.critic_target, self.critic, cfg.tau)
        info["alpha"] = alpha
        return info

    def export(self) -> dict:
        return {"actor": self.actor, "arch": self.arch}

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "critic_target": self.critic_target.state_dict(), "log_alpha": self.log_alpha.detach().clone(),
                "actor_opt": self.actor_opt.state_dict(), "critic_opt": self.critic_opt.state_dict(),
                "alpha_opt": self.alpha_opt.state_dict(), "n_updates": self.n_updates}

    def load_state_dict(self, s: dict) -> None:
        self.actor.load_state_dict(s["actor"])
        self.critic.load_state_dict(s["critic"])
        self.critic_target.load_state_dict(s["critic_target"])
        with torch.no_grad():
            self.log_alpha.copy_(s["log_alpha"])
        self.actor_opt.load_state_dict(s["actor_opt"])
        self.critic_opt.load_state_dict(s["critic_opt"])
        self.alpha_opt.load_state_dict(s["alpha_opt"])
        self.n_updates = int(s["n_updates"])
