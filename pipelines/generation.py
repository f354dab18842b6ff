"""Batched, seeded sampling of completions from a causal LM (KV-cached `generate`), truncated after EOS.

Sampling is from the full tempered distribution (`top_k=0`; `top_p` only if asked) so the samples are on-policy
for log-probs recomputed with the same temperature (off-policy sampling is a known cause of negative KL
estimates, e.g. trl#925, trl#1005). A model's own generation_config (e.g. SmolLM2's defaults) is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipelines.scoring import pad
from reins.config import check


@dataclass
class GenerationArgs:
    max_new_tokens: int = field(default=32, metadata={"help": "longest sampled completion"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (0: greedy)"})
    top_p: float = field(default=1.0,
                         metadata={"help": "nucleus sampling: keep the smallest token set with this much mass"})
    batch_size: int = field(default=64, metadata={"help": "prompts per generate call"})

    def validate(self):
        check(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class Samples:
    """Generated completions: ids end with EOS when the model stopped (`finished`), else at max_new_tokens."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]


def truncate_after_eos(ids: list[int], eos_id: int, pad_id: int) -> tuple[list[int], bool]:
    """Keep tokens up to and including the first EOS; drop padding generate adds after it."""
    out = []
    for t in ids:
        out.append(t)
        if t == eos_id:
            return out, True
    while out and out[-1] == pad_id:  # padding only appears after EOS, but be safe
        out.pop()
    return out, False


@torch.no_grad()
def generate(model, tok, prompt_ids: list[list[int]], args: GenerationArgs, *, seed: int) -> Samples:
    """Sample one completion per prompt. Seeded and restoring the global RNG afterwards (resumable runs)."""
    from transformers import GenerationConfig

    gcfg = GenerationConfig(
        do_sample=args.temperature > 0, temperature=args.temperature if args.temperature > 0 else None,
        top_p=args.top_p if args.temperature > 0 else None, top_k=0 if args.temperature > 0 else None,
        max_new_tokens=args.max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        use_cache=True)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    completions, finished = [], []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for s in range(0, len(prompt_ids), args.batch_size):
                chunk = prompt_ids[s:s + args.batch_size]
                ids, attn = pad(chunk, tok.pad_token_id, side="left")
                out = model.generate(input_ids=ids.to(device), attention_mask=attn.to(device),
                                     generation_config=gcfg)
                for row in out[:, ids.shape[1]:].tolist():
                    c, f = truncate_after_eos(row, tok.eos_token_id, tok.pad_token_id)
                    completions.append(c)
                    finished.append(f)
    finally:
        model.train(was_training)
    texts = tok.batch_decode(completions, skip_special_tokens=True)
    return Samples(prompt_ids=[list(p) for p in prompt_ids], completion_ids=completions, texts=texts,
                   finished=finished)
