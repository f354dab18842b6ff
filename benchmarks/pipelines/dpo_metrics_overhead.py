"""What dpo's TRL token metrics (entropy, mean_token_accuracy) add to a policy forward + backward.

    OMP_NUM_THREADS=2 python benchmarks/pipelines/dpo_metrics_overhead.py [--layers 2] [--pairs 4]
        [--prompt 128 --chosen 64 --rejected 64] [--layout shared|two-row] [--rounds 6] [--steps 2]

The model is a Llama with SmolLM2-135M's shape (hidden 576, vocabulary 49152, tied embeddings; `--layers` of its
30 blocks), randomly initialised in float32. "plain" scores the pairs as dpo did before (`pair_logps` /
`sequence_logps` without `with_entropy`), "metrics" with it, each followed by backward of the log-probs, as a
DPO policy step does. Few layers make the vocabulary-wide work a larger share of the step, so the relative cost
shown is an upper end for the real 30-block model. The variants alternate in timed blocks (ABBA); the median
seconds per step is reported. Results: one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import random_pairs, smollm2_shaped_llama, time_abba  # noqa: E402
from pipelines.scoring import completion_batch, pair_logps, sequence_logps, shared_prompt_batch  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--chosen", type=int, default=64)
    ap.add_argument("--rejected", type=int, default=64)
    ap.add_argument("--layout", choices=["shared", "two-row"], default="shared")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)
    model = smollm2_shaped_llama(args.layers)
    P, C, R = random_pairs(args.pairs, args.prompt, args.chosen, args.rejected)
    if args.layout == "shared":
        batch = shared_prompt_batch(P, C, R, 0)
        score = lambda m, ent: pair_logps(m, batch, with_entropy=ent)  # noqa: E731
    else:
        batch = completion_batch(P * 2, C + R, 0)
        score = lambda m, ent: sequence_logps(m, batch, with_entropy=ent)  # noqa: E731
    variants = {"plain": False, "metrics": True}
    for ent in variants.values():  # warm-up
        score(model, ent)["logps"].sum().backward()

    def steps(ent):
        for _ in range(args.steps):
            model.zero_grad(set_to_none=True)
            score(model, ent)["logps"].sum().backward()

    blocks, _ = time_abba({k: (lambda e=e: steps(e)) for k, e in variants.items()}, args.rounds)
    times = {k: [t / args.steps for t in v] for k, v in blocks.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    print(json.dumps({"layout": args.layout, "layers": args.layers, "pairs": args.pairs,
                      "scored_tokens": sum(len(c) + len(r) for c, r in zip(C, R)),
                      "threads": torch.get_num_threads(), "s_per_step_plain": round(med["plain"], 4),
                      "s_per_step_metrics": round(med["metrics"], 4),
                      "overhead": round(med["metrics"] / med["plain"] - 1, 3),
                      "blocks": {k: [round(x, 4) for x in v] for k, v in times.items()}}))


if __name__ == "__main__":
    main()
