"""Where reins's CQL update spends its time on the CPU: the update `iql_cql_vs_d3rlpy` times (full size: Hopper
widths, [256, 256], batch 256, 10 sampled actions, one thread), its rate against its FLOPs, and torch.profiler's
table of the ops that take the most self time; then the rate of the critics' batched product ([2, M, 256] x
[2, 256, 256] `bmm`) against two separate `mm`s at the row counts M the update uses.

    .venv/bin/python -m benchmarks.peers.cql_profile [--steps 200] [--profile-steps 50]
    .venv-bench-d3rlpy/bin/python -m benchmarks.peers.cql_profile --side peer     # d3rlpy's CQL update, same table
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.peers.iql_cql_vs_d3rlpy import _ours, _peer, prepare


def _ms(fn, n: int = 30) -> float:
    for _ in range(5):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e3


def matmul_rates(rows=(256, 2816, 7936), width: int = 256) -> None:
    for m in rows:
        x, w = torch.randn(2, m, width), torch.randn(2, width, width)
        x0, x1, w0, w1 = x[0].contiguous(), x[1].contiguous(), w[0].contiguous(), w[1].contiguous()
        gflop = 2 * 2 * m * width * width / 1e9
        bmm = _ms(lambda x=x, w=w: torch.bmm(x, w))
        mm = _ms(lambda a=(x0, w0, x1, w1): (torch.mm(a[0], a[1]), torch.mm(a[2], a[3])))
        print(f"M={m}: bmm {gflop / bmm * 1e3:.0f} GFLOP/s, two mm {gflop / mm * 1e3:.0f} GFLOP/s")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200, help="timed updates")
    ap.add_argument("--profile-steps", type=int, default=50, help="updates under torch.profiler")
    ap.add_argument("--side", choices=("ours", "peer"), default="ours",
                    help="peer: d3rlpy's CQLConfig update with the same sizes (run in the d3rlpy venv)")
    ap.add_argument("--no-matmul", action="store_true", help="skip the bmm-against-two-mm rates")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as work:
        spec = next(s["spec"] for s in prepare("full", Path(work), 1, "cpu") if s["spec"]["algo"] == "cql")
        step, flops, _ = (_ours if args.side == "ours" else _peer)(spec)
        for _ in range(50):
            step()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        dt = (time.perf_counter() - start) / args.steps
        print(f"{args.side} CQL update: {dt * 1e3:.1f} ms, {flops / 1e9:.2f} GFLOP, {flops / dt / 1e9:.1f} GFLOP/s")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(args.profile_steps):
                step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    if not args.no_matmul:
        matmul_rates()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
