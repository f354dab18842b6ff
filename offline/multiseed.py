"""Run one offline stage over several seeds and aggregate: mean, IQM and bootstrap 95% CIs.

    python -m offline.multiseed iql --config recipes/offline/iql-pendulum.yaml seeds=[0,1,2,3,4]

Each seed runs (resumably, under the stage contract) in <output_dir>/seed_<s>; the aggregate of their final
metrics (last, best and mean-of-last-K normalised score and return, K = eval_last_k) goes to
<output_dir>/aggregate.json and is printed: `<metric>/{n, mean, std, iqm, ci95_low, ci95_high, iqm_ci95_low,
iqm_ci95_high}`, where ci95 is the percentile bootstrap of the mean and iqm_ci95 rliable's stratified bootstrap of
the IQM (one task, so the strata are this stage's seeds).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from offline.evaluate import aggregate_runs
from reins.config import load_config, parse_argv
from reins.entry import flush_denormals, run_command, sigterm_raises
from reins.errors import ConfigError
from reins.runio import atomic_write_text

STAGES = {"iql": "offline.iql", "cql": "offline.cql", "bc": "offline.bc", "td3bc": "offline.td3bc"}


def run_seeds(stage: str, config_path: str | None, overrides: dict, seeds: list[int]) -> dict:
    if stage not in STAGES:
        raise ConfigError(f"unknown offline stage '{stage}' (valid: {', '.join(STAGES)})")
    if not seeds:
        raise ConfigError("seeds must list at least one seed")
    mod = importlib.import_module(STAGES[stage])
    base = load_config(mod.Config, config_path, overrides, stage=stage)
    root = Path(base.output_dir)
    dirs = []
    for s in seeds:
        cfg = load_config(mod.Config, config_path, {**overrides, "seed": s, "output_dir": str(root / f"seed_{s}")},
                          stage=stage)
        mod.train(cfg)
        dirs.append(root / f"seed_{s}")
    out = {"stage": stage, "seeds": list(seeds), **aggregate_runs(dirs)}
    atomic_write_text(root / "aggregate.json", json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


def _seed_list(seeds) -> list[int]:
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds must be integers, e.g. seeds=[0,1,2]; got {seeds}")
    return seeds


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    stage, rest = argv[0], argv[1:]
    flush_denormals()
    result: dict = {}

    def body() -> None:
        with sigterm_raises():   # SIGTERM, like Ctrl-C, ends with the one "interrupted" line; seeds resume
            config_path, overrides = parse_argv(rest)   # the stages' own parser: --config, --quiet, overrides
            seeds = _seed_list(overrides.pop("seeds", [0, 1, 2]))
            result["out"] = run_seeds(stage, config_path, overrides, seeds)

    code = run_command("offline.multiseed", body)
    if not code:
        print(json.dumps(result["out"], indent=2, sort_keys=True))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
