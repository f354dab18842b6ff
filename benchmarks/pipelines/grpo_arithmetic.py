"""GRPO and RLOO on the built-in arithmetic task with a small tiny Llama: accuracy before and after, per seed.

    OMP_NUM_THREADS=1 python benchmarks/pipelines/grpo_arithmetic.py --out runs/grpo-bench [--seeds 0 1 2] [--steps N]

Per seed: the three stages of `recipes/grpo/tiny-arithmetic.yaml` with that seed (a 60-step SFT that teaches the
answer format, then 300 GRPO and 300 RLOO iterations of 16 prompts x 8 completions on the exact-match reward +
0.1 x the format reward; each run is skipped when its output dir already holds a completed run). Then every
policy's accuracy on all 80 training problems and all 20 held-out problems (operands 0..9): greedy, and sampled
at temperature 1 (4 samples per problem, seeded). Writes `<out>/grpo_arithmetic.md` and `.json`.
Target (issue 15): accuracy rises by >= 0.3 absolute within <= 10 minutes of this CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

RECIPE = ROOT / "recipes" / "grpo" / "tiny-arithmetic.yaml"


def run_seed(out: Path, seed: int, steps: int | None = None) -> dict[str, float]:
    """Run the recipe's stages with `seed` under `out/seed<seed>` (grpo/rloo `steps` if given); seconds per stage."""
    import importlib

    from pipelines.runner import load_recipe, plan
    from reins.entry import STAGES

    recipe = load_recipe(RECIPE, {"output_dir": str(out / f"seed{seed}"), **{
        f"{s}.seed": seed for s in ("sft", "grpo", "rloo")}, **{f"{s}.quiet": True for s in ("sft", "grpo", "rloo")},
        **({f"{s}.max_steps": steps for s in ("grpo", "rloo")} if steps else {})})
    seconds = {}
    for st in plan(recipe):
        t = time.time()
        importlib.import_module(STAGES[st.stage][0]).train(st.config)
        seconds[st.name] = time.time() - t
    return seconds


def accuracy(model_dir: Path, max_operand: int = 9) -> dict[str, float]:
    from pipelines.arithmetic import PROMPT, correct_reward, problems
    from pipelines.data import encode_prompt
    from pipelines.generation import GenerationArgs, generate
    from pipelines.models import ModelArgs, load_causal_lm, load_tokenizer

    args = ModelArgs(model=str(model_dir))
    tok = load_tokenizer(args)
    model = load_causal_lm(args, tok, seed=0)
    out = {}
    for split, n in (("train", 80), ("eval", 20)):
        prompts = [PROMPT.format(a=a, b=b) for a, b in sorted(set(problems(n, split=split, max_operand=max_operand)))]
        for name, temp, k in (("greedy", 0.0, 1), ("sampled", 1.0, 4)):
            ps = prompts * k
            s = generate(model, tok, [encode_prompt(tok, p) for p in ps],
                         GenerationArgs(max_new_tokens=4, temperature=temp, batch_size=512), seed=1234)
            r = correct_reward(ps, s.texts)
            out[f"{split}/{name}"] = sum(r) / len(r)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/grpo-bench")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=None, help="grpo/rloo iterations (default: the recipe's 300)")
    a = ap.parse_args()
    out = Path(a.out)
    results = {}
    for seed in a.seeds:
        secs = run_seed(out, seed, a.steps)
        base = out / f"seed{seed}"
        results[seed] = {"seconds": secs, **{name: accuracy(base / name / "model") for name in ("sft", "grpo", "rloo")}}
        print(json.dumps({seed: results[seed]}), flush=True)
    (out / "grpo_arithmetic.json").write_text(json.dumps(results, indent=2))
    cols = ["train/greedy", "train/sampled", "eval/greedy", "eval/sampled"]
    lines = ["| seed | policy | " + " | ".join(cols) + " | stage seconds |", "|---" * (len(cols) + 3) + "|"]
    for seed, r in results.items():
        for name in ("sft", "grpo", "rloo"):
            lines.append(f"| {seed} | {name} | " + " | ".join(f"{r[name][c]:.3f}" for c in cols)
                         + f" | {r['seconds'].get(name, 0):.0f} |")
    for name in ("grpo", "rloo"):
        gains = {c: [r[name][c] - r["sft"][c] for r in results.values()] for c in cols}
        lines.append(f"| mean gain | {name} - sft | " + " | ".join(
            f"{sum(v) / len(v):+.3f} (min {min(v):+.3f})" for v in gains.values()) + " | |")
    (out / "grpo_arithmetic.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
