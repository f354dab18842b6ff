"""FQE (`reins ope`) of given policy files on one dataset, beside their true values in the env: does it rank them?

    MINARI_DATASETS_PATH=../shared/datasets/minari python benchmarks/offline/ope_policies.py \
        --dataset sb3/hopper/medium-replay-v0 --env Hopper-v5 --out runs/bench/ope-hopper \
        --policy td3bc-0=runs/ms/td3bc/seed_0/policy.pt bc-0=runs/ms/bc/seed_0/policy.pt ... \
        [--episodes 50] [--ope-set key=value ...]

The generic form of ope_validation.py (which makes its own Pendulum tiers and policies): the policies and the
dataset are given. For each policy: `reins ope POLICY --dataset D` (resumable, OUT/ope/NAME) and its truth from
`--episodes` env episodes reset with seeds 10_000 + k (cached in OUT/truth/NAME.json): the undiscounted return
to termination or `--horizon` steps, and the discounted value sum_t gamma^t r_t (FQE's target). Writes
OUT/summary.{json,md}: per policy truth, FQE value with its refit CI and whether it holds the truth, the absolute
error, and the Spearman rank correlations over the policies. Rerunning the same command resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.offline.ope_validation import fqe_row, rank_summary, run_stage, true_values  # noqa: E402


def evaluate(out: Path, name: str, path: Path, args, ope_set: list[str], gamma: float) -> dict:
    est = run_stage("ope", [f"policy={path}", f"dataset={args.dataset}", f"output_dir={out / 'ope' / name}",
                            *ope_set])
    truth_file = out / "truth" / f"{name}.json"
    if not truth_file.is_file():
        truth_file.parent.mkdir(parents=True, exist_ok=True)
        truth = true_values(path, gamma, args.episodes, 10_000, env_id=args.env, return_steps=args.horizon,
                            horizon=args.horizon)
        truth_file.write_text(json.dumps(truth))
    truth = json.loads(truth_file.read_text())
    row = {**fqe_row(name, est, truth), "fqe_normalized": est.get("ope/normalized_score")}
    print(json.dumps(row), flush=True)
    return row


def summarise(rows: list[dict], args, ope_set: list[str], gamma: float) -> tuple[dict, str]:
    summary = {"dataset": args.dataset, "env": args.env, "gamma": gamma, "ope_set": ope_set, "rows": rows,
               **rank_summary(rows)}
    lines = ["| policy | true return | true value (gamma) | FQE value [95% refit CI] | CI holds truth | |err| value |",
             "|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: r["true_value"]):
        lines.append(f"| {r['policy']} | {r['true_return']:.1f} | {r['true_value']:.1f} | {r['fqe_value']:.1f} "
                     f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}] | {'yes' if r['ci_covers'] else 'no'} | "
                     f"{r['abs_err_value']:.1f} |")
    lines.append(f"\nSpearman(FQE value, true return) = {summary['spearman_value_vs_true_return']:.3f}; "
                 f"Spearman(FQE value, true value) = {summary['spearman_value_vs_true_value']:.3f}; "
                 f"CI holds the true value in {summary['ci_covers_true_value']} of {len(rows)}")
    return summary, "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, help="dataset id or file, as reins ope's --dataset")
    p.add_argument("--env", required=True, help="gymnasium id the truth is measured in")
    p.add_argument("--out", required=True)
    p.add_argument("--policy", nargs="+", required=True, metavar="NAME=PATH")
    p.add_argument("--episodes", type=int, default=50, help="true-value rollouts per policy")
    p.add_argument("--horizon", type=int, default=1000, help="episode cap of the truth rollouts")
    p.add_argument("--ope-set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for reins ope")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    ope_set = ["torch_threads=1", *args.ope_set]
    gamma = float(next((a.split("=", 1)[1] for a in ope_set if a.startswith("gamma=")), 0.99))
    pairs = [s.split("=", 1) for s in args.policy]
    if any(len(pair) != 2 for pair in pairs):
        p.error("--policy takes NAME=PATH pairs")
    rows = [evaluate(out, name, Path(path).resolve(), args, ope_set, gamma) for name, path in pairs]
    summary, md = summarise(rows, args, ope_set, gamma)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "summary.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
