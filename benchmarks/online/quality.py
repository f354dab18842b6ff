"""Quality benchmark: run a recipe over several seeds and report the issue's targets (median over seeds).

    python benchmarks/online/quality.py recipes/online/ppo-cartpole.yaml --seeds 0 1 2 --target 475 \
        [--out runs/bench/online] [--jobs 3] [key=value ...]

For each seed it trains with the recipe (output under OUT/<recipe>/seed<N>; re-running resumes or reuses
finished runs), then reads the evaluation rows of log.jsonl (deterministic actions, separate env instances,
`eval_episodes` episodes each) and reports per seed: the final eval return, the best eval return within the
budget, the first env step at which the eval return reached `--target`, and the wall time. The summary (medians
over seeds) is printed as JSON and as a Markdown table row, and written to OUT/<recipe>/summary.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from online.stage import Config, train  # noqa: E402
from reins.config import load_config, parse_overrides  # noqa: E402


def run_seed(recipe: str, seed: int, out: str, overrides: dict) -> dict:
    run_dir = Path(out) / Path(recipe).stem / f"seed{seed}"
    cfg = load_config(Config, recipe, {**overrides, "seed": seed, "output_dir": str(run_dir), "quiet": True},
                      stage="online")
    t0 = time.time()
    metrics = train(cfg)
    wall = time.time() - t0
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    evals = [(r["step"], r["eval/return_mean"]) for r in rows if "eval/return_mean" in r]
    return {"seed": seed, "final": metrics["eval/return_mean"], "best": max(v for _, v in evals),
            "evals": evals, "wall_s": wall, "steps": metrics["train/steps"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("recipe")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--target", type=float, default=None, help="eval return the issue asks for")
    ap.add_argument("--out", default="runs/bench/online")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes")
    args, rest = ap.parse_known_args(argv)
    overrides = parse_overrides(rest)
    if args.jobs > 1:
        with ProcessPoolExecutor(args.jobs) as pool:
            results = list(pool.map(run_seed, [args.recipe] * len(args.seeds), args.seeds,
                                    [args.out] * len(args.seeds), [overrides] * len(args.seeds)))
    else:
        results = [run_seed(args.recipe, s, args.out, overrides) for s in args.seeds]
    for r in results:
        hit = [s for s, v in r["evals"] if args.target is not None and v >= args.target]
        r["reached_at"] = hit[0] if hit else None
    summary = {
        "recipe": args.recipe, "overrides": overrides, "seeds": args.seeds, "target": args.target,
        "median_final": statistics.median(r["final"] for r in results),
        "median_best": statistics.median(r["best"] for r in results),
        "seeds_reaching_target": sum(r["reached_at"] is not None for r in results),
        "median_wall_s": statistics.median(r["wall_s"] for r in results),
        "per_seed": [{k: v for k, v in r.items() if k != "evals"} for r in results],
    }
    out = Path(args.out) / Path(args.recipe).stem / "summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**summary, "evals": {r["seed"]: r["evals"] for r in results}}, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"| {Path(args.recipe).stem} | {results[0]['steps']} | {summary['median_final']:.1f} | "
          f"{summary['median_best']:.1f} | {summary['seeds_reaching_target']}/{len(results)} | "
          f"{summary['median_wall_s']:.0f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
