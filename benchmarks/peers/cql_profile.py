"""Where reins's CQL update spends its time on the CPU: the update `iql_cql_vs_d3rlpy` times (full size: Hopper
widths, [256, 256], batch 256, 10 sampled actions, one thread), its rate against its FLOPs, and torch.profiler's
table of the ops that take the most self time.

    .venv/bin/python -m benchmarks.peers.cql_profile [--steps 200] [--profile-steps 50]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.peers.iql_cql_vs_d3rlpy import _ours, prepare


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="timed updates")
    ap.add_argument("--profile-steps", type=int, default=50, help="updates under torch.profiler")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        spec = next(s["spec"] for s in prepare("full", Path(work), 1, "cpu") if s["spec"]["algo"] == "cql")
        step, flops, _ = _ours(spec)
        for _ in range(50):
            step()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        dt = (time.perf_counter() - start) / args.steps
        print(f"CQL update: {dt * 1e3:.1f} ms, {flops / 1e9:.2f} GFLOP, {flops / dt / 1e9:.1f} GFLOP/s")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile_steps):
                step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
