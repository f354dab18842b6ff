"""Implicit Q-learning (IQL) on a Minari dataset: `reins iql --config FILE dataset=<id-or-path>`.

Kostrikov, Nair & Levine 2021, "Offline RL with implicit Q-learning": each update, on a minibatch (s, a, r, s', d),
  1. V:     L_V = E[ L_2^tau( min_e Qhat_e(s, a) - V(s) ) ]           expectile regression (pgcore.expectile_loss)
  2. Q:     L_Q = sum_e E[ (Q_e(s, a) - (r + gamma (1 - d) V(s')))^2 ]   (pgcore.td_target gives the target)
  3. pi:    L_pi = -E[ min(exp(beta (Qhat - V)), 100) log pi(a|s) ]    AWR extraction (pgcore.awr_loss, maximising
            the weighted likelihood: docs/errata.md §8)
  4. Qhat <- Polyak(Qhat, Q, tau)                                       (pgcore.polyak_update)
Update order follows CORL (V(s') and the advantage use V before its step), which saves two forward passes
(`advantage_v: after` recomputes the advantage with V after its step, as the paper's code and d3rlpy do);
the original computes them after the V step. The actor's learning rate follows a cosine decay over max_steps
(original IQL, CORL). d is the termination flag only: truncated transitions bootstrap.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from offline.trainer import OFFLINE_ACTORS, OfflineConfig, run_offline
from pgcore.offline_losses import awr_loss, expectile_loss
from pgcore.policy_losses import polyak_update, td_target
from reins.config import check
from reins.entry import stage_main
from rl.agent import Agent
from rl.nets import EnsembleQ, ValueNet, build_actor, orthogonal_init_


@dataclass
class Config(OfflineConfig):
    output_dir: str = field(default="runs/iql",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    expectile: float = field(default=0.7, metadata={"help": "tau of the expectile loss"})
    beta: float = field(default=3.0, metadata={"help": "inverse temperature of the advantage weights"})
    max_weight: float = field(default=100.0, metadata={"help": "exp-advantage clip"})
    actor: Literal["gaussian", "deterministic"] = field(default="gaussian",
                                                        metadata={"help": "gaussian (advantage-weighted likelihood) "
                                                                          "or deterministic (weighted MSE)"})
    actor_dropout: float = field(default=0.0, metadata={"help": "dropout in the actor's hidden layers"})
    log_std_min: float = field(default=-5.0,
                               metadata={"help": "lower clamp of the actor's log std (original IQL -5; CORL -20)"})
    log_std_param: Literal["clamp", "sigmoid"] = field(
        default="clamp", metadata={"help": "gaussian actor's log std: clamp (IQL paper's code, starts at 0) or "
                                           "sigmoid into [log_std_min, 2] (d3rlpy, starts at the midpoint)"})
    advantage_v: Literal["before", "after"] = field(
        default="before", metadata={"help": "V in the actor's advantage: before V's update step (CORL) or after "
                                            "it (the IQL paper's code, d3rlpy)"})
    actor_lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the actor"})
    critic_lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the Q critics"})
    value_lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of V"})
    actor_cosine: bool = field(default=True, metadata={"help": "cosine decay of the actor lr over max_steps"})
    tau: float = field(default=0.005, metadata={"help": "Polyak rate of the target critics"})
    n_critics: int = field(default=2, metadata={"help": "Q critics (the minimum is used)"})
    value_layer_norm: bool = field(default=False, metadata={"help": "LayerNorm in the value network's hidden layers"})
    orthogonal_init: bool = field(default=False,
                                  metadata={"help": "original IQL init: orthogonal, gain sqrt(2) on every layer of "
                                                    "every net"})

    # Published settings, one YAML file per preset with its source (reins.config.apply_preset reads them).
    PRESET_DIR: ClassVar[Path] = Path(__file__).parent / "presets" / "iql"

    def validate(self) -> None:
        super().validate()
        check(0.0 < self.expectile < 1.0, f"expectile must be in (0, 1), got {self.expectile}")
        check(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        check(self.max_weight > 0, f"max_weight must be > 0, got {self.max_weight}")
        check(0.0 < self.tau <= 1.0, f"tau must be in (0, 1], got {self.tau}")
        check(self.n_critics >= 1, f"n_critics must be >= 1, got {self.n_critics}")
        for name in ("actor_lr", "critic_lr", "value_lr"):
            check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")


class IQL(Agent):
    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.actor_spec = {"kind": OFFLINE_ACTORS[cfg.actor], "obs_dim": obs_dim, "act_dim": act_dim,
                           "hidden": list(cfg.hidden), "dropout": cfg.actor_dropout}
        if cfg.actor == "gaussian":
            self.actor_spec["log_std_min"] = cfg.log_std_min
            if cfg.log_std_param != "clamp":  # policy files of the default keep no log_std_param key
                self.actor_spec["log_std_param"] = cfg.log_std_param
        actor = build_actor(self.actor_spec).to(device)
        # ikostrikov/implicit_q_learning's default_init: orthogonal with scale sqrt(2) on every Dense layer,
        # output layers included, for the actor, the critics and the value net alike.
        gain = math.sqrt(2.0)
        if cfg.orthogonal_init:
            orthogonal_init_(actor.net, gain)
        critic = EnsembleQ(cfg.n_critics, obs_dim, act_dim, cfg.hidden, ortho=cfg.orthogonal_init,
                           out_gain=gain).to(device)
        value = ValueNet(obs_dim, cfg.hidden, layer_norm=cfg.value_layer_norm, ortho=cfg.orthogonal_init,
                         out_gain=gain).to(device)
        self.register(actor=actor, critic=critic, critic_target=copy.deepcopy(critic).requires_grad_(False),
                      value=value, actor_opt=torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, foreach=True),
                      critic_opt=torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, foreach=True),
                      value_opt=torch.optim.Adam(value.parameters(), lr=cfg.value_lr, foreach=True))
        self.register_scheduler("actor_sched", self.actor_opt,
                                torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, cfg.max_steps)
                                if cfg.actor_cosine else None)

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        obs, act, rew, next_obs, term = b["observations"], b["actions"], b["rewards"], b["next_observations"], \
            b["terminals"]
        with torch.no_grad():
            target_q = self.critic_target(obs, act).min(dim=0).values
            next_v = self.value(next_obs)

        v = self.value(obs)
        adv = target_q - v
        v_loss = expectile_loss(adv, cfg.expectile)
        self.optimize(self.value_opt, v_loss)

        y = td_target(rew, next_v, gamma=cfg.gamma, terminated=term)
        q = self.critic(obs, act)
        q_loss = sum(F.mse_loss(q[e], y) for e in range(q.shape[0]))
        self.optimize(self.critic_opt, q_loss)
        polyak_update(self.critic_target.parameters(), self.critic.parameters(), cfg.tau)

        if cfg.advantage_v == "after":  # the advantage with V after its step (one more forward pass)
            with torch.no_grad():
                adv = target_q - self.value(obs)
        logp = self.actor.log_prob(obs, act)
        pi_loss = awr_loss(logp, adv.detach(), cfg.beta, cfg.max_weight)
        self.optimize(self.actor_opt, pi_loss)
        return {"loss/value": v_loss.detach(), "loss/q": q_loss.detach(), "loss/actor": pi_loss.detach(),
                "train/q_mean": q.detach().mean(), "train/v_mean": v.detach().mean(),
                "train/adv_mean": adv.detach().mean()}



def train(cfg: Config) -> dict:
    return run_offline(cfg, IQL, "iql")


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins iql", stage="iql")


if __name__ == "__main__":
    raise SystemExit(main())
