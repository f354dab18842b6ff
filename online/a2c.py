"""A2C: synchronous advantage actor-critic, one gradient step per short rollout.

Mnih et al. 2016 (A2C, the synchronous variant of A3C); advantages as in Schulman et al. 2016 (GAE):
advantages from pgcore.advantages.gae (gae_lambda = 1 gives the n-step return over the rollout, bootstrapped
from V(s_T)), policy loss `reinforce_loss(logp, A)`, critic `value_loss(V, A + V_old)`, entropy bonus.
Defaults follow Mnih et al. 2016 / Stable-Baselines3 (5-step rollouts, RMSprop).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from online.onpolicy import ActorCriticAgent, OnPolicyConfig
from pgcore.advantages import gae, whiten
from pgcore.policy_losses import entropy_bonus, reinforce_loss, value_loss
from reins.config import check


@dataclass
class A2CConfig(OnPolicyConfig):
    num_envs: int = field(default=8, metadata={"help": "environments stepped together"})
    num_steps: int = field(default=5, metadata={"help": "rollout length per env; batch = num_envs * num_steps"})
    gae_lambda: float = field(default=1.0, metadata={"help": "GAE lambda (1: Monte-Carlo returns minus the baseline)"})
    lr: float = field(default=7e-4, metadata={"help": "Adam learning rate"})
    anneal_lr: bool = field(default=True,
                            metadata={"help": "measured: without it the final CartPole policy often degrades"})
    optimizer: str = field(default="rmsprop", metadata={"help": "rmsprop (as the A2C paper) or adam"})
    normalize_advantages: bool = field(default=False, metadata={"help": "whiten advantages per batch"})
    vf_coef: float = field(default=0.5, metadata={"help": "weight of the value loss"})
    ent_coef: float = field(default=0.0, metadata={"help": "weight of the entropy bonus"})

    def validate(self) -> None:
        super().validate()
        check(self.optimizer in ("rmsprop", "adam"), f"optimizer must be rmsprop or adam, got {self.optimizer!r}")


class A2C(ActorCriticAgent):
    def __init__(self, cfg: A2CConfig, spec, gen, *, total_steps: int):
        super().__init__(cfg, spec, gen, total_steps=total_steps)
        params = [*self.actor.parameters(), *self.critic.parameters()]
        if cfg.optimizer == "rmsprop":
            self.register(optimizer=torch.optim.RMSprop(params, lr=cfg.lr, alpha=0.99, eps=1e-5))
        else:
            self.register(optimizer=torch.optim.Adam(params, lr=cfg.lr, eps=1e-5))

    def update(self, b: dict, *, step: int, progress: float) -> dict:
        cfg = self.cfg
        self.set_lr(self.optimizer, progress)
        adv, ret = gae(b["rewards"], b["values"], gamma=cfg.gamma, lam=cfg.gae_lambda,
                       next_values=b["next_values"], terminated=b["terminated"], truncated=b["truncated"])
        if cfg.normalize_advantages:
            adv = whiten(adv)
        obs, actions = self.flat(b["obs"]), self.flat(b["actions"])
        logp, entropy = self.log_prob_entropy(self.dist_params(obs), actions)
        pl = reinforce_loss(logp, self.flat(adv))
        vl, _ = value_loss(self.critic(obs), self.flat(ret))
        ent = entropy_bonus(entropy)
        loss = pl + cfg.vf_coef * vl - cfg.ent_coef * ent
        self.optimize(self.optimizer, loss, clip_grad_norm=cfg.max_grad_norm)
        return {"loss/policy": pl.item(), "loss/value": vl.item(), "policy/entropy": ent.item()}

