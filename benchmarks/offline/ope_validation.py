"""Does FQE (`reins ope`) rank policies like their true returns? Validation on Pendulum tiers, where the truth is known.

    python benchmarks/offline/ope_validation.py --out runs/bench/ope [--eval-tier medium-replay] \
        [--ope-set key=value ...]

1. Collects Pendulum-v1 tiers with the scripted behaviour (recipes/offline/collect-pendulum-scripted.yaml,
   `--steps-per-tier` transitions per tier) under OUT/minari (its own MINARI_DATASETS_PATH).
2. Trains policies of different quality: BC on the random / medium / expert tiers, and BC, IQL and CQL on
   medium-replay stopped at different update counts (the Pendulum recipes' hyperparameters, evaluation off);
   with `--sac-steps` (default 5000; 0: none), an online SAC run (recipes/online/sac-pendulum.yaml) whose
   snapshots every 1000 env steps are further policies (`sac-<step>`), none of them trained on the tiers.
3. Runs `reins ope` of each policy on the evaluation tier (default medium-replay).
4. Measures the truth in the env: 50 episodes per policy, the undiscounted 200-step return and the discounted
   value sum_t gamma^t r_t over 1000 steps (gamma^1000 < 5e-5: the infinite-horizon value FQE estimates).
5. Writes OUT/summary.json and OUT/summary.md (OUT/summary-TIER.* for another --eval-tier): per policy the
   truth, the FQE value with its bootstrap CI and whether the CI holds the true value, the return equivalent,
   the absolute errors, the Spearman rank correlations and the CI's coverage. Target (issue 24): Spearman >= 0.7.
Every step is a resumable reins stage or a cached file: rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

# (name, stage, tier, max_steps, extra overrides): behaviour cloning of each tier spans the quality range;
# the medium-replay learners at several update counts add policies between and around them.
POLICIES = [
    ("bc-random", "bc", "random", 2000, []),
    ("bc-medium", "bc", "medium", 2000, []),
    ("bc-expert", "bc", "expert", 2000, []),
    ("bc-mr-200", "bc", "medium-replay", 200, []),
    ("bc-mr-2000", "bc", "medium-replay", 2000, []),
    ("iql-mr-1000", "iql", "medium-replay", 1000, []),
    ("iql-mr-3000", "iql", "medium-replay", 3000, []),
    ("cql-mr-1500", "cql", "medium-replay", 1500, []),
]
ENV = "Pendulum-v1"
SAC_SNAPSHOT_EVERY = 1000


def run_stage(stage: str, argv: list[str]) -> dict:
    import importlib

    from reins.entry import STAGES

    mod = importlib.import_module(STAGES[stage][0])
    rc = mod.main([*argv, "--quiet"])
    if rc != 0:
        raise SystemExit(f"{stage} {' '.join(argv)} failed with exit code {rc}")
    out = next(a.split("=", 1)[1] for a in argv if a.startswith("output_dir="))
    return json.loads((Path(out) / "metrics.json").read_text())


def true_values(policy_path: Path, gamma: float, episodes: int, seed: int, *, env_id: str = ENV,
                return_steps: int = 200, horizon: int = 1000) -> dict:
    """Mean undiscounted `return_steps`-step return and `horizon`-step discounted value over `episodes` envs stepped
    in lock-step (each reset with seed + k); an env that terminates stops adding (its later rewards are 0)."""
    import gymnasium as gym

    from rl.policy_io import load_policy

    pol = load_policy(policy_path)
    envs = [gym.make(env_id, max_episode_steps=horizon) for _ in range(episodes)]
    obs = np.stack([e.reset(seed=seed + k)[0] for k, e in enumerate(envs)])
    ret, disc, alive = np.zeros(episodes), np.zeros(episodes), np.ones(episodes, dtype=bool)
    for t in range(horizon):
        act = pol.act(obs)
        r = np.zeros(episodes)
        for k in np.flatnonzero(alive):
            o, r[k], term, trunc, _ = envs[k].step(act[k])
            obs[k] = o
            alive[k] = not (term or trunc)
        disc += gamma ** t * r
        if t < return_steps:
            ret += r
        if not alive.any():
            break
    return {"return": float(ret.mean()), "value": float(disc.mean())}


def sac_policies(out: Path, steps: int) -> list[tuple[str, Path]]:
    """Snapshots of one online SAC run on the env (`steps` env steps, one every SAC_SNAPSHOT_EVERY)."""
    if steps <= 0:
        return []
    run_dir = out / "sac"
    run_stage("online", ["--config", "recipes/online/sac-pendulum.yaml", f"output_dir={run_dir}",
                         f"total_steps={steps}", f"eval_every={SAC_SNAPSHOT_EVERY}", "save_snapshots=true",
                         f"snapshot_every={SAC_SNAPSHOT_EVERY}", f"checkpoint_every={SAC_SNAPSHOT_EVERY}"])
    return [(f"sac-{s}", run_dir / "snapshots" / f"step_{s}.pt")
            for s in range(SAC_SNAPSHOT_EVERY, steps + 1, SAC_SNAPSHOT_EVERY)]


def spearman(x, y) -> float:
    def ranks(v):
        v = np.asarray(v, dtype=np.float64)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v), dtype=np.float64)
        for u in np.unique(v):  # ties share their mean rank
            r[v == u] = r[v == u].mean()
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def fqe_row(name: str, est: dict, truth: dict) -> dict:
    """One policy's FQE estimate (`reins ope`'s metrics) beside its truth: the columns every validation reports."""
    return {"policy": name, "true_return": truth["return"], "true_value": truth["value"],
            "fqe_value": est["ope/value"], "ci_low": est["ope/value_ci_low"], "ci_high": est["ope/value_ci_high"],
            "ci_covers": bool(est["ope/value_ci_low"] <= truth["value"] <= est["ope/value_ci_high"]),
            "abs_err_value": abs(est["ope/value"] - truth["value"])}


def rank_summary(rows: list[dict]) -> dict:
    """Spearman of the FQE values against the true returns and values, the mean error, the CI's coverage."""
    fqe = [r["fqe_value"] for r in rows]
    return {"spearman_value_vs_true_return": spearman(fqe, [r["true_return"] for r in rows]),
            "spearman_value_vs_true_value": spearman(fqe, [r["true_value"] for r in rows]),
            "mean_abs_err_value": float(np.mean([r["abs_err_value"] for r in rows])),
            "ci_covers_true_value": int(sum(r["ci_covers"] for r in rows)), "policies": len(rows)}


def evaluate_policy(out: Path, name: str, path: Path, prefix: str, args, ope_set: list[str], gamma: float,
                    tag: str) -> dict:
    """FQE of one policy on the evaluation tier beside its true value (cached in OUT/truth)."""
    est = run_stage("ope", [f"policy={path}", f"dataset={prefix}/{args.eval_tier}-v0",
                            f"output_dir={out / ('ope' + tag) / name}", *ope_set])
    truth_file = out / "truth" / f"{name}.json"
    if not truth_file.is_file():
        truth_file.parent.mkdir(parents=True, exist_ok=True)
        truth_file.write_text(json.dumps(true_values(path, gamma, args.episodes, 10_000)))
    truth = json.loads(truth_file.read_text())
    row = {**fqe_row(name, est, truth),
           "states_ci_covers": bool(est.get("ope/value_ci_states_low", np.nan) <= truth["value"]
                                    <= est.get("ope/value_ci_states_high", np.nan)),
           "fqe_return": est["ope/return_estimate"],
           "abs_err_return": abs(est["ope/return_estimate"] - truth["return"])}
    print(json.dumps(row), flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench/ope")
    p.add_argument("--steps-per-tier", type=int, default=20000)
    p.add_argument("--eval-tier", default="medium-replay")
    p.add_argument("--episodes", type=int, default=50, help="true-value rollouts per policy")
    p.add_argument("--sac-steps", type=int, default=5000, help="online SAC env steps for snapshot policies (0: none)")
    p.add_argument("--only", nargs="*", default=[], metavar="NAME",
                   help="evaluate only these policies (all are still trained; e.g. to fit a time budget)")
    p.add_argument("--ope-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for reins ope")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    os.environ["MINARI_DATASETS_PATH"] = str(out / "minari")
    prefix = "reins/pendulum-ope"
    run_stage("collect", ["--config", "recipes/offline/collect-pendulum-scripted.yaml", f"output_dir={out / 'collect'}",
                          f"dataset_prefix={prefix}", f"steps_per_tier={args.steps_per_tier}"])
    # small and short enough for 2 shared cores; 200 FQE iterations (gamma^200 = 0.13 of the tail left unfitted)
    ope_set = ["hidden=[64,64]", "max_steps=8000", "target_update_every=40", "lr=1e-3", "reward_scale=0.1",
               "torch_threads=1", *args.ope_set]
    gamma = float(next((a.split("=", 1)[1] for a in ope_set if a.startswith("gamma=")), 0.99))
    # medium-replay (the default) keeps the plain names; another evaluation tier writes beside it
    tag = "" if args.eval_tier == "medium-replay" else f"-{args.eval_tier}"
    policies = []
    for name, stage, tier, steps, extra in POLICIES:
        run_dir = out / "policies" / name
        run_stage(stage, ["--config", f"recipes/offline/{stage}-pendulum.yaml", f"dataset={prefix}/{tier}-v0",
                          f"output_dir={run_dir}", f"max_steps={steps}", "eval_episodes=0", *extra])
        policies.append((name, run_dir / "policy.pt"))
    rows = [evaluate_policy(out, name, path, prefix, args, ope_set, gamma, tag)
            for name, path in [*policies, *sac_policies(out, args.sac_steps)] if not args.only or name in args.only]
    summary = {"eval_tier": args.eval_tier, "gamma": gamma, "ope_set": ope_set, "rows": rows, **rank_summary(rows),
               "mean_abs_err_return": float(np.mean([r["abs_err_return"] for r in rows])),
               "states_ci_covers_true_value": int(sum(r["states_ci_covers"] for r in rows))}
    (out / f"summary{tag}.json").write_text(json.dumps(summary, indent=2))
    lines = ["| policy | true return (200 steps) | true value (gamma) | FQE value [95% CI] | CI holds truth "
             "(initial states) | "
             "|err| value | FQE return equiv. | |err| return |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['policy']} | {r['true_return']:.1f} | {r['true_value']:.1f} | {r['fqe_value']:.1f} "
                     f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}] | {'yes' if r['ci_covers'] else 'no'} / "
                     f"{'yes' if r['states_ci_covers'] else 'no'} | "
                     f"{r['abs_err_value']:.1f} | {r['fqe_return']:.1f} | {r['abs_err_return']:.1f} |")
    lines.append(f"\nSpearman(FQE value, true return) = {summary['spearman_value_vs_true_return']:.3f}; "
                 f"Spearman(FQE value, true value) = {summary['spearman_value_vs_true_value']:.3f}; "
                 f"CI holds the true value in {summary['ci_covers_true_value']} of {len(rows)} (the initial-state "
                 f"interval: {summary['states_ci_covers_true_value']})")
    (out / f"summary{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
