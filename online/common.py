"""The run harness shared by every online agent: envs, normalisers, episodes, evaluation, checkpoints, policy.

Exact resume with any gymnasium env: an env's internal state cannot be saved in a weights-only checkpoint, so
a checkpoint is taken only at a *segment boundary*: the partial episodes in flight are cut there (recorded as
time-limit truncations, bootstrapped from the value of their last observation, never as terminals) and every
env is reset with seeds derived from (seed, segment index). A resumed run resets the envs with the same seeds
at the same step, so it continues exactly as the uninterrupted run did. The cost is one artificial truncation
per env every `checkpoint_every` steps; evaluation runs on separate env instances and is unaffected.

Evaluation: `eval_episodes` fresh envs seeded `eval_seed + k`, deterministic actions through the very
`Policy` object that `policy_io` saves, so the evaluated policy is the file written.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from reins.errors import ConfigError
from reins.runio import (
    FiniteGuard,
    RunDir,
    atomic_torch_save,
    atomic_write_text,
    check_finite,
    get_rng_state,
    set_rng_state,
)
from rl.envs import (
    EnvSpec,
    ObsNormalizer,
    RewardScaler,
    check_algo_spaces,
    evaluate,
    final_observations,
    make_vector_env,
)
from rl.policy_io import Policy, policy_dict

RECENT_EPISODES = 20


def segment_seeds(seed: int, segment: int, num_envs: int) -> list[int]:
    """Reset seeds of the envs for one segment (between checkpoints): distinct per (seed, segment, env)."""
    base = int(np.random.SeedSequence([seed, segment]).generate_state(1)[0])
    return [(base + i) % (2**31) for i in range(num_envs)]


def evaluate_policy(policy: Policy, env_id: str, episodes: int, seed: int) -> dict:
    """Run `episodes` episodes with deterministic actions on fresh envs seeded seed, seed+1, ..."""
    returns, lengths = evaluate(lambda obs: policy.act(obs, deterministic=True), env_id, episodes, seed)
    return {"eval/return_mean": float(returns.mean()), "eval/return_std": float(returns.std()),
            "eval/return_median": float(np.median(returns)), "eval/length_mean": float(lengths.mean())}


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The scalar entries of an update's metrics as floats (what metrics.json and checkpoints keep)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) or (isinstance(v, torch.Tensor) and v.numel() == 1)}


@dataclass
class OnlineLoop:
    """One online run's loop state: everything that is not the learning algorithm (envs, normalisers, episodes,
    evaluation, checkpoint/log/snapshot schedule); an agent's train loop drives it. Checkpoints keep its state
    under the key "harness"."""

    cfg: object            # the stage Config
    algo: str
    num_envs: int
    gamma: float
    normalize_obs: bool = False
    normalize_reward: bool = False
    needs: str = "any"     # action space the algorithm needs: "discrete", "box" or "any"
    run: RunDir = field(init=False)
    spec: EnvSpec = field(init=False)

    def __post_init__(self):
        cfg = self.cfg
        self.envs, self.spec = make_vector_env(cfg.env_id, self.num_envs)
        try:
            check_algo_spaces(self.algo, self.spec, needs=self.needs)
        except ConfigError:
            self.envs.close()
            raise
        self.run = RunDir(cfg.output_dir, cfg, quiet=cfg.quiet)
        self.obs_norm = ObsNormalizer(self.spec.obs_dim, self.normalize_obs)
        self.reward_scaler = RewardScaler(self.num_envs, self.gamma, self.normalize_reward)
        self.gen = torch.Generator().manual_seed(int(cfg.seed))
        self.step = 0
        self.segment = 0
        self.updates = 0
        self.ep_return = np.zeros(self.num_envs)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self.recent: list[float] = []
        self.episodes = 0
        self.last_eval: dict = {}
        self.resumed_info: dict = {}  # the last update's metrics as of the checkpoint resumed from
        self.snapshots: list[dict] = []
        self.next_checkpoint = cfg.checkpoint_every
        self.checkpoint_step = -1
        self.next_eval = cfg.eval_every
        self.next_log = 0
        self.next_snapshot = getattr(cfg, "snapshot_every", 0) or 0
        self._t0 = time.time()
        self._step0 = 0
        self._bar = None
        self.guard = FiniteGuard()

    # ---------------------------------------------------------------------------------------- envs
    def reset_envs(self) -> np.ndarray:
        """Reset every env with this segment's seeds; partial episode statistics are dropped."""
        obs, _ = self.envs.reset(seed=segment_seeds(int(self.cfg.seed), self.segment, self.num_envs))
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0
        self.reward_scaler.reset()
        return obs.reshape(self.num_envs, -1)

    def env_step(self, actions: np.ndarray):
        """Step all envs; returns (next_obs, real_next_obs, raw_rewards, scaled_rewards, terminated, truncated).

        `next_obs` is what to act on next (already reset where an episode ended); `real_next_obs` is the true
        successor (the final observation on termination/truncation).
        """
        next_obs, rewards, term, trunc, info = self.envs.step(actions)
        next_obs = next_obs.reshape(self.num_envs, -1)
        check_finite("env reward", torch.as_tensor(rewards), step=self.step)
        ended = np.logical_or(term, trunc)
        real_next = final_observations(next_obs, info, ended)
        self.step += self.num_envs
        self.ep_return += rewards
        self.ep_length += 1
        for i in np.flatnonzero(ended):
            self.recent = (self.recent + [float(self.ep_return[i])])[-RECENT_EPISODES:]
            self.episodes += 1
            self.ep_return[i] = 0.0
            self.ep_length[i] = 0
        scaled = self.reward_scaler(rewards, ended)
        return next_obs, real_next, np.asarray(rewards, dtype=np.float64), scaled, np.asarray(term, bool), \
            np.asarray(trunc, bool)

    def check_update(self, agent, info: dict) -> None:
        """Stop at an update whose losses (the `loss/*` metrics it returned) or policy parameters hold a NaN/inf,
        naming the metric and the step, before anything after it is logged, evaluated or checkpointed (the last
        good checkpoint is kept). A non-finite loss in any minibatch of an update poisons the parameters its
        optimiser step touches, so the parameters also stand for the losses an update does not return."""
        watched = {k: v for k, v in info.items() if k.startswith("loss/")}
        actor = agent.export()["actor"]
        watched["policy parameters"] = list(actor.parameters())
        self.guard.record(self.step, watched)
        self.guard.check()

    def norm_obs(self, obs: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.obs_norm(obs))

    # ---------------------------------------------------------------------------------------- policy
    def policy(self, agent, meta: dict | None = None) -> dict:
        exp = agent.export()
        return policy_dict(actor=exp["actor"], arch=exp["arch"], spec=self.spec, algo=self.algo,
                           obs_norm=self.obs_norm.export(), explore=exp.get("explore"),
                           meta={"step": self.step, **(meta or {})})

    def evaluate(self, agent) -> dict:
        cfg = self.cfg
        return evaluate_policy(Policy(self.policy(agent)), cfg.env_id, cfg.eval_episodes, cfg.eval_seed)

    def save_policy(self, agent, path: Path, meta: dict | None = None) -> None:
        """Write the policy file (the `policy_io.save_policy` format) atomically."""
        atomic_torch_save(self.policy(agent, meta), path)

    # ---------------------------------------------------------------------------------------- periodic work
    def periodic(self, agent, metrics: dict, *, snapshots: bool = False) -> None:
        """Call after each iteration: evaluation, snapshots and logging when their step is reached."""
        cfg = self.cfg
        row = {k: v for k, v in metrics.items()}
        if self.recent:
            row["train/episode_return"] = float(np.mean(self.recent))
        if cfg.eval_every > 0 and self.step >= self.next_eval:
            while self.next_eval <= self.step:
                self.next_eval += cfg.eval_every
            self.last_eval = self.evaluate(agent)
            row.update(self.last_eval)
        if snapshots and self.next_snapshot and self.step >= self.next_snapshot:
            while self.next_snapshot <= self.step:
                self.next_snapshot += cfg.snapshot_every
            ev = row if "eval/return_mean" in row else self.evaluate(agent)
            name = f"step_{self.step}.pt"
            self.save_policy(agent, self.run.path / "snapshots" / name, {"eval_return": ev["eval/return_mean"]})
            self.snapshots.append({"step": self.step, "eval_return": ev["eval/return_mean"], "file": name})
            self._write_snapshot_index()
        elapsed = max(time.time() - self._t0, 1e-9)
        row["time/sps"] = (self.step - self._step0) / elapsed
        row["time/updates"] = self.updates
        if self._bar is not None:
            self._bar.update(self.step - self._bar.n)
            shown = row.get("eval/return_mean", row.get("train/episode_return"))
            if shown is not None:
                self._bar.set_postfix(ret=f"{shown:.1f}")
        if self.step >= self.next_log or "eval/return_mean" in row:
            while self.next_log <= self.step:
                self.next_log += max(cfg.log_every, 1)
            self.run.log(self.step, row)

    def checkpoint_due(self) -> bool:
        return self.cfg.checkpoint_every > 0 and self.step >= self.next_checkpoint

    def _write_snapshot_index(self) -> None:
        rows = [{"step": s["step"], "eval_return": s["eval_return"]} for s in self.snapshots]
        atomic_write_text(self.run.path / "snapshots" / "index.json", json.dumps(rows, indent=1) + "\n")

    # ---------------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"step": self.step, "segment": self.segment, "updates": self.updates, "recent": list(self.recent),
                "episodes": self.episodes, "next_checkpoint": self.next_checkpoint, "next_eval": self.next_eval,
                "next_log": self.next_log, "checkpoint_step": self.checkpoint_step,
                "next_snapshot": self.next_snapshot, "snapshots": list(self.snapshots),
                "last_eval": dict(self.last_eval), "gen": self.gen.get_state(), "rng": get_rng_state(),
                "obs_norm": self.obs_norm.state_dict(), "reward_scaler": self.reward_scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for k in ("step", "segment", "updates", "episodes", "next_checkpoint", "next_eval", "next_snapshot",
                  "next_log", "checkpoint_step"):
            setattr(self, k, int(state[k]))
        self.recent = [float(x) for x in state["recent"]]
        self.snapshots = [dict(s) for s in state["snapshots"]]
        self.last_eval = dict(state["last_eval"])
        self.gen.set_state(state["gen"])
        set_rng_state(state["rng"])
        self.obs_norm.load_state_dict(state["obs_norm"])
        self.reward_scaler.load_state_dict(state["reward_scaler"])
        if self.snapshots:
            self._write_snapshot_index()

    def start(self, agent, extra=None) -> tuple[np.ndarray, dict | None]:
        """Resume from the checkpoint if there is one; returns (first obs, the checkpoint's `extra` dict)."""
        state = self.run.load_checkpoint()
        extra_state = None
        if state is not None:
            self.load_state_dict(state["harness"])
            agent.load_state_dict(state["agent"])
            extra_state = state.get("extra")
            self.resumed_info = dict(state.get("info", {}))
            self.run.truncate_log(self.step)
        self._step0 = self.step
        self._t0 = time.time()
        self._bar = self.run.progress(self.cfg.total_steps, self.step, desc=f"{self.algo} {self.cfg.env_id}")
        return self.reset_envs(), extra_state

    def save_checkpoint(self, agent, extra: dict | None = None, info: dict | None = None) -> np.ndarray:
        """End the segment: checkpoint, then reset the envs with the next segment's seeds (see module doc).
        `info`, the last update's metrics, is kept so that a resumed run logs and reports them as the
        uninterrupted run does (until its next update, and in metrics.json if none follows)."""
        while self.cfg.checkpoint_every > 0 and self.next_checkpoint <= self.step:
            self.next_checkpoint += self.cfg.checkpoint_every
        self.segment += 1
        self.checkpoint_step = self.step
        state = {"harness": self.state_dict(), "agent": agent.state_dict(), "info": scalar_metrics(info or {})}
        if extra is not None:
            state["extra"] = extra
        self.run.save_checkpoint(state)
        return self.reset_envs()

    def finish(self, agent, metrics: dict, extra: dict | None = None) -> dict:
        """Final checkpoint (unless one was just taken), final evaluation, policy.pt, metrics.json."""
        if self._bar is not None:
            self._bar.close()
        if self.checkpoint_step != self.step:
            self.save_checkpoint(agent, extra, metrics)
        final = self.evaluate(agent)
        self.save_policy(agent, self.run.path / "policy.pt", {"eval_return": final["eval/return_mean"]})
        out = {**scalar_metrics(metrics), **final,
               "train/steps": self.step, "train/episodes": self.episodes, "train/updates": self.updates}
        if self.recent:
            out["train/episode_return"] = float(np.mean(self.recent))
        self.envs.close()
        self.run.log(self.step, final)
        return self.run.finish(out)
