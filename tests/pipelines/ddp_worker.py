"""Run under `accelerate launch`: a short DPO run, then each rank saves its flat parameter vector.

argv[1] is a JSON object of dpo.Config keys. Used by test_distributed.py (not collected by pytest).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pipelines import dpo
from pipelines.trainer import Trainer
from reins.config import from_dict
from reins.entry import shutdown_distributed


def main() -> None:
    cfg = from_dict(dpo.Config, json.loads(sys.argv[1]))
    orig = Trainer.train

    def train_and_dump(self, *a, **k):
        out = orig(self, *a, **k)
        flat = torch.cat([p.detach().reshape(-1) for p in self.unwrapped.parameters()])
        rank = self.acc.process_index
        torch.save({"flat": flat, "world": self.acc.num_processes},
                   Path(cfg.output_dir).parent / f"params_rank{rank}.pt")
        return out

    Trainer.train = train_and_dump
    try:
        dpo.train(cfg)
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
