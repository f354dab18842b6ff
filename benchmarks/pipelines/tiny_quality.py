"""Quality benchmark on the built-in sentiment task with the tiny model: SFT -> preferences -> RM -> DPO + beta sweep.

    OMP_NUM_THREADS=1 python benchmarks/pipelines/tiny_quality.py [--out runs/tiny] [--betas 0.05 0.1 0.3 1.0]

Runs the stages with the recipes in recipes/{sft,preferences,reward,dpo}/tiny.yaml (each stage is skipped when
its output_dir already holds a completed run), then DPO once per beta, and writes `<out>/quality.md` (tables),
`<out>/quality.json` and `<out>/dpo_beta_sweep.png` (gold reward vs KL to the SFT reference, the DPO paper's
Fig. 2 in miniature). Targets (issue 4): RM held-out accuracy >= 0.85; DPO eval/gold_reward >= +0.5 from the
SFT level with eval/win_rate_vs_ref >= 0.75.
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


def run_stage(mod, recipe: str, **overrides) -> tuple[dict, float]:
    from reins.config import load_config

    flat = {k: v for k, v in overrides.items()}
    cfg = load_config(mod.Config, ROOT / recipe, flat, stage=mod.__name__.rsplit(".", 1)[1])
    t = time.time()
    m = mod.train(cfg)
    return m, time.time() - t


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="runs/tiny")
    ap.add_argument("--betas", type=float, nargs="*", default=[0.05, 0.1, 0.3, 1.0])
    a = ap.parse_args()
    from pipelines import dpo, preferences, reward_model, sft

    out = Path(a.out)
    res: dict = {}
    sft_m, res["sft_s"] = run_stage(sft, "recipes/sft/tiny.yaml", output_dir=str(out / "sft"), quiet=True)
    model = str(out / "sft" / "model")
    pref_m, res["pref_s"] = run_stage(preferences, "recipes/preferences/tiny.yaml",
                                      output_dir=str(out / "preferences"), model=model, quiet=True)
    data = str(out / "preferences" / "data")
    rm_m, res["rm_s"] = run_stage(reward_model, "recipes/reward/tiny.yaml", output_dir=str(out / "reward"),
                                  model=model, data=data, quiet=True)
    sweep = []
    for beta in a.betas:
        name = "dpo" if beta == 0.1 else f"dpo_beta{beta:g}"
        m, secs = run_stage(dpo, "recipes/dpo/tiny.yaml", output_dir=str(out / name), model=model, data=data,
                            beta=beta, quiet=True)
        sweep.append({"beta": beta, "seconds": secs, **{k: m[k] for k in (
            "eval/gold_reward", "eval/ref_gold_reward", "eval/kl_to_ref", "eval/kl_to_ref_k3",
            "eval/win_rate_vs_ref", "eval/rewards/accuracies", "eval/eos_rate")}})
    res.update({"sft": sft_m, "preferences": pref_m, "reward": rm_m, "dpo_sweep": sweep})
    (out / "quality.json").write_text(json.dumps(res, indent=2))

    lines = ["# Tiny-model quality on the built-in sentiment task", "",
             f"- SFT: eval/gold_reward {sft_m['eval/gold_reward']:+.3f}, eval/loss {sft_m['eval/loss']:.3f} "
             f"({res['sft_s']:.0f} s)",
             f"- preferences: {pref_m['pairs/train']} train / {pref_m['pairs/test']} test pairs, "
             f"mean gold of samples {pref_m['samples/gold_mean']:+.3f} ({res['pref_s']:.0f} s)",
             f"- reward model: held-out accuracy {rm_m['eval/accuracy']:.3f} (target >= 0.85) ({res['rm_s']:.0f} s)",
             "", "| beta | gold reward (SFT ref) | KL to ref (k1) | KL (k3) | win rate vs SFT | pair acc | s |",
             "|---|---|---|---|---|---|---|"]
    for r in sweep:
        lines.append(f"| {r['beta']:g} | {r['eval/gold_reward']:+.3f} ({r['eval/ref_gold_reward']:+.3f}) | "
                     f"{r['eval/kl_to_ref']:.2f} | {r['eval/kl_to_ref_k3']:.2f} | {r['eval/win_rate_vs_ref']:.3f} | "
                     f"{r['eval/rewards/accuracies']:.3f} | {r['seconds']:.0f} |")
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    _plot_sweep(sweep, out / "dpo_beta_sweep.png")
    return 0


def _plot_sweep(sweep: list[dict], path: Path) -> None:
    """Gold reward against KL to the SFT reference, one point per beta (skipped without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    pts = sorted(sweep, key=lambda r: r["eval/kl_to_ref"])
    ax.plot([r["eval/kl_to_ref"] for r in pts], [r["eval/gold_reward"] for r in pts], "o-", label="DPO")
    for r in sweep:
        ax.annotate(f"β={r['beta']:g}", (r["eval/kl_to_ref"], r["eval/gold_reward"]), fontsize=8)
    ax.axhline(sweep[0]["eval/ref_gold_reward"], ls="--", c="gray", label="SFT")
    ax.set_xlabel("KL(π || π_SFT) per completion (nats)")
    ax.set_ylabel("gold reward (VADER)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
