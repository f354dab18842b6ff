"""d3rlpy trains from a Minari tier `reins collect` wrote, next to `reins iql` on the same tier and budget.

Run with reins' venv (it drives both sides): `.venv/bin/python -m benchmarks.interop.d3rlpy_iql`. Steps:
1. `reins collect` writes the Pendulum-v1 medium-replay tier from the scripted controller (no training) into
   WORK/minari (MINARI_DATASETS_PATH), with reference scores from `ref_episodes` episodes.
2. `reins iql` trains on it (recipes/offline/iql-pendulum.yaml's settings: hidden 64x64, batch 256, expectile 0.7,
   beta 10, rewards x0.1, observations standardised; the actor-lr cosine is off, as d3rlpy's default has none) and
   evaluates the deterministic policy (eval/normalized_score at the end).
3. d3rlpy_iql_side.py, in .venv-bench-d3rlpy under `python -I -S` (benchmarks/interop/peer.py) with reins not
   importable (it checks), loads the
   tier with `minari.load_dataset`, trains d3rlpy's IQL with the same settings and budget, and evaluates in
   `recover_environment(eval_env=True)`, scored by `minari.get_normalized_score` (x 100).
Both use the same number of evaluation episodes; normalised scores are 100 (R - ref_min) / (ref_max - ref_min).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from benchmarks.interop.peer import fresh_workdir, peer_command

REPO = Path(__file__).resolve().parents[2]
SIDE = Path(__file__).with_name("d3rlpy_iql_side.py")
PREFIX = "interop/pendulum-scripted"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/interop-d3rlpy")
    ap.add_argument("--peer-python", default=str(REPO / ".venv-bench-d3rlpy" / "bin" / "python"))
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--eval-episodes", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default=None, help="default: WORK/results.json")
    a = ap.parse_args()
    work = fresh_workdir(a.work)
    env = {**os.environ, "MINARI_DATASETS_PATH": str(work / "minari"), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    reins = str(Path(sys.executable).with_name("reins"))

    def run(cmd: list[str]) -> None:
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, env=env, check=True)

    run([reins, "collect", f"output_dir={work / 'collect'}", "behaviour=scripted", "env_id=Pendulum-v1",
         f"dataset_prefix={PREFIX}", "tiers=[medium-replay]", "ref_episodes=10", "n_envs=8", "seed=0", "--quiet"])
    dataset = f"{PREFIX}/medium-replay-v0"
    collected = json.loads((work / "collect" / "metrics.json").read_text())
    hp = {"hidden": [64, 64], "batch": 256, "expectile": 0.7, "beta": 10.0, "reward_scale": 0.1}
    results = {"dataset": dataset, "collect": collected, "settings": {**vars(a), **hp}, "seeds": {}}
    for seed in a.seeds:
        out = work / f"iql-seed{seed}"
        run([reins, "iql", f"output_dir={out}", f"dataset={dataset}", f"seed={seed}", "device=cpu", "torch_threads=1",
             "hidden=[64,64]", "batch_size=256", "expectile=0.7", "beta=10.0", "reward_scale=0.1",
             "actor_cosine=false", f"max_steps={a.steps}", f"eval_every={a.steps}",
             f"eval_episodes={a.eval_episodes}", f"log_every={a.steps}", f"checkpoint_every={a.steps}", "--quiet"])
        ours = json.loads((out / "metrics.json").read_text())
        spec = work / f"d3rlpy-seed{seed}.spec.json"
        spec.write_text(json.dumps({"dataset": dataset, "steps": a.steps, "eval_episodes": a.eval_episodes,
                                    "seed": seed, **hp}))
        peer_out = work / f"d3rlpy-seed{seed}.json"
        print("$", a.peer_python, "-I -S", SIDE.name, spec.name, peer_out.name, flush=True)
        subprocess.run(peer_command(a.peer_python, SIDE, str(spec), str(peer_out)), cwd=REPO, env=env, check=True)
        peer = json.loads(peer_out.read_text())
        results["seeds"][seed] = {"reins": {k: ours.get(k) for k in ("eval/normalized_score", "eval/return_mean",
                                                                      "data/normalized_score")},
                                  "d3rlpy": peer}
        print(f"seed {seed}: reins iql normalised score {ours.get('eval/normalized_score'):.1f} "
              f"(return {ours.get('eval/return_mean'):.1f}); d3rlpy iql {peer['normalized_score']:.1f} "
              f"(return {peer['return_mean']:.1f}); data {ours.get('data/normalized_score')}", flush=True)
    path = Path(a.out) if a.out else work / "results.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
