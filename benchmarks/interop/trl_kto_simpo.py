"""reins' KTO and SimPO against TRL 1.16's KTOTrainer and CPOTrainer(loss_type="simpo") on one tiny model and data.

Run with reins' venv (it drives both sides): `.venv/bin/python -m benchmarks.interop.trl_kto_simpo
--peer-python /work/venv-trl/bin/python`. Steps:
1. The tiny Llama (reins' `tiny`, seed 0) is saved as the reference; the policy is the same model with every
   weight moved by seeded Gaussian noise (std 0.02), so policy and reference differ (KTO's log-ratios and its
   KL estimate are not 0) and both are plain HF model directories (the chat template saved with them).
2. The built-in sentiment task becomes TRL-format JSONL: unpaired rows (prompt, completion, label; chosen and
   rejected alternating) standard and conversational, and the pairs (prompt, chosen, rejected) for SimPO.
3. `reins kto` (ref_model = the reference, shuffle=false: TRL's sequential sampler) and `reins dpo
   loss_type=simpo` train on them; trl_kto_simpo_side.py trains TRL on the same directories and files under
   `python -I -S` with reins not importable. Batch = the whole file, one process, fp32 CPU, constant lr, no
   weight decay, max grad norm 1; KTO's mismatched pairs are then the same rotation on both sides.
Prints the step-1 metrics of both with their differences, and the loss per step, and writes them to --out.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from benchmarks.interop.peer import fresh_workdir, offline_env, peer_command

REPO = Path(__file__).resolve().parents[2]
SIDE = Path(__file__).with_name("trl_kto_simpo_side.py")
# metrics whose step-1 values both sides report with one definition
KTO_KEYS = ("loss", "kl", "rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected")
SIMPO_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "nll_loss")


def make_models(work: Path, seed: int = 0) -> tuple[Path, Path]:
    """(policy dir, reference dir): reins' tiny model and a noised copy, saved with the chat template."""
    import torch

    from pipelines.models import ModelArgs, load_causal_lm, load_tokenizer, mark_chat_trained, save_model

    args = ModelArgs()
    tok = load_tokenizer(args)
    mark_chat_trained(tok)  # the conversational file is rendered with it on both sides
    model = load_causal_lm(args, tok, seed=seed, trainable=False)
    save_model(model, tok, work / "reference")
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    save_model(model, tok, work / "policy")
    return work / "policy", work / "reference"


def write_data(work: Path, n_rows: int, seed: int) -> dict[str, Path]:
    from pipelines.reward_model import builtin_pairs

    pairs = builtin_pairs(2 * n_rows, seed, "train")[: n_rows // 2]  # it may give fewer than asked for
    assert len(pairs) == n_rows // 2, f"the built-in task gave {len(pairs)} pairs, not {n_rows // 2}"
    rows = [{"prompt": p["prompt"], "completion": p[k], "label": k == "chosen"} for p in pairs
            for k in ("chosen", "rejected")]
    out = {"kto-standard": work / "kto-standard.jsonl", "kto-conversational": work / "kto-conversational.jsonl",
           "simpo": work / "pairs.jsonl"}
    out["kto-standard"].write_text("".join(json.dumps(r) + "\n" for r in rows))
    out["kto-conversational"].write_text("".join(json.dumps(
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "completion": [{"role": "assistant", "content": r["completion"]}], "label": r["label"]}) + "\n"
        for r in rows))
    out["simpo"].write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return out


def reins_rows(run: Path) -> list[dict]:
    return [r for r in (json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip())
            if "loss" in r and "step" in r]


def run_pair(work: Path, name: str, data: Path, policy: Path, reference: Path, a, peer_python: str) -> dict:
    """One comparison: reins' run and TRL's on `data`; returns both logs."""
    n = sum(1 for _ in data.open())
    common = [f"model={policy}", f"data={data}", f"beta={a.beta}", f"learning_rate={a.lr}", "lr_scheduler=constant",
              f"batch_size={n}", f"max_steps={a.steps}", f"max_length={a.max_length}", "log_every=1",
              f"save_every={a.steps}", "eval_prompts=none", f"seed={a.seed}", "cpu=true", "weight_decay=0.0",
              "max_grad_norm=1.0", "shuffle=false", "--quiet"]
    run = work / f"reins-{name}"
    if name.startswith("kto"):
        argv = ["kto", f"output_dir={run}", f"ref_model={reference}", *common]
    else:
        argv = ["dpo", f"output_dir={run}", "loss_type=simpo", f"simpo_gamma={a.simpo_gamma}",
                f"rpo_alpha={a.cpo_alpha}", *common]
    subprocess.run([sys.executable, "-m", "reins.cli", *argv], cwd=REPO, env=offline_env(PYTHONPATH=str(REPO)),
                   check=True)
    spec = work / f"trl-{name}.spec.json"
    spec.write_text(json.dumps({"trainer": "kto" if name.startswith("kto") else "simpo", "model_dir": str(policy),
                                "ref_dir": str(reference), "data": str(data), "beta": a.beta, "lr": a.lr,
                                "batch": n, "steps": a.steps, "max_length": a.max_length, "seed": a.seed,
                                "simpo_gamma": a.simpo_gamma, "cpo_alpha": a.cpo_alpha, "desirable_weight": 1.0,
                                "undesirable_weight": 1.0}))
    out = work / f"trl-{name}.json"
    subprocess.run(peer_command(peer_python, SIDE, str(spec), str(out)), cwd=work, env=offline_env(), check=True)
    peer = json.loads(out.read_text())
    return {"reins": reins_rows(run), "trl": peer["rows"], "versions": peer["versions"], "rows": n}


def step1_diffs(result: dict, keys: tuple[str, ...]) -> dict[str, tuple[float, float, float]]:
    """key -> (reins, TRL, |difference|) at step 1, for the keys both logged."""
    ours = next(r for r in result["reins"] if r["step"] == 1)
    theirs = next(r for r in result["trl"] if r["step"] == 1)
    return {k: (ours[k], theirs[k], abs(ours[k] - theirs[k])) for k in keys if k in ours and k in theirs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/interop-trl-kto-simpo")
    ap.add_argument("--peer-python", default=str(REPO / ".venv-bench" / "bin" / "python"))
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--simpo-gamma", type=float, default=0.5)
    ap.add_argument("--cpo-alpha", type=float, default=0.0, help="SimPO's NLL weight (TRL cpo_alpha = reins rpo_alpha)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="default: WORK/results.json")
    a = ap.parse_args()
    work = fresh_workdir(a.work)
    policy, reference = make_models(work, a.seed)
    results = {"settings": vars(a), "runs": {}}
    for name, data in write_data(work, a.rows, a.seed).items():
        res = run_pair(work, name, data, policy, reference, a, a.peer_python)
        res["step1"] = step1_diffs(res, KTO_KEYS if name.startswith("kto") else SIMPO_KEYS)
        results["runs"][name] = res
        print(f"\n{name} ({res['rows']} rows), step 1: metric  reins  TRL  |diff|")
        for k, (o, t, d) in res["step1"].items():
            print(f"  {k:<20} {o: .8f} {t: .8f} {d:.1e}")
        by_step = {r["step"]: r["loss"] for r in res["trl"]}
        print("  loss per step (reins / TRL): " + ", ".join(
            f"{r['step']}: {r['loss']:.6f} / {by_step.get(r['step'], float('nan')):.6f}" for r in res["reins"]))
    out = Path(a.out) if a.out else work / "results.json"
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
