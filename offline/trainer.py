"""The loop every offline stage shares: data in, updates, periodic evaluation, checkpoints, policy out.

An algorithm (IQL, CQL, BC) is an object with `actor`, `actor_spec`, `update(batch) -> {name: scalar tensor}`,
`state_dict()` / `load_state_dict()`. `run_offline(cfg, build, name)` does the rest under the stage contract:
the dataset is loaded and validated before anything is written; config.yaml, log.jsonl, metrics.json and
checkpoints/checkpoint.pt go to cfg.output_dir; a re-run resumes from the checkpoint (models, optimisers,
schedulers, the sampler's generator, global RNG, step, evaluation history) and ends with the same result as an
uninterrupted run; a non-finite loss stops the run before the bad step is checkpointed.

Artifacts: policy.pt (the last actor) and policy_best.pt (the actor at the best evaluation), both in reins'
one policy format (offline.policy), loadable with online.policy_io.load_policy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from offline.data import DeviceBuffer, Normalization, load_transitions, pick_device, reference_scores
from offline.evaluate import check_env_fits, normalized_score
from offline.policy import policy_state, save_policy
from online.envs import evaluate
from online.policy_io import Policy
from reins.config import RunArgs, check
from reins.errors import DataError, ReinsError
from reins.runio import FiniteGuard, RunDir, get_rng_state, seed_everything, set_rng_state

# The `actor` option of iql and bc -> the online.nets actor kind. IQL's "gaussian" has a tanh mean and is not
# squashed (online.nets.TanhMeanGaussianActor), unlike the on-policy agents' unsquashed "gaussian".
OFFLINE_ACTORS = {"gaussian": "tanh_mean_gaussian", "deterministic": "deterministic", "tanh_gaussian": "tanh_gaussian"}


@dataclass
class OfflineConfig(RunArgs):
    """Settings shared by every offline stage (the algorithm's own dataclass extends this)."""

    dataset: str = field(default="",
                         metadata={"help": "a Minari dataset id under $MINARI_DATASETS_PATH, or a path to one"})
    output_dir: str = "runs/offline"
    preset: str = field(default="",
                        metadata={"help": "a named set of published hyperparameters (see PRESETS in the algorithm's "
                                          "module)"})
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
    normalize_score: bool = field(default=True,
                                  metadata={"help": "report eval/normalized_score; needs reference scores"})
    ref_min_score: float | None = field(default=None,
                                        metadata={"help": "override / supply the dataset's random reference return"})
    ref_max_score: float | None = field(default=None,
                                        metadata={"help": "override / supply the dataset's expert reference return"})
    log_every: int = field(default=1000, metadata={"help": "gradient updates between log.jsonl rows"})
    checkpoint_every: int = field(default=10_000, metadata={"help": "gradient updates between checkpoints"})

    def validate(self) -> None:
        check(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")
        for name in ("max_steps", "batch_size", "eval_every", "log_every", "checkpoint_every"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(self.torch_threads >= 0, f"torch_threads must be >= 0, got {self.torch_threads}")
        check(self.eval_episodes >= 0, f"eval_episodes must be >= 0, got {self.eval_episodes}")
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
        return tr.eval_env_spec
    if cfg.eval_episodes > 0:
        raise DataError(f"{tr.dataset_id}: the dataset names no environment; set eval_env=<gymnasium id> "
                        "or eval_episodes=0")
    return None


def run_offline(cfg: OfflineConfig, build, algo_name: str) -> dict:
    """Train `build(cfg, obs_dim, act_dim, device)` on cfg.dataset under the stage contract."""
    tr = load_transitions(cfg.dataset)  # validation happens before anything is written
    refs = reference_scores(tr, cfg.ref_min_score, cfg.ref_max_score, required=cfg.normalize_score)
    env = _eval_env(cfg, tr)
    device = pick_device(cfg.device)
    norm = Normalization.fit(tr, normalize_obs=cfg.normalize_obs, iql_reward_scale=cfg.normalize_reward,
                             reward_scale=cfg.reward_scale, reward_bias=cfg.reward_bias)
    if env is not None and cfg.eval_episodes > 0:
        check_env_fits(env, tr)  # a bad env or a data/env mismatch fails now, not at the first evaluation
    run = RunDir(cfg.output_dir, cfg, quiet=cfg.quiet)  # after every input is validated: bad input writes nothing
    done = run.completed_metrics()
    if done is not None:
        return done

    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    buf = DeviceBuffer(norm.apply(tr), device)
    sampler = torch.Generator(device=device).manual_seed(cfg.seed)
    algo = build(cfg, tr.obs_dim, tr.act_dim, device)

    step, evals, acc, acc_n = 0, [], {}, 0
    state = run.load_checkpoint()
    if state is not None:
        algo.load_state_dict(state["algo"])
        sampler.set_state(state["sampler"].cpu())  # generator states are CPU byte tensors, also for CUDA
        set_rng_state(state["rng"])
        step, evals = int(state["step"]), list(state["evals"])
        acc = {k: v.to(device) for k, v in state["acc"].items()}
        acc_n = int(state["acc_n"])
        run.truncate_log(step)

    def policy_file_state() -> dict:
        return policy_state(algo.actor, algo.actor_spec, norm, env_id=getattr(env, "id", env),
                            dataset_id=tr.dataset_id, algo=algo_name)

    def do_eval() -> dict:
        pol = Policy(policy_file_state(), device)  # the very policy that policy.pt holds
        returns, _ = evaluate(pol.act, env, cfg.eval_episodes, seed=1_000_000 + 1000 * cfg.seed)
        row = {"eval/return_mean": float(returns.mean()), "eval/return_std": float(returns.std())}
        if refs is not None:
            row["eval/normalized_score"] = float(normalized_score(returns, *refs).mean())
        return row

    start, start_step = time.perf_counter(), step
    bar = run.progress(cfg.max_steps, initial=step, desc=algo_name)
    # Every metric's first non-finite step, kept on the device so that no step syncs with the host; checked
    # before every log, evaluation and checkpoint, so a NaN is reported with its exact step and nothing computed
    # after it is saved.
    guard = FiniteGuard()

    while step < cfg.max_steps:
        info = algo.update(buf.sample(cfg.batch_size, sampler))
        step += 1
        guard.record(step, info)
        for k, v in info.items():
            acc[k] = acc.get(k, 0.0) + v.detach()
        acc_n += 1
        bar.update(1)
        row = {}
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            guard.check()
            row.update({k: float(v) / acc_n for k, v in acc.items()})
            acc, acc_n = {}, 0
        if cfg.eval_episodes > 0 and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            guard.check()
            ev = do_eval()
            key = "eval/normalized_score" if refs is not None else "eval/return_mean"
            if not evals or ev[key] > max(e[key] for e in evals):
                save_policy(run.path / "policy_best.pt", policy_file_state())
            evals.append({"step": step, **ev})
            row.update(ev)
            bar.set_postfix({key.split("/")[-1]: round(ev[key], 2)})
        if row:
            run.log(step, row)
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            guard.check()
            run.save_checkpoint({"algo": algo.state_dict(), "sampler": sampler.get_state(), "rng": get_rng_state(),
                                 "step": step, "evals": evals, "acc": {k: v for k, v in acc.items()},
                                 "acc_n": acc_n})
    bar.close()
    elapsed = time.perf_counter() - start
    save_policy(run.path / "policy.pt", policy_file_state())
    metrics = _final_metrics(tr, refs, evals, step)
    if step > start_step:
        metrics["time/updates_per_s"] = (step - start_step) / max(elapsed, 1e-9)
    return run.finish(metrics)


def _final_metrics(tr, refs, evals: list[dict], step: int) -> dict:
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
    return m
