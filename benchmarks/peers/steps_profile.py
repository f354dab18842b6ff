"""Where one optimizer step of `dpo_rm_vs_trl` spends its time, on either side: torch.profiler's table of the ops
with the most self CPU time over a few steps of the library's own training loop, after untimed warm-up steps.

    .venv/bin/python -m benchmarks.peers.steps_profile --task rm --finetune lora            # reins
    .venv-bench/bin/python -m benchmarks.peers.steps_profile --side peer --task rm --finetune lora   # TRL

Same inputs as `run_all --size 135m` (SmolLM2-135M, the built-in pairs, batch 4; one thread), built by
dpo_rm_vs_trl's own `prepare` (reins side) or read from --workdir, which a reins-side run fills first (the
peer venv cannot import reins to tokenise).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks.common import BlockClock, pin_threads


class _Steps(BlockClock):
    """A BlockClock that needs no driver: `warmup` steps, then `steps` steps under the profiler, then stop."""

    def __init__(self, warmup: int, steps: int, prof):
        super().__init__(0)
        self.left, self.warm, self.prof, self.times = warmup + steps, warmup, prof, []
        self.t = time.perf_counter()

    def start(self) -> None:
        self.t = time.perf_counter()

    def tick(self) -> bool:
        now = time.perf_counter()
        self.times.append(now - self.t)
        self.t, self.left = now, self.left - 1
        if len(self.times) == self.warm:
            self.prof.start()
        self.running = self.left > 0
        return self.running


def spec_for(args, workdir: Path) -> dict:
    """The spec of the asked row, made by dpo_rm_vs_trl.prepare (ours) or read back from workdir (peer)."""
    path = workdir / f"{args.task}-{args.finetune}.spec.json"
    if args.side == "ours":
        from benchmarks.peers.dpo_rm_vs_trl import prepare

        cmp = next(c for c in prepare(args.size, workdir, 1, "cpu")
                   if c["spec"]["task"] == args.task and bool(c["spec"]["lora"]) == (args.finetune == "lora"))
        spec = {**cmp["spec"], "block_steps": 1}
        path.write_text(json.dumps(spec))
    return json.loads(path.read_text())


def main(argv=None) -> int:
    import torch

    from benchmarks.peers import dpo_rm_vs_trl as bench

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", choices=["ours", "peer"], default="ours")
    ap.add_argument("--task", choices=["sft", "rm", "dpo"], default="rm")
    ap.add_argument("--finetune", choices=["lora", "full"], default="lora")
    ap.add_argument("--size", default="135m", help="a dpo_rm_vs_trl size")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3, help="steps under the profiler")
    ap.add_argument("--workdir", default="/tmp/steps-profile")
    ap.add_argument("--rows", type=int, default=25)
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    pin_threads(1)
    if args.side == "ours":
        from reins.entry import flush_denormals

        flush_denormals()  # as every reins stage and the benchmark's worker do
    spec = spec_for(args, workdir)
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    clock = _Steps(args.warmup, args.steps, prof)
    (bench._ours if args.side == "ours" else bench._peer)(spec, clock)
    prof.stop()
    step_s = clock.times[args.warmup:]
    print(f"{args.side} {args.task}/{args.finetune}: steps under the profiler {[round(t, 2) for t in step_s]} s "
          f"(warm-up {[round(t, 2) for t in clock.times[:args.warmup]]} s)")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
