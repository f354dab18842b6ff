"""TRL's DPOTrainer trains on what reins writes: a `reins sft` model directory and TRL-format preference JSONL.

Run with reins' venv (it drives both sides): `.venv/bin/python -m benchmarks.interop.trl_dpo`. Steps:
1. `reins sft` trains the tiny Llama briefly: on the built-in text task for the standard file, on chat messages
   for the conversational one (reins saves a chat template only once a model has trained on it, so a model
   trained on text alone has none, and TRL cannot render conversational data with it). Its `model/` directory
   is the policy both sides start from (and the frozen reference).
2. The built-in preference pairs are written as TRL-format JSONL, standard (prompt/chosen/rejected strings) and
   conversational (the same text as user/assistant message lists).
3. For each file: `reins dpo` trains on it, then trl_dpo_side.py trains TRL's DPOTrainer on the same model dir and
   file in .venv-bench, under `python -I -S` (benchmarks/interop/peer.py) with reins not importable (it
   checks), each with its own tokenisation.
   Same beta, learning rate (constant), batch, steps, max_length, max grad norm, no weight decay, fp32 CPU.
   The batch is the whole file, so both see the same pairs at every step whatever order their samplers pick.
Prints per-step loss / reward accuracy of both and writes them to --out (JSON).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.interop.peer import fresh_workdir, offline_env, peer_command

REPO = Path(__file__).resolve().parents[2]
SIDE = Path(__file__).with_name("trl_dpo_side.py")


def _reins(argv: list[str]) -> None:
    cmd = [str(Path(sys.executable).with_name("reins")), *argv, "--quiet"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, env=offline_env(), check=True)


def write_pairs(work: Path, n: int, seed: int) -> dict[str, Path]:
    from pipelines.reward_model import builtin_pairs

    rows = builtin_pairs(2 * n, seed, "train")[:n]  # it may return fewer than asked for (unpaired polarities)
    assert len(rows) == n, f"the built-in task gave {len(rows)} pairs, not {n}"
    std = work / "pairs-standard.jsonl"
    std.write_text("".join(json.dumps(r) + "\n" for r in rows))
    conv = work / "pairs-conversational.jsonl"
    conv.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": r["prompt"]}],
                                        "chosen": [{"role": "assistant", "content": r["chosen"]}],
                                        "rejected": [{"role": "assistant", "content": r["rejected"]}]}) + "\n"
                            for r in rows))
    return {"standard": std, "conversational": conv}


def sft_model(work: Path, fmt: str, a) -> Path:
    """`reins sft` for `fmt`: on the built-in text task (standard), or on chat messages (conversational), so the
    saved tokenizer carries the chat template it was trained with (reins saves only trained templates)."""
    from pipelines.reward_model import builtin_pairs

    out = work / f"sft-{fmt}"
    argv = ["sft", f"output_dir={out}", f"max_steps={a.sft_steps}", "batch_size=16", "eval_prompts=none",
            f"seed={a.seed}", "cpu=true"]
    if fmt == "conversational":  # other openings than the preference pairs (seed + 1)
        chat = work / "sft-chat.jsonl"
        chat.write_text("".join(json.dumps({"messages": [{"role": "user", "content": r["prompt"]},
                                                         {"role": "assistant", "content": r["chosen"]}]}) + "\n"
                                for r in builtin_pairs(256, a.seed + 1, "train")))
        argv.append(f"data={chat}")
    _reins(argv)
    return out / "model"


def reins_curve(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    return [{"step": r["step"], "loss": r["loss"], "accuracy": r.get("rewards/accuracies"),
             "margin": r.get("rewards/margins")} for r in rows if "loss" in r and "step" in r]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/interop-trl")
    ap.add_argument("--peer-python", default=str(REPO / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--sft-steps", type=int, default=30)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: WORK/results.json")
    a = ap.parse_args()
    work = fresh_workdir(a.work)
    pairs = write_pairs(work, a.pairs, a.seed)
    results = {"settings": vars(a), "formats": {}}
    for fmt, data in pairs.items():
        model_dir = sft_model(work, fmt, a)
        run = work / f"dpo-{fmt}"
        _reins(["dpo", f"output_dir={run}", f"model={model_dir}", f"data={data}", f"beta={a.beta}",
                f"learning_rate={a.lr}", "lr_scheduler=constant", f"batch_size={a.pairs}", f"max_steps={a.steps}",
                f"max_length={a.max_length}", "log_every=1", f"save_every={a.steps}", "eval_prompts=none",
                f"seed={a.seed}", "cpu=true", "weight_decay=0.0", "max_grad_norm=1.0"])
        spec = work / f"trl-{fmt}.spec.json"
        spec.write_text(json.dumps({"model_dir": str(model_dir), "data": str(data), "beta": a.beta, "lr": a.lr,
                                    "batch": a.pairs, "steps": a.steps, "max_length": a.max_length,
                                    "seed": a.seed}))
        trl_out = work / f"trl-{fmt}.json"
        cmd = peer_command(a.peer_python, SIDE, str(spec), str(trl_out))
        print("$", a.peer_python, "-I -S", SIDE.name, spec.name, trl_out.name, flush=True)
        subprocess.run(cmd, cwd=work, env=offline_env(), check=True)
        peer = json.loads(trl_out.read_text())
        ours = reins_curve(run)
        results["formats"][fmt] = {"reins": ours, "trl": peer["rows"], "trl_versions": peer["versions"]}
        _print(fmt, ours, peer["rows"])
    out = Path(a.out) if a.out else work / "results.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


def _print(fmt: str, ours: list[dict], peer: list[dict]) -> None:
    by_step = {r["step"]: r for r in peer}
    print(f"\n{fmt}: step  reins loss / acc   TRL loss / acc   |loss diff|")
    worst = 0.0
    for r in ours:
        p = by_step.get(r["step"])
        if p is None:
            continue
        d = abs(r["loss"] - p["loss"])
        worst = max(worst, d)
        print(f"  {r['step']:4d}  {r['loss']:.6f} / {r['accuracy']:.3f}   {p['loss']:.6f} / {p['accuracy']:.3f}"
              f"   {d:.2e}")
    print(f"  max |loss diff| over {len(ours)} steps: {worst:.2e}")


if __name__ == "__main__":
    main()
