"""SFT throughput with best-fit-decreasing packing vs padded batches, on a SmolLM2-135M-shaped model.

    OMP_NUM_THREADS=1 python benchmarks/pipelines/sft_packing_speed.py [--model shaped|DIR] [--layers 30]
        [--examples 64] [--concat 1] [--batch 8] [--max-length 256] [--rows 2] [--rounds 2] [--threads N]

One pass (forward + backward of `sft.make_loss_fn`, no optimizer step) over the same `--examples` built-in
sentiment SFT examples (with `--concat K`, each example's completion is 1..K reviews' completions
joined, the count seeded per example, for lengths that vary as real SFT data's do) three ways: "padded"
(seeded random order, batches of `--batch` examples right-padded to their longest, the unpacked default),
"grouped" (the same batches drawn from length-sorted order, as
`group_by_length` does at best) and "bfd" (`packing_strategy: bfd`: whole examples packed into `--max-length`
rows, `--rows` rows per batch, kept apart by the block-diagonal mask). Reported per way: the positions the model
computes (real tokens + padding), seconds per pass (median over `--rounds`, ways alternating ABC / CBA), real
tokens per second, and the summed NLL, which must agree (the same loss on the same tokens). The model is
`--model DIR` (e.g. SmolLM2-135M-Instruct after `reins fetch-model smollm2-135m-instruct`: its tokenizer and
weights), or "shaped": a randomly initialised Llama of SmolLM2-135M's shape (hidden 576, 9 heads / 3 KV heads,
MLP 1536, vocabulary 49152, tied embeddings; `--layers` of its 30 blocks) fed the tiny tokenizer's ids, so
nothing is downloaded. Results: one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.common import smollm2_shaped_llama, time_abba  # noqa: E402
from pipelines import sft  # noqa: E402
from pipelines.data import builtin_sft_rows, normalise_sft, tokenize_sft  # noqa: E402
from pipelines.models import ModelArgs, load_causal_lm, load_tokenizer  # noqa: E402
from pipelines.sft_data import as_sequence, pack_bfd  # noqa: E402


def _model_and_tok(args):
    if args.model != "shaped":
        margs = ModelArgs(model=args.model, attn_implementation="sdpa")
        tok = load_tokenizer(margs)
        return load_causal_lm(margs, tok), tok
    return smollm2_shaped_llama(args.layers), load_tokenizer(ModelArgs())


def _rows(n: int, concat: int) -> list[dict]:
    base = builtin_sft_rows(n * concat, 0, "train")
    g = torch.Generator().manual_seed(1)
    counts = torch.randint(1, concat + 1, (n,), generator=g).tolist()
    return [{"prompt": base[i * concat]["prompt"],
             "completion": "".join(base[i * concat + j]["completion"] for j in range(k))}
            for i, k in enumerate(counts)]


def _batches(args, exs: list[dict]) -> dict[str, list[list[dict]]]:
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(exs), generator=g).tolist()
    by_len = sorted(range(len(exs)), key=lambda i: -len(exs[i]["prompt_ids"]) - len(exs[i]["completion_ids"]))
    B, R = args.batch, args.rows
    rows = pack_bfd([as_sequence(e) for e in exs], args.max_length)
    return {"padded": [[exs[i] for i in order[k:k + B]] for k in range(0, len(exs), B)],
            "grouped": [[exs[i] for i in by_len[k:k + B]] for k in range(0, len(exs), B)],
            "bfd": [rows[k:k + R] for k in range(0, len(rows), R)]}


def _positions(batch: list[dict]) -> int:
    lens = [len(e["input_ids"]) if "input_ids" in e else len(e["prompt_ids"]) + len(e["completion_ids"])
            for e in batch]
    return max(lens) * len(batch)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shaped")
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--concat", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    model, tok = _model_and_tok(args)
    model.train()
    rows = normalise_sft(_rows(args.examples, args.concat), "builtin")
    exs, _ = tokenize_sft(tok, rows, "builtin", args.max_length)
    ways = _batches(args, exs)
    loss_fn = sft.make_loss_fn(tok.pad_token_id)
    real = sum(len(e["prompt_ids"]) + len(e["completion_ids"]) for e in exs)

    def one_pass(batches) -> float:
        total = 0.0
        for b in batches:
            model.zero_grad(set_to_none=True)
            loss, _ = loss_fn(model, b, 1.0)  # the summed NLL of the batch
            loss.backward()
            total += loss.item()
        return total

    loss_fn(model, ways["bfd"][0], 1.0)[0].backward()  # warm-up
    times, nll = time_abba({k: (lambda b=b: one_pass(b)) for k, b in ways.items()}, args.rounds)
    med = {k: statistics.median(v) for k, v in times.items()}
    pos = {k: sum(_positions(b) for b in v) for k, v in ways.items()}
    lens = [len(e["prompt_ids"]) + len(e["completion_ids"]) for e in exs]
    print(json.dumps({
        "model": args.model, "layers": model.config.num_hidden_layers, "threads": torch.get_num_threads(),
        "examples": len(exs), "concat": args.concat, "tokens": real,
        "length_min_mean_max": [min(lens), round(real / len(lens), 1), max(lens)],
        "batch": args.batch, "max_length": args.max_length, "rows_per_batch": args.rows,
        "packed_rows": sum(len(b) for b in ways["bfd"]), "steps": {k: len(v) for k, v in ways.items()},
        "positions": pos, "padding_share": {k: round(1 - real / p, 4) for k, p in pos.items()},
        "s_per_pass": {k: round(v, 2) for k, v in med.items()},
        "tokens_per_s": {k: round(real / v, 1) for k, v in med.items()},
        "bfd_speedup_vs_padded": round(med["padded"] / med["bfd"], 3),
        "summed_nll": {k: round(v, 3) for k, v in nll.items()},
        "rounds_s": {k: [round(x, 2) for x in v] for k, v in times.items()}}))


if __name__ == "__main__":
    main()
