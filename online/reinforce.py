"""REINFORCE with reward-to-go and a learned baseline (Williams 1992; Sutton & Barto 2018 §13.3-13.4).

    G_t = r_t + gamma * G_{t+1}   within an episode (pgcore.advantages.discounted_returns)
    loss = reinforce_loss(log pi(a_t|s_t), G_t - b(s_t)) + vf_coef * value_loss(b(s_t), G_t)

Batches are fixed-length rollouts, so an episode can be cut by a time limit or by the rollout's end; only
there is the missing tail replaced by the baseline's estimate gamma * b(s'_t) (folded into r_t so the
recursion stops, `dones = terminated OR truncated`). Episodes that terminate inside the batch use the pure
Monte-Carlo return, as in Williams 1992. Use long rollouts (num_steps ~ episode length) for the classic method.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from online.onpolicy import ActorCriticAgent, OnPolicyConfig
from pgcore.advantages import discounted_returns, whiten
from pgcore.policy_losses import reinforce_loss, value_loss


@dataclass
class ReinforceConfig(OnPolicyConfig):
    num_envs: int = field(default=4, metadata={"help": "environments stepped together"})
    num_steps: int = field(default=200, metadata={"help": "rollout length per env; batch = num_envs * num_steps"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    vf_coef: float = field(default=0.5, metadata={"help": "weight of the baseline's value loss"})
    vf_iters: int = field(default=5, metadata={"help": "extra critic regression steps per batch"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the global gradient norm to this"})


class Reinforce(ActorCriticAgent):
    def __init__(self, cfg: ReinforceConfig, spec, gen, *, total_steps: int):
        super().__init__(cfg, spec, gen, total_steps=total_steps)
        self.register(pi_opt=torch.optim.Adam(self.actor.parameters(), lr=cfg.lr),
                      vf_opt=torch.optim.Adam(self.critic.parameters(), lr=cfg.lr))

    def update(self, b: dict, *, step: int, progress: float) -> dict:
        cfg = self.cfg
        self.set_lr(self.pi_opt, progress)
        term, trunc = b["terminated"], b["truncated"]
        rewards = b["rewards"] + cfg.gamma * trunc * (1.0 - term) * b["next_values"]
        returns = discounted_returns(rewards, cfg.gamma, dones=torch.maximum(term, trunc))
        obs, actions, ret = self.flat(b["obs"]), self.flat(b["actions"]), self.flat(returns)
        weights = ret - self.flat(b["values"])
        if cfg.normalize_advantages:
            weights = whiten(weights)
        logp, _ = self.log_prob_entropy(self.dist_params(obs), actions)
        pl = reinforce_loss(logp, weights)
        self.optimize(self.pi_opt, pl, clip_grad_norm=cfg.max_grad_norm)
        for _ in range(cfg.vf_iters):
            vl, _ = value_loss(self.critic(obs), ret)
            self.optimize(self.vf_opt, cfg.vf_coef * vl, clip_grad_norm=cfg.max_grad_norm)
        return {"loss/policy": pl.item(), "loss/value": vl.item(), "returns/mean": float(ret.mean())}

