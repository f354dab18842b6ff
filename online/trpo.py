"""TRPO and NPG: natural-gradient policy steps from pgcore.trust_region, GAE, value function by regression.

Policy step (Schulman et al. 2015; Kakade 2001 for NPG): maximise the surrogate
L(theta) = mean(pi_theta(a|s) / pi_old(a|s) * A) subject to mean KL(pi_old || pi_theta) <= max_kl;
direction F^-1 g by conjugate gradient on Fisher-vector products, step size sqrt(2 delta / g^T F^-1 g);
TRPO adds the backtracking line search (`trpo_step`), NPG takes the step as is (`npg_step`).
Critic: `vf_iters` epochs of minibatch Adam on `value_loss(V, GAE returns)` (Schulman et al. 2016).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from online.onpolicy import ActorCriticAgent, OnPolicyConfig, minibatches
from pgcore.advantages import gae, whiten
from pgcore.policy_losses import ppo_clip_loss, value_loss
from pgcore.trust_region import npg_step, trpo_step
from reins.config import check


@dataclass
class TRPOConfig(OnPolicyConfig):
    num_envs: int = field(default=4, metadata={"help": "environments stepped together"})
    num_steps: int = field(default=512, metadata={"help": "rollout length per env; batch = num_envs * num_steps"})
    max_kl: float = field(default=0.01, metadata={"help": "trust region: mean KL of one policy step"})
    cg_iters: int = field(default=10, metadata={"help": "conjugate-gradient iterations for the natural gradient"})
    damping: float = field(default=0.1, metadata={"help": "damping added to the Fisher-vector product"})
    backtrack_coef: float = field(default=0.5, metadata={"help": "line-search shrink factor"})
    max_backtracks: int = field(default=10, metadata={"help": "line-search tries before the step is rejected"})
    vf_lr: float = field(default=1e-3, metadata={"help": "Adam learning rate of the critic"})
    vf_iters: int = field(default=5, metadata={"help": "critic passes over each batch"})
    vf_minibatches: int = field(default=8, metadata={"help": "critic minibatches per pass"})

    # TRPO backtracks along the natural-gradient step until the KL and surrogate hold (Schulman et al. 2015,
    # appendix C); NPG takes the full step (Kakade 2001). A class constant, not a key: `algo` selects it.
    line_search: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        check(self.max_kl > 0, f"max_kl must be > 0, got {self.max_kl}")
        check(self.cg_iters >= 1, f"cg_iters must be >= 1, got {self.cg_iters}")
        check(self.damping >= 0, f"damping must be >= 0, got {self.damping}")
        check(0 < self.backtrack_coef < 1, f"backtrack_coef must be in (0, 1), got {self.backtrack_coef}")


@dataclass
class NPGConfig(TRPOConfig):
    max_kl: float = field(default=0.01, metadata={"help": "step size as the mean KL of the full natural-gradient step"})

    line_search: ClassVar[bool] = False


class TRPO(ActorCriticAgent):
    def __init__(self, cfg: TRPOConfig, spec, gen, *, total_steps: int):
        super().__init__(cfg, spec, gen, total_steps=total_steps)
        self.line_search = cfg.line_search
        self.register(vf_opt=torch.optim.Adam(self.critic.parameters(), lr=cfg.vf_lr))

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
                self.optimize(self.vf_opt, vl)
        return {"loss/value": vl.item(), **{f"policy/{k}": float(v) for k, v in info.items()}}

