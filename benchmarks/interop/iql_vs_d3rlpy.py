"""reins IQL and d3rlpy 2.8.1 IQL on one Minari dataset, N seeds each, with one evaluation protocol.

Run with reins' venv (it drives both sides; d3rlpy runs in its own venv through peer.py, reins not importable):

  MINARI_DATASETS_PATH=../shared/datasets/minari nohup nice .venv/bin/python -m benchmarks.interop.iql_vs_d3rlpy \
      run --dataset sb3/hopper/medium-replay-v0 --seeds 0 1 2 --label after-sigmoid \
      --reins advantage_v=after log_std_param=sigmoid > runs/iql_vs_d3rlpy.log 2>&1 &
  .venv/bin/python -m benchmarks.interop.iql_vs_d3rlpy report --dataset sb3/hopper/medium-replay-v0 \
      --label after-sigmoid [--k 2]
  .venv/bin/python -m benchmarks.interop.iql_vs_d3rlpy trace --dataset sb3/hopper/medium-replay-v0 \
      --reins advantage_v=after log_std_param=sigmoid

`run`: for each seed, `reins iql` (WORK/<dataset>/reins-<label>/s<seed>, a run directory that resumes from its
checkpoint) and d3rlpy (WORK/<dataset>/d3rlpy-s<seed>.json, written when that seed ends); a seed whose result
exists is skipped, so a stopped batch continues where it stopped. Shared settings (../shared/datasets/README.md):
expectile 0.7, beta 3, max weight 100, batch 256, lr 3e-4 (actor cosine over the run), gamma 0.99, tau 0.005,
2 critics, [256, 256], standardised observations (eps 1e-3), rewards x 1000 / (max return - min return);
evaluation every --eval-every updates on --eval-episodes episodes reset with seeds 1_000_000 + 1000 seed + i,
deterministic actions, normalised by the dataset's reference scores (x 100).
`report`: per seed the last evaluation and the mean of the last K; per side mean and IQM; the difference of the
means (reins - d3rlpy) with a 95% percentile bootstrap CI (seeds resampled within each side).
`trace`: d3rlpy makes `--trace-steps` updates and records its initial weights, minibatches and losses; reins's
update then starts from the same weights on the same minibatches, and the largest weight difference is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.interop.peer import peer_command

REPO = Path(__file__).resolve().parents[2]
SIDE = Path(__file__).with_name("iql_vs_d3rlpy_side.py")
NETS = {"policy": ("_encoder._layers.0", "_encoder._layers.2", "_mu"),
        "value_func": ("_encoder._layers.0", "_encoder._layers.2", "_fc")}
Q_LAYERS = ("_encoder._layers.0", "_encoder._layers.2", "_fc")


def spec(args, seed: int) -> dict:
    return {"dataset": args.dataset, "hidden": [256, 256], "batch": 256, "gamma": 0.99, "tau": 0.005,
            "expectile": 0.7, "beta": 3.0, "max_weight": 100.0, "lr": 3e-4, "steps": args.steps,
            "eval_every": args.eval_every, "eval_episodes": args.eval_episodes, "seed": seed,
            "trace_steps": args.trace_steps}


def reins_command(args, seed: int, out: Path) -> list[str]:
    return [sys.executable, "-m", "reins.cli", "iql", f"dataset={args.dataset}", f"max_steps={args.steps}",
            f"eval_every={args.eval_every}", f"eval_episodes={args.eval_episodes}", f"seed={seed}",
            "hidden=[256,256]", "batch_size=256", "expectile=0.7", "beta=3.0", "max_weight=100", "gamma=0.99",
            "tau=0.005", "n_critics=2", "actor_lr=3e-4", "critic_lr=3e-4", "value_lr=3e-4", "actor_cosine=true",
            "normalize_obs=true", "normalize_reward=true", "torch_threads=1", f"checkpoint_every={args.eval_every}",
            "quiet=true", f"output_dir={out}", *args.reins]


def work_dir(args) -> Path:
    return Path(args.work) / args.dataset.replace("/", "-")


def run(args) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    root = work_dir(args)
    for seed in args.seeds:
        out = root / f"reins-{args.label}" / f"s{seed}"
        if args.side in ("both", "reins") and not (out / "metrics.json").exists():
            print(f"reins seed {seed} -> {out}", flush=True)
            subprocess.run(reins_command(args, seed, out), check=True, env=env)
        res = root / f"d3rlpy-s{seed}.json"
        if args.side in ("both", "d3rlpy") and not res.exists():
            print(f"d3rlpy seed {seed} -> {res}", flush=True)
            root.mkdir(parents=True, exist_ok=True)
            spec_path = root / f"d3rlpy-s{seed}.spec.json"
            spec_path.write_text(json.dumps(spec(args, seed)))
            tmp = res.with_suffix(".partial")
            subprocess.run(peer_command(args.peer_python, SIDE, "train", str(spec_path), str(tmp)), check=True,
                           env={**env, "PYTHONPATH": ""})
            tmp.rename(res)


def reins_scores(run_dir: Path) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r["eval/normalized_score"] for r in rows if "eval/normalized_score" in r]


def collect(args) -> dict[str, dict[int, list[float]]]:
    root = work_dir(args)
    out: dict[str, dict[int, list[float]]] = {"reins": {}, "d3rlpy": {}}
    for d in sorted((root / f"reins-{args.label}").glob("s*")):
        if (d / "metrics.json").exists():
            out["reins"][int(d.name[1:])] = reins_scores(d)
    for f in sorted(root.glob("d3rlpy-s*.json")):
        if not f.name.endswith(".spec.json"):
            evals = json.loads(f.read_text())["evals"]
            out["d3rlpy"][int(f.stem.split("-s")[1])] = [e["normalized_score"] for e in evals]
    return out


def diff_ci(a: np.ndarray, b: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap CI of mean(a) - mean(b), resampling each side's seeds independently."""
    rng = np.random.default_rng(seed)
    da = a[rng.integers(0, a.size, (n_boot, a.size))].mean(1)
    db = b[rng.integers(0, b.size, (n_boot, b.size))].mean(1)
    lo, hi = np.quantile(da - db, [0.025, 0.975])
    return float(lo), float(hi)


def report(args) -> dict:
    from offline.evaluate import iqm

    scores, summary = collect(args), {}
    for side, per_seed in scores.items():
        if not per_seed:
            continue
        last = np.array([s[-1] for s in per_seed.values()])
        lastk = np.array([np.mean(s[-args.k:]) for s in per_seed.values()])
        summary[side] = {"seeds": sorted(per_seed), "last": last.round(1).tolist(), "last_mean": float(last.mean()),
                         f"last{args.k}": lastk.round(1).tolist(), f"last{args.k}_mean": float(lastk.mean()),
                         "last_iqm": iqm(last), f"last{args.k}_iqm": iqm(lastk), "lastk_values": lastk}
        print(f"{side:7s} seeds {sorted(per_seed)}  last {last.round(1).tolist()} mean {last.mean():.1f} "
              f"IQM {iqm(last):.1f} | mean of last {args.k}: {lastk.round(1).tolist()} mean {lastk.mean():.1f} "
              f"IQM {iqm(lastk):.1f}")
    if "reins" in summary and "d3rlpy" in summary:
        a, b = summary["reins"].pop("lastk_values"), summary["d3rlpy"].pop("lastk_values")
        lo, hi = diff_ci(a, b)
        summary["diff"] = {"mean": float(a.mean() - b.mean()), "ci95": [lo, hi]}
        print(f"reins - d3rlpy, mean of the last {args.k}: {a.mean() - b.mean():+.1f}  95% bootstrap CI "
              f"[{lo:+.1f}, {hi:+.1f}]")
    for side in summary.values():
        side.pop("lastk_values", None)
    return summary


def _copy_mlp(seq, sd: dict, names: tuple[str, ...], to_d3: bool) -> None:
    import torch

    linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
    for m, n in zip(linears, names, strict=True):
        for p in ("weight", "bias"):
            if to_d3:
                sd[f"{n}.{p}"] = getattr(m, p).detach().clone()
            else:
                getattr(m, p).data.copy_(sd[f"{n}.{p}"])


def _copy_q(ens, sd: dict, to_d3: bool) -> None:
    for layer, n in zip(ens.layers, Q_LAYERS, strict=True):
        for e in range(ens.n):
            if to_d3:  # reins keeps [in, out] per member, d3rlpy's nn.Linear [out, in]
                sd[f"{e}.{n}.weight"] = layer.weight[e].detach().T.clone()
                sd[f"{e}.{n}.bias"] = layer.bias[e, 0].detach().clone()
            else:
                layer.weight.data[e].copy_(sd[f"{e}.{n}.weight"].T)
                layer.bias.data[e, 0].copy_(sd[f"{e}.{n}.bias"])


def _sync(agent, state: dict, to_d3: bool) -> dict:
    """Copy d3rlpy-named weights into reins's IQL (to_d3=False) or reins's weights out under d3rlpy's names."""
    out = {k: {} for k in state} if to_d3 else state
    _copy_mlp(agent.actor.net, out["policy"], NETS["policy"], to_d3)
    _copy_mlp(agent.value.net, out["value_func"], NETS["value_func"], to_d3)
    if to_d3:
        out["policy"]["_logstd"] = agent.actor.log_std.detach()[None].clone()
    else:
        agent.actor.log_std.data.copy_(state["policy"]["_logstd"][0])
    _copy_q(agent.critic, out["q_funcs"], to_d3)
    _copy_q(agent.critic_target, out["targ_q_funcs"], to_d3)
    return out


def trace(args) -> dict:
    import torch

    from offline import iql
    from reins.config import from_dict, parse_overrides

    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out = Path(tmp) / "spec.json", Path(tmp) / "trace.pt"
        spec_path.write_text(json.dumps(spec(args, 0)))
        subprocess.run(peer_command(args.peer_python, SIDE, "trace", str(spec_path), str(out)), check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""})
        t = torch.load(out)
    cfg = from_dict(iql.Config, {"max_steps": args.steps, "normalize_reward": True, **parse_overrides(args.reins)})
    agent = iql.IQL(cfg, t["batches"][0]["observations"].shape[1], t["batches"][0]["actions"].shape[1],
                    torch.device("cpu"))
    _sync(agent, t["init"], to_d3=False)
    loss_diff = 0.0
    for b, ref in zip(t["batches"], t["losses"]):
        got = agent.update({k: v.squeeze(-1) if k in ("rewards", "terminals") else v for k, v in b.items()})
        loss_diff = max(loss_diff, abs(float(got["loss/actor"]) - ref["actor_loss"]),
                        abs(float(got["loss/q"]) - ref["q_loss"]), abs(float(got["loss/value"]) - ref["v_loss"]))
    mine = _sync(agent, t["final"], to_d3=True)
    res = {"steps": len(t["batches"]), "max_loss_diff": loss_diff}
    for k, ref in t["final"].items():
        res[k] = {"max_abs_diff": max(float((ref[n] - mine[k][n]).abs().max()) for n in ref),
                  "max_abs_moved": max(float((ref[n] - t["init"][k][n]).abs().max()) for n in ref)}
    print(json.dumps(res, indent=1))
    return res


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["run", "report", "trace"])
    ap.add_argument("--dataset", required=True, help="Minari dataset id under $MINARI_DATASETS_PATH")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--label", default="default", help="names reins's runs (one label per set of --reins keys)")
    ap.add_argument("--reins", nargs="*", default=[], help="extra reins iql key=value settings")
    ap.add_argument("--side", choices=["both", "reins", "d3rlpy"], default="both")
    ap.add_argument("--steps", type=int, default=30_000)
    ap.add_argument("--eval-every", type=int, default=5000)
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--k", type=int, default=2, help="report: mean of the last K evaluations")
    ap.add_argument("--trace-steps", type=int, default=20)
    ap.add_argument("--work", default="runs/iql_vs_d3rlpy")
    ap.add_argument("--peer-python", default=str(REPO / ".venv-bench-d3rlpy" / "bin" / "python"))
    ap.add_argument("--json", default=None, help="report/trace: also write the result here")
    args = ap.parse_args(argv)
    res = {"run": run, "report": report, "trace": trace}[args.command](args)
    if args.json and res is not None:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
