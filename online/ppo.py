"""PPO: clipped surrogate or adaptive-KL penalty (Schulman et al. 2017, eqs. 7 and 8, §4).

Per iteration: collect `num_envs * num_steps` steps, GAE advantages (pgcore.advantages.gae), then
`update_epochs` passes of shuffled minibatches minimising

    L = L_policy + vf_coef * L_value - ent_coef * H

with L_policy = `ppo_clip_loss` (loss: clip) or `ppo_kl_penalty_loss` with the closed-form KL(old || new)
and beta adapted after each iteration by `adaptive_kl_beta` (loss: kl_penalty). Optional early stop of the
epochs when the approximate KL exceeds `target_kl` (OpenAI Spinning Up's PPO).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from online.onpolicy import ActorCriticAgent, OnPolicyConfig, minibatches
from pgcore.advantages import gae, whiten
from pgcore.kl import adaptive_kl_beta
from pgcore.policy_losses import entropy_bonus, ppo_clip_loss, ppo_kl_penalty_loss, value_loss
from reins.config import check


@dataclass
class PPOConfig(OnPolicyConfig):
    loss: Literal["clip", "kl_penalty"] = field(default="clip",
                                                metadata={"help": "clip (clipped surrogate) or kl_penalty (adaptive "
                                                                  "KL, Schulman et al. 2017 s4)"})
    update_epochs: int = field(default=4, metadata={"help": "passes over each rollout batch"})
    num_minibatches: int = field(default=4, metadata={"help": "minibatches per pass"})
    clip_eps: float = field(default=0.2, metadata={"help": "ratio clip epsilon"})
    clip_value: bool = field(default=False, metadata={"help": "PPO2 value clipping with clip_eps"})
    kl_beta: float = field(default=1.0, metadata={"help": "initial beta of the KL-penalty form"})
    kl_target: float = field(default=0.01, metadata={"help": "d_targ of Schulman et al. 2017 §4"})
    target_kl: float | None = field(default=None,
                                    metadata={"help": "early-stop the epochs past this approx KL (clip form)"})
    vf_coef: float = field(default=0.5, metadata={"help": "weight of the value loss"})
    ent_coef: float = field(default=0.0, metadata={"help": "weight of the entropy bonus"})

    def validate(self) -> None:
        super().validate()
        check(self.update_epochs >= 1, f"update_epochs must be >= 1, got {self.update_epochs}")
        check(self.num_minibatches >= 1, f"num_minibatches must be >= 1, got {self.num_minibatches}")
        check(self.clip_eps > 0, f"clip_eps must be > 0, got {self.clip_eps}")
        check(self.kl_beta >= 0, f"kl_beta must be >= 0, got {self.kl_beta}")
        check(self.kl_target > 0, f"kl_target must be > 0, got {self.kl_target}")


class PPO(ActorCriticAgent):
    def __init__(self, cfg: PPOConfig, spec, gen, *, total_steps: int):
        super().__init__(cfg, spec, gen, total_steps=total_steps)
        self.register(optimizer=torch.optim.Adam([*self.actor.parameters(), *self.critic.parameters()], lr=cfg.lr,
                                                 eps=1e-5), beta=float(cfg.kl_beta))

    def update(self, b: dict, *, step: int, progress: float) -> dict:
        cfg = self.cfg
        self.set_lr(self.optimizer, progress)
        adv, ret = gae(b["rewards"], b["values"], gamma=cfg.gamma, lam=cfg.gae_lambda,
                       next_values=b["next_values"], terminated=b["terminated"], truncated=b["truncated"])
        obs, actions, old_logp = self.flat(b["obs"]), self.flat(b["actions"]), self.flat(b["logp"])
        old_values, adv, ret = self.flat(b["values"]), self.flat(adv), self.flat(ret)
        old_params = tuple(self.flat(p) for p in b["params"])
        stats: dict[str, float] = {}
        for _ in range(cfg.update_epochs):
            for idx in minibatches(len(obs), cfg.num_minibatches, self.gen):
                params = self.dist_params(obs[idx])
                logp, entropy = self.log_prob_entropy(params, actions[idx])
                a = whiten(adv[idx]) if cfg.normalize_advantages else adv[idx]
                if cfg.loss == "clip":
                    pl, pinfo = ppo_clip_loss(logp, old_logp[idx], a, cfg.clip_eps)
                else:
                    kl = self.kl(tuple(p[idx] for p in old_params), params)
                    pl, pinfo = ppo_kl_penalty_loss(logp, old_logp[idx], a, kl, self.beta)
                vl, vinfo = value_loss(self.critic(obs[idx]), ret[idx], old_values=old_values[idx],
                                       clip_eps=cfg.clip_eps if cfg.clip_value else None)
                ent = entropy_bonus(entropy)
                loss = pl + cfg.vf_coef * vl - cfg.ent_coef * ent
                self.optimize(self.optimizer, loss, clip_grad_norm=cfg.max_grad_norm)
            stats = {"loss/policy": pl.item(), "loss/value": vl.item(), "policy/entropy": ent.item(),
                     **{f"policy/{k}": float(v) for k, v in pinfo.items()}}
            if cfg.loss == "clip" and cfg.target_kl is not None and stats["policy/approxkl"] > cfg.target_kl:
                break
        with torch.no_grad():
            kl_full = float(self.kl(old_params, self.dist_params(obs)).mean())
        stats["policy/kl"] = kl_full
        if cfg.loss == "kl_penalty":
            # Schulman et al. 2017 §4: halve beta when KL < d_targ / 1.5, double it when KL > 1.5 d_targ.
            self.beta = adaptive_kl_beta(self.beta, kl_full, cfg.kl_target)
            stats["policy/kl_beta"] = self.beta
        return stats

