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
        self.pi_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.lr)
        self.vf_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.lr)

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
        self.pi_opt.zero_grad()
        pl.backward()
        torch.nn.utils.clip_grad_norm_(self.actor.parameters(), cfg.max_grad_norm)
        self.pi_opt.step()
        for _ in range(cfg.vf_iters):
            vl, _ = value_loss(self.critic(obs), ret)
            self.vf_opt.zero_grad()
            (cfg.vf_coef * vl).backward()
            torch.nn.utils.clip_grad_norm_(self.critic.parameters(), cfg.max_grad_norm)
            self.vf_opt.step()
        return {"loss/policy": pl.item(), "loss/value": vl.item(), "returns/mean": float(ret.mean())}

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "pi_opt": self.pi_opt.state_dict(), "vf_opt": self.vf_opt.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.actor.load_state_dict(s["actor"])
        self.critic.load_state_dict(s["critic"])
        self.pi_opt.load_state_dict(s["pi_opt"])
        self.vf_opt.load_state_dict(s["vf_opt"])
