"""A minimal stage obeying the contract, for runner tests: sums a seeded random walk with checkpoints."""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from reins.entry import stage_main
from reins.runio import RunDir, get_rng_state, seed_everything, set_rng_state


@dataclass
class Config:
    output_dir: str = "runs/dummy"
    seed: int = 0
    steps: int = 20
    scale: float = 1.0
    input_file: str = ""
    quiet: bool = True


def train(cfg: Config) -> dict:
    run = RunDir(cfg.output_dir, cfg, quiet=cfg.quiet)
    done = run.completed_metrics()
    if done is not None:
        return done
    calls = Path(cfg.output_dir) / "calls.txt"
    calls.write_text(str(int(calls.read_text()) + 1 if calls.exists() else 1))
    base = float(Path(cfg.input_file).read_text()) if cfg.input_file else 0.0
    seed_everything(cfg.seed)
    state = run.load_checkpoint()
    step, total = 0, torch.tensor(base)
    if state is not None:
        step, total = state["step"], state["total"]
        set_rng_state(state["rng"])
        run.truncate_log(step)
    crash_at = int(os.environ.get("DUMMY_CRASH_AT", "-1"))
    while step < cfg.steps:
        if step == crash_at:
            raise KeyboardInterrupt  # stands in for a kill between checkpoints
        total = total + cfg.scale * torch.randn(())
        step += 1
        run.log(step, {"loss": float(total)})
        if step % 5 == 0:
            run.save_checkpoint({"step": step, "total": total, "rng": get_rng_state()})
    (Path(cfg.output_dir) / "value.txt").write_text(repr(float(total)))
    return run.finish({"total": float(total), "steps": step})


def main(argv=None):
    return stage_main(Config, train, argv, prog="dummy")
