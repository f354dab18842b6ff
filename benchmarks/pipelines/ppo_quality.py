"""PPO quality and throughput on the built-in sentiment task with the tiny model, plus the reward-vs-KL frontier.

    OMP_NUM_THREADS=1 python benchmarks/pipelines/ppo_quality.py --sft runs/tiny/sft/model \
        --reward runs/tiny/reward --out runs/tiny [--kl-coefs 0.05 0.02 0.2] [--steps 40]

Needs the SFT model and the reward model of the tiny pipeline (benchmarks/pipelines/tiny_quality.py or
recipes/{sft,preferences,reward}/tiny.yaml). Runs `recipes/ppo/tiny.yaml` once per KL coefficient (each run is
skipped when its output dir already holds a completed run; the first coefficient writes `<out>/ppo`, the others
`<out>/ppo_kl<c>`), then writes `<out>/ppo_quality.md`, `ppo_quality.json` and `ppo_frontier.png`: gold reward vs
KL to the SFT reference for every PPO evaluation point and, when `<out>/dpo*/metrics.json` exist, the DPO runs of
the beta sweep beside them (the DPO paper's Fig. 2 in miniature).
Targets (issue 5): eval/gold_reward from the SFT level (about 0.1) to >= +0.5, eval/win_rate_vs_ref >= 0.75, the
reward-model score rising with the gold reward. Throughput, means over iterations as measured on this machine:
sampling tokens/s (KV-cached generate alone), rollout tokens/s (generation + policy, reference, value and
reward-model forward passes) and PPO update token-passes/s (tokens x ppo_epochs / update seconds).
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


def run_ppo(out: Path, sft: str, reward: str, kl_coef: float, steps: int) -> tuple[dict, float]:
    from pipelines import ppo
    from reins.config import load_config

    cfg = load_config(ppo.Config, ROOT / "recipes" / "ppo" / "tiny.yaml",
                      {"output_dir": str(out), "model": sft, "reward_model": reward, "kl_coef": kl_coef,
                       "max_steps": steps, "quiet": True}, stage="ppo")
    t = time.time()
    return ppo.train(cfg), time.time() - t


def trajectory(run: Path) -> dict:
    rows = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    evals = []
    for r in rows:
        if "eval/gold_reward" in r:
            evals.append({k: r[k] for k in ("step", "eval/gold_reward", "eval/reward_model_score", "eval/kl_to_ref",
                                            "eval/win_rate_vs_ref") if k in r})
    train = [r for r in rows if "perf/rollout_tokens_per_s" in r]
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    n = max(1, len(train))
    return {"evals": evals,
            "rollout_tokens_per_s": sum(r["perf/rollout_tokens_per_s"] for r in train) / n,
            "generation_tokens_per_s": sum(r.get("perf/generation_tokens_per_s", float("nan")) for r in train) / n,
            "update_token_passes_per_s": sum(r["rollout/tokens"] * cfg["ppo_epochs"] / r["perf/update_s"]
                                             for r in train) / n,
            "seconds_per_iteration": sum(r["perf/rollout_s"] + r["perf/update_s"] for r in train) / n}


def overoptimisation(evals: list[dict]) -> str:
    """Where the reward-model score keeps rising while the gold reward falls (first such eval interval)."""
    for a, b in zip(evals, evals[1:]):
        rm_up = b["eval/reward_model_score"] > a["eval/reward_model_score"]
        if rm_up and b["eval/gold_reward"] < a["eval/gold_reward"]:
            return (f"steps {a['step']}->{b['step']}: RM score {a['eval/reward_model_score']:.2f}->"
                    f"{b['eval/reward_model_score']:.2f} while gold {a['eval/gold_reward']:.3f}->"
                    f"{b['eval/gold_reward']:.3f} (KL {b['eval/kl_to_ref']:.1f})")
    return "none observed (RM score and gold reward moved together at every evaluation)"


def plot(out: Path, ppo_runs: list[dict], dpo_runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for r in ppo_runs:
        ev = r["evals"]
        ax.plot([e["eval/kl_to_ref"] for e in ev], [e["eval/gold_reward"] for e in ev], "o-", ms=4,
                label=f"PPO kl_coef={r['kl_coef']:g}")
    if dpo_runs:
        ax.scatter([d["eval/kl_to_ref"] for d in dpo_runs], [d["eval/gold_reward"] for d in dpo_runs], marker="s",
                   color="k", label="DPO (beta sweep)", zorder=3)
        for d in dpo_runs:
            ax.annotate(f"b={d['beta']:g}", (d["eval/kl_to_ref"], d["eval/gold_reward"]), fontsize=7,
                        xytext=(3, -8), textcoords="offset points")
    ax.set_xlabel("KL(policy || SFT reference), nats per completion")
    ax.set_ylabel("gold reward (VADER)")
    ax.set_title("Reward vs KL frontier, tiny sentiment task")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "ppo_frontier.png", dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sft", default="runs/tiny/sft/model")
    ap.add_argument("--reward", default="runs/tiny/reward")
    ap.add_argument("--out", default="runs/tiny")
    ap.add_argument("--kl-coefs", type=float, nargs="*", default=[0.05, 0.02, 0.2])
    ap.add_argument("--steps", type=int, default=40)
    a = ap.parse_args()
    out = Path(a.out)
    runs = []
    for i, c in enumerate(a.kl_coefs):
        run = out / ("ppo" if i == 0 else f"ppo_kl{c:g}")
        m, secs = run_ppo(run, a.sft, a.reward, c, a.steps)
        runs.append({"kl_coef": c, "dir": str(run), "seconds": secs, **trajectory(run),
                     **{k: m[k] for k in ("eval/gold_reward", "eval/ref_gold_reward", "eval/kl_to_ref",
                                          "eval/win_rate_vs_ref", "eval/reward_model_score", "eval/eos_rate")}})
    dpo = []
    for p in sorted(out.glob("dpo*/metrics.json")):
        m = json.loads(p.read_text())
        beta = __import__("yaml").safe_load((p.parent / "config.yaml").read_text())["beta"]
        dpo.append({"beta": beta, **{k: m[k] for k in ("eval/gold_reward", "eval/kl_to_ref", "eval/win_rate_vs_ref")}})
    plot(out, runs, dpo)
    lines = ["# PPO on the tiny sentiment task", "",
             f"`OMP_NUM_THREADS=1 python benchmarks/pipelines/ppo_quality.py --sft {a.sft} --reward {a.reward} "
             f"--out {a.out} --kl-coefs {' '.join(f'{c:g}' for c in a.kl_coefs)} --steps {a.steps}`", "",
             "| kl_coef | SFT gold | PPO gold | win rate vs SFT | KL to SFT | RM score | EOS rate | sampling tok/s |"
             " rollout tok/s | update tok-passes/s | s/iter |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['kl_coef']:g} | {r['eval/ref_gold_reward']:.3f} | {r['eval/gold_reward']:.3f} | "
                     f"{r['eval/win_rate_vs_ref']:.3f} | {r['eval/kl_to_ref']:.2f} | "
                     f"{r['eval/reward_model_score']:.2f} | "
                     f"{r['eval/eos_rate']:.2f} | {r['generation_tokens_per_s']:.0f} | "
                     f"{r['rollout_tokens_per_s']:.0f} | "
                     f"{r['update_token_passes_per_s']:.0f} | {r['seconds_per_iteration']:.1f} |")
    lines += ["", "Evaluations (step: gold / RM score / KL / win rate):"]
    for r in runs:
        pts = "; ".join(f"{e['step']}: {e['eval/gold_reward']:.3f} / {e['eval/reward_model_score']:.2f} / "
                        f"{e['eval/kl_to_ref']:.1f} / {e.get('eval/win_rate_vs_ref', float('nan')):.2f}"
                        for e in r["evals"])
        lines.append(f"- kl_coef {r['kl_coef']:g}: {pts}")
        lines.append(f"  - over-optimisation: {overoptimisation(r['evals'])}")
    if dpo:
        lines += ["", "DPO (same SFT reference): " + "; ".join(
            f"beta {d['beta']:g}: gold {d['eval/gold_reward']:.3f}, KL {d['eval/kl_to_ref']:.1f}, "
            f"win {d['eval/win_rate_vs_ref']:.3f}" for d in dpo)]
    (out / "ppo_quality.md").write_text("\n".join(lines) + "\n")
    (out / "ppo_quality.json").write_text(json.dumps({"ppo": runs, "dpo": dpo}, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
