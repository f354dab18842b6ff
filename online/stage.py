"""`reins online`: train one online agent on a gymnasium env (stage contract: config.yaml, log.jsonl,
metrics.json, checkpoints/checkpoint.pt, and the artifact `policy.pt` in the `rl.policy_io` format).

    reins online --config recipes/online/ppo-cartpole.yaml [key=value ...]

`algo` selects the agent; its hyperparameters live in the config section of the same name (`ppo.clip_eps=0.1`).
config.yaml holds the shared keys and the selected agent's section only (`Config.run_config_view`), so a change
to another agent's defaults does not make a saved run "a different run" on resume.
Off-policy agents (sac, td3, ddpg, dqn) can also write evaluated policy snapshots (`save_snapshots`,
`snapshot_every`) and their replay buffer (`save_replay`) for `offline/`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from online.a2c import A2C, A2CConfig
from online.common import OnlineLoop
from online.dqn import DQN, DQNConfig
from online.offpolicy import train_off_policy
from online.onpolicy import train_on_policy
from online.ppo import PPO, PPOConfig
from online.reinforce import Reinforce, ReinforceConfig
from online.sac import SAC, SACConfig
from online.td3 import TD3, DDPGConfig, TD3Config
from online.trpo import TRPO, NPGConfig, TRPOConfig
from reins.config import RunArgs, check
from reins.entry import stage_main
from reins.errors import ConfigError
from reins.runio import seed_everything

Algo = Literal["reinforce", "a2c", "ppo", "npg", "trpo", "ddpg", "td3", "sac", "dqn"]

# algo -> (agent class, action space it needs, off-policy?). Every agent class is built the same way:
# `cls(agent_config, env_spec, generator, total_steps=...)`; what differs between npg and trpo, or ddpg and
# td3, is in the agent config's class (NPGConfig.line_search, DDPGConfig's defaults).
AGENTS = {
    "reinforce": (Reinforce, "any", False),
    "a2c": (A2C, "any", False),
    "ppo": (PPO, "any", False),
    "npg": (TRPO, "any", False),
    "trpo": (TRPO, "any", False),
    "ddpg": (TD3, "box", True),
    "td3": (TD3, "box", True),
    "sac": (SAC, "box", True),
    "dqn": (DQN, "discrete", True),
}


@dataclass
class Config(RunArgs):
    # output_dir is required (validate); RunArgs' default "" only lets Config() exist: reins.runio fills keys
    # a saved config.yaml lacks (options added since) from Config()'s values.
    algo: Algo = field(default="ppo",
                       metadata={"help": "the agent: reinforce, a2c, ppo, npg, trpo, ddpg, td3, sac or dqn"})
    env_id: str = field(default="CartPole-v1", metadata={"help": "gymnasium environment id"})
    total_steps: int = field(default=100_000, metadata={"help": "environment steps of training (over all vector envs)"})
    eval_every: int = field(default=10_000, metadata={"help": "env steps between evaluations (0: only at the end)"})
    eval_episodes: int = field(default=10, metadata={"help": "episodes per evaluation"})
    eval_seed: int = field(default=1_000_000,
                           metadata={"help": "evaluation envs are seeded eval_seed + k, separate from training"})
    checkpoint_every: int = field(default=20_000,
                                  metadata={"help": "env steps between checkpoints (segment boundaries; 0: never)"})
    log_every: int = field(default=1_000, metadata={"help": "env steps between log.jsonl rows"})
    torch_threads: int = field(default=1, metadata={"help": "torch CPU threads (1 is fastest for small nets)"})
    # off-policy agents only: behaviour data for offline/
    save_snapshots: bool = field(default=False,
                                 metadata={"help": "off-policy only: save evaluated policy snapshots for offline/"})
    snapshot_every: int = field(default=10_000, metadata={"help": "env steps between snapshots"})
    save_replay: bool = field(default=False,
                              metadata={"help": "off-policy only: save the replay buffer at the end (replay.pt)"})
    reinforce: ReinforceConfig = field(default_factory=ReinforceConfig,
                                       metadata={"help": "REINFORCE's hyperparameters (algo=reinforce)"})
    a2c: A2CConfig = field(default_factory=A2CConfig, metadata={"help": "A2C's hyperparameters (algo=a2c)"})
    ppo: PPOConfig = field(default_factory=PPOConfig, metadata={"help": "PPO's hyperparameters (algo=ppo)"})
    npg: NPGConfig = field(default_factory=NPGConfig, metadata={"help": "NPG's hyperparameters (algo=npg)"})
    trpo: TRPOConfig = field(default_factory=TRPOConfig, metadata={"help": "TRPO's hyperparameters (algo=trpo)"})
    ddpg: DDPGConfig = field(default_factory=DDPGConfig, metadata={"help": "DDPG's hyperparameters (algo=ddpg)"})
    td3: TD3Config = field(default_factory=TD3Config, metadata={"help": "TD3's hyperparameters (algo=td3)"})
    sac: SACConfig = field(default_factory=SACConfig, metadata={"help": "SAC's hyperparameters (algo=sac)"})
    dqn: DQNConfig = field(default_factory=DQNConfig, metadata={"help": "DQN's hyperparameters (algo=dqn)"})

    def validate(self) -> None:
        check(bool(self.output_dir), "output_dir must be set")
        check(self.total_steps >= 1, f"total_steps must be >= 1, got {self.total_steps}")
        check(self.eval_every >= 0, f"eval_every must be >= 0, got {self.eval_every}")
        check(self.eval_episodes >= 1, f"eval_episodes must be >= 1, got {self.eval_episodes}")
        check(self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        check(self.torch_threads >= 1, f"torch_threads must be >= 1, got {self.torch_threads}")
        check(self.snapshot_every >= 1, f"snapshot_every must be >= 1, got {self.snapshot_every}")
        off_policy = AGENTS[self.algo][2]
        if (self.save_snapshots or self.save_replay) and not off_policy:
            raise ConfigError(f"save_snapshots/save_replay are for off-policy algos (sac, td3, ddpg, dqn), "
                              f"not '{self.algo}'")

    @property
    def agent_config(self):
        return getattr(self, self.algo)

    def run_config_view(self, d: dict) -> dict:
        """What identifies this run (reins.runio's hook for config.yaml and the resume guard): every shared key
        and the section of the selected agent, `self.algo`; the other agents' sections do not affect the run.
        Applied to a saved config.yaml that holds every section, it drops the others too; a saved run of another
        algo still differs in `algo`.
        """
        return {k: v for k, v in d.items() if k not in AGENTS or k == self.algo}


def train(cfg: Config) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.torch_threads)  # small nets: one thread is fastest and leaves cores to the envs
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: Config) -> dict:
    agent_cls, needs, off_policy = AGENTS[cfg.algo]
    acfg = cfg.agent_config
    seed_everything(cfg.seed)  # network initialisation uses the global torch RNG
    h = OnlineLoop(cfg, cfg.algo, acfg.num_envs, acfg.gamma, normalize_obs=acfg.normalize_obs,
                normalize_reward=getattr(acfg, "normalize_reward", False), needs=needs)
    done = h.run.completed_metrics()
    if done is not None:
        h.envs.close()
        return done
    agent = agent_cls(acfg, h.spec, h.gen, total_steps=cfg.total_steps)
    if off_policy:
        return train_off_policy(h, agent)
    return train_on_policy(h, agent)


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins online", stage="online")


if __name__ == "__main__":
    raise SystemExit(main())
