"""Quality benchmark for offline RL: BC, IQL and CQL on generated tiers, over seeds, against the behaviour data.

    python benchmarks/offline/quality.py --collect recipes/offline/collect-pendulum-scripted.yaml \
        --tiers medium-replay medium --seeds 0 1 2 --out runs/bench/offline [--collect-set k=v ...] [key=value ...]

1. Runs the collect recipe (skipped when its datasets and metrics.json exist), under $MINARI_DATASETS_PATH.
2. For each tier and algorithm, runs recipes/offline/<algo>-<env>.yaml with dataset=<prefix>/<tier>-v0 for each
   seed (offline.multiseed: resumable, one directory per seed), `key=value` overrides applied to all three.
3. Prints and writes OUT/summary.json and OUT/summary.md: the behaviour data's normalised score and, per
   algorithm, the mean / IQM / bootstrap 95% CI over seeds of the final and the best evaluation, and the IQM
   with rliable's stratified-bootstrap CI of the mean of each run's last K evaluations.
Targets (issue 6): Pendulum medium-replay IQL and CQL >= 80; on Hopper IQL/CQL > BC and > behaviour.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from offline import collect  # noqa: E402
from offline.multiseed import run_seeds  # noqa: E402
from reins.config import load_config, parse_overrides  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--collect", required=True, help="collect recipe (recipes/offline/collect-<env>.yaml)")
    p.add_argument("--collect-set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for the collect recipe (e.g. output_dir= of a finished collection to reuse)")
    p.add_argument("--recipes", default="", help="suffix of the algorithm recipes (default: the env name)")
    p.add_argument("--tiers", nargs="+", default=["medium-replay"])
    p.add_argument("--algos", nargs="+", default=["bc", "iql", "cql"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--out", default="runs/bench/offline")
    args, rest = p.parse_known_args(argv)
    overrides = parse_overrides(rest)
    out = Path(args.out)

    cover = {"quiet": True, "output_dir": str(out / "collect"), **parse_overrides(args.collect_set)}
    ccfg = load_config(collect.Config, args.collect, cover, stage="collect")
    t0 = time.time()
    data = collect.train(ccfg)
    env = args.recipes or ccfg.env_id.split("-")[0].lower()
    rows = []
    for tier in args.tiers:
        ds = collect.dataset_id(ccfg, tier)
        row = {"tier": tier, "dataset": ds, "behaviour": data.get(f"{tier}/normalized_score")}
        for algo in args.algos:
            recipe = f"recipes/offline/{algo}-{env}.yaml"
            t = time.time()
            agg = run_seeds(algo, recipe, {**overrides, "dataset": ds, "quiet": True,
                                           "output_dir": str(out / tier / algo)}, args.seeds)
            row[algo] = {k.removeprefix("eval/"): v for k, v in agg.items() if k.startswith("eval/normalized")}
            row[algo]["wall_s"] = time.time() - t
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
    summary = {"collect": args.collect, "seeds": args.seeds, "overrides": overrides, "rows": rows,
               "refs": {"min": data["ref/min_score"], "max": data["ref/max_score"]}, "wall_s": time.time() - t0}
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(rows, args.algos, args.seeds))
    print(markdown(rows, args.algos, args.seeds))
    return 0


def markdown(rows: list[dict], algos: list[str], seeds: list[int]) -> str:
    head = "| tier | behaviour | " + " | ".join(f"{a} last: mean / IQM [95% CI] | {a} best | {a} last-K: IQM "
                                               "[IQM 95% CI]" for a in algos) + " |"
    lines = [f"Normalised score x100 over seeds {seeds}; last-K = the mean of each run's last K evaluations "
             "(eval_last_k), its IQM CI rliable's stratified bootstrap.", "", head,
             "|" + "---|" * (2 + 3 * len(algos))]
    for r in rows:
        cells = [r["tier"], f"{r['behaviour']:.1f}"]
        for a in algos:
            s = r[a]
            cells.append(f"{s['normalized_score/mean']:.1f} / {s['normalized_score/iqm']:.1f} "
                         f"[{s['normalized_score/ci95_low']:.1f}, {s['normalized_score/ci95_high']:.1f}]")
            cells.append(f"{s['normalized_score_best/mean']:.1f}")
            k = next((key[:-len("/iqm")] for key in s if key.startswith("normalized_score_last")
                      and key.endswith("/iqm")), None)
            cells.append(f"{s[k + '/iqm']:.1f} [{s[k + '/iqm_ci95_low']:.1f}, {s[k + '/iqm_ci95_high']:.1f}] "
                         f"({k.removeprefix('normalized_score_')})" if k else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
