"""`report.md` for a staged run: what ran with which config, final metrics as tables, samples, PNG plots.

Every number comes from the stages' own `metrics.json` and `log.jsonl`; nothing is computed here except
formatting and plotting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from reins.config import to_dict
from reins.runio import LOG_FILE, atomic_write_text, format_value

# Headline metrics, in the order the summary tables show them.
LM_KEYS = ("eval/gold_reward", "eval/kl_to_ref", "eval/win_rate_vs_ref", "eval/reward_model_score")
RM_KEYS = ("eval/accuracy", "eval/margin", "eval/loss")
OFFLINE_KEYS = ("eval/normalized_score", "eval/normalized_score_best", "eval/return_mean")
VR_KEYS = ("init/accuracy", "eval/accuracy", "init/reward", "eval/reward")   # grpo: accuracy on builtin:arithmetic
CURVE_KEYS = ("loss", "loss/policy", "eval/gold_reward", "eval/normalized_score", "eval/return_mean",
              "rewards/margins", "objective/rlhf_reward", "reward", "eval/accuracy", "train/episode_return")


def _read_log(out: Path) -> list[dict]:
    rows = []
    path = out / LOG_FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def _table(rows: list[list[str]], header: list[str]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_curves(stage_name: str, rows: list[dict], out_dir: Path) -> str | None:
    plt = _pyplot()
    keys = [k for k in CURVE_KEYS if any(isinstance(r.get(k), (int, float)) for r in rows)]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.suptitle(stage_name)
    fig.tight_layout()
    name = f"curves_{stage_name}.png"
    fig.savefig(out_dir / name, dpi=90)
    plt.close(fig)
    return name


def _plot_reward_vs_kl(points: list[tuple[str, float, float]], out_dir: Path) -> str | None:
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for name, kl, reward in points:
        ax.scatter([kl], [reward], label=name)
    ax.set_xlabel("eval/kl_to_ref (nats)")
    ax.set_ylabel("eval/gold_reward")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / "reward_vs_kl.png", dpi=90)
    plt.close(fig)
    return "reward_vs_kl.png"


def _plot_scores(bars: list[tuple[str, float]], out_dir: Path) -> str | None:
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(bars)), 3.5))
    ax.bar([b[0] for b in bars], [b[1] for b in bars])
    ax.set_ylabel("normalised score (x100)")
    ax.tick_params(axis="x", rotation=30)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_dir / "normalized_scores.png", dpi=90)
    plt.close(fig)
    return "normalized_scores.png"


def write_report(recipe: dict, stages: list, results: dict[str, dict]) -> Path:
    out_dir = Path(recipe["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# {recipe['name']}", "", "Every number below is read from the stages' `metrics.json` / `log.jsonl`.",
             "", "## Stages", ""]
    rows = []
    for s in stages:
        cfg = to_dict(s.config)
        state = "done" if s.name in results else "not run"
        rows.append([s.name, s.stage, f"`{cfg['output_dir']}`", state])
    lines += _table(rows, ["name", "stage", "output_dir", "state"])
    summary_lines, figs = _summary_tables(stages, results, out_dir)
    lines += summary_lines
    sample_lines, curves = _samples_and_curves(stages, out_dir)
    lines += sample_lines
    figs += curves
    if figs:
        lines += ["", "## Plots", ""] + [f"![{f}]({f})" for f in figs]
    lines += _final_metrics(stages, results)
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _summary_tables(stages: list, results: dict[str, dict], out_dir: Path) -> tuple[list[str], list[str]]:
    """The headline tables (LM policies, reward models, GRPO, offline RL) and the two summary plots' names."""
    lm_rows, rm_rows, vr_rows, off_rows, kl_points, bars = [], [], [], [], [], []
    for s in stages:
        m = results.get(s.name) or {}
        if any(k in m for k in LM_KEYS):
            lm_rows.append([s.name] + [format_value(m.get(k)) for k in LM_KEYS])
            _add_kl_point(kl_points, s.name, m)
        if s.stage == "grpo" and any(k in m for k in VR_KEYS):
            vr_rows.append([s.name] + [format_value(m.get(k)) for k in VR_KEYS])
        if s.stage == "reward" and any(k in m for k in RM_KEYS):
            rm_rows.append([s.name] + [format_value(m.get(k)) for k in RM_KEYS])
        if any(k in m for k in OFFLINE_KEYS):
            ds = to_dict(s.config).get("dataset", "")
            off_rows.append([s.name, str(ds)] + [format_value(m.get(k)) for k in OFFLINE_KEYS])
            if isinstance(m.get("eval/normalized_score"), (int, float)):
                bars.append((s.name, m["eval/normalized_score"]))
    lines = []
    for rows, title, header in (
            (lm_rows, "Language-model policies (gold judge)", ["stage"] + list(LM_KEYS)),
            (rm_rows, "Reward models (held-out pairs)", ["stage"] + list(RM_KEYS)),
            (vr_rows, "GRPO policies on their own reward functions (held-out prompts; init = before training)",
             ["stage"] + list(VR_KEYS)),
            (off_rows, "Offline RL (D4RL-style normalised scores)", ["stage", "dataset"] + list(OFFLINE_KEYS))):
        if rows:
            lines += ["", f"## {title}", ""] + _table(rows, header)
    figs = [name for name in (_plot_reward_vs_kl(kl_points, out_dir), _plot_scores(bars, out_dir)) if name]
    return lines, figs


def _add_kl_point(kl_points: list, name: str, m: dict) -> None:
    if isinstance(m.get("eval/kl_to_ref"), (int, float)) and isinstance(m.get("eval/gold_reward"), (int, float)):
        kl_points.append((name, m["eval/kl_to_ref"], m["eval/gold_reward"]))
        ref = m.get("eval/ref_gold_reward")
        if isinstance(ref, (int, float)) and not any(p[0] == "reference" for p in kl_points):
            kl_points.append(("reference", 0.0, ref))  # the policy the KL is measured to


def _samples_and_curves(stages: list, out_dir: Path) -> tuple[list[str], list[str]]:
    """The sample-completions section (first and last logged samples) and each stage's curve plot's name."""
    figs, samples = [], []
    for s in stages:
        out = Path(to_dict(s.config)["output_dir"])
        log = _read_log(out)
        curve = _plot_curves(s.name, log, out_dir) if log else None
        if curve:
            figs.append(curve)
        for r in log:
            items = r.get("samples", r.get("eval/samples"))
            if isinstance(items, list) and items:
                samples.append((s.name, r["step"], items))
    lines = []
    if samples:
        lines += ["", "## Sample completions (prompt, **completion**, gold-judge score or reward)", ""]
        for name, step, items in _first_and_last(samples):
            lines.append(f"**{name}, step {step}**")
            lines.append("")
            for item in items[:3]:
                lines.append(f"- {_sample_line(item)}")
            lines.append("")
    return lines, figs


def _final_metrics(stages: list, results: dict[str, dict]) -> list[str]:
    lines = ["", "## Final metrics per stage", ""]
    for s in stages:
        m = results.get(s.name)
        if not m:
            continue
        lines += [f"### {s.name}", ""]
        lines += _table([[k, format_value(v)] for k, v in sorted(m.items()) if not isinstance(v, (list, dict))],
                        ["metric", "value"])
        lines.append("")
    return lines


def _sample_line(item: Any) -> str:
    if isinstance(item, dict) and "completion" in item:
        key = "gold" if "gold" in item else "reward"   # grpo logs its reward functions' weighted sum
        value = item.get(key)
        score = f" ({key} {value:+.2f})" if isinstance(value, (int, float)) else ""
        prompt = item.get("prompt", "")
        if isinstance(prompt, list):  # conversational: the messages' text, not the list's repr
            prompt = " / ".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
        text = f"{prompt} **{item['completion'].strip()}**{score}"
        if isinstance(item.get("ref_completion"), str):  # the untouched reference on the same prompt
            ref = item.get("ref_gold")
            ref_score = f" (gold {ref:+.2f})" if isinstance(ref, (int, float)) else ""
            text += f"; reference: **{item['ref_completion'].strip()}**{ref_score}"
    else:
        text = item if isinstance(item, str) else json.dumps(item)
    return text.replace("\n", " ")


def _first_and_last(samples: list[tuple[str, int, list]]) -> list[tuple[str, int, list]]:
    """The first and last sample set of each stage: before/after training."""
    by_stage: dict[str, list] = {}
    for item in samples:
        by_stage.setdefault(item[0], []).append(item)
    out = []
    for items in by_stage.values():
        out.append(items[0])
        if len(items) > 1:
            out.append(items[-1])
    return out
