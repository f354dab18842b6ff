"""TD3+BC (Fujimoto & Gu 2021, "A minimalist approach to offline reinforcement learning") on an offline dataset:
`reins td3bc --config FILE dataset=<id-or-path>`.

TD3 (Fujimoto et al. 2018) with one change to the actor's loss, a behaviour-cloning term, and normalised
observations (the dataset's mean/std, stored with the policy). Each update, on actions in [-1, 1] units:
  1. critics: L_Q = sum_e E[(Q_e(s, a) - y)^2],  y = r + gamma (1 - d) min_e Qhat_e(s', a~')
              a~' = clip(pi_hat(s') + clip(N(0, policy_noise^2), -noise_clip, noise_clip), -1, 1)
              (pgcore.td3_smoothed_action, pgcore.td_target)
  2. every policy_delay-th update: the actor, L_pi = -lambda E[Q_1(s, pi(s))] + E[(pi(s) - a)^2],
              lambda = alpha / E|Q_1(s, pi(s))| (detached)                      (pgcore.td3bc_actor_loss)
     then Qhat <- Polyak(Qhat, Q, tau) and pi_hat <- Polyak(pi_hat, pi, tau).
The paper's defaults are the Config's: alpha 2.5, policy delay 2, target noise 0.2 clipped at 0.5, tau 0.005,
Adam 3e-4 for both, batch 256, [256, 256] networks, 1M updates (the `paper` preset sets the budget).
Discrete data is refused (TD3+BC needs a continuous action to differentiate Q through).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F

from offline.trainer import OfflineConfig, run_offline
from pgcore.offline_losses import td3bc_actor_loss
from pgcore.policy_losses import polyak_update, td3_smoothed_action, td_target
from reins.config import check
from reins.entry import stage_main
from rl.agent import Agent
from rl.nets import EnsembleQ, build_actor


@dataclass
class Config(OfflineConfig):
    output_dir: str = field(default="runs/td3bc",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    alpha: float = field(default=2.5,
                         metadata={"help": "RL/BC balance: lambda = alpha / mean|Q(s, pi(s))| (paper 2.5; 0 is BC)"})
    policy_delay: int = field(default=2, metadata={"help": "critic updates per actor (and target) update"})
    policy_noise: float = field(default=0.2,
                                metadata={"help": "std of the target policy smoothing noise, in [-1, 1] action units"})
    noise_clip: float = field(default=0.5, metadata={"help": "the smoothing noise is clipped to +-noise_clip"})
    tau: float = field(default=0.005, metadata={"help": "Polyak rate of the target actor and critics"})
    actor_lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the actor"})
    critic_lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the twin critics"})

    # Published settings, one YAML file per preset with its source (reins.config.apply_preset reads them).
    PRESET_DIR: ClassVar[Path] = Path(__file__).parent / "presets" / "td3bc"

    def validate(self) -> None:
        super().validate()
        check(self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}")
        check(self.policy_delay >= 1, f"policy_delay must be >= 1, got {self.policy_delay}")
        check(self.policy_noise >= 0, f"policy_noise must be >= 0, got {self.policy_noise}")
        check(self.noise_clip >= 0, f"noise_clip must be >= 0, got {self.noise_clip}")
        check(0.0 < self.tau <= 1.0, f"tau must be in (0, 1], got {self.tau}")
        for name in ("actor_lr", "critic_lr"):
            check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")


class TD3BC(Agent):
    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.actor_spec = {"kind": "deterministic", "obs_dim": obs_dim, "act_dim": act_dim, "hidden": list(cfg.hidden)}
        actor = build_actor(self.actor_spec).to(device)
        critic = EnsembleQ(2, obs_dim, act_dim, list(cfg.hidden)).to(device)
        zero = torch.zeros((), device=device)
        # The last actor loss and lambda are reported on every update (the actor steps every policy_delay-th),
        # and saved with the checkpoint so a resumed run logs what an uninterrupted one does.
        self.register(actor=actor, actor_target=copy.deepcopy(actor).requires_grad_(False), critic=critic,
                      critic_target=copy.deepcopy(critic).requires_grad_(False),
                      actor_opt=torch.optim.Adam(actor.parameters(), lr=cfg.actor_lr, foreach=True),
                      critic_opt=torch.optim.Adam(critic.parameters(), lr=cfg.critic_lr, foreach=True),
                      last_actor_loss=zero.clone(), last_lambda=zero.clone(), steps=0)

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg, obs, act = self.cfg, b["observations"], b["actions"]
        with torch.no_grad():
            a2 = td3_smoothed_action(self.actor_target(b["next_observations"]), noise_std=cfg.policy_noise,
                                     noise_clip=cfg.noise_clip, low=-1.0, high=1.0)
            next_q = self.critic_target(b["next_observations"], a2).min(dim=0).values
            y = td_target(b["rewards"], next_q, gamma=cfg.gamma, terminated=b["terminals"])
        q = self.critic(obs, act)  # [2, B]
        critic_loss = F.mse_loss(q[0], y) + F.mse_loss(q[1], y)
        self.optimize(self.critic_opt, critic_loss)
        self.steps += 1
        if self.steps % cfg.policy_delay == 0:
            self.actor_step(obs, act)
        return {"loss/critic": critic_loss.detach(), "loss/actor": self.last_actor_loss.clone(),
                "train/lambda": self.last_lambda.clone(), "train/q_mean": q.detach().mean()}

    def actor_step(self, obs: torch.Tensor, act: torch.Tensor) -> None:
        """2. The TD3+BC actor step on Q_1, then both target networks move towards theirs."""
        pi = self.actor(obs)
        self.critic.requires_grad_(False)  # only d loss / d action flows back: no critic weight grads
        q_pi = self.critic(obs, pi)[0]
        self.critic.requires_grad_(True)
        loss, lam = td3bc_actor_loss(q_pi, pi, act, self.cfg.alpha)
        self.optimize(self.actor_opt, loss)
        polyak_update(self.critic_target.parameters(), self.critic.parameters(), self.cfg.tau)
        polyak_update(self.actor_target.parameters(), self.actor.parameters(), self.cfg.tau)
        with torch.no_grad():
            self.last_actor_loss.copy_(loss)
            self.last_lambda.copy_(lam)


def train(cfg: Config) -> dict:
    return run_offline(cfg, TD3BC, "td3bc")


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins td3bc", stage="td3bc")


if __name__ == "__main__":
    raise SystemExit(main())
