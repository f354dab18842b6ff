"""Batched, seeded sampling of completions from a causal LM, truncated after EOS: a KV-cached decode loop that
gives `model.generate`'s tokens under the same seed, prefilling each run of equal prompts (a GRPO group, the
preference stage's samples) once and dropping finished rows from the batch (_sample_chunk).

Sampling is from the full tempered distribution (`top_k=0`; `top_p` only if asked) so the samples are on-policy
for log-probs recomputed with the same temperature (off-policy sampling is a known cause of negative KL
estimates, e.g. trl#925, trl#1005). A model's own generation_config (e.g. SmolLM2's defaults) is ignored.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
    sample_dtype: Literal["float32", "bfloat16", "auto"] = field(
        default="float32",
        metadata={"help": "precision of sampling: float32 samples with the training model itself (seeded runs "
                          "unchanged); bfloat16 with a bf16 copy of it, refreshed from the trained weights before "
                          "each sampling call (other tokens than float32's; log-probs for the loss are still "
                          "computed by the training model); auto: bfloat16 where the device has native bf16 "
                          "matrix products (CUDA bf16, a CPU with AMX or AVX512-BF16), else float32. Evaluation "
                          "samples use the training model"})

    def validate(self):
        check(self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        check(self.temperature >= 0, f"temperature must be >= 0, got {self.temperature}")
        check(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.sample_dtype in ("float32", "bfloat16", "auto"),
              f"sample_dtype must be float32, bfloat16 or auto, got {self.sample_dtype!r}")


@dataclass
class Samples:
    """Generated completions: ids end with EOS when the model stopped (`finished`), else at max_new_tokens."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    texts: list[str]
    finished: list[bool]
    # log-prob of each completion token under the distribution it was drawn from (tempered, nucleus-cut; the raw
    # one when greedy), from the decode step's logits
    logprobs: list[list[float]] | None = None


# ----------------------------------------------------------------------------------------- sampling precision
def cpu_bf16_flags() -> list[str]:
    """This CPU's native bf16 matrix-product flags (amx_bf16, avx512_bf16) from /proc/cpuinfo; [] when it has
    none or there is no /proc/cpuinfo (torch's get_cpu_capability() says AVX512 on such CPUs, not whether bf16)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            return sorted({"amx_bf16", "avx512_bf16"} & set(line.split(":", 1)[1].split()))
    return []


def native_bf16(device) -> tuple[bool, str]:
    """(whether `device` multiplies bf16 matrices natively, the evidence in words)."""
    device = torch.device(device)
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        return ok, f"torch.cuda.is_bf16_supported() is {ok}"
    if device.type == "cpu":
        flags = cpu_bf16_flags()
        return bool(flags), (f"CPU capability {torch.backends.cpu.get_cpu_capability()}, bf16 flags: "
                             f"{', '.join(flags) or 'none'}")
    return False, f"no bf16 check for a {device.type} device"


def resolve_sample_dtype(name: str, device) -> tuple[torch.dtype, str]:
    """The dtype `sample_dtype` names on `device`, and a line saying which was picked and why."""
    if name == "auto":
        ok, why = native_bf16(device)
        picked = "bfloat16" if ok else "float32"
        return getattr(torch, picked), f"sample_dtype auto: {picked} ({why})"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name], f"sample_dtype {name}"


def cast_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """A deep copy of `model` whose floating parameters are `dtype` and never need gradients. Buffers (RoPE's
    inverse frequencies) keep their dtype; tied parameters stay tied; no full-precision copy is made on the way
    (each parameter is cast straight into deepcopy's memo)."""
    memo = {id(p): torch.nn.Parameter(p.detach().to(dtype) if p.is_floating_point() else p.detach().clone(),
                                      requires_grad=False) for p in model.parameters()}
    return copy.deepcopy(model, memo)


def _plain_lora_layers(policy: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """A PEFT LoRA policy's adapted layers by name, when its trainable parameters are exactly their adapters (no
    DoRA, no modules_to_save); {} otherwise."""
    if not hasattr(policy, "peft_config"):
        return {}
    layers = {n: m for n, m in policy.named_modules() if hasattr(m, "get_delta_weight") and hasattr(m, "base_layer")}
    adapters = {f"{n}.{k}" for n, m in layers.items() for k, _ in m.named_parameters() if k.startswith("lora_")}
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    dora = any(m.use_dora.get(a) for m in layers.values() for a in m.active_adapters if hasattr(m, "use_dora"))
    return layers if layers and trainable <= adapters and not dora else {}


class SamplingPolicy:
    """What a training stage samples from under `sample_dtype`: the policy itself (float32, or the policy already
    in the sampling dtype), or a cast copy refreshed from the policy by `model()`. A plain LoRA policy's copy is
    the merged model (W + B A, computed in the policy's dtype and then cast): no adapter branches in the decode
    loop; otherwise the copy's trainable parameters are refreshed and its frozen ones were cast once. The copy is
    outside the optimizer and autograd, and is a function of the policy's current weights only, so a resumed run
    samples as an uninterrupted one."""

    def __init__(self, policy: torch.nn.Module, sample_dtype: str):
        self.policy = policy
        first = next(p for p in policy.parameters() if p.is_floating_point())
        self.dtype, self.note = resolve_sample_dtype(sample_dtype, first.device)
        self.copy, self._pairs, self._merged = None, [], []
        if self.dtype == first.dtype:
            return
        layers = _plain_lora_layers(policy)
        self.copy = cast_copy(policy, self.dtype)
        if layers:   # drop the adapter branches; model() writes the merged weights
            self.copy = self.copy.unload()
            own = dict(self.copy.named_modules())
            self._merged = [(m, own[n.removeprefix("base_model.model.")]) for n, m in layers.items()]
        else:
            own = dict(self.copy.named_parameters())
            self._pairs = [(p, own[n]) for n, p in policy.named_parameters() if p.requires_grad]

    def log_row(self) -> dict:
        """The step-0 log.jsonl entries: which dtype sampling uses, and why."""
        return {"generation/sample_dtype": str(self.dtype).removeprefix("torch."),
                "generation/sample_dtype_reason": self.note}

    @torch.no_grad()
    def model(self) -> torch.nn.Module:
        """The model to sample from now (the copy refreshed from the policy's trainable weights)."""
        if self.copy is None:
            return self.policy
        for src, dst in self._pairs:
            dst.copy_(src)
        for src, dst in self._merged:
            w = src.base_layer.weight
            for a in src.active_adapters:
                if a in src.lora_A:
                    w = w + src.get_delta_weight(a)
            dst.weight.copy_(w)
        return self.copy


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


# Switches for the ablation in benchmarks/peers/sampling_vs_generate.py (neither changes a token): prefill each
# run of equal prompts once; take finished rows out of the decode batch.
SHARE_PREFILL = True
DROP_FINISHED = True


@dataclass
class _Chunk:
    """One generate call's rows: left-padded to the chunk's widest prompt; `source[i]` is the prefilled row that
    row i continues (runs of equal prompts, e.g. a GRPO group, share one prefill)."""

    ids: torch.Tensor
    attn: torch.Tensor
    heads: list[int]
    source: torch.Tensor

    @classmethod
    def of(cls, rows: list[list[int]], pad_id: int) -> _Chunk:
        ids, attn = pad(rows, pad_id, side="left")
        heads = [i for i in range(len(rows)) if i == 0 or rows[i] != rows[i - 1]]
        source = torch.cumsum(torch.tensor([int(i == 0 or rows[i] != rows[i - 1]) for i in range(len(rows))]), 0)
        return cls(ids, attn, heads, source - 1)


def _warp(logits: torch.Tensor, args: GenerationArgs) -> torch.Tensor:
    """The tempered (and nucleus-cut) scores `generate` samples from, with transformers' own warpers."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    if args.temperature == 0:   # greedy: the raw logits
        return logits
    if args.temperature != 1.0:
        logits = TemperatureLogitsWarper(args.temperature)(None, logits)
    if args.top_p < 1.0:
        logits = TopPLogitsWarper(args.top_p)(None, logits)
    return logits


def _cache_kwarg(model) -> str:
    """The forward keyword that takes a KV cache: `cache` in recent transformers 5.x, `past_key_values` before it
    (an unknown keyword would be swallowed by the model's **kwargs and decoding would silently run uncached)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft wrapper passes kwargs on
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _sample_chunk(model, chunk: _Chunk, args: GenerationArgs, eos_id: int, pad_id: int,
                  device) -> tuple[torch.Tensor, torch.Tensor]:
    """(new tokens [B, steps] of one chunk, pad after EOS; their log-probs, 0 after EOS): token for token what
    `model.generate` samples.

    Two savings over `generate`, neither changing a token: each distinct prompt is prefilled once and its KV
    cache copied to the rows that continue it, and rows that emitted EOS leave the decode batch. The random draw
    stays `generate`'s: multinomial with one sample is argmax(p / E) with E ~ Exp(1) drawn over the full [B, V]
    shape each step (torch's implementation); finished rows' noise is drawn and discarded, so the stream, and
    every later chunk's, is unchanged.
    """
    from transformers import DynamicCache

    B, sampling = chunk.ids.shape[0], args.temperature > 0
    cache = DynamicCache(config=model.config)
    kv = {_cache_kwarg(model): cache, "use_cache": True}
    heads = torch.tensor(chunk.heads) if SHARE_PREFILL else torch.arange(B)
    out = model(input_ids=chunk.ids[heads].to(device), attention_mask=chunk.attn[heads].to(device), **kv)
    logits = out.logits[:, -1].float()
    del out
    if len(heads) < B:
        src = chunk.source.to(device)
        logits = logits[src]
        cache.batch_select_indices(src)
    attn, live = chunk.attn.to(device), torch.arange(B, device=device)
    new = torch.full((B, args.max_new_tokens), pad_id, dtype=torch.long, device=device)
    logp = torch.zeros((B, args.max_new_tokens), device=device)
    stopped = torch.zeros(B, dtype=torch.bool, device=device)
    for t in range(args.max_new_tokens):
        scores = _warp(logits, args)
        if sampling:
            noise = torch.empty((B, scores.shape[-1]), device=device).exponential_()
            probs = torch.softmax(scores, dim=-1)
            nxt = (probs / noise[live]).argmax(-1)
            logp[live, t] = probs.gather(1, nxt[:, None]).squeeze(1).log()
        else:
            nxt = scores.argmax(-1)
            logp[live, t] = torch.log_softmax(scores, dim=-1).gather(1, nxt[:, None]).squeeze(1)
        nxt = nxt.masked_fill(stopped[live], pad_id)   # rows kept after their EOS (DROP_FINISHED off) get pad
        new[live, t] = nxt
        stopped[live] = stopped[live] | (nxt == eos_id)
        if t == args.max_new_tokens - 1 or stopped.all():
            return new[:, :t + 1].cpu(), logp[:, :t + 1].cpu()
        if DROP_FINISHED and stopped[live].any():
            keep = (~stopped[live]).nonzero().squeeze(1)
            live, attn, nxt = live[keep], attn[keep], nxt[keep]
            cache.batch_select_indices(keep)
        attn = torch.cat([attn, attn.new_ones((attn.shape[0], 1))], dim=1)
        logits = model(input_ids=nxt[:, None], attention_mask=attn, **kv).logits[:, -1].float()
    return new.cpu(), logp.cpu()


@torch.no_grad()
def generate(model, tok, prompt_ids: list[list[int]], args: GenerationArgs, *, seed: int) -> Samples:
    """Sample one completion per prompt, in chunks of `args.batch_size` rows (_sample_chunk: the tokens
    `model.generate` gives). Seeded and restoring the global RNG afterwards (resumable runs)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    completions, finished, logprobs = [], [], []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for s in range(0, len(prompt_ids), args.batch_size):
                chunk = _Chunk.of(prompt_ids[s:s + args.batch_size], tok.pad_token_id)
                new, logp = _sample_chunk(model, chunk, args, tok.eos_token_id, tok.pad_token_id, device)
                for row, lp in zip(new.tolist(), logp.tolist()):
                    c, f = truncate_after_eos(row, tok.eos_token_id, tok.pad_token_id)
                    completions.append(c)
                    finished.append(f)
                    logprobs.append(lp[:len(c)])
    finally:
        model.train(was_training)
    texts = tok.batch_decode(completions, skip_special_tokens=True)
    return Samples(prompt_ids=[list(p) for p in prompt_ids], completion_ids=completions, texts=texts,
                   finished=finished, logprobs=logprobs)
