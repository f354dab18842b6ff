"""Conservative Q-learning (CQL(H): SAC-style on Box actions, a Q-network on Discrete ones) on an offline
dataset: `reins cql --config FILE dataset=<id>`.

Kumar et al. 2020, CQL(H) (eq. 4: R(mu) = -KL(mu || uniform) up to a constant, the logsumexp form); the
continuous-action estimator, importance sampling and the Lagrange variant: Kumar et al. 2020 App. F / eq. 30,
following the original code (aviralkumar2907/CQL, min_q_version=3) and CORL. Each update:
  1. temperature: L_alpha = -E[log alpha (log pi(a~|s) + target_entropy)]     (pgcore.sac_temperature_loss)
  2. actor:       L_pi = E[alpha log pi(a~|s) - min_e Q_e(s, a~)]               (pgcore.sac_actor_loss)
                  during the first bc_steps: E[alpha log pi(a~|s) - log pi(a_data|s)]   (BC warm-up)
  3. critics:     L_Q = sum_e E[(Q_e(s, a) - y)^2] + alpha' * cql_alpha * sum_e (gap_e - target_gap?)
       y = r + gamma (1 - d) (min_e Qhat_e(s', a') [- alpha log pi(a'|s') if backup_entropy])  (pgcore.sac_q_target)
           (max_target_backup: the max over N actions a' ~ pi(.|s') of min_e Qhat_e)
       gap_e = E_s[ T * logsumexp_i((Q_e(s, a_i) - log p(a_i)) / T) ] - E[Q_e(s, a_data)]
           with N actions each from Unif(-1, 1)^A (log p = -A log 2), pi(.|s) and pi(.|s') (the latter
           evaluated at Q(s, .), as in the original code), log p = log pi for the policy samples
           (pgcore.cql_regularizer); without importance sampling: logsumexp over [Q_rand, Q_data, Q_pi(s'), Q_pi(s)].
       alpha' = cql_alpha fixed, or Lagrange: alpha' = clamp(exp(log alpha'), 0, 1e6) trained by
           pgcore.cql_alpha_loss on the gap minus target_gap (CORL's scaling: alpha' * cql_alpha * (gap - gap0)).
  4. Qhat <- Polyak(Qhat, Q, tau)

Discrete actions (a dataset with a Discrete action space): CQL(H) on one Q-network Q(s, .) (Kumar et al. 2020's
discrete form, as d3rlpy's DiscreteCQL), no actor. Each update:
  L_Q = TD(Q(s, a), y) + cql_alpha * E_s[logsumexp_a Q(s, a) - Q(s, a_data)]      (pgcore.discrete_cql_gap)
  y   = r + gamma (1 - d) Qhat(s', argmax_a' Q(s', a'))                              (pgcore.double_dqn_target)
  TD is the Huber loss (d3rlpy) or the squared error (`td_loss`); Qhat is a copy of Q after updates 1, N + 1,
  2N + 1, ... (N = `target_update_every`, d3rlpy: 8000, as its grad-step counter from 0), or Polyak with tau after
  each update when N is 0. The policy is greedy in Q (a "q" policy file: argmax_a Q(s, a)).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from offline.trainer import OfflineConfig, run_offline
from pgcore.distributions import TanhGaussian
from pgcore.offline_losses import cql_alpha_loss, cql_regularizer, discrete_cql_gap
from pgcore.policy_losses import double_dqn_target, polyak_update, sac_actor_loss, sac_q_target, sac_temperature_loss
from reins.config import check
from reins.entry import stage_main
from rl.agent import Agent
from rl.nets import EnsembleQ, build_actor, small_last_init_


@dataclass
class Config(OfflineConfig):
    output_dir: str = field(default="runs/cql",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints, artifacts)"})
    q_hidden: list[int] = field(default_factory=lambda: [256, 256],
                                metadata={"help": "hidden-layer widths of the Q critics (hidden: the actor's); "
                                                  "Discrete data: of the one Q-network Q(s, .), the greedy policy"})
    policy_lr: float = field(default=3e-4, metadata={"help": "Adam learning rate of the actor"})
    qf_lr: float = field(default=3e-4,
                         metadata={"help": "Adam learning rate of the Q critics (Discrete data: of the Q-network)"})
    alpha_lr: float = field(default=0.0, metadata={"help": "SAC temperature lr; 0 = policy_lr"})
    auto_alpha: bool = field(default=True,
                             metadata={"help": "SAC temperature tuned to target_entropy (else fixed at `alpha`)"})
    alpha: float = field(default=1.0, metadata={"help": "initial / fixed SAC temperature"})
    target_entropy: float | None = field(default=None, metadata={"help": "default -|A|"})
    backup_entropy: bool = field(default=False,
                                 metadata={"help": "include -alpha log pi in the TD target (original: deterministic "
                                                   "backup)"})
    tau: float = field(default=0.005, metadata={"help": "Polyak rate of the target critics"})
    cql_alpha: float = field(default=5.0, metadata={"help": "weight of the conservative term (min_q_weight)"})
    td_loss: Literal["huber", "mse"] = field(default="huber",
                                             metadata={"help": "Discrete data: the Q-network's TD loss (d3rlpy: "
                                                               "huber; Box data always uses the squared error)"})
    q_layer_norm: bool = field(default=False,
                               metadata={"help": "Discrete data: LayerNorm after each hidden layer of the Q-network "
                                                 "(Ball et al. 2023: keeps offline Q-values from extrapolating)"})
    q_dropout: float = field(default=0.0,
                             metadata={"help": "Discrete data: dropout after each hidden activation of the "
                                               "Q-network while training (DroQ; off when acting)"})
    qf_weight_decay: float = field(default=0.0,
                                   metadata={"help": "Discrete data: L2 weight decay of the Q-network's Adam"})
    target_update_every: int = field(default=0,
                                     metadata={"help": "Discrete data: copy Q into its target after updates 1, "
                                                       "N + 1, 2N + 1, ... (d3rlpy's rule; its default 8000); 0: "
                                                       "Polyak with tau after every update"})
    cql_n_actions: int = field(default=10, metadata={"help": "actions per proposal (uniform, pi(.|s), pi(.|s'))"})
    cql_importance_sample: bool = field(default=True,
                                        metadata={"help": "CQL(H) with densities (min_q_version 3); false: version 2"})
    cql_temp: float = field(default=1.0, metadata={"help": "temperature of the logsumexp over proposed actions"})
    cql_lagrange: bool = field(default=False,
                               metadata={"help": "tune alpha' so that the gap approaches cql_target_action_gap"})
    cql_target_action_gap: float = field(default=1.0,
                                         metadata={"help": "target of the conservative gap when cql_lagrange"})
    cql_log_alpha_prime_init: float = field(default=0.0,
                                            metadata={"help": "original 0 (alpha' = 1); CORL starts at 1.0 (alpha' = "
                                                              "e)"})
    cql_alpha_prime_lr: float = field(default=3e-4,
                                      metadata={"help": "Adam learning rate of log alpha' (cql_lagrange)"})
    cql_max_target_backup: bool = field(default=False,
                                        metadata={"help": "TD target from the max over sampled next actions"})
    cql_clip_diff_min: float = field(default=-math.inf,
                                     metadata={"help": "lower clip of the conservative gap (-inf: none)"})
    cql_clip_diff_max: float = field(default=math.inf,
                                     metadata={"help": "upper clip of the conservative gap (inf: none)"})
    bc_steps: int = field(default=0, metadata={"help": "BC warm-up of the actor (original: 40k)"})
    log_std_offset: float = field(default=-1.0, metadata={"help": "added to the actor's log std head output (CORL -1)"})
    orthogonal_init: bool = field(default=False,
                                  metadata={"help": "critics: orthogonal, gain sqrt(2) on hidden layers, 1e-2 on the "
                                                    "output (CORL)"})
    actor_last_gain: float | None = field(default=None,
                                          metadata={"help": "actor output layer: xavier-uniform with this gain, zero "
                                                            "bias (CORL 1e-2)"})

    # Published settings, one YAML file per preset with its source (reins.config.apply_preset reads them).
    PRESET_DIR: ClassVar[Path] = Path(__file__).parent / "presets" / "cql"

    def validate(self) -> None:
        super().validate()
        check(0.0 < self.tau <= 1.0, f"tau must be in (0, 1], got {self.tau}")
        check(self.cql_alpha >= 0, f"cql_alpha must be >= 0, got {self.cql_alpha}")
        check(self.target_update_every >= 0, f"target_update_every must be >= 0, got {self.target_update_every}")
        check(0.0 <= self.q_dropout < 1.0, f"q_dropout must be in [0, 1), got {self.q_dropout}")
        check(self.qf_weight_decay >= 0, f"qf_weight_decay must be >= 0, got {self.qf_weight_decay}")
        check(self.cql_n_actions >= 1, f"cql_n_actions must be >= 1, got {self.cql_n_actions}")
        check(self.cql_temp > 0, f"cql_temp must be > 0, got {self.cql_temp}")
        check(self.alpha > 0, f"alpha must be > 0, got {self.alpha}")
        check(self.bc_steps >= 0, f"bc_steps must be >= 0, got {self.bc_steps}")
        check(self.actor_last_gain is None or self.actor_last_gain > 0,
              f"actor_last_gain must be > 0 or null, got {self.actor_last_gain}")
        for name in ("policy_lr", "qf_lr", "cql_alpha_prime_lr"):
            check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        check(self.alpha_lr >= 0, f"alpha_lr must be >= 0, got {self.alpha_lr}")


def max_backup(q_next: torch.Tensor, logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CQL's max-backup target from N proposals a'_1..N ~ pi(.|s'): min_e max_j Q'_e(s', a'_j) (Kumar et al.'s
    code: each critic's max over the proposals, then the smaller of the two), with log pi of the proposal that
    the min's critic picked (for `backup_entropy`). q_next [E, B, N], logp [B, N] -> ([B], [B])."""
    best_q, best_j = q_next.max(dim=-1)           # [E, B]
    e = best_q.argmin(dim=0, keepdim=True)         # [1, B]: the critic whose max is the smaller
    j = best_j.gather(0, e).squeeze(0)             # [B]: its proposal
    return best_q.gather(0, e).squeeze(0), logp.gather(-1, j.unsqueeze(-1)).squeeze(-1)


class CQL(Agent):
    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, device: torch.device):
        super().__init__()
        self.cfg, self.act_dim, self.device = cfg, act_dim, device
        self.actor_spec = {"kind": "tanh_gaussian", "obs_dim": obs_dim, "act_dim": act_dim,
                           "hidden": list(cfg.hidden), "log_std": "clamp", "log_std_min": -20.0, "log_std_max": 2.0,
                           "log_std_offset": cfg.log_std_offset}
        actor = build_actor(self.actor_spec).to(device)
        if cfg.actor_last_gain is not None:
            small_last_init_(actor.net, cfg.actor_last_gain)
        critic = EnsembleQ(2, obs_dim, act_dim, cfg.q_hidden, ortho=cfg.orthogonal_init).to(device)
        log_alpha = torch.tensor(math.log(cfg.alpha), device=device, requires_grad=True)
        log_alpha_prime = torch.tensor(cfg.cql_log_alpha_prime_init, device=device, requires_grad=True)
        self.register(actor=actor, critic=critic, critic_target=copy.deepcopy(critic).requires_grad_(False),
                      log_alpha=log_alpha, log_alpha_prime=log_alpha_prime,
                      actor_opt=torch.optim.Adam(actor.parameters(), lr=cfg.policy_lr, foreach=True),
                      critic_opt=torch.optim.Adam(critic.parameters(), lr=cfg.qf_lr, foreach=True),
                      alpha_opt=torch.optim.Adam([log_alpha], lr=cfg.alpha_lr or cfg.policy_lr),
                      alpha_prime_opt=torch.optim.Adam([log_alpha_prime], lr=cfg.cql_alpha_prime_lr), steps=0)
        self.target_entropy = -float(act_dim) if cfg.target_entropy is None else cfg.target_entropy

    @staticmethod
    def _draws(d: TanhGaussian, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n actions per state from one evaluated policy distribution: ([B, n, A], [B, n]). The actor runs once
        per state and its (mean, log-std) are broadcast over the n draws, not n forwards of repeated states."""
        return TanhGaussian(d.mean.unsqueeze(1).expand(-1, n, -1), d.log_std.unsqueeze(1).expand(-1, n, -1)).rsample()

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        obs, act = b["observations"], b["actions"]
        new_a, logp = self.actor.dist(obs).rsample()
        alpha = self.temperature_step(logp)                        # 1 (the actor and alpha step before the
        pi_loss = self.actor_step(obs, act, new_a, logp, alpha)    # 2  critics, as in CORL)
        with torch.no_grad():
            d_next = self.actor.dist(b["next_observations"])  # shared by the TD target and the pi(.|s') proposals
            y = self.td_target(b, d_next, alpha)               # 3
        q = self.critic(obs, act)  # [2, B]
        td_loss = F.mse_loss(q[0], y) + F.mse_loss(q[1], y)
        gaps = self.conservative_gaps(obs, q, d_next)
        cql_loss, alpha_prime = self.conservative_loss(gaps)
        self.optimize(self.critic_opt, td_loss + cql_loss)
        polyak_update(self.critic_target.parameters(), self.critic.parameters(), self.cfg.tau)  # 4
        self.steps += 1
        return {"loss/actor": pi_loss.detach(), "loss/td": td_loss.detach(), "loss/cql": cql_loss.detach(),
                "train/cql_gap": gaps.detach().mean(), "train/alpha": alpha, "train/alpha_prime": alpha_prime.detach(),
                "train/q_mean": q.detach().mean(), "train/entropy": -logp.detach().mean()}

    def temperature_step(self, logp: torch.Tensor) -> torch.Tensor:
        """1. L_alpha towards target_entropy (when auto_alpha); returns alpha after the step, detached."""
        if self.cfg.auto_alpha:
            self.optimize(self.alpha_opt, sac_temperature_loss(self.log_alpha, logp, self.target_entropy))
        return self.log_alpha.detach().exp()

    def actor_step(self, obs, act, new_a, logp, alpha) -> torch.Tensor:
        """2. The SAC actor loss on min_e Q_e, or the BC warm-up loss during the first bc_steps updates."""
        if self.steps < self.cfg.bc_steps:
            pi_loss = (alpha * logp - self.actor.log_prob(obs, act)).mean()
        else:
            self.critic.requires_grad_(False)  # only d loss / d action flows back: no critic weight grads
            pi_loss = sac_actor_loss(logp, self.critic(obs, new_a).min(dim=0).values, alpha)
            self.critic.requires_grad_(True)
        self.optimize(self.actor_opt, pi_loss)
        return pi_loss

    def td_target(self, b: dict[str, torch.Tensor], d_next: TanhGaussian, alpha: torch.Tensor) -> torch.Tensor:
        """3. y from the target critics at a' ~ pi(.|s') (the max over N proposals with max_target_backup)."""
        cfg, next_obs = self.cfg, b["next_observations"]
        if cfg.cql_max_target_backup:
            n = cfg.cql_n_actions
            a2, logp2 = self._draws(d_next, n)
            q_next = self.critic_target(next_obs.unsqueeze(1).expand(-1, n, -1), a2)  # [2, B, n]
            next_q, next_logp = max_backup(q_next, logp2)
        else:
            a2, next_logp = d_next.rsample()
            next_q = self.critic_target(next_obs, a2).min(dim=0).values
        return sac_q_target(b["rewards"], next_q, next_logp, alpha=alpha if cfg.backup_entropy else 0.0,
                            gamma=cfg.gamma, terminated=b["terminals"])

    def conservative_gaps(self, obs: torch.Tensor, q: torch.Tensor, d_next: TanhGaussian) -> torch.Tensor:
        """3. Each critic's gap: T logsumexp over proposed actions (uniform, pi(.|s), pi(.|s')) minus Q(s, a)."""
        cfg, n, temp = self.cfg, self.cfg.cql_n_actions, self.cfg.cql_temp
        rand_a = torch.rand(obs.shape[0], n, self.act_dim, device=obs.device, dtype=obs.dtype) * 2 - 1
        with torch.no_grad():
            cur_a, cur_logp = self._draws(self.actor.dist(obs), n)  # the actor as just updated
            nxt_a, nxt_logp = self._draws(d_next, n)
        obs_rep = obs.unsqueeze(1).expand(-1, 3 * n, -1)  # one critic call for all 3N proposals
        q_rand, q_cur, q_nxt = self.critic(obs_rep, torch.cat([rand_a, cur_a, nxt_a], dim=1)).split(n, dim=-1)
        if cfg.cql_importance_sample:
            q_cat = torch.cat([q_rand, q_nxt, q_cur], dim=-1)
            log_dens = torch.cat([torch.full_like(cur_logp, -self.act_dim * math.log(2.0)), nxt_logp, cur_logp],
                                 dim=-1)
            gaps = torch.stack([temp * cql_regularizer(q_cat[e] / temp, q[e] / temp, log_dens / temp)
                                for e in range(2)])
        else:
            q_cat = torch.cat([q_rand, q.unsqueeze(-1), q_nxt, q_cur], dim=-1)
            gaps = torch.stack([temp * cql_regularizer(q_cat[e] / temp, q[e] / temp) for e in range(2)])
        return gaps.clamp(cfg.cql_clip_diff_min, cfg.cql_clip_diff_max)

    def conservative_loss(self, gaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """3. alpha' * cql_alpha * sum_e gap_e (fixed alpha' = 1), or with the Lagrange multiplier: its step on
        the gap minus target_gap first; returns (the critics' conservative loss, alpha')."""
        cfg = self.cfg
        if not cfg.cql_lagrange:
            return cfg.cql_alpha * gaps.sum(), torch.ones((), device=gaps.device)
        alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
        cql_loss = (alpha_prime.detach() * cfg.cql_alpha * (gaps - cfg.cql_target_action_gap)).sum()
        # the multiplier of the scaled gap cql_alpha * (gap - gap0), as in CORL and the original code
        self.optimize(self.alpha_prime_opt,
                      cfg.cql_alpha * cql_alpha_loss(self.log_alpha_prime, gaps, cfg.cql_target_action_gap))
        return cql_loss, alpha_prime


class DiscreteCQL(Agent):
    """CQL(H) for Discrete actions: a double-DQN Q-network with the exact conservative term (module docstring)."""

    def __init__(self, cfg: Config, obs_dim: int, n_actions: int, device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.actor_spec = {"kind": "q", "obs_dim": obs_dim, "act_dim": n_actions, "hidden": list(cfg.q_hidden)}
        if cfg.q_layer_norm:
            self.actor_spec["layer_norm"] = True
        if cfg.q_dropout > 0:
            self.actor_spec["dropout"] = cfg.q_dropout
        q = build_actor(self.actor_spec).to(device)
        self.register(actor=q, critic_target=copy.deepcopy(q).requires_grad_(False),
                      critic_opt=torch.optim.Adam(q.parameters(), lr=cfg.qf_lr, weight_decay=cfg.qf_weight_decay,
                                                  foreach=True), steps=0)

    def update(self, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        cfg, obs, next_obs = self.cfg, b["observations"], b["next_observations"]
        with torch.no_grad():
            y = double_dqn_target(b["rewards"], self.actor(next_obs), self.critic_target(next_obs), gamma=cfg.gamma,
                                  terminated=b["terminals"])
        q_all = self.actor(obs)
        q = q_all.gather(-1, b["actions"].unsqueeze(-1)).squeeze(-1)
        td_loss = F.smooth_l1_loss(q, y) if cfg.td_loss == "huber" else F.mse_loss(q, y)
        gap = discrete_cql_gap(q_all, b["actions"])
        self.optimize(self.critic_opt, td_loss + cfg.cql_alpha * gap)
        if cfg.target_update_every == 0:
            polyak_update(self.critic_target.parameters(), self.actor.parameters(), cfg.tau)
        elif self.steps % cfg.target_update_every == 0:  # d3rlpy: after updates 1, N + 1, 2N + 1, ...
            self.critic_target.load_state_dict(self.actor.state_dict())
        self.steps += 1
        return {"loss/td": td_loss.detach(), "loss/cql": (cfg.cql_alpha * gap).detach(),
                "train/cql_gap": gap.detach(), "train/q_mean": q.detach().mean()}


def train(cfg: Config) -> dict:
    return run_offline(cfg, CQL, "cql", discrete_build=DiscreteCQL)


def main(argv=None) -> int:
    return stage_main(Config, train, argv, prog="reins cql", stage="cql")


if __name__ == "__main__":
    raise SystemExit(main())
