"""Microseconds per step that the finiteness bookkeeping costs a training loop (`reins.runio.FiniteGuard`).

    python benchmarks/finite_guard_overhead.py [--device cpu|cuda] [--steps 5000] [--threads 1]

offline: one `record` of four scalar metrics per step (what offline/trainer.py does), against the inline
torch.where bookkeeping it replaced; both read the device only once, at the end (a check every 1000 steps
costs ~nothing per step). online: one `record` + `check` of two losses and a [256, 256] MLP actor's parameters
per update (what online/common.py's `check_update` does), against the old per-loss `check_finite` calls,
which read the device once per loss. Rounds alternate between the variants; the median round is printed.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from reins.runio import FiniteGuard, check_finite

KEYS = ("loss/value", "loss/q", "loss/actor", "adv/mean")


def _metrics(dev, s: int) -> dict:
    return {k: torch.tensor(float(s + i), device=dev) for i, k in enumerate(KEYS)}


def offline_inline(dev, steps: int, ms: list[dict]) -> None:
    """The bookkeeping offline/trainer.py had before FiniteGuard (kept here only as the baseline)."""
    first = torch.zeros(len(KEYS), dtype=torch.long, device=dev)
    for s in range(1, steps + 1):
        vals = torch.stack([v.detach().reshape(()).float() for v in ms[s % len(ms)].values()])
        first = torch.where((first == 0) & ~torch.isfinite(vals), s, first)
    first.tolist()


def offline_guard(dev, steps: int, ms: list[dict]) -> None:
    guard = FiniteGuard()
    for s in range(1, steps + 1):
        guard.record(s, ms[s % len(ms)])
    guard.check()


def online_inline(dev, steps: int, actor: torch.nn.Module) -> None:
    for s in range(steps):
        check_finite("critic loss", torch.tensor(1.0, device=dev), step=s)
        check_finite("actor loss", torch.tensor(2.0, device=dev), step=s)


def online_guard(dev, steps: int, actor: torch.nn.Module) -> None:
    guard = FiniteGuard()
    for s in range(steps):
        watched = {"loss/critic": torch.tensor(1.0, device=dev), "loss/actor": torch.tensor(2.0, device=dev),
                   "policy parameters": list(actor.parameters())}
        guard.record(s, watched)
        guard.check()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    ms = [_metrics(dev, s) for s in range(8)]
    actor = torch.nn.Sequential(torch.nn.Linear(17, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
                                torch.nn.ReLU(), torch.nn.Linear(256, 12)).to(dev)
    cases = {"offline inline": lambda: offline_inline(dev, args.steps, ms),
             "offline FiniteGuard": lambda: offline_guard(dev, args.steps, ms),
             "online check_finite x2": lambda: online_inline(dev, args.steps, actor),
             "online FiniteGuard": lambda: online_guard(dev, args.steps, actor)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():
        fn()  # warm-up
    for _ in range(args.rounds):
        for name, fn in cases.items():
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t) / args.steps * 1e6)
    print(f"device {dev}, {args.steps} steps x {args.rounds} rounds, torch {torch.__version__}")
    for name, ts in times.items():
        print(f"{name:24s} {statistics.median(ts):8.1f} us/step")


if __name__ == "__main__":
    main()
