"""Shared pieces of the side-by-side benchmarks: threads, memory, FLOPs, the matmul ceiling, the interleaved
block protocol between the driver and the worker processes, and the results writer.

How one comparison runs (driver = run_all in the project venv; workers = one process per side, each in its own
venv, started from the repository root as `python -m benchmarks.peers.<name> --side ours|peer --spec FILE`):

1. Both workers build their model/data from the same spec (same sizes, batch, sequence lengths, threads),
   run `warmup` untimed steps, and print `ready`.
2. The driver then asks them in turn for blocks of `block_steps` steps, in the order A B B A A B ... (an
   ABBA schedule, so a slow drift of the machine's load hits both sides alike). While one side runs, the other
   blocks on its stdin and uses no CPU. Each block is timed inside the worker, from the command's arrival to
   the end of its last step (device-synchronised).
3. `stop`: each worker prints its final record (last-block mean loss, peak memory, FLOPs per step, library
   versions) and writes it to its --out JSON file.

Protocol lines are prefixed with PREFIX so library output on stdout cannot be mistaken for them.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import queue
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "@@BENCH "
REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


# ------------------------------------------------------------------------------------------ threads, memory
def thread_env(threads: int) -> dict[str, str]:
    """Environment variables that cap every BLAS/OpenMP pool at `threads` (set before torch is imported)."""
    t = str(int(threads))
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "NUMEXPR_NUM_THREADS": t,
            "TOKENIZERS_PARALLELISM": "false"}


def pin_threads(threads: int) -> None:
    """torch.set_num_threads(threads) and one inter-op thread, so both sides use exactly the same pool."""
    import torch

    torch.set_num_threads(int(threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set, or parallel work has started: the intra-op count is what matters
        pass


def rss_mb() -> float:
    """Current resident set size of this process (MiB), from /proc; 0 where /proc is missing."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cuda_peak_mb() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def sync(device: str = "cpu") -> None:
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------ FLOPs
def linear_flops(rows: int, fan_in: int, fan_out: int) -> int:
    """Forward multiply-adds of x[rows, fan_in] @ W[fan_in, fan_out], counted as 2 FLOPs each (bias ignored)."""
    return 2 * rows * fan_in * fan_out


def mlp_forward_flops(rows: int, dims: list[int], members: int = 1) -> int:
    """Forward matmul FLOPs of an MLP with layer widths `dims` (input, hidden..., output), `members` copies
    (an ensemble of twin critics is members=2)."""
    return members * sum(linear_flops(rows, a, b) for a, b in zip(dims[:-1], dims[1:]))


def mlp_train_flops(rows: int, dims: list[int], members: int = 1, *, input_grad: bool = False) -> int:
    """Forward + backward matmul FLOPs of one MLP pass: backward costs one weight-gradient matmul per layer
    and one input-gradient matmul per layer except the first (unless `input_grad`, e.g. an actor loss
    that differentiates the critic with respect to its action input)."""
    fwd = mlp_forward_flops(rows, dims, members)
    weight_grad = fwd
    layers = list(zip(dims[:-1], dims[1:]))
    in_grad = members * sum(linear_flops(rows, a, b) for i, (a, b) in enumerate(layers) if i > 0 or input_grad)
    return fwd + weight_grad + in_grad


def transformer_forward_flops(batch: int, seq: int, *, hidden: int, layers: int, intermediate: int, vocab: int,
                              kv_hidden: int | None = None, gated_mlp: bool = True, lm_head: bool = True) -> int:
    """Forward matmul FLOPs of a decoder-only (Llama-style) transformer on a [batch, seq] block of tokens.

    Per layer: q and o projections (hidden x hidden), k and v (hidden x kv_hidden), attention scores and the
    weighted sum (2 x seq x seq x hidden, full square: eager and SDPA kernels compute the masked half too),
    and the MLP (3 matrices hidden x intermediate when gated, else 2). Plus the LM head (hidden x vocab).
    """
    kv = hidden if kv_hidden is None else kv_hidden
    t = batch * seq
    proj = linear_flops(t, hidden, hidden) * 2 + linear_flops(t, hidden, kv) * 2
    attn = 2 * 2 * batch * seq * seq * hidden
    mlp = linear_flops(t, hidden, intermediate) * (3 if gated_mlp else 2)
    head = linear_flops(t, hidden, vocab) if lm_head else 0
    return layers * (proj + attn + mlp) + head


def count_flops(fn, *args, **kwargs) -> tuple[int, Any]:
    """(FLOPs torch counts while running fn(*args, **kwargs), fn's result): matmuls, convolutions and
    attention kernels, forward and backward (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn(*args, **kwargs)
    return int(counter.get_total_flops()), out


def matmul_gflops(*, n: int = 1024, threads: int | None = None, repeats: int = 20, dtype: str = "float32",
                  device: str = "cpu", min_seconds: float = 0.3, clock=time.perf_counter) -> float:
    """The machine's practical ceiling: the best GFLOP/s of an n x n @ n x n matmul (2 n^3 FLOPs) over
    `repeats` timed rounds (each at least `min_seconds` long, after a warm-up). `clock=time.process_time` (CPU)
    times this process's own CPU seconds, the rate a core gives it while it runs, however loaded the machine."""
    import torch

    if threads:
        pin_threads(threads)
    dt = getattr(torch, dtype)
    a = torch.randn(n, n, dtype=dt, device=device)
    b = torch.randn(n, n, dtype=dt, device=device)
    out = torch.empty(n, n, dtype=dt, device=device)
    for _ in range(3):
        torch.mm(a, b, out=out)
    sync(device)
    t0 = clock()
    torch.mm(a, b, out=out)
    sync(device)
    one = max(clock() - t0, 1e-9)
    inner = max(1, int(min_seconds / one))
    best = 0.0
    for _ in range(repeats):
        t0 = clock()
        for _ in range(inner):
            torch.mm(a, b, out=out)
        sync(device)
        best = max(best, 2.0 * n**3 * inner / max(clock() - t0, 1e-9) / 1e9)
    return best


# ------------------------------------------------------------------------------------------ machine
def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "load_average": load_average()}


# ------------------------------------------------------------------------------------------ worker side
class BlockClock:
    """Worker side of the protocol. Call `start()` once before training and `tick()` after every step;
    train while `running`. `last_block_losses` collects what `record_loss` got during the current block."""

    def __init__(self, warmup: int, device: str = "cpu", stdin=None, stdout=None):
        self.warmup, self.device = int(warmup), device
        self.stdin = stdin or sys.stdin
        self.stdout = stdout or sys.__stdout__
        self.running = True
        self.phase = "warmup"
        self.todo = self.warmup
        self.t0 = self.c0 = 0.0
        self.blocks: list[dict] = []
        self.losses: list[float] = []
        self.last_block_losses: list[float] = []
        self.steps_done = 0

    def emit(self, **msg) -> None:
        self.stdout.write(PREFIX + json.dumps(msg) + "\n")
        self.stdout.flush()

    def start(self) -> None:
        if self.todo <= 0:
            self._ready()

    def record_loss(self, value) -> None:
        """Keep a step's loss (a float or a 0-d tensor: converted only at the end, so no sync per step)."""
        self.losses.append(value)

    def tick(self) -> bool:
        self.steps_done += 1
        self.todo -= 1
        if self.todo > 0:
            return self.running
        if self.phase == "warmup":
            self._ready()
        else:
            sync(self.device)
            sec, cpu = time.perf_counter() - self.t0, time.process_time() - self.c0
            # CPU seconds: this process's own (all its threads), steadier than wall time when other jobs share
            # the cores
            self.blocks.append({"steps": self.block_steps, "seconds": sec, "cpu_seconds": cpu})
            self.last_block_losses = self.losses
            self.emit(event="block", steps=self.block_steps, seconds=sec, cpu_seconds=cpu)
            self._wait()
        return self.running

    def _ready(self) -> None:
        sync(self.device)
        self.emit(event="ready", rss_mb=rss_mb())
        self._wait()

    def _wait(self) -> None:
        line = self.stdin.readline().strip()
        if line.startswith("run "):
            self.phase, self.block_steps = "block", int(line.split()[1])
            self.todo, self.losses = self.block_steps, []
            self.t0, self.c0 = time.perf_counter(), time.process_time()
        else:  # "stop", or EOF when the driver died
            self.running = False

    def final(self, out_path: str | None, **record) -> dict:
        losses = [float(x) for x in (self.last_block_losses or self.losses)]
        rec = {"blocks": self.blocks, "final_loss": (sum(losses) / len(losses)) if losses else None,
               "peak_rss_mb": peak_rss_mb(), "cuda_peak_mb": _maybe_cuda_peak(self.device), **record}
        if out_path:
            Path(out_path).write_text(json.dumps(rec, indent=1, default=str))
        self.emit(event="final", **rec)
        return rec


def serve(clock: BlockClock, step_fn) -> None:
    """Run `step_fn()` (one training step; returns its loss or None) until the driver says stop."""
    clock.start()
    while clock.running:
        loss = step_fn()
        if loss is not None:
            clock.record_loss(loss)
        clock.tick()


def _maybe_cuda_peak(device: str) -> float | None:
    return cuda_peak_mb() if str(device).startswith("cuda") else None


def worker_args(argv=None) -> tuple[str, dict, str | None]:
    """Parse `--side ours|peer --spec FILE [--out FILE]` -> (side, spec dict, out path)."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--side", choices=["ours", "peer"], required=True)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    return a.side, json.loads(Path(a.spec).read_text()), a.out


def start_worker(argv=None) -> tuple[str, dict, str | None, BlockClock]:
    """The common start of a peer script's worker: parse its arguments; on our side, flush subnormal floats as
    every reins stage does first (reins.entry.stage_main), the peer running as it ships; pin the thread pool; and
    make the block clock. Returns (side, spec, out path, clock)."""
    side, spec, out = worker_args(argv)
    if side == "ours":
        from reins.entry import flush_denormals

        flush_denormals()
    pin_threads(spec["threads"])
    return side, spec, out, BlockClock(spec["warmup"], spec["device"])


# ------------------------------------------------------------------------------------------ driver side
@dataclass
class Side:
    """One worker: `label` (ours / the peer's name), the python to run it with, its module and spec."""

    label: str
    python: str
    module: str
    side: str
    spec_path: str
    out_path: str
    log_path: str
    env: dict = field(default_factory=dict)


class _Proc:
    def __init__(self, side: Side):
        self.side = side
        env = {**os.environ, **side.env}
        self.log = open(side.log_path, "w")
        self.p = subprocess.Popen([side.python, "-m", side.module, "--side", side.side, "--spec", side.spec_path,
                                   "--out", side.out_path], cwd=REPO, env=env, stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1)
        self.q: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            if line.startswith(PREFIX):
                self.q.put(json.loads(line[len(PREFIX):]))
            else:
                self.log.write(line)
        self.q.put({"event": "exit"})

    def expect(self, event: str, timeout: float) -> dict:
        try:
            msg = self.q.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.side.label}: no '{event}' within {timeout:.0f} s "
                               f"(log: {self.side.log_path})") from None
        if msg.get("event") != event:
            self.p.wait(timeout=30)
            raise RuntimeError(f"{self.side.label} ({self.side.side}) exited before '{event}' "
                               f"(rc={self.p.returncode}); last log lines:\n{tail(self.side.log_path)}")
        return msg

    def send(self, line: str) -> None:
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def close(self) -> None:
        if self.p.poll() is None:
            try:
                self.p.stdin.close()
                self.p.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.p.kill()
        self.log.close()


def tail(path: str, n: int = 25) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def schedule(n_blocks: int, n_sides: int = 2) -> list[int]:
    """ABBA order of block requests: block k goes A,B for even k and B,A for odd k -> side indices."""
    order = []
    for k in range(n_blocks):
        sides = list(range(n_sides))
        order += sides if k % 2 == 0 else sides[::-1]
    return order


def time_abba(fns: dict[str, Any], rounds: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """In one process: `rounds` calls of each variant's function in ABBA order (`schedule`); the wall seconds of
    every call per variant, and each variant's last return value."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    last: dict[str, Any] = {}
    for i in schedule(rounds, len(names)):
        t = time.perf_counter()
        last[names[i]] = fns[names[i]]()
        times[names[i]].append(time.perf_counter() - t)
    return times, last


def smollm2_shaped_llama(layers: int):
    """A randomly initialised float32 Llama of SmolLM2-135M's shape (hidden 576, 9 heads / 3 KV heads, MLP 1536,
    vocabulary 49152, tied embeddings) with `layers` of its 30 blocks, seeded, so nothing is downloaded."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True,
                      max_position_embeddings=8192, attn_implementation="sdpa")
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def random_pairs(pairs: int, prompt: int, chosen: int, rejected: int, vocab: int = 49152, seed: int = 1):
    """Random token ids (P, C, R), `pairs` of each; lengths vary by +-25% around the asked ones, as real pairs do."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def rnd(n):
        m = max(1, int(n * (0.75 + 0.5 * torch.rand((), generator=g).item())))
        return torch.randint(3, vocab, (m,), generator=g).tolist()

    return tuple([rnd(n) for _ in range(pairs)] for n in (prompt, chosen, rejected))


def run_interleaved(sides: list[Side], *, blocks: int, block_steps: int, setup_timeout: float = 1800,
                    block_timeout: float = 1800) -> list[dict]:
    """Start every side, wait for `ready`, run `blocks` blocks per side in ABBA order, stop, collect."""
    procs = [_Proc(s) for s in sides]
    try:
        ready = [p.expect("ready", setup_timeout) for p in procs]
        for i in schedule(blocks, len(procs)):
            procs[i].send(f"run {block_steps}")
            procs[i].expect("block", block_timeout)
        finals = []
        for p in procs:
            p.send("stop")
            finals.append(p.expect("final", 600))
        for r, f in zip(ready, finals):
            f["rss_ready_mb"] = r.get("rss_mb")
        return finals
    finally:
        for p in procs:
            p.close()


def throughput(final: dict, items_per_step: float) -> dict:
    """Steps/s and items/s over all timed blocks, and the spread of the per-block rates."""
    steps = sum(b["steps"] for b in final["blocks"])
    secs = sum(b["seconds"] for b in final["blocks"])
    rates = sorted(b["steps"] / b["seconds"] for b in final["blocks"]) or [0.0]
    cpu = sum(b["cpu_seconds"] for b in final["blocks"]) if all("cpu_seconds" in b for b in final["blocks"]) else 0
    return {"steps": steps, "seconds": secs, "steps_per_s": steps / secs if secs else 0.0,
            "items_per_s": items_per_step * steps / secs if secs else 0.0,
            "block_steps_per_s_min": rates[0], "block_steps_per_s_max": rates[-1],
            "cpu_seconds": cpu or None, "steps_per_cpu_s": steps / cpu if cpu else None}


def ratio_bound(flops_per_step_ours: float | None, peer_steps_per_s: float | None,
                ceiling_gflops: float) -> float | None:
    """The largest ours/peer ratio this machine allows: our step's FLOPs done at the matmul ceiling (no other
    cost at all) against the peer's measured step rate. A target above it cannot be met by any implementation
    of our step on this machine; one close below it needs nearly all non-matmul time gone."""
    if not flops_per_step_ours or not peer_steps_per_s:
        return None
    return ceiling_gflops * 1e9 / (flops_per_step_ours * peer_steps_per_s)


# ------------------------------------------------------------------------------------------ results
def fmt(x: Any, digits: int = 3) -> str:
    """A compact table cell: None -> '-', floats to `digits` significant digits, others as str."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x != x:
            return "nan"
        if x == 0:
            return "0"
        return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"
    return str(x)


COLUMNS = [("benchmark", "benchmark"), ("size", "size"), ("unit", "unit"), ("ours", "ours"),
           ("peer", "peer"), ("ratio", "ours/peer"), ("ratio_cpu", "ours/peer in CPU s"), ("target", "target"),
           ("loss_ours", "final loss ours"),
           ("loss_peer", "final loss peer"), ("rss_ours_mb", "peak RSS ours MiB"),
           ("rss_peer_mb", "peak RSS peer MiB"), ("gflop_per_step", "GFLOP/step ours"),
           ("gflop_per_step_peer", "GFLOP/step peer"),
           ("ceiling_frac_ours", "ours % of matmul ceiling"), ("ceiling_frac_peer", "peer % of matmul ceiling"),
           ("ceiling_frac_cpu_ours", "ours % of ceiling per CPU s"),
           ("ceiling_frac_cpu_peer", "peer % of ceiling per CPU s"),
           ("ratio_bound", "max ours/peer at ceiling")]


def markdown_table(rows: list[dict], columns: list[tuple[str, str]] = COLUMNS) -> str:
    """A GitHub markdown table of `rows` (dicts) with the given (key, header) columns; missing keys -> '-'."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)).replace("|", "\\|") for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def results_paths(when: _dt.datetime | None = None, directory: Path = RESULTS_DIR,
                  suffix: str = "") -> tuple[Path, Path]:
    """benchmarks/results/<YYYY-MM-DD><suffix>.json and .md (a second run the same day gets -2, -3, ...)."""
    day = (when or _dt.datetime.now()).strftime("%Y-%m-%d") + suffix
    stem, k = day, 1
    while (directory / f"{stem}.json").exists():
        k += 1
        stem = f"{day}-{k}"
    return directory / f"{stem}.json", directory / f"{stem}.md"


def write_results(report: dict, rows: list[dict], *, directory: Path = RESULTS_DIR,
                  when: _dt.datetime | None = None, notes: list[str] | None = None,
                  suffix: str = "") -> tuple[Path, Path]:
    """Write the full JSON report and its markdown summary; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    jpath, mpath = results_paths(when, directory, suffix)
    jpath.write_text(json.dumps({**report, "rows": rows}, indent=1, default=str))
    m = report.get("machine", {})
    lines = [f"# Benchmarks {jpath.stem}", "",
             f"Machine: {m.get('cpu', '?')}, {m.get('cores', '?')} cores; threads per side: "
             f"{report.get('threads')}; device: {report.get('device')}; load average at start "
             f"{m.get('load_average')} and end {report.get('load_average_end')}.",
             f"Matmul ceiling: {fmt(report.get('ceiling_gflops'))} GFLOP/s "
             f"({report.get('ceiling_desc', '')}).", "",
             markdown_table(rows), ""]
    lines += [f"- {n}" for n in (notes or [])]
    mpath.write_text("\n".join(lines) + "\n")
    return jpath, mpath
