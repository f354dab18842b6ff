"""Run every side-by-side benchmark and write benchmarks/results/<date>.json and .md (`make bench`).

    python -m benchmarks.run_all [--size small|full] [--only sac,iql,...] [--threads N] [--device cpu|cuda]
                                 [--no-install] [--blocks K] [--block-steps S]

Peers live in their own virtual environments, created here on first use from benchmarks/requirements-*.txt
(.venv-bench: TRL + Stable-Baselines3; .venv-bench-d3rlpy: d3rlpy, which pins gymnasium 1.0.0). Our side runs
with this interpreter (the project venv). Each comparison starts one worker per side and times them in
alternating blocks (benchmarks/common.py explains the protocol); a comparison whose peer cannot run still
reports our numbers, with the reason in the notes. Nothing here is a test: no number is asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import (
    REPO,
    RESULTS_DIR,
    Side,
    load_average,
    machine_info,
    markdown_table,
    matmul_gflops,
    ratio_bound,
    run_interleaved,
    thread_env,
    throughput,
    write_results,
)

BENCHMARKS = {  # short name -> module under benchmarks.peers
    "sac": "sac_vs_sb3",
    "iql_cql": "iql_cql_vs_d3rlpy",
    "dpo_rm": "dpo_rm_vs_trl",
    "ppo": "ppo_rlhf_throughput",
}
VENVS = {  # name -> (directory, requirements file)
    "bench": (REPO / ".venv-bench", REPO / "benchmarks" / "requirements-bench.txt"),
    "d3rlpy": (REPO / ".venv-bench-d3rlpy", REPO / "benchmarks" / "requirements-bench-d3rlpy.txt"),
}


def ensure_venv(name: str, install: bool) -> str | None:
    """The python of peer venv `name`, creating it when missing or older than its requirements file."""
    root, req = VENVS[name]
    py, stamp = root / "bin" / "python", root / ".installed"
    if stamp.exists() and stamp.stat().st_mtime >= req.stat().st_mtime:
        return str(py)
    if not install:
        return str(py) if py.exists() else None
    print(f"[bench] installing {root.name} from {req.name} (a few minutes the first time)", flush=True)
    pip = [str(py), "-m", "pip", "install", "--quiet"]
    base = getattr(sys, "_base_executable", sys.executable)  # the interpreter this venv was made from
    steps = [[base, "-m", "venv", str(root)]] if not py.exists() else []
    steps += [pip + ["--upgrade", "pip"], pip + ["torch==2.13.0"], pip + ["-r", str(req)],
              pip + ["-e", str(REPO), "--no-deps"]]
    for cmd in steps:
        if subprocess.run(cmd, cwd=REPO).returncode != 0:
            print(f"[bench] {root.name}: `{' '.join(cmd)}` failed; its peers are skipped", flush=True)
            return None
    stamp.touch()
    return str(py)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def run_comparison(cmp: dict, workdir: Path, python_ours: str, python_peer: str | None, ceilings: dict,
                   args, cpu_ceilings: dict | None = None) -> tuple[dict, dict]:
    spec = cmp["spec"]
    blocks = args.blocks or cmp["blocks"]
    block_steps = args.block_steps or cmp["block_steps"]
    spec.update(blocks=blocks, block_steps=block_steps)
    safe = spec["name"].replace("/", "_")
    spec_path = workdir / f"{safe}.spec.json"
    spec_path.write_text(json.dumps(spec))
    module = f"benchmarks.peers.{cmp['module']}"
    env = {**thread_env(spec["threads"]), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(workdir / "hf"), "WANDB_DISABLED": "true", "PYTHONUNBUFFERED": "1"}
    if spec.get("device", "cpu") == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    sides = [Side("reins", python_ours, module, "ours", str(spec_path), str(workdir / f"{safe}.ours.json"),
                  str(workdir / f"{safe}.ours.log"), env)]
    if cmp.get("peer") and python_peer:
        sides.append(Side(cmp["peer"], python_peer, module, "peer", str(spec_path),
                          str(workdir / f"{safe}.peer.json"), str(workdir / f"{safe}.peer.log"), env))
    la0 = load_average()
    finals = run_interleaved(sides, blocks=blocks, block_steps=block_steps)
    ceiling = ceilings[spec["threads"]]
    cpu_ceiling = (cpu_ceilings or {}).get(spec["threads"])
    tp = [throughput(f, cmp["items_per_step"]) for f in finals]

    def frac(f, t, rate="steps_per_s"):  # wall rate / wall ceiling, or (rate="steps_per_cpu_s") CPU-time rates
        fl, c = f.get("flops_per_step"), ceiling if rate == "steps_per_s" else cpu_ceiling
        return 100.0 * fl * t[rate] / (c * 1e9) if fl and c and t.get(rate) else None

    mod = importlib.import_module(module)
    if hasattr(mod, "make_rows"):  # a benchmark without a peer reports its own rows (e.g. PPO phases)
        rows = mod.make_rows(cmp, finals, ceiling)
    else:
        row = {"benchmark": spec["name"], "size": cmp["size_desc"], "unit": cmp["unit"],
               "ours": tp[0]["items_per_s"], "target": f">= {cmp['target']}x" if cmp.get("target") else None,
               "loss_ours": finals[0].get("final_loss"), "rss_ours_mb": finals[0].get("peak_rss_mb"),
               "gflop_per_step": (finals[0].get("flops_per_step") or 0) / 1e9 or None,
               "ceiling_frac_ours": frac(finals[0], tp[0]),
               "ceiling_frac_cpu_ours": frac(finals[0], tp[0], "steps_per_cpu_s")}
        if len(finals) > 1:
            row.update({"peer": tp[1]["items_per_s"], "ratio": ratio(tp[0]["items_per_s"], tp[1]["items_per_s"]),
                        "ratio_cpu": ratio(tp[0]["steps_per_cpu_s"], tp[1]["steps_per_cpu_s"]),
                        "loss_peer": finals[1].get("final_loss"), "rss_peer_mb": finals[1].get("peak_rss_mb"),
                        "gflop_per_step_peer": (finals[1].get("flops_per_step") or 0) / 1e9 or None,
                        "ceiling_frac_peer": frac(finals[1], tp[1]),
                        "ceiling_frac_cpu_peer": frac(finals[1], tp[1], "steps_per_cpu_s"),
                        "ratio_bound": ratio_bound(finals[0].get("flops_per_step"), tp[1]["steps_per_s"], ceiling)})
        rows = [row]
    detail = {"spec": spec, "blocks": blocks, "block_steps": block_steps, "load_average_before": la0,
              "load_average_after": load_average(), "ceiling_gflops": ceiling, "cpu_ceiling_gflops": cpu_ceiling,
              "sides": [{"label": s.label, "throughput": t, **f} for s, t, f in zip(sides, tp, finals)],
              "extra": cmp.get("extra", {})}
    return rows, detail


def _parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["small", "full", "135m"], default="full",
                    help="135m: SmolLM2-135M SFT/RM/DPO, LoRA and full (dpo_rm only; needs `reins fetch-model`)")
    ap.add_argument("--only", default="", help=f"comma list of {', '.join(BENCHMARKS)}")
    ap.add_argument("--threads", type=int, default=0, help="threads per side (0: each benchmark's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--blocks", type=int, default=0)
    ap.add_argument("--block-steps", type=int, default=0)
    ap.add_argument("--no-install", action="store_true", help="do not create missing peer venvs")
    ap.add_argument("--out-dir", default=str(RESULTS_DIR))
    ap.add_argument("--suffix", default="",
                    help="results file name: <date><suffix>.json/.md (e.g. --suffix=-steps-135m)")
    ap.add_argument("--keep-workdir", action="store_true")
    ap.add_argument("--note", action="append", default=[], help="a line for the results' notes (repeatable)")
    args = ap.parse_args(argv)
    names = [n for n in (args.only.split(",") if args.only else BENCHMARKS) if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; known: {', '.join(BENCHMARKS)}")
    return args, names


def _peer_python(cmp: dict, args, venv_py: dict[str, str | None], notes: list[str]) -> str | None:
    """The peer venv's python for a comparison that has a peer (made once per venv), else None."""
    if not cmp.get("peer"):
        return None
    venv = cmp["venv"]
    if venv not in venv_py:
        venv_py[venv] = ensure_venv(venv, not args.no_install)
    if venv_py[venv] is None:
        notes.append(f"{cmp['spec']['name']}: peer venv '{venv}' unavailable; reins measured alone")
    return venv_py[venv]


def _run_benchmark(name: str, args, workdir: Path, ceilings: dict, venv_py: dict, notes: list[str],
                   rows: list[dict], details: list[dict], cpu_ceilings: dict | None = None) -> None:
    """Every comparison of one benchmark module; rows, details and notes are appended to."""
    mod = importlib.import_module(f"benchmarks.peers.{BENCHMARKS[name]}")
    default_threads = getattr(mod, "THREADS", 1)
    threads = args.threads or (os.cpu_count() if default_threads == "all" else default_threads)
    try:
        cmps = mod.prepare(args.size, workdir, threads, args.device)
    except Exception as e:  # noqa: BLE001 - one broken benchmark must not hide the others
        notes.append(f"{name}: preparation failed: {type(e).__name__}: {e}")
        traceback.print_exc()
        return
    for cmp in cmps:
        cmp["module"] = BENCHMARKS[name]
        t = cmp["spec"]["threads"]
        if t not in ceilings:
            ceilings[t] = matmul_gflops(threads=t, device=args.device)
            print(f"[bench] matmul ceiling at {t} thread(s): {ceilings[t]:.1f} GFLOP/s", flush=True)
            if cpu_ceilings is not None and args.device == "cpu":  # per CPU second: what a core gives when it runs
                cpu_ceilings[t] = matmul_gflops(threads=t, clock=time.process_time)
                print(f"[bench] ... per CPU second: {cpu_ceilings[t]:.1f} GFLOP/s", flush=True)
        py_peer = _peer_python(cmp, args, venv_py, notes)
        print(f"[bench] {cmp['spec']['name']} ({cmp['size_desc']}, {t} thread(s))", flush=True)
        t0 = time.perf_counter()
        try:
            new_rows, detail = run_comparison(cmp, workdir, sys.executable, py_peer, ceilings, args, cpu_ceilings)
        except Exception as e:  # noqa: BLE001
            notes.append(f"{cmp['spec']['name']}: failed: {type(e).__name__}: {str(e)[:2000]}")
            traceback.print_exc()
            continue
        detail["wall_s"] = time.perf_counter() - t0
        rows += new_rows
        details.append(detail)
        notes += [f"{cmp['spec']['name']}: {n}" for n in cmp.get("notes", [])]
        print("\n".join(markdown_table(new_rows).splitlines()[2:]), flush=True)


def main(argv=None) -> int:
    args, names = _parse_args(argv)
    started = dt.datetime.now()
    machine = machine_info()
    workdir = Path(tempfile.mkdtemp(prefix="reins-bench-"))
    rows, details, notes, ceilings, cpu_ceilings = [], [], list(args.note), {}, {}
    venv_py: dict[str, str | None] = {}
    for name in names:
        _run_benchmark(name, args, workdir, ceilings, venv_py, notes, rows, details, cpu_ceilings)
    report = {"started": started.isoformat(timespec="seconds"), "size": args.size, "device": args.device,
              "threads": sorted(ceilings) or None, "machine": machine, "load_average_end": load_average(),
              "ceiling_gflops": max(ceilings.values()) if ceilings else None, "ceilings_by_threads": ceilings,
              "cpu_ceilings_by_threads": cpu_ceilings,
              "ceiling_desc": "best fp32 1024x1024 matmul; by thread count: "
                              + ", ".join(f"{t} -> {g:.1f}" for t, g in sorted(ceilings.items()))
                              + "".join(f"; per CPU second at {t}: {g:.1f}" for t, g in sorted(cpu_ceilings.items())),
              "details": details, "notes": notes}
    jpath, mpath = write_results(report, rows, directory=Path(args.out_dir), when=started, notes=notes,
                                 suffix=args.suffix)
    print(mpath.read_text())
    print(f"[bench] wrote {jpath} and {mpath}" + (f"; worker logs in {workdir}" if args.keep_workdir else ""))
    if not args.keep_workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
