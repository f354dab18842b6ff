"""DPO training pairs/s with and without a speed option (`group_by_length` or `torch_compile`), same model,
data, batch size and steps.

    OMP_NUM_THREADS=1 python benchmarks/pipelines/dpo_options_speed.py [--option group_by_length|torch_compile]
        [--pairs 512] [--batch 16] [--model tiny|15m] [--blocks 6] [--block-steps 10] [--mixed-lengths]

Two DPO trainers (pipelines.trainer.Trainer, the stage's loss, frozen reference copy; the second with the
option on) start from the same weights; they train in alternating timed blocks of `--block-steps` optimizer
steps (after `--warmup` untimed steps each, which also hold torch.compile's compilation) so that machine load
hits both alike; the median block rate is reported with the share of real (non-padding) tokens in the
shared-prompt rows [prompt | chosen | rejected] that each one fed the model.
`--mixed-lengths` pads the built-in pairs' completions with a random number (0-40) of repeated words, to show a
wider length spread than the built-in task's. Not a test: prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MODELS = {"tiny": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 384},
          "15m": {"hidden_size": 384, "num_layers": 8, "num_heads": 6, "intermediate_size": 1024}}


class _Stop(Exception):
    pass


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--option", choices=["group_by_length", "torch_compile"], default="group_by_length")
    ap.add_argument("--pairs", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--model", choices=list(MODELS), default="tiny")
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--block-steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--mixed-lengths", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    return ap.parse_args(argv)


def _build_sides(args) -> tuple[list, dict]:
    """The tokenized pairs and one DPO trainer per side (option off, option on), from one base model."""
    import torch

    from pipelines import dpo
    from pipelines.models import ModelArgs, TinySpec, freeze, load_causal_lm, load_tokenizer
    from pipelines.reward_model import builtin_pairs
    from pipelines.scoring import Reference
    from pipelines.trainer import Trainer, make_accelerator

    rows = builtin_pairs(args.pairs, 0, "train")
    if args.mixed_lengths:
        rng = random.Random(0)
        for r in rows:
            r["chosen"] += " good" * rng.randint(0, 40)
            r["rejected"] += " bad" * rng.randint(0, 40)
    margs = ModelArgs(tiny=TinySpec(**MODELS[args.model]))
    tok = load_tokenizer(margs)
    examples, _ = dpo.tokenize_preferences(tok, dpo.normalise_preferences(rows, "builtin"), "builtin", 256)
    base = load_causal_lm(margs, tok, seed=0)
    sides = {}
    for grouped in (False, True):
        cfg = dpo.Config(beta=0.1, batch_size=args.batch, max_steps=1_000_000, learning_rate=1e-4, cpu=True,
                         seed=0, **{args.option: grouped})
        policy = copy.deepcopy(base)
        ref = Reference(freeze(copy.deepcopy(base)))
        if cfg.torch_compile:  # as pipelines.dpo.train does for the loss's reference
            ref = Reference(torch.compile(ref.model, dynamic=True))
        trainer = Trainer(None, cfg, make_accelerator(cfg), policy, examples, dpo.make_loss_fn(tok.pad_token_id,
                                                                                               cfg, ref), seed=0)
        sides[grouped] = {"trainer": trainer, "rates": [], "real": 0, "padded": 0}
    return examples, sides


def _run_block(side: dict, steps: int, examples: list, batch: int) -> float:
    """Trains `steps` steps of one side, counting its batches' real and padded tokens; pairs per second."""
    from pipelines.trainer import example_length

    t = side["trainer"]
    left = [steps]

    def on_step(step, metrics):
        left[0] -= 1
        if left[0] == 0:
            raise _Stop

    for s in range(t.step, t.step + steps):  # token accounting of the batches this block trains on
        idx = t.global_batch(s)
        side["real"] += sum(example_length(examples[i]) for i in idx)
        side["padded"] += len(idx) * max(example_length(examples[i]) for i in idx)
    w0 = time.perf_counter()
    try:
        t.train(on_step)
    except _Stop:
        pass
    return steps * batch / (time.perf_counter() - w0)


def main(argv=None) -> int:
    args = _parse_args(argv)
    import torch

    from reins.entry import flush_denormals

    flush_denormals()
    torch.set_num_threads(args.threads)
    examples, sides = _build_sides(args)
    for side in sides.values():  # the warm-up also holds torch.compile's compilation (reported, not timed)
        w0 = time.perf_counter()
        _run_block(side, args.warmup, examples, args.batch)
        side["warmup_s"] = time.perf_counter() - w0
        side["real"] = side["padded"] = 0
    for _ in range(args.blocks):
        for side in sides.values():
            side["rates"].append(_run_block(side, args.block_steps, examples, args.batch))
    plain, grouped = sides[False], sides[True]
    out = {"option": args.option, "model": args.model, "pairs": args.pairs, "batch": args.batch,
           "mixed_lengths": args.mixed_lengths,
           "threads": args.threads, "steps_timed": args.blocks * args.block_steps,
           "warmup_s_off": round(plain["warmup_s"], 1), "warmup_s_on": round(grouped["warmup_s"], 1),
           "off_pairs_per_s": round(statistics.median(plain["rates"]), 1),
           "on_pairs_per_s": round(statistics.median(grouped["rates"]), 1),
           "speedup": round(statistics.median(grouped["rates"]) / statistics.median(plain["rates"]), 3),
           "off_real_token_share": round(plain["real"] / plain["padded"], 3),
           "on_real_token_share": round(grouped["real"] / grouped["padded"], 3)}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
