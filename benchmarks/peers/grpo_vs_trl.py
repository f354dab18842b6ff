"""GRPO iterations of reins against TRL 1.16's GRPOTrainer on SmolLM2-135M-Instruct with LoRA, on the CPU.

    nohup nice .venv/bin/python -m benchmarks.peers.grpo_vs_trl --out runs/grpo_vs_trl --label after \
        [--rounds 2] [--threads 1] [--reins-root DIR] [--peer-python /work/venv-trl/bin/python] \
        [--sample-dtype bfloat16 [--also-fp32]] [--trl-bf16] > LOG 2>&1 &

Equal work on both sides: the model fetched by `reins fetch-model smollm2-135m-instruct`, LoRA r 16, alpha 32,
dropout 0 on all linear layers, fp32; the same 4 arithmetic chat prompts (pipelines.arithmetic, seed 0) in
every iteration, G = 8 completions each (32 rows, sampled in one batch), max_new_tokens 64, temperature 1,
top_p 1, no top-k; the same reward function (grpo_vs_trl_side.arithmetic_reward: exact match + 0.1 x bare
integer); group-scaled advantages, beta 0 (no reference model), clip epsilon 0.2, token-level loss (reins
`token` = TRL `dapo`: one process, one minibatch), one optimizer step per generation batch (AdamW, lr 1e-4
constant, no weight decay, gradient clip 1.0), gradient checkpointing on (TRL's default; the SmolLM2 GRPO
recipe's setting; without it each side's update peaks at ~9 GB). The completions themselves differ
(each library's own seeds), so the reward and length columns are the check that both sides do the same work.

Each side is one long-lived process (reins: this file's `--worker`, with `--reins-root` first on PYTHONPATH,
e.g. an export of an older commit for a before/after; TRL: grpo_vs_trl_side.py in its venv through
benchmarks/interop/peer.py, reins not importable). One warm-up iteration each, untimed, then `--rounds` rounds
of one iteration per side in ABBA order (only one side runs at a time). Reported per side: CPU seconds per
iteration (the worker's own; one thread, so steadier than wall time when other jobs share the cores), and over
wall time completions/s and
generated tokens/s over whole iterations, the seconds of generation, scoring (rewards, advantages, the
rollout's log-prob passes if any) and update, and the mean reward and loss. Writes OUT/<label>.json and .md.

`--sample-dtype` sets the reins side's generation.sample_dtype (sampling from a bf16 copy of the policy; the
update stays fp32); `--also-fp32` then adds a third side, `reins-fp32`, the same tree sampling in fp32, so the
reward columns of the two show whether bf16 sampling changes the learning. `--trl-bf16` runs TRL with
`bf16=True` (its mixed precision: the trainer's autocast to bf16 over generation and update) instead of fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PREFIX = "@@BENCH "
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODEL = Path("~/.cache/reins/models/smollm2-135m-instruct").expanduser()


def spec_for(args, work: Path) -> dict:
    return {"model": str(args.model), "prompts": str(work / "prompts.jsonl"), "num_generations": 8,
            "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "learning_rate": 1e-4,
            "max_grad_norm": 1.0, "epsilon": 0.2, "lora_r": 16, "lora_alpha": 32, "seed": 0,
            "threads": args.threads, "iterations": 1 + args.rounds, "trl_output_dir": str(work / "trl"),
            "sample_dtype": args.sample_dtype, "trl_bf16": args.trl_bf16}


# ----------------------------------------------------------------------------------------- reins worker
def _emit(**msg) -> None:
    sys.__stdout__.write(PREFIX + json.dumps(msg) + "\n")
    sys.__stdout__.flush()


def _time_generate(module) -> list:
    """Wrap `module.generate` so that each call appends its CPU seconds (this process's) to the returned list."""
    fn, spent = module.generate, []

    def timed(*a, **kw):
        c = time.process_time()
        try:
            return fn(*a, **kw)
        finally:
            spent.append(time.process_time() - c)

    module.generate = timed
    return spent


def worker(spec: dict) -> None:
    """reins's side: the grpo stage's own setup, rollout and update, one iteration per "iter" line."""
    import shutil

    import torch

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    from grpo_vs_trl_side import release_memory  # this file's directory is first on sys.path

    from pipelines import grpo
    from pipelines.common import start_lm_stage
    from pipelines.sampling import rollout_seed, update_generator
    from reins.config import from_dict
    from reins.entry import flush_denormals

    flush_denormals()   # as every reins stage does first
    shutil.rmtree(spec["reins_output_dir"], ignore_errors=True)
    n = sum(1 for line in open(spec["prompts"]) if line.strip())
    cfg = from_dict(grpo.Config, {
        "model": spec["model"], "data": spec["prompts"], "output_dir": spec["reins_output_dir"], "quiet": True,
        "seed": spec["seed"], "batch_size": n, "num_generations": spec["num_generations"],
        "generation": {"max_new_tokens": spec["max_new_tokens"], "temperature": spec["temperature"],
                       "batch_size": n * spec["num_generations"], "sample_dtype": spec.get("sample_dtype", "float32")},
        "reward_funcs": ["grpo_vs_trl_side:arithmetic_reward"], "advantage": "grpo", "scale_rewards": "group",
        "beta": 0.0, "epsilon": spec["epsilon"], "loss_type": "token", "num_iterations": 1, "num_minibatches": 1,
        "learning_rate": spec["learning_rate"], "lr_scheduler": "constant", "weight_decay": 0.0,
        "max_grad_norm": spec["max_grad_norm"], "max_prompt_length": 128, "eval_prompts": None,
        "max_steps": spec["iterations"], "save_every": 10_000, "gradient_checkpointing": True,
        "lora": {"r": spec["lora_r"], "alpha": spec["lora_alpha"], "dropout": 0.0, "target_modules": ["all-linear"]}})
    acc, _ = start_lm_stage(cfg)
    s = grpo.setup(cfg, acc)
    gen_cpu = _time_generate(grpo)
    rows = list(range(len(s.prompts)))
    _emit(event="ready", prompt_lengths=[len(p) for p in s.prompt_ids], versions={"torch": torch.__version__})
    for step in range(spec["iterations"]):
        sys.stdin.readline()
        t0, c0 = time.perf_counter(), time.process_time()
        data, m, gen_s = grpo.rollout(cfg, s.policy, s.reference, s.funcs, s.tok, [s.prompts[i] for i in rows],
                                      [s.prompt_ids[i] for i in rows], seed=rollout_seed(cfg.seed, step, 0),
                                      acc=acc, columns=[s.columns[i] for i in rows], sampler=s.sampler)
        t1 = time.perf_counter()
        u = grpo.grpo_update(cfg, s.model, s.optimizer, acc, data, generator=update_generator(cfg.seed, step, 0))
        t2, c2 = time.perf_counter(), time.process_time()
        s.scheduler.step()
        k = len(rows) * cfg.num_generations
        _emit(event="iter", seconds=t2 - t0, cpu_s=c2 - c0, generation_cpu_s=gen_cpu.pop(), generation_s=gen_s,
              scoring_s=t1 - t0 - gen_s,
              update_s=t2 - t1, completions=k, tokens=m["rollout/tokens"], reward=m["reward"], loss=u["loss"],
              mean_length=m["completions/mean_length"], clipped_ratio=m["completions/clipped_ratio"])
        release_memory()
    _emit(event="final")


# ----------------------------------------------------------------------------------------- driver
class Proc:
    def __init__(self, name: str, cmd: list[str], env: dict, log: Path, cwd: Path):
        self.name, self.log = name, open(log, "w")
        self.p = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=self.log, text=True, bufsize=1)

    def expect(self, event: str) -> dict:
        for line in self.p.stdout:
            if line.startswith(PREFIX):
                msg = json.loads(line[len(PREFIX):])
                if msg["event"] == event:
                    return msg
            else:
                self.log.write(line)
        raise RuntimeError(f"{self.name} exited before '{event}' (log: {self.log.name})")

    def iterate(self) -> dict:
        self.p.stdin.write("iter\n")
        self.p.stdin.flush()
        return self.expect("iter")


def summary(recs: list[dict]) -> dict:
    sec = sum(r["seconds"] for r in recs)
    out = {"iterations": len(recs), "seconds_per_iter": sec / len(recs),
           "completions_per_s": sum(r["completions"] for r in recs) / sec,
           "tokens_per_s": sum(r["tokens"] for r in recs) / sec}
    for k in ("generation_s", "scoring_s", "update_s", "reward", "loss", "mean_length", "clipped_ratio"):
        out[k] = sum(r[k] for r in recs) / len(recs)
    for k in ("cpu_s", "generation_cpu_s"):
        if all(k in r for r in recs):
            out[f"{k}_per_iter"] = sum(r[k] for r in recs) / len(recs)
    out["generation_tokens_per_s"] = sum(r["tokens"] for r in recs) / sum(r["generation_s"] for r in recs)
    return out


def markdown(res: dict) -> str:
    cols = [("completions/s", "completions_per_s", 3), ("generated tokens/s", "tokens_per_s", 1),
            ("s/iteration", "seconds_per_iter", 1), ("CPU s/iteration", "cpu_s_per_iter", 1),
            ("generation CPU s", "generation_cpu_s_per_iter", 1), ("generation s", "generation_s", 1),
            ("scoring s", "scoring_s", 2), ("update s", "update_s", 1),
            ("tokens/s in generation", "generation_tokens_per_s", 1), ("mean length", "mean_length", 1),
            ("reward", "reward", 3), ("loss", "loss", 4)]
    lines = [f"# GRPO vs TRL GRPOTrainer: {res['label']}", "",
             f"load average at start {res['load_start']}, end {res['load_end']}; threads per side "
             f"{res['threads']}; timed iterations per side {res['rounds']} (ABBA)", "",
             "| side | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for side in ("reins", "reins-fp32", "reins-before", "trl"):
        if side in res:
            s = res[side]
            lines.append(f"| {side} | " + " | ".join(f"{s[k]:.{d}f}" if k in s else "-" for _, k, d in cols) + " |")
    lines += ["", f"reins / TRL iterations per second: {res['ratio']:.2f}", "",
              "reward by iteration (warm-up first; each side's completions are its own samples): " + "; ".join(
                  f"{k} " + ", ".join(f"{r['reward']:.3f}" for r in [res["warmup"][k], *res["iterations"][k]])
                  for k in res["iterations"])]
    if "cpu_ratio" in res:
        lines.append(f"CPU seconds per iteration, reins {res['reins']['cpu_s_per_iter']:.1f}, TRL "
                     f"{res['trl']['cpu_s_per_iter']:.1f}: TRL / reins {res['cpu_ratio']:.2f}")
    if "reins-before" in res:
        b, a = res["reins-before"], res["reins"]
        lines.append(f"reins-before / TRL: {res['trl']['seconds_per_iter'] / b['seconds_per_iter']:.2f}; "
                     f"generation seconds, reins-before / reins: {b['generation_s'] / a['generation_s']:.2f}")
    return "\n".join(lines) + "\n"


def drive(args) -> dict:
    from benchmarks.interop.peer import peer_command
    from pipelines.arithmetic import arithmetic_prompts

    out = Path(args.out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "prompts.jsonl", "w") as f:
        for p in arithmetic_prompts(4, seed=0, split="train", chat=True):
            f.write(json.dumps({"prompt": p}) + "\n")
    spec = spec_for(args, work)
    (work / "spec-trl.json").write_text(json.dumps(spec))
    threads = {k: str(args.threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    base = {**os.environ, **threads, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1"}
    roots = {"reins": args.reins_root, **({"reins-fp32": args.reins_root} if args.also_fp32 else {}),
             **({"reins-before": args.before_root} if args.before_root else {})}
    for k in roots:
        (work / f"spec-{k}.json").write_text(json.dumps({**spec, "reins_output_dir": str(work / k),
                                                         **({"sample_dtype": "float32"} if k != "reins" else {})}))
    sides = {k: Proc(k, [sys.executable, str(HERE / "grpo_vs_trl.py"), "--worker", str(work / f"spec-{k}.json")],
                     {**base, "PYTHONPATH": str(Path(root).resolve())}, out / f"{args.label}-{k}.log", HERE)
             for k, root in roots.items()}
    sides["trl"] = Proc("trl", peer_command(args.peer_python, HERE / "grpo_vs_trl_side.py",
                                            str(work / "spec-trl.json")), {**base, "PYTHONPATH": ""},
                        out / f"{args.label}-trl.log", HERE)
    ready = {k: p.expect("ready") for k, p in sides.items()}
    load_start = os.getloadavg()
    recs = {k: [] for k in sides}
    warm = {}
    for k, p in sides.items():   # untimed in the summary; printed, as a first look at each side's speed
        warm[k] = p.iterate()
        print(k, "warm-up", json.dumps(warm[k]), flush=True)
    for r in range(args.rounds):   # A B (C), then (C) B A, ...
        for k in (list(sides) if r % 2 == 0 else list(sides)[::-1]):
            recs[k].append(sides[k].iterate())
            print(k, json.dumps(recs[k][-1]), flush=True)
    for p in sides.values():
        p.expect("final")
    res = {"label": args.label, "threads": args.threads, "rounds": args.rounds, "ready": ready, "warmup": warm,
           "iterations": recs, "load_start": [round(x, 2) for x in load_start],
           "load_end": [round(x, 2) for x in os.getloadavg()], "spec": spec, "reins_root": str(args.reins_root),
           "before_root": args.before_root,
           **{k: summary(v) for k, v in recs.items()}}
    res["ratio"] = res["trl"]["seconds_per_iter"] / res["reins"]["seconds_per_iter"]
    if "cpu_s_per_iter" in res["reins"]:
        res["cpu_ratio"] = res["trl"]["cpu_s_per_iter"] / res["reins"]["cpu_s_per_iter"]
    (out / f"{args.label}.json").write_text(json.dumps(res, indent=1))
    (out / f"{args.label}.md").write_text(markdown(res))
    print(markdown(res))
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    ap.add_argument("--out", default="runs/grpo_vs_trl")
    ap.add_argument("--label", default="reins")
    ap.add_argument("--rounds", type=int, default=2, help="timed iterations per side (ABBA order)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per side")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--model", default=str(MODEL), help="SmolLM2-135M-Instruct as `reins fetch-model` writes it")
    ap.add_argument("--reins-root", default=str(REPO), help="the reins tree the reins side imports")
    ap.add_argument("--before-root", default=None,
                    help="a second reins tree (e.g. `git archive` of an older commit) timed as 'reins-before'")
    ap.add_argument("--peer-python", default="/work/venv-trl/bin/python")
    ap.add_argument("--sample-dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                    help="the reins side's generation.sample_dtype")
    ap.add_argument("--also-fp32", action="store_true", help="also time the reins tree sampling in fp32")
    ap.add_argument("--trl-bf16", action="store_true", help="TRL with bf16=True (mixed precision) instead of fp32")
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()))
    else:
        drive(args)


if __name__ == "__main__":
    main()
