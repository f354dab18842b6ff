"""What REINFORCE, A2C, PPO, NPG and TRPO share: an actor-critic, rollout collection and the training loop.

The actor is categorical (Discrete actions) or a diagonal Gaussian with a state-independent log-std (Box
actions, sampled in env units and clipped to the Box only when sent to the env; Williams 1992).
The critic V(s) is the baseline / GAE value function. Each algorithm module subclasses `ActorCriticAgent`
and implements `update(batch, step, progress)` with its loss from pgcore.

Rollouts are collected time-major and handed to `update` batch-first with time last ([N envs, T]), the
pgcore convention. `next_values[:, t] = V(s'_t)` of the TRUE successor (the final observation when the
episode ended), so a time-limit truncation bootstraps and a termination does not (pgcore.advantages.gae);
the rollout's last step is marked truncated: its recursion stops and it bootstraps from V(s_T).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from pgcore.distributions import TanhGaussian, diag_gaussian_log_prob, entropy_from_logits, token_logprobs
from pgcore.kl import categorical_kl, gaussian_kl
from reins.config import check
from rl.agent import Agent
from rl.envs import EnvSpec
from rl.nets import ValueNet, build_actor


@dataclass
class OnPolicyConfig:
    """Hyperparameters every on-policy agent has (each agent's config adds its own)."""

    num_envs: int = field(default=4, metadata={"help": "environments stepped together"})
    num_steps: int = field(default=128, metadata={"help": "rollout length per env; batch = num_envs * num_steps"})
    gamma: float = field(default=0.99, metadata={"help": "discount"})
    gae_lambda: float = field(default=0.95, metadata={"help": "GAE lambda (1: Monte-Carlo returns minus the baseline)"})
    hidden: list[int] = field(default_factory=lambda: [64, 64],
                              metadata={"help": "hidden-layer widths of actor and critic"})
    activation: str = field(default="tanh", metadata={"help": "hidden-layer activation: tanh or relu"})
    lr: float = field(default=3e-4, metadata={"help": "Adam learning rate"})
    anneal_lr: bool = field(default=False, metadata={"help": "linear decay to 0 over total_steps"})
    normalize_obs: bool = field(default=False, metadata={"help": "running mean/std normalisation of observations"})
    normalize_reward: bool = field(default=False,
                                   metadata={"help": "scale rewards by a running std of the discounted return"})
    normalize_advantages: bool = field(default=True, metadata={"help": "whiten advantages per batch"})
    max_grad_norm: float = field(default=0.5, metadata={"help": "clip the global gradient norm to this"})
    init_log_std: float = field(default=0.0, metadata={"help": "Gaussian actors only"})

    def validate(self) -> None:
        check(self.num_envs >= 1, f"num_envs must be >= 1, got {self.num_envs}")
        check(self.num_steps >= 1, f"num_steps must be >= 1, got {self.num_steps}")
        check(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")
        check(0.0 <= self.gae_lambda <= 1.0, f"gae_lambda must be in [0, 1], got {self.gae_lambda}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(self.activation in ("tanh", "relu"), f"activation must be tanh or relu, got {self.activation!r}")
        check(all(h >= 1 for h in self.hidden), f"hidden sizes must be >= 1, got {self.hidden}")
        check(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")


class ActorCriticAgent(Agent):
    """Actor (categorical / Gaussian) + critic V(s), with the distribution math delegated to pgcore."""

    def __init__(self, cfg: OnPolicyConfig, spec: EnvSpec, gen: torch.Generator, *, total_steps: int):
        super().__init__()
        self.cfg, self.spec, self.gen = cfg, spec, gen
        self.total_steps = total_steps  # the run's length in env steps (the constructor every agent shares)
        self.arch = {"kind": "categorical" if spec.discrete else "gaussian", "obs_dim": spec.obs_dim,
                     "act_dim": spec.act_dim, "hidden": list(cfg.hidden), "activation": cfg.activation,
                     "ortho": True}
        if not spec.discrete:
            self.arch["init_log_std"] = cfg.init_log_std
        self.register(actor=build_actor(self.arch),
                      critic=ValueNet(spec.obs_dim, list(cfg.hidden), cfg.activation, ortho=True))

    # distribution helpers: params are (logits,) or (mean, log_std)
    def dist_params(self, obs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.actor(obs)
        return (out,) if self.spec.discrete else tuple(out)

    def log_prob_entropy(self, params, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.discrete:
            (logits,) = params
            return token_logprobs(logits, actions), entropy_from_logits(logits)
        mean, log_std = params
        # TanhGaussian.entropy() is the entropy of its base diagonal Gaussian: exactly this policy's entropy.
        return diag_gaussian_log_prob(actions, mean, log_std), TanhGaussian(mean, log_std).entropy()

    def kl(self, old_params, new_params) -> torch.Tensor:
        """Per-sample KL(pi_old || pi_new) in closed form."""
        if self.spec.discrete:
            return categorical_kl(old_params[0], new_params[0])
        return gaussian_kl(old_params[0], old_params[1], new_params[0], new_params[1])

    @torch.no_grad()
    def sample(self, obs: torch.Tensor):
        params = self.dist_params(obs)
        if self.spec.discrete:
            actions = torch.multinomial(torch.softmax(params[0], dim=-1), 1, generator=self.gen).squeeze(-1)
        else:
            mean, log_std = params
            actions = mean + log_std.exp() * torch.randn(mean.shape, generator=self.gen, dtype=mean.dtype)
        logp, _ = self.log_prob_entropy(params, actions)
        return actions, logp, params

    def env_actions(self, actions: torch.Tensor) -> np.ndarray:
        if self.spec.discrete:
            return actions.numpy().astype(np.int64)
        return np.clip(actions.numpy(), self.spec.act_low, self.spec.act_high).astype(np.float32)

    def export(self) -> dict:
        return {"actor": self.actor, "arch": self.arch}

    def set_lr(self, optimizer: torch.optim.Optimizer, progress: float, base: float | None = None) -> None:
        """With `anneal_lr`, the learning rate decays linearly from `base` (default `cfg.lr`) to 0."""
        if self.cfg.anneal_lr:
            for g in optimizer.param_groups:
                g["lr"] = (self.cfg.lr if base is None else base) * max(1.0 - progress, 0.0)

    @staticmethod
    def flat(x: torch.Tensor) -> torch.Tensor:
        """[N, T, ...] -> [N * T, ...]"""
        return x.reshape(-1, *x.shape[2:])


def collect_rollout(h, agent: ActorCriticAgent, obs: np.ndarray, num_steps: int):
    """Run `num_steps` vector steps; returns (batch of [N, T, ...] tensors, next obs to act on)."""
    cols: dict[str, list] = {k: [] for k in ("obs", "actions", "logp", "values", "rewards", "terminated",
                                             "truncated", "real_next", "params")}
    for _ in range(num_steps):
        h.obs_norm.update(obs)
        obs_t = h.norm_obs(obs)
        actions, logp, params = agent.sample(obs_t)
        with torch.no_grad():
            value = agent.critic(obs_t)
        next_obs, real_next, _, rewards, term, trunc = h.env_step(agent.env_actions(actions))
        for k, v in (("obs", obs_t), ("actions", actions), ("logp", logp), ("values", value),
                     ("rewards", torch.as_tensor(rewards, dtype=torch.float32)),
                     ("terminated", torch.as_tensor(term, dtype=torch.float32)),
                     ("truncated", torch.as_tensor(trunc, dtype=torch.float32)), ("real_next", real_next),
                     ("params", params)):
            cols[k].append(v)
        obs = next_obs
    batch = {k: torch.stack(cols[k], dim=1) for k in ("obs", "actions", "logp", "values", "rewards",
                                                      "terminated", "truncated")}
    batch["params"] = tuple(torch.stack([p[i] for p in cols["params"]], dim=1)
                            for i in range(len(cols["params"][0])))
    real_next = np.stack(cols["real_next"], axis=1)  # [N, T, obs_dim]
    with torch.no_grad():
        batch["next_values"] = agent.critic(h.norm_obs(real_next.reshape(-1, real_next.shape[-1]))).reshape(
            batch["values"].shape)
    # The rollout's end cuts every episode still running: bootstrap from V(s_T), stop the recursion.
    batch["truncated"][:, -1] = torch.maximum(batch["truncated"][:, -1], 1.0 - batch["terminated"][:, -1])
    return batch, obs


def train_on_policy(h, agent: ActorCriticAgent) -> dict:
    """The on-policy loop: collect, update, evaluate/log, checkpoint at segment boundaries."""
    cfg = agent.cfg
    total = h.cfg.total_steps
    obs, _ = h.start(agent)
    info: dict = dict(h.resumed_info)
    while h.step < total:
        # progress as of the rollout's start: the first update runs at the full learning rate, the last at
        # lr / n_updates (CleanRL's schedule), none at 0
        progress = h.step / total
        batch, obs = collect_rollout(h, agent, obs, cfg.num_steps)
        info = agent.update(batch, step=h.step, progress=progress)
        h.check_update(agent, info)
        h.updates += 1
        h.periodic(agent, info)
        if h.checkpoint_due():
            obs = h.save_checkpoint(agent, info=info)
    return h.finish(agent, info)


def minibatches(n: int, num_minibatches: int, gen: torch.Generator):
    """Shuffled index blocks covering 0..n-1 (the last block takes the remainder)."""
    perm = torch.randperm(n, generator=gen)
    size = math.ceil(n / num_minibatches)
    return [perm[i:i + size] for i in range(0, n, size)]
