"""Milliseconds per AdamW step on a Llama's parameters: the per-tensor loop, foreach, and the fused kernel.

    python benchmarks/pipelines/adamw_speed.py [--threads 1] [--steps 20]

The model is a randomly initialised Llama (hidden 256, 6 blocks, vocabulary 8192: ~10M parameters) with random
gradients; each variant runs 3 warm-up steps, then `--steps` timed ones, in alternating rounds.
`pipelines.trainer.adamw` picks the fused kernel (HF Trainer's default optimizer since torch 2.8).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=8192, hidden_size=256, intermediate_size=1024, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2)
    params = list(LlamaForCausalLM(cfg).parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    print(f"{sum(p.numel() for p in params) / 1e6:.1f}M parameters in {len(params)} tensors, "
          f"{args.threads} thread(s)")
    variants = {"per-tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opts = {k: torch.optim.AdamW(params, lr=1e-4, **kw) for k, kw in variants.items()}
    for opt in opts.values():
        for _ in range(3):
            opt.step()
    times: dict[str, list[float]] = {k: [] for k in opts}
    for _ in range(args.rounds):
        for k, opt in opts.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                opt.step()
            times[k].append((time.perf_counter() - t0) / args.steps * 1e3)
    for k, ts in times.items():
        print(f"{k:>10}: {min(ts):7.1f} ms/step (best of {args.rounds} rounds; all: "
              f"{', '.join(f'{t:.1f}' for t in ts)})")


if __name__ == "__main__":
    main()
