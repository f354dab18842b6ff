"""Behaviour cloning baseline on a Minari dataset: `reins bc --config FILE dataset=<id-or-path>`.

Maximum likelihood of the dataset actions, L = -E[log pi(a|s)], i.e. AWR with beta = 0 (every weight
exp(beta A) is 1; Peng et al. 2019), computed with pgcore.awr_loss. The actors are IQL's (Gaussian, or
deterministic where log pi = -||pi(s) - a||^2 makes it MSE regression) or CQL's tanh-Gaussian, so the
comparison with IQL/CQL uses the same network and data pipeline. On Discrete actions the policy is categorical
(logits over the actions) and the loss is the cross-entropy -E[log softmax(f(s))_a]; it acts by the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch

from offline.trainer import OFFLINE_ACTORS, OfflineConfig, run_offline
from pgcore.offline_losses import awr_loss
from reins.config import check
from reins.entry import stage_main
from rl.agent import Agent
from rl.nets import build_actor


@dataclass
class Config(OfflineConfig):
    output_dir: str = field(default="runs/bc",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    actor: Literal["deterministic", "gaussian", "tanh_gaussian"] = field(
        default="deterministic", metadata={"help": "deterministic (MSE), gaussian or tanh_gaussian (likelihood); "
                                                   "Discrete data: always categorical (cross-entropy)"})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate"})

    # Published settings, one YAML file per preset with its source (reins.config.apply_preset reads them).
    PRESET_DIR: ClassVar[Path] = Path(__file__).parent / "presets" / "bc"

    def validate(self) -> None:
        super().validate()
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")


class BC(Agent):
    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, device: torch.device):
        super().__init__()
        self.actor_spec = {"kind": OFFLINE_ACTORS[cfg.actor], "obs_dim": obs_dim, "act_dim": act_dim,
                           "hidden": list(cfg.hidden)}
        if cfg.actor == "tanh_gaussian":  # CQL's parametrisation
            self.actor_spec.update(log_std="clamp", log_std_min=-20.0, log_std_max=2.0, log_std_offset=-1.0)
        actor = build_actor(self.actor_spec).to(device)
        self.register(actor=actor, opt=torch.optim.Adam(actor.parameters(), lr=cfg.lr, foreach=True))

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logp = self.actor.log_prob(b["observations"], b["actions"])
        loss = awr_loss(logp, torch.zeros_like(logp), beta=0.0)
        self.optimize(self.opt, loss)
        return {"loss/actor": loss.detach()}


class DiscreteBC(Agent):
    """Cross-entropy of the dataset's action indices under a categorical policy (`awr_loss` with beta 0)."""

    def __init__(self, cfg: Config, obs_dim: int, n_actions: int, device: torch.device):
        super().__init__()
        self.actor_spec = {"kind": "categorical", "obs_dim": obs_dim, "act_dim": n_actions, "hidden": list(cfg.hidden)}
        actor = build_actor(self.actor_spec).to(device)
        self.register(actor=actor, opt=torch.optim.Adam(actor.parameters(), lr=cfg.lr, foreach=True))

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self.actor(b["observations"])
        logp = torch.log_softmax(logits, dim=-1).gather(-1, b["actions"].unsqueeze(-1)).squeeze(-1)
        loss = awr_loss(logp, torch.zeros_like(logp), beta=0.0)
        self.optimize(self.opt, loss)
        return {"loss/actor": loss.detach(), "train/accuracy": (logits.argmax(-1) == b["actions"]).float().mean()}


def train(cfg: Config) -> dict:
    return run_offline(cfg, BC, "bc", discrete_build=DiscreteBC)


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins bc", stage="bc")


if __name__ == "__main__":
    raise SystemExit(main())
