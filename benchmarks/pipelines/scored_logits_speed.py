"""Forward + backward of a preference batch's log-probs with the LM head on scored positions only vs everywhere.

    OMP_NUM_THREADS=2 python benchmarks/pipelines/scored_logits_speed.py [--layers 30] [--pairs 4]
        [--prompt 128 --chosen 64 --rejected 64] [--layout shared|two-row] [--rounds 4] [--steps 2]

The model is a Llama with SmolLM2-135M's shape (hidden 576, 9 heads / 3 KV heads, MLP 1536, vocabulary 49152,
tied embeddings; `--layers` of its 30 blocks), randomly initialised in float32, so nothing is downloaded. Each
step runs `pair_logps` (the shared-prompt layout) or `sequence_logps` on the two-row batch, then backward, as
a DPO policy step does. "full" runs the same model behind a wrapper without `logits_to_keep`, which is what
`pipelines.scoring` did before (logits at every position). The two variants alternate in timed blocks (ABBA);
the median seconds per step is reported, with the size of the float32 logits each variant materialises
(positions x vocabulary x 4 bytes, computed, not measured). Results: one JSON line.
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
from pipelines.scoring import (  # noqa: E402
    FullLogits,
    completion_batch,
    pair_logps,
    sequence_logps,
    shared_prompt_batch,
)


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--chosen", type=int, default=64)
    ap.add_argument("--rejected", type=int, default=64)
    ap.add_argument("--layout", choices=["shared", "two-row"], default="shared")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = _parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    model = smollm2_shaped_llama(args.layers)
    P, C, R = random_pairs(args.pairs, args.prompt, args.chosen, args.rejected)
    if args.layout == "shared":
        batch = shared_prompt_batch(P, C, R, 0)

        def score(m):
            return pair_logps(m, batch)["logps"]
    else:
        batch = completion_batch(P * 2, C + R, 0)

        def score(m):
            return sequence_logps(m, batch)["logps"]
    variants = {"scored": model, "full": FullLogits(model)}
    values = {k: score(m).detach() for k, m in variants.items()}  # also the warm-up
    diff = float((values["scored"] - values["full"]).abs().max())

    def steps(m):
        for _ in range(args.steps):
            model.zero_grad(set_to_none=True)
            score(m).sum().backward()

    blocks, _ = time_abba({k: (lambda m=m: steps(m)) for k, m in variants.items()}, args.rounds)
    times = {k: [t / args.steps for t in v] for k, v in blocks.items()}
    med = {k: statistics.median(v) for k, v in times.items()}
    n_pos = int(batch["input_ids"].numel())
    n_scored = sum(len(c) + len(r) for c, r in zip(C, R))
    print(json.dumps({"layout": args.layout, "layers": args.layers, "pairs": args.pairs, "positions": n_pos,
                      "scored_tokens": n_scored, "threads": torch.get_num_threads(),
                      "s_per_step_full": round(med["full"], 4), "s_per_step_scored": round(med["scored"], 4),
                      "speedup": round(med["full"] / med["scored"], 3), "max_abs_logp_diff": diff,
                      "logits_mb_full": round(n_pos * 49152 * 4 / 2**20, 1),
                      "logits_mb_scored": round(n_scored * 49152 * 4 / 2**20, 1),
                      "blocks": {k: [round(x, 4) for x in v] for k, v in times.items()}}))


if __name__ == "__main__":
    main()
