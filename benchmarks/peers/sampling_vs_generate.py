"""reins's sampling (pipelines.generation.generate) against plain `model.generate` on the same rows, SmolLM2-135M.

    nice .venv/bin/python -m benchmarks.peers.sampling_vs_generate --shape grpo --rounds 2 [--ablate] [--bf16] \
        [--lora] [--dtype bfloat16] [--out FILE.json]

Shapes (one generate call each, no top-k / top-p, fp32 unless --dtype):
- `grpo`: the GRPO side-by-side's batch (benchmarks/peers/grpo_vs_trl.py): 4 arithmetic chat prompts x 8
  completions, max_new_tokens 64, temperature 1;
- `preferences`: one chunk of recipes/preferences/smollm2-135m.yaml: 16 sentiment chat prompts x 2 samples,
  max_new_tokens 32, temperature 1;
- `demo`: the first generate call of the real-model demo's preferences stage (recipes/smollm2-quickstart.yaml,
  generation.batch_size 48): 16 sentiment chat prompts x 3 samples, max_new_tokens 32, temperature 0.7.
Variants: `generate` = `model.generate` on the left-padded rows (what pipelines.generation called before, and
TRL's path); `reins` = pipelines.generation.generate; with --ablate also `reins-no-share` (every row prefilled)
and `reins-no-drop` (finished rows stay in the decode batch); with --bf16 also `generate-bf16` and `reins-bf16`,
the same two on the bf16 copy that `generation.sample_dtype: bfloat16` samples with
(pipelines.generation.SamplingPolicy: a cast of the model; with --lora, LoRA r 16 on all linear layers as in
the GRPO benchmark, the float32 variants sample through the adapters and the bf16 copy is the merged model).
Each round runs every variant once, in ABBA order (forward, then reversed), seeded
alike; every float32 variant's tokens are checked equal to `generate`'s, the bf16 ones to `generate-bf16`'s
(bf16 tokens are not float32's). Reported:
seconds per call, wall and CPU (the process's own CPU time: one thread, so on a machine shared with other jobs
it is the steadier measure of the work done), generated tokens (up to and including EOS) per round and per
second of wall and of CPU time (bf16 completions differ in length, so compare those rates), the load average at
start and end.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

MODEL = Path("~/.cache/reins/models/smollm2-135m-instruct").expanduser()
SHAPES = {"grpo": ("builtin:arithmetic-chat", 4, 8, 64, 1.0), "preferences": ("builtin:sentiment-chat", 16, 2, 32, 1.0),
          "demo": ("builtin:sentiment-chat", 16, 3, 32, 0.7)}


def hf_generate(model, tok, rows, max_new_tokens: int, seed: int, temperature: float = 1.0) -> list[list[int]]:
    import torch
    from transformers import GenerationConfig

    from pipelines.generation import truncate_after_eos
    from pipelines.scoring import pad

    gcfg = GenerationConfig(do_sample=True, temperature=temperature, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    ids, attn = pad(rows, tok.pad_token_id, side="left")
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=attn, generation_config=gcfg)
    return [truncate_after_eos(r, tok.eos_token_id, tok.pad_token_id)[0] for r in out[:, ids.shape[1]:].tolist()]


def reins_generate(model, tok, rows, max_new_tokens: int, seed: int, temperature: float = 1.0,
                   **switches) -> list[list[int]]:
    from pipelines import generation

    saved = {k: getattr(generation, k) for k in switches}
    for k, v in switches.items():
        setattr(generation, k, v)
    try:
        args = generation.GenerationArgs(max_new_tokens=max_new_tokens, temperature=temperature,
                                         batch_size=len(rows))
        return generation.generate(model, tok, rows, args, seed=seed).completion_ids
    finally:
        for k, v in saved.items():
            setattr(generation, k, v)


def with_lora(model):
    """`model` with LoRA r 16, alpha 32 on all linear layers, B drawn small (not PEFT's zeros) so the adapters
    change the tokens as a trained adapter does."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1e-3)
    return model.eval()


def make_variants(a, model, tok, rows, T: int, temp: float) -> dict:
    """The timed sampling paths, each a function of the seed."""
    variants = {"generate": lambda s: hf_generate(model, tok, rows, T, s, temp),
                "reins": lambda s: reins_generate(model, tok, rows, T, s, temp)}
    if a.ablate:
        variants["reins-no-share"] = lambda s: reins_generate(model, tok, rows, T, s, temp, SHARE_PREFILL=False)
        variants["reins-no-drop"] = lambda s: reins_generate(model, tok, rows, T, s, temp, DROP_FINISHED=False)
    if a.bf16:
        from pipelines.generation import SamplingPolicy

        half = SamplingPolicy(model, "bfloat16").model().eval()
        variants["generate-bf16"] = lambda s: hf_generate(half, tok, rows, T, s, temp)
        variants["reins-bf16"] = lambda s: reins_generate(half, tok, rows, T, s, temp)
    return variants


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="grpo")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--bf16", action="store_true", help="also time both paths on a bf16 copy of the model")
    ap.add_argument("--lora", action="store_true",
                    help="sample from the model with LoRA r 16 on all linear layers (the GRPO benchmark's policy)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipelines.data import encode_prompt
    from pipelines.prompts import builtin_prompts

    torch.set_num_threads(a.threads)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=getattr(torch, a.dtype)).eval()
    if a.lora:
        model = with_lora(model)
    task, n, g, T, temp = SHAPES[a.shape]
    rows = [encode_prompt(tok, p) for p in builtin_prompts(task, n, seed=0, split="train") for _ in range(g)]
    variants = make_variants(a, model, tok, rows, T, temp)
    for k in variants:   # warm-up
        if k.startswith("generate"):
            variants[k](0)
    load0, toks, same = os.getloadavg(), {}, {}
    secs, cpu, ntok = ({k: [] for k in variants} for _ in range(3))
    for r in range(a.rounds):
        for k in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            t, c = time.perf_counter(), time.process_time()
            toks[k] = variants[k](r + 1)
            secs[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
            ntok[k].append(sum(map(len, toks[k])))
            print(k, f"{secs[k][-1]:.2f} s, {cpu[k][-1]:.2f} CPU s", flush=True)
        same[r] = {k: toks[k] == toks["generate-bf16" if k.endswith("-bf16") else "generate"] for k in variants}
    res = {"shape": a.shape, "lora": a.lora, "rows": len(rows), "max_new_tokens": T, "temperature": temp,
           "dtype": a.dtype, "threads": a.threads,
           "load_start": [round(x, 2) for x in load0], "load_end": [round(x, 2) for x in os.getloadavg()],
           "tokens_equal": same, "seconds": secs, "cpu_seconds": cpu,
           "mean_s": {k: sum(v) / len(v) for k, v in secs.items()},
           "mean_cpu_s": {k: sum(v) / len(v) for k, v in cpu.items()},
           "tokens": ntok, "tokens_per_s": {k: sum(ntok[k]) / sum(v) for k, v in secs.items()},
           "tokens_per_cpu_s": {k: sum(ntok[k]) / sum(v) for k, v in cpu.items()}}
    res["speedup_vs_generate"] = {k: res["mean_s"]["generate"] / v for k, v in res["mean_s"].items()}
    res["cpu_speedup_vs_generate"] = {k: res["mean_cpu_s"]["generate"] / v for k, v in res["mean_cpu_s"].items()}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
