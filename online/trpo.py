"""TRPO and NPG: natural-gradient policy steps from pgcore.trust_region, GAE, value function by regression.

Policy step (Schulman et al. 2015; Kakade 2001 for NPG): maximise the surrogate
L(theta) = mean(pi_theta(a|s) / pi_old(a|s) * A) subject to mean KL(pi_old || pi_theta) <= max_kl;
direction F^-1 g by conjugate gradient on Fisher-vector products, step size sqrt(2 delta / g^T F^-1 g);
TRPO adds the backtracking line search (`trpo_step`), NPG takes the step as is (`npg_step`).
Critic: `vf_iters` epochs of minibatch Adam on `value_loss(V, GAE returns)` (Schulman et al. 2016).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from online.onpolicy import ActorCriticAgent, OnPolicyConfig, minibatches
from pgcore.advantages import gae, whiten
from pgcore.policy_losses import ppo_clip_loss, value_loss
from pgcore.trust_region import npg_step, trpo_step
from reins.config import check


@dataclass
class TRPOConfig(OnPolicyConfig):
    num_envs: int = 4
    num_steps: int = 512
    max_kl: float = 0.01
    cg_iters: int = 10
    damping: float = 0.1
    backtrack_coef: float = 0.5
    max_backtracks: int = 10
    vf_lr: float = 1e-3
    vf_iters: int = 5
    vf_minibatches: int = 8

    def validate(self) -> None:
        super().validate()
        check(self.max_kl > 0, f"max_kl must be > 0, got {self.max_kl}")
        check(self.cg_iters >= 1, f"cg_iters must be >= 1, got {self.cg_iters}")
        check(self.damping >= 0, f"damping must be >= 0, got {self.damping}")
        check(0 < self.backtrack_coef < 1, f"backtrack_coef must be in (0, 1), got {self.backtrack_coef}")


@dataclass
class NPGConfig(TRPOConfig):
    max_kl: float = 0.01


class TRPO(ActorCriticAgent):
    def __init__(self, cfg: TRPOConfig, spec, gen, *, algo: str = "trpo"):
        super().__init__(cfg, spec, gen)
        self.line_search = algo == "trpo"
        self.vf_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.vf_lr)

    def update(self, b: dict, *, step: int, progress: float) -> dict:
        cfg = self.cfg
        self.set_lr(self.vf_opt, progress, cfg.vf_lr)
        adv, ret = gae(b["rewards"], b["values"], gamma=cfg.gamma, lam=cfg.gae_lambda,
                       next_values=b["next_values"], terminated=b["terminated"], truncated=b["truncated"])
        obs, actions, old_logp = self.flat(b["obs"]), self.flat(b["actions"]), self.flat(b["logp"])
        adv, ret = self.flat(adv), self.flat(ret)
        if cfg.normalize_advantages:
            adv = whiten(adv)
        old_params = tuple(self.flat(p) for p in b["params"])

        def surrogate() -> torch.Tensor:
            logp, _ = self.log_prob_entropy(self.dist_params(obs), actions)
            # With an infinite clip range the PPO objective is the plain importance-sampled surrogate.
            loss, _ = ppo_clip_loss(logp, old_logp, adv, float("inf"))
            return -loss

        def mean_kl() -> torch.Tensor:
            return self.kl(old_params, self.dist_params(obs)).mean()

        params = list(self.actor.parameters())
        if self.line_search:
            info = trpo_step(params, surrogate, mean_kl, max_kl=cfg.max_kl, cg_iters=cfg.cg_iters,
                             damping=cfg.damping, backtrack_coef=cfg.backtrack_coef,
                             max_backtracks=cfg.max_backtracks)
        else:
            info = npg_step(params, surrogate, mean_kl, max_kl=cfg.max_kl, cg_iters=cfg.cg_iters,
                            damping=cfg.damping)
        for _ in range(cfg.vf_iters):
            for idx in minibatches(len(obs), cfg.vf_minibatches, self.gen):
                vl, _ = value_loss(self.critic(obs[idx]), ret[idx])
                self.vf_opt.zero_grad()
                vl.backward()
                self.vf_opt.step()
        return {"loss/value": vl.item(), **{f"policy/{k}": float(v) for k, v in info.items()}}

    def state_dict(self) -> dict:
        return {"actor": self.actor.state_dict(), "critic": self.critic.state_dict(),
                "vf_opt": self.vf_opt.state_dict()}

    def load_state_dict(self, s: dict) -> None:
        self.actor.load_state_dict(s["actor"])
        self.critic.load_state_dict(s["critic"])
        self.vf_opt.load_state_dict(s["vf_opt"])
