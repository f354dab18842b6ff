"""The loop every offline stage shares: data in, updates, periodic evaluation, checkpoints, policy out.

An algorithm (IQL, CQL, BC) is an `rl.agent.Agent` with `actor`, `actor_spec` and
`update(batch) -> {name: scalar tensor}`. `run_offline(cfg, build, name)` does the rest under the stage contract:
the dataset is loaded and validated before anything is written; config.yaml, log.jsonl, metrics.json and
checkpoints/checkpoint.pt go to cfg.output_dir; a re-run resumes from the checkpoint (models, optimisers,
schedulers, the sampler's generator, global RNG, step, evaluation history) and ends with the same result as an
uninterrupted run; a non-finite loss stops the run before the bad step is checkpointed.

Artifacts: policy.pt (the last actor) and policy_best.pt (the actor at the best evaluation), both in reins'
one policy format (offline.policy), loadable with rl.policy_io.load_policy.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from offline.data import DeviceBuffer, Normalization, load_transitions, pick_device, reference_scores
from offline.evaluate import adopt_env_action_box, check_env_fits, dataset_eval_env, normalized_score
from offline.policy import policy_state, save_policy
from reins.config import RunArgs, check
from reins.errors import DataError, ReinsError
from reins.runio import FiniteGuard, RunDir, get_rng_state, seed_everything, set_rng_state
from rl.envs import evaluate
from rl.policy_io import Policy

# The `actor` option of iql and bc -> the rl.nets actor kind. IQL's "gaussian" has a tanh mean and is not
# squashed (rl.nets.TanhMeanGaussianActor), unlike the on-policy agents' unsquashed "gaussian".
OFFLINE_ACTORS = {"gaussian": "tanh_mean_gaussian", "deterministic": "deterministic", "tanh_gaussian": "tanh_gaussian"}


@dataclass
class OfflineConfig(RunArgs):
    """Settings shared by every offline stage (the algorithm's own dataclass extends this)."""

    dataset: str = field(default="",
                         metadata={"help": "a Minari dataset id under $MINARI_DATASETS_PATH, or a path to one; or a "
                                           "file: D4RL-style .hdf5/.h5/.npz, a .parquet/.jsonl table of steps "
                                           "(offline/README.md, Data sources)"})
    obs_columns: list[str] = field(default_factory=list,
                                   metadata={"help": "step tables: the observation column(s): one list column, "
                                                     "several scalar columns, or a prefix ending in * (obs_* = "
                                                     "obs_0, obs_1, ...); default: observation, or observation_N"})
    action_columns: list[str] = field(default_factory=list,
                                      metadata={"help": "step tables: the action column(s), as obs_columns; default: "
                                                        "action, or action_N"})
    output_dir: str = "runs/offline"
    preset: str = field(default="",
                        metadata={"help": "a named set of published hyperparameters: offline/presets/<stage>/"
                                          "NAME.yaml, each naming its source; keys you give win"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    torch_threads: int = field(default=0,
                               metadata={"help": ">0: torch.set_num_threads (1 is fastest for small nets on a busy "
                                                 "CPU)"})
    max_steps: int = field(default=100_000, metadata={"help": "gradient updates"})
    batch_size: int = field(default=256, metadata={"help": "transitions per gradient update"})
    gamma: float = field(default=0.99, metadata={"help": "discount"})
    hidden: list[int] = field(default_factory=lambda: [256, 256],
                              metadata={"help": "hidden-layer widths of the networks"})
    normalize_obs: bool = field(default=True,
                                metadata={"help": "obs mean/std from the dataset, stored with the policy (CORL)"})
    normalize_reward: bool = field(default=False,
                                   metadata={"help": "IQL locomotion: r * 1000 / (max return - min return)"})
    reward_scale: float = field(default=1.0,
                                metadata={"help": "then r * reward_scale + reward_bias (antmaze: r - 1, CQL: 10 r - "
                                                  "5)"})
    reward_bias: float = field(default=0.0, metadata={"help": "added after reward_scale"})
    eval_every: int = field(default=5000, metadata={"help": "gradient updates between evaluations"})
    eval_episodes: int = field(default=10, metadata={"help": "episodes per evaluation (0: no evaluation)"})
    eval_env: str = field(default="", metadata={"help": "env id to evaluate in; default: the dataset's eval env"})
    eval_last_k: int = field(default=3,
                             metadata={"help": "eval/normalized_score_last{K} (and return_mean_last{K}): the mean of "
                                               "the last K evaluations, steadier than the last one alone"})
    trust_dataset_env: bool = field(
        default=False, metadata={"help": "make the evaluation env from the dataset's recorded env spec even where "
                                         "it differs from gymnasium's registered one: runs the code the dataset "
                                         "names (entry point, wrappers); off: the registered env by id"})
    normalize_score: bool = field(default=True,
                                  metadata={"help": "report eval/normalized_score; needs reference scores"})
    ref_min_score: float | None = field(default=None,
                                        metadata={"help": "override / supply the dataset's random reference return"})
    ref_max_score: float | None = field(default=None,
                                        metadata={"help": "override / supply the dataset's expert reference return"})
    log_every: int = field(default=1000, metadata={"help": "gradient updates between log.jsonl rows"})
    checkpoint_every: int = field(default=10_000, metadata={"help": "gradient updates between checkpoints"})
    select_by: str = field(default="env",
                           metadata={"help": "env | ope: what policy_best.pt is chosen by. ope: at every eval_every "
                                             "point a short fitted Q evaluation of the current actor on the dataset "
                                             "(offline.ope; costs ope_steps critic updates each time), for data "
                                             "without an env; env evaluation, if any, is still logged"})
    ope_steps: int = field(default=5000, metadata={"help": "select_by=ope: FQE gradient updates per evaluation point"})
    ope_target_update_every: int = field(default=25,
                                         metadata={"help": "select_by=ope: FQE updates per iteration (target copy)"})

    def validate(self) -> None:
        check(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("max_steps", "batch_size", "eval_every", "log_every", "checkpoint_every"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.torch_threads >= 0, f"torch_threads must be >= 0, got {self.torch_threads}")
        check(self.eval_episodes >= 0, f"eval_episodes must be >= 0, got {self.eval_episodes}")
        check(self.eval_last_k >= 1, f"eval_last_k must be >= 1, got {self.eval_last_k}")
        check(self.select_by in ("env", "ope"), f"select_by must be env or ope, got {self.select_by!r}")
        check(self.ope_steps >= 1 and self.ope_target_update_every >= 1,
              f"ope_steps and ope_target_update_every must be >= 1, got {self.ope_steps}, "
              f"{self.ope_target_update_every}")
        check(all(h >= 1 for h in self.hidden) and len(self.hidden) >= 1, f"hidden must be positive: {self.hidden}")

    def input_paths(self) -> dict[str, str]:
        """The dataset's directory when `dataset` is a Minari id: reins.runio fingerprints it, so a checkpoint or
        finished run is not reused on other data."""
        from offline.data import resolve_dataset_path

        try:
            return {"dataset": str(resolve_dataset_path(self.dataset))}
        except ReinsError:
            return {}


def _eval_env(cfg: OfflineConfig, tr) -> Any:
    if cfg.eval_env:
        return cfg.eval_env
    if tr.eval_env_spec is not None:
        if cfg.eval_episodes == 0:  # no env is made: the recorded id only names the policy's env
            return getattr(tr.eval_env_spec, "id", None)
        return dataset_eval_env(tr.eval_env_spec, tr.dataset_id, trust=cfg.trust_dataset_env)
    return None


@dataclass
class OfflineInputs:
    """What a run reads, checked before anything is written: the transitions, the reference scores, the
    evaluation env, the device and the normalisation fitted on the data."""

    tr: Any
    refs: tuple[float, float] | None
    env: Any
    device: torch.device
    norm: Normalization
    evaluating: bool  # an env to evaluate in and eval_episodes > 0


def load_inputs(cfg: OfflineConfig, algo_name: str, discrete_ok: bool = False) -> OfflineInputs:
    tr = load_transitions(cfg.dataset, obs_columns=cfg.obs_columns, action_columns=cfg.action_columns)
    if tr.discrete and not discrete_ok:
        raise DataError(f"{tr.dataset_id}: Discrete({tr.n_actions}) actions; {algo_name} trains on continuous "
                        "(Box) actions only")
    env = _eval_env(cfg, tr)
    evaluating = env is not None and cfg.eval_episodes > 0
    refs = reference_scores(tr, cfg.ref_min_score, cfg.ref_max_score, required=cfg.normalize_score and evaluating)
    device = pick_device(cfg.device)
    if evaluating:
        check_env_fits(env, tr)  # a bad env or a data/env mismatch fails now, not at the first evaluation
        adopt_env_action_box(env, tr)
    norm = Normalization.fit(tr, normalize_obs=cfg.normalize_obs, iql_reward_scale=cfg.normalize_reward,
                             reward_scale=cfg.reward_scale, reward_bias=cfg.reward_bias)
    if env is None and cfg.eval_episodes > 0 and cfg.select_by == "ope":
        print(f"{algo_name}: {tr.dataset_id} names no environment: no env evaluation; policy_best.pt is chosen by "
              "fitted Q evaluation (select_by=ope)", file=sys.stderr, flush=True)
    elif env is None and cfg.eval_episodes > 0:  # said even under --quiet: it changes what the run produces
        print(f"{algo_name}: {tr.dataset_id} names no environment and eval_env is not set: evaluation off (no eval/ "
              "metrics or policy_best.pt; policy.pt is the last actor); set eval_env=<gymnasium id> to evaluate",
              file=sys.stderr, flush=True)
    return OfflineInputs(tr, refs, env, device, norm, evaluating)


def run_offline(cfg: OfflineConfig, build, algo_name: str, discrete_build=None) -> dict:
    """Train `build(cfg, obs_dim, act_dim, device)` on cfg.dataset under the stage contract; on Discrete data
    `discrete_build(cfg, obs_dim, n_actions, device)` instead (None: such data is refused)."""
    inputs = load_inputs(cfg, algo_name, discrete_ok=discrete_build is not None)  # before anything is written
    if inputs.tr.discrete:
        build = discrete_build
    run = RunDir(cfg.output_dir, cfg, quiet=cfg.quiet)  # after every input is validated: bad input writes nothing
    done = run.completed_metrics()
    if done is not None:
        return done
    return OfflineLoop(cfg, inputs, build, algo_name, run).train()


class OfflineLoop:
    """One offline run's training state (the algorithm, the sampler, step, evaluation history, the metrics
    accumulated since the last log row) and the steps of its loop: update, log, evaluate, checkpoint."""

    def __init__(self, cfg: OfflineConfig, inputs: OfflineInputs, build, algo_name: str, run: RunDir):
        self.cfg, self.inputs, self.algo_name, self.run = cfg, inputs, algo_name, run
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        seed_everything(cfg.seed)
        self.buf = DeviceBuffer(inputs.norm.apply(inputs.tr), inputs.device)
        self.sampler = torch.Generator(device=inputs.device).manual_seed(cfg.seed)
        self.algo = build(cfg, inputs.tr.obs_dim, inputs.tr.act_dim, inputs.device)
        self.step, self.evals, self.acc, self.acc_n = 0, [], {}, 0
        self.ope_evals: list[dict] = []  # select_by=ope: {"step", "ope/value"} per evaluation point
        # Every metric's first non-finite step, kept on the device so that no step syncs with the host; checked
        # before every log, evaluation and checkpoint, so a NaN is reported with its exact step and nothing
        # computed after it is saved.
        self.guard = FiniteGuard()
        self.score_key = "eval/normalized_score" if inputs.refs is not None else "eval/return_mean"

    def resume(self) -> None:
        state = self.run.load_checkpoint()
        if state is None:
            return
        self.algo.load_state_dict(state["algo"])
        self.sampler.set_state(state["sampler"].cpu())  # generator states are CPU byte tensors, also for CUDA
        set_rng_state(state["rng"])
        self.step, self.evals = int(state["step"]), list(state["evals"])
        self.acc = {k: v.to(self.inputs.device) for k, v in state["acc"].items()}
        self.acc_n = int(state["acc_n"])
        self.ope_evals = list(state.get("ope_evals", []))
        self.run.truncate_log(self.step)

    def train(self) -> dict:
        cfg = self.cfg
        self.resume()
        start, start_step = time.perf_counter(), self.step
        bar = self.run.progress(cfg.max_steps, initial=self.step, desc=self.algo_name)
        while self.step < cfg.max_steps:
            self.update()
            bar.update(1)
            row = self.log_row() if self.step % cfg.log_every == 0 or self.step == cfg.max_steps else {}
            if self.inputs.evaluating and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                ev = self.evaluate()
                row.update(ev)
                bar.set_postfix({self.score_key.split("/")[-1]: round(ev[self.score_key], 2)})
            if cfg.select_by == "ope" and (self.step % cfg.eval_every == 0 or self.step == cfg.max_steps):
                row.update(self.ope_select())
            if row:
                self.run.log(self.step, row)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.max_steps:
                self.checkpoint()
        bar.close()
        elapsed = time.perf_counter() - start
        save_policy(self.run.path / "policy.pt", self.policy_file_state())
        metrics = _final_metrics(self.inputs.tr, self.inputs.refs, self.evals, self.step, cfg.eval_last_k)
        if self.ope_evals:
            best = max(self.ope_evals, key=lambda e: e["ope/value"])
            metrics.update({"ope/value": self.ope_evals[-1]["ope/value"], "ope/value_best": best["ope/value"],
                            "ope/best_step": best["step"]})
        if self.step > start_step:
            metrics["time/updates_per_s"] = (self.step - start_step) / max(elapsed, 1e-9)
        return self.run.finish(metrics)

    def update(self) -> None:
        info = self.algo.update(self.buf.sample(self.cfg.batch_size, self.sampler))
        self.step += 1
        self.guard.record(self.step, info)
        for k, v in info.items():
            self.acc[k] = self.acc.get(k, 0.0) + v.detach()
        self.acc_n += 1

    def log_row(self) -> dict:
        """The means of the metrics accumulated since the last row (then reset)."""
        self.guard.check()
        row = {k: float(v) / self.acc_n for k, v in self.acc.items()}
        self.acc, self.acc_n = {}, 0
        return row

    def policy_file_state(self) -> dict:
        env = self.inputs.env
        return policy_state(self.algo.actor, self.algo.actor_spec, self.inputs.norm, env_id=getattr(env, "id", env),
                            dataset_id=self.inputs.tr.dataset_id, algo=self.algo_name,
                            n_actions=self.inputs.tr.n_actions)

    def evaluate(self) -> dict:
        """Evaluation episodes of the very policy that policy.pt holds; policy_best.pt keeps the best one."""
        self.guard.check()
        cfg, refs = self.cfg, self.inputs.refs
        pol = Policy(self.policy_file_state(), self.inputs.device)
        returns, _ = evaluate(pol.act, self.inputs.env, cfg.eval_episodes, seed=1_000_000 + 1000 * cfg.seed)
        ev = {"eval/return_mean": float(returns.mean()), "eval/return_std": float(returns.std())}
        if refs is not None:
            ev["eval/normalized_score"] = float(normalized_score(returns, *refs).mean())
        key = self.score_key
        if cfg.select_by == "env" and (not self.evals or ev[key] > max(e[key] for e in self.evals)):
            save_policy(self.run.path / "policy_best.pt", self.policy_file_state())
        self.evals.append({"step": self.step, **ev})
        return ev

    def checkpoint(self) -> None:
        self.guard.check()
        self.run.save_checkpoint({"algo": self.algo.state_dict(), "sampler": self.sampler.get_state(),
                                  "rng": get_rng_state(), "step": self.step, "evals": self.evals,
                                  "acc": dict(self.acc), "acc_n": self.acc_n, "ope_evals": self.ope_evals})

    def ope_select(self) -> dict:
        """select_by=ope: a short FQE (offline.ope.fqe_value on the data's rewards, this run's gamma, hidden widths and
        batch size, lr 1e-3) of the actor policy.pt would hold; policy_best.pt keeps the highest estimated value. Global
        RNG untouched, so the training stream is the same as with select_by=env."""
        from offline.ope import fqe_value

        self.guard.check()
        cfg, state = self.cfg, self.policy_file_state()
        value = fqe_value(Policy(state, self.inputs.device), self.inputs.tr, gamma=cfg.gamma, steps=cfg.ope_steps,
                          target_update_every=cfg.ope_target_update_every, hidden=cfg.hidden, lr=1e-3,
                          batch_size=cfg.batch_size, seed=cfg.seed + self.step, device=self.inputs.device)
        if not self.ope_evals or value > max(e["ope/value"] for e in self.ope_evals):
            save_policy(self.run.path / "policy_best.pt", state)
        self.ope_evals.append({"step": self.step, "ope/value": value})
        return {"ope/value": value}


def _final_metrics(tr, refs, evals: list[dict], step: int, last_k: int = 3) -> dict:
    m: dict[str, Any] = {"train/steps": step, "data/transitions": len(tr), "data/episodes": len(tr.episode_returns),
                         "data/return_mean": float(tr.episode_returns.mean())}
    if refs is not None:
        m["data/normalized_score"] = float(normalized_score(tr.episode_returns, *refs).mean())
    if evals:
        last = evals[-1]
        m.update({k: v for k, v in last.items() if k != "step"})
        key = "eval/normalized_score" if refs is not None else "eval/return_mean"
        best = max(evals, key=lambda e: e[key])
        m["eval/return_mean_best"] = best["eval/return_mean"]
        if refs is not None:
            m["eval/normalized_score_best"] = best["eval/normalized_score"]
        m["eval/best_step"] = best["step"]
        tail = evals[-last_k:]  # fewer than K evaluations: the mean of those there are
        m[f"eval/return_mean_last{last_k}"] = float(np.mean([e["eval/return_mean"] for e in tail]))
        if refs is not None:
            m[f"eval/normalized_score_last{last_k}"] = float(np.mean([e["eval/normalized_score"] for e in tail]))
    return m
