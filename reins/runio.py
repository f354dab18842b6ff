"""The stage contract's run directory: config.yaml, log.jsonl, metrics.json and an atomic checkpoint.

    run = RunDir(cfg.output_dir, cfg, quiet=cfg.quiet)   # refuses a directory holding another run's config
    state = run.load_checkpoint()                        # None on a fresh run
    ...
    run.log(step, {"loss": 0.1})                         # one JSON line per logged step
    run.save_checkpoint({...})                           # write-to-temp + rename: never half-written
    run.finish(metrics)                                  # metrics.json, written last: its presence = complete

Checkpoints are plain dicts of tensors, numbers and strings saved with `torch.save` and loaded with
`torch.load(weights_only=True)`, so a checkpoint file can never execute code when loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reins.config import dump_yaml, to_dict
from reins.errors import ConfigError, DataError, NonFiniteError
from reins.fingerprint import config_inputs, path_fingerprint

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.json"
LOG_FILE = "log.jsonl"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "checkpoint.pt"
LOCK_FILE = ".reins.lock"
# What run made a directory and its checkpoint: the semantic config and the fingerprints of its inputs
# (reins.fingerprint), in identity.json beside config.yaml and under IDENTITY_KEY in every checkpoint.
IDENTITY_FILE = "identity.json"
IDENTITY_KEY = "run_identity"

# Config keys that do not change what a run computes, so a resume with a different value is allowed.
NON_SEMANTIC_KEYS = frozenset({"quiet", "log_every", "report_to", "progress", "overwrite_output_dir"})
REPORT_TO = ("none", "jsonl", "tensorboard")

# The count of the latest progress bar (the step a stage is at), for the one-line "interrupted at step N".
_progress: dict[str, int | None] = {"step": None}


def progress_step() -> int | None:
    """The step the running stage's progress bar last reached (None before any stage started its loop)."""
    return _progress["step"]


def reset_progress() -> None:
    _progress["step"] = None


# ----------------------------------------------------------------------------------------- atomic files
def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the complete new one."""
    with _atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    # Through a Python file object, so that a full disk is an OSError(ENOSPC): torch's own file writer (given a
    # path) reports it as an opaque RuntimeError ("unexpected pos ..."), and even given a file object it may
    # wrap the OSError of a write into one, keeping the OSError as the RuntimeError's context.
    with _atomic_file(path) as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


@contextlib.contextmanager
def _atomic_file(path: str | Path):
    """A binary file that replaces `path` (write to a temp name in its directory, fsync, rename, fsync the
    directory) when the block ends without an error, and is removed otherwise. The file gets the mode a plain
    `open` would (the user's umask; mkstemp's own is 0600). Ctrl-C and SIGTERM wait until the write is done
    (`deferred_signals`). An OSError names `path`, not the temp name."""
    path = Path(path)
    tmp = None
    with deferred_signals():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            os.fchmod(fd, 0o666 & ~current_umask())
            with os.fdopen(fd, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except OSError as e:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise OSError(e.errno, e.strerror or str(e), str(path)) from None
        except BaseException:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            raise


def current_umask() -> int:
    """The process's umask (read by setting it and setting it back: there is no plain getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_temp_dir(parent: str | Path, prefix: str, suffix: str = "") -> Path:
    """`tempfile.mkdtemp` in `parent`, with the mode a plain `mkdir` would give (mkdtemp's own is 0700), for a
    directory that is renamed into place as a result the user reads."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    os.chmod(tmp, 0o777 & ~current_umask())
    return tmp


def fsync_dir(path: str | Path) -> None:
    """Flush a directory's entries (a rename into it) to disk, so a crash after the rename cannot undo it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # a platform or file system without directory handles: the rename itself stands
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (e.g. certain network mounts) refuse fsync on a directory
    finally:
        os.close(fd)


@contextlib.contextmanager
def deferred_signals():
    """Within the block, SIGINT and SIGTERM are held back and delivered when it ends, so a Ctrl-C that lands in
    the middle of a checkpoint write interrupts the run after the write, as "interrupted at step N", instead
    of inside torch's zip writer (a traceback); a second Ctrl-C interrupts at once. Only the main thread handles
    signals; elsewhere, and in a nested block, this does nothing."""
    if threading.current_thread() is not threading.main_thread() or _deferring["on"]:
        yield
        return
    pending: list[int] = []
    if any(signal.getsignal(sig) is None for sig in (signal.SIGINT, signal.SIGTERM)):
        yield  # a handler installed outside Python could not be put back
        return

    def hold(signum, frame):
        if signum == signal.SIGINT and signum in pending:
            raise KeyboardInterrupt  # a second Ctrl-C: the user would rather lose this write than wait for it
        pending.append(signum)

    old = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    _deferring["on"] = True
    try:
        yield
    finally:
        _deferring["on"] = False
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)  # the restored handler runs now: KeyboardInterrupt / Terminated


_deferring = {"on": False}


def safe_torch_load(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint without unpickling arbitrary objects (`weights_only=True`); refuse anything else."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols before refusing
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # noqa: BLE001 - any unpickling failure means the file is not a safe checkpoint
        # torch's own message ends by suggesting weights_only=False, which is exactly what must not happen.
        raise DataError(f"{path}: refused to load: not a weights-only checkpoint (it holds pickled objects "
                        "that could run code; reins never unpickles those)") from None


# ----------------------------------------------------------------------------------------- RNG state
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """All global RNG states as weights-only-loadable values (tensors, ints, strings, tuples)."""
    np_state = np.random.get_state()
    state = {
        "python": _to_tensor_tree(random.getstate()),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_from_tensor_tree(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tensor_tree(x: Any) -> Any:
    # random.getstate() is (version, tuple of 625 ints, gauss_next); store the ints as one tensor.
    version, internal, gauss = x
    return (version, torch.tensor(internal, dtype=torch.int64), gauss)


def _from_tensor_tree(x: Any) -> Any:
    version, internal, gauss = x
    return (version, tuple(int(v) for v in internal.tolist()), gauss)


# ----------------------------------------------------------------------------------------- finiteness
def check_finite(name: str, value: Any, *, step: int | None = None) -> None:
    """Raise NonFiniteError naming `name` (and the step) if `value` holds a NaN or inf."""
    if isinstance(value, torch.Tensor):
        ok = bool(torch.isfinite(value).all())
    else:
        ok = math.isfinite(float(value))
    if not ok:
        raise _non_finite(name, step)


def _non_finite(name: str, step: int | None) -> NonFiniteError:
    at = f" at step {step}" if step is not None else ""
    return NonFiniteError(f"non-finite {name}{at}; stopping (the last good checkpoint is kept)")


class FiniteGuard:
    """The first step at which each watched metric held a NaN or inf, recorded on the device.

        guard = FiniteGuard()
        for step in ...:
            guard.record(step, {"loss": loss, "grad_norm": norm})  # device ops only: no host sync
            if step % log_every == 0:
                guard.check()                                      # one device-to-host read; raises
                ...log, evaluate, checkpoint...

    `record` marks, per metric, the first step whose value (a tensor of any shape, a list of tensors such as
    a network's parameters, or a number) is not all finite; a metric missing from a step's dict is not checked
    at that step, and a new name is watched from the step it first appears. `check` reads the record at a sync
    point and raises NonFiniteError naming the metric and its first bad step (the earliest step; on a tie, the
    metric watched first), so a loop that checks before every log, evaluation and checkpoint stops before
    anything computed after a bad step is saved, and keeps the last good checkpoint.
    """

    def __init__(self) -> None:
        self.names: list[str] = []
        self._first: torch.Tensor | None = None  # [len(names)] int64, -1 where the metric was always finite

    def record(self, step: int, metrics: dict[str, Any]) -> None:
        """Mark `step` for every metric of `metrics` that holds a NaN/inf and has no earlier bad step."""
        if not metrics:
            return
        dev = self._first.device if self._first is not None else _device_of(metrics.values())
        new = [n for n in metrics if n not in self.names]
        if new or self._first is None:
            self.names += new
            grown = torch.full((len(new),), -1, dtype=torch.long, device=dev)
            self._first = grown if self._first is None else torch.cat([self._first, grown])
        vals = list(metrics.values())
        if all(isinstance(v, torch.Tensor) and v.numel() == 1 and v.dtype == vals[0].dtype and v.device == dev
               for v in vals):  # the common case (scalar losses): one stack and one isfinite
            bad = ~torch.isfinite(torch.stack([v.detach().reshape(()) for v in vals]))
        else:
            bad = torch.stack([_not_finite(v, dev) for v in vals])
        if list(metrics) != self.names:  # a subset or another order: scatter into the watched positions
            idx = torch.tensor([self.names.index(n) for n in metrics]).to(dev, non_blocking=True)
            bad = torch.zeros(len(self.names), dtype=torch.bool, device=dev).index_put((idx,), bad)
        self._first = torch.where((self._first < 0) & bad, step, self._first)

    def first_bad(self) -> tuple[str, int] | None:
        """(metric, step) of the earliest non-finite value recorded so far, or None (reads the device)."""
        if self._first is None:
            return None
        hits = [(s, i) for i, s in enumerate(self._first.tolist()) if s >= 0]
        if not hits:
            return None
        s, i = min(hits)
        return self.names[i], s

    def check(self) -> None:
        """Raise NonFiniteError naming the metric and its first bad step, if any value recorded was not finite."""
        hit = self.first_bad()
        if hit is not None:
            raise _non_finite(hit[0], hit[1])


def _device_of(values) -> torch.device:
    for v in values:
        if isinstance(v, torch.Tensor):
            return v.device
    return torch.device("cpu")


def _not_finite(value: Any, dev: torch.device) -> torch.Tensor:
    """A 0-d bool on `dev`: whether `value` holds a NaN/inf (a host number is tested on the host)."""
    if isinstance(value, (list, tuple)):  # several tensors (a network's parameters) as one metric
        return ~torch.isfinite(torch.as_tensor(sum(_probe(t) for t in value))).to(dev, non_blocking=True)
    if isinstance(value, torch.Tensor):
        return ~torch.isfinite(_probe(value)).to(dev, non_blocking=True)
    return torch.tensor(not math.isfinite(float(value))).to(dev, non_blocking=True)


def _probe(t: torch.Tensor) -> torch.Tensor:
    """A 0-d tensor that is finite exactly when every element of `t` is: x * 0 is 0 for a finite x and NaN for
    an inf or NaN, so the sum is 0 or NaN (several times faster on CPU than isfinite(t).all() on 64k floats)."""
    t = t.detach()
    return t.reshape(()) if t.numel() == 1 else (t * 0).sum()


# ----------------------------------------------------------------------------------------- run directory
def describe_os_error(e: OSError) -> str:
    """`path: cause` of an OSError (the cause alone when the OS named no file)."""
    cause = e.strerror or str(e) or type(e).__name__
    return f"{e.filename}: {cause}" if e.filename else cause


def os_error(e: OSError, doing: str, path: str | Path | None = None) -> DataError:
    """An OSError (full disk, permissions, a file where a directory should be) as a one-line user error:
    `{doing} {path}: {cause}` (`path` defaults to the file the OS named)."""
    path = path if path is not None else e.filename
    return DataError(f"{doing}{f' {path}' if path else ''}: {e.strerror or e}")


def check_output_dir(output_dir: str | Path) -> None:
    """Refuse an output_dir that cannot hold a run (a regular file, or under a file or an unwritable
    directory) before any work starts; creates nothing."""
    p = Path(output_dir)
    if p.exists() and not p.is_dir():
        raise DataError(f"output_dir {p} is an existing file, not a directory")
    q = p
    while not q.exists() and q != q.parent:
        q = q.parent
    if q.exists() and not q.is_dir():
        raise DataError(f"output_dir {p}: {q} is a file, not a directory")
    if not os.access(q, os.W_OK | os.X_OK):
        raise DataError(f"output_dir {p}: {q} is not writable (permission denied or a read-only file system)")


def check_run_dir(output_dir: str | Path, config: Any) -> list[str] | None:
    """Everything `RunDir(output_dir, config)` refuses, checked without writing anything: an output_dir that
    cannot hold a run, one holding a different run's config or files that are not a run of this stage (unless
    the config sets `overwrite_output_dir`), an unknown `report_to`.

    Returns what an allowed overwrite takes over (the differing keys, or ["no config.yaml"] for a foreign
    directory), None for an empty directory or this same run."""
    check_output_dir(output_dir)
    path = Path(output_dir)
    overwrite = bool(run_config(config).get("overwrite_output_dir", getattr(config, "overwrite_output_dir", False)))
    taken = _other_contents(path, config)
    if not overwrite and (not taken or (taken == ["no config.yaml"] and recorded_identity(path) is not None)):
        check_run_identity(path, config)  # a checkpoint or finished run of other settings or inputs, named
    taken = _run_taken(path, config, explain=not overwrite)
    if taken and not overwrite:
        if taken == ["no config.yaml"]:
            raise ConfigError(f"output_dir {path} is not empty and holds no {CONFIG_FILE} of a reins run; choose "
                              "another output_dir, or set overwrite_output_dir=true to write into it anyway")
        raise ConfigError(
            f"output_dir {path} holds a different run's config (differs in: {', '.join(taken[:5])});"
            " choose another output_dir or delete that one (or set overwrite_output_dir=true)")
    report_to = run_config(config).get("report_to", "jsonl")
    if report_to not in REPORT_TO:
        raise ConfigError(f"report_to must be one of {', '.join(REPORT_TO)}, got {report_to!r}")
    return taken


def _other_contents(path: Path, config: Any) -> list[str] | None:
    """Why `path` is not this run's directory: the keys another run's config.yaml differs in, or
    ["no config.yaml"] for a non-empty directory without one (its lock file aside); None if it is empty,
    missing or this same run."""
    cfg_path = path / CONFIG_FILE
    if not cfg_path.is_file():
        try:
            foreign = path.is_dir() and any(p.name != LOCK_FILE for p in path.iterdir())
        except OSError as e:
            raise os_error(e, "cannot read output_dir", path) from None
        return ["no config.yaml"] if foreign else None
    import yaml

    try:
        old = yaml.safe_load(cfg_path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError):
        old = None
    except OSError as e:
        raise os_error(e, "cannot read the earlier run's config", cfg_path) from None
    if not isinstance(old, dict):
        raise ConfigError(f"{cfg_path}: unreadable config of an earlier run; choose another output_dir")
    return config_changes(old, config) or None


# ----------------------------------------------------------------------------------------- one writer
class _DirLock:
    """An open lock file holding an exclusive flock; the kernel drops the lock when the file is closed, also
    when the process is killed, so a stale lock file never blocks a later run."""

    def __init__(self, fd: int, key: str):
        self.fd, self.key = fd, key

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if _locks.get(self.key) is self:
                del _locks[self.key]

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter exit the kernel drops the lock anyway
            self.release()


_locks: weakref.WeakValueDictionary[str, _DirLock] = weakref.WeakValueDictionary()
_lock_scopes: list[list[_DirLock]] = []


def is_main_rank() -> bool:
    """Whether this is the process that owns a run directory (rank 0 of a multi-process launch)."""
    return os.environ.get("RANK", "0") in ("", "0")


def lock_run_dir(path: str | Path, *, create: bool = True, shared: bool = False) -> _DirLock | None:
    """Take the one-writer lock of run directory `path` (an advisory `flock` on its lock file) for as long as
    the returned handle lives, or, inside `held_run_locks()`, until that block ends. Taking a lock this
    process already holds returns the same handle. Another process holding it: ConfigError naming its pid.

    `create=False` only checks a lock file that already exists. `shared`: a reader's lock (`reins export`),
    which other readers may hold too but no writer. Non-main ranks of a multi-process launch share their rank
    0's lock and take none (None)."""
    if not is_main_rank():
        return None
    key = os.path.realpath(path)
    lock = _locks.get(key)
    if lock is None:
        lock_path = Path(path) / LOCK_FILE
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC | (os.O_CREAT if create else 0), 0o666)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(fd)
            os.close(fd)
            raise ConfigError(f"output_dir {path} is in use by another reins process (pid {holder}); wait for it "
                              "to end or choose another output_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        lock = _locks[key] = _DirLock(fd, key)
    if _lock_scopes and lock not in _lock_scopes[-1]:
        _lock_scopes[-1].append(lock)
    return lock


def _lock_holder(fd: int) -> str:
    # The holder writes its pid right after taking the lock: give a holder that just took it a moment.
    for _ in range(5):
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if text:
            return text
        time.sleep(0.02)
    return "unknown"


@contextlib.contextmanager
def held_run_locks():
    """Keep every run-directory lock taken within the block until it ends: a command's whole life (a stage
    lets go of its RunDir before the command has printed its result; `reins run` goes through several)."""
    _lock_scopes.append([])
    try:
        yield
    finally:
        for lock in _lock_scopes.pop():
            lock.release()


def _semantic(cfg_dict: dict) -> dict:
    return {k: v for k, v in cfg_dict.items() if k not in NON_SEMANTIC_KEYS}


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, f"{prefix}{k}.")
        elif va != vb:
            keys.append(f"{prefix}{k}")
    return keys


def _with_defaults(old: dict, defaults: dict) -> dict:
    """`old` with keys it lacks taken from `defaults` (recursively): keys added to a config since it was saved."""
    out = dict(old)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = _with_defaults(out[k], v)
    return out


def config_changes(old: dict, config: Any) -> list[str]:
    """Dotted keys whose value in `config` differs from a saved config.yaml (`old`).

    Non-semantic keys (quiet, log_every, report_to, progress) never count, and a key the saved config lacks
    counts only if `config` sets it away from its default: a newer version adding an option does not turn an
    earlier run into "a different run". Both sides are first narrowed by the config's `run_config_view` hook.
    """
    new = run_config(config)
    old = _view(config, old)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        try:
            old = _with_defaults(old, _view(config, to_dict(type(config)())))
        except TypeError:  # a config class with required fields has no all-default instance
            pass
    return _diff_keys(_semantic(old), _semantic(new))


def _view(config: Any, d: dict) -> dict:
    # A config class may narrow what identifies its run (online: only the selected agent's section).
    view = getattr(config, "run_config_view", None)
    return view(d) if callable(view) else d


def run_config(config: Any) -> dict:
    """The dict config.yaml stores and resumes compare: `config.run_config_view(to_dict(config))` if the
    config defines that hook, else the whole config."""
    return _view(config, to_dict(config) if not isinstance(config, dict) else dict(config))


# ----------------------------------------------------------------------------------------- run identity
def run_inputs(config: Any) -> dict[str, str]:
    """{key: fingerprint} of the local files and directories the config names (reins.fingerprint), plus those a
    config class resolves itself through an `input_paths()` hook (a dataset id that names a local directory)."""
    d = run_config(config)
    found = config_inputs(_semantic(d), d.get("output_dir", "."))
    hook = getattr(config, "input_paths", None)
    if callable(hook):
        for key, p in hook().items():
            found[key] = path_fingerprint(p)
    return found


def _computed(cfg_dict: dict) -> dict:
    # What a run computes: the semantic keys without output_dir, so that the same run in two directories (or a
    # moved one) has the same identity and bit-identical checkpoints.
    return {k: v for k, v in _semantic(cfg_dict).items() if k != "output_dir"}


def run_identity(config: Any, inputs: dict[str, str]) -> dict:
    """What a checkpoint stores to say which run it belongs to: the semantic config but output_dir (as JSON text,
    so loading it needs nothing beyond weights_only) and the inputs' fingerprints."""
    return {"config": json.dumps(_computed(run_config(config)), sort_keys=True, default=str),
            "inputs": dict(inputs)}


def _json_norm(d: Any) -> Any:
    return json.loads(json.dumps(d, sort_keys=True, default=str))


def identity_changes(saved: dict, config: Any, inputs: dict[str, str]) -> list[str]:
    """Dotted config keys and `input KEY` entries in which a checkpoint's identity differs from this run's
    (a key the saved config lacks counts only when set away from its default, as in `config_changes`)."""
    old = json.loads(saved.get("config", "{}"))
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        try:
            old = _with_defaults(old, _json_norm(_view(config, to_dict(type(config)()))))
        except TypeError:
            pass
    keys = _diff_keys(_computed(old), _json_norm(_computed(run_config(config))))
    return keys + input_changes(dict(saved.get("inputs", {})), inputs)


def input_changes(recorded: dict[str, str], inputs: dict[str, str]) -> list[str]:
    return [f"input {k}" for k in sorted(set(recorded) | set(inputs)) if recorded.get(k) != inputs.get(k)]


def recorded_identity(output_dir: str | Path) -> dict | None:
    """The identity a run directory recorded (None: none recorded, e.g. a run of an older version)."""
    try:
        data = json.loads((Path(output_dir) / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("inputs"), dict) else None


def recorded_inputs(output_dir: str | Path) -> dict[str, str] | None:
    """The input fingerprints a run directory recorded (None: none recorded)."""
    ident = recorded_identity(output_dir)
    return dict(ident["inputs"]) if ident is not None else None


def _checkpoint_identity(path: Path) -> dict | None:
    # mmap: only the identity is read, not the tensors of a large checkpoint. A checkpoint that does not load is
    # reported by the stage's own load_checkpoint, with its own message.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001
        return None
    ident = state.get(IDENTITY_KEY) if isinstance(state, dict) else None
    return ident if isinstance(ident, dict) else None


def check_run_identity(output_dir: str | Path, config: Any, inputs: dict[str, str] | None = None) -> None:
    """Refuse to resume or reuse a run directory whose recorded inputs or checkpoint belong to another run: a
    changed data file, or a checkpoint whose config differs (config.yaml may have been deleted or edited)."""
    path = Path(output_dir)
    ckpt = path / CHECKPOINT_DIR / CHECKPOINT_FILE
    recorded = recorded_identity(path) if (path / METRICS_FILE).is_file() else None
    if recorded is None and not ckpt.is_file():
        return
    inputs = run_inputs(config) if inputs is None else inputs
    if recorded is not None:
        diff = identity_changes(recorded, config, inputs)
        if diff:
            raise ConfigError(f"output_dir {path} holds a finished run of another config or other inputs (differs "
                              f"in: {', '.join(diff[:5])}); choose another output_dir or delete that one")
    ident = _checkpoint_identity(ckpt) if ckpt.is_file() else None
    if ident is not None:
        diff = identity_changes(ident, config, inputs)
        if diff:
            raise ConfigError(f"output_dir {path}: its checkpoint belongs to a different run (differs in: "
                              f"{', '.join(diff[:5])}); choose another output_dir or delete that one")


def _run_taken(path: Path, config: Any, *, explain: bool = False) -> list[str] | None:
    """`_other_contents`, except that a directory whose config.yaml is gone but whose identity.json records this
    very run is this run (it resumes). With `explain`, a recorded run of other settings is refused naming the keys
    it differs in."""
    taken = _other_contents(path, config)
    if taken == ["no config.yaml"]:
        recorded = recorded_identity(path)
        if recorded is not None:
            diff = identity_changes(recorded, config, run_inputs(config))
            if not diff:
                return None
            if explain:
                raise ConfigError(f"output_dir {path} has lost its {CONFIG_FILE} and holds a run of other settings "
                                  f"or inputs (differs in: {', '.join(diff[:5])}); choose another output_dir or "
                                  "delete that one (or set overwrite_output_dir=true)")
    return taken


class RunDir:
    """One stage's output directory. Creating it validates that it is empty or holds this same run."""

    def __init__(self, output_dir: str | Path, config: Any, *, quiet: bool = False):
        self.path = Path(output_dir)
        self.quiet = quiet
        self.config = run_config(config)
        self.inputs = run_inputs(config)
        self.identity = run_identity(config, self.inputs)
        check_run_dir(self.path, config)
        self._tb = None
        if self.config.get("report_to", "jsonl") == "tensorboard":
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError("report_to=tensorboard needs the tensorboard package (pip install tensorboard)"
                                  ) from None
            self._tb_factory = lambda: SummaryWriter(log_dir=str(self.path / "tensorboard"))
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock = lock_run_dir(self.path)
            if self._lock is not None and _run_taken(self.path, config):  # overwrite_output_dir: a new run
                self._clear_earlier_run()
            atomic_write_text(self.path / CONFIG_FILE, dump_yaml(self.config))
            atomic_write_text(self.path / IDENTITY_FILE, json.dumps(self.identity, indent=2, sort_keys=True) + "\n")
        except OSError as e:
            raise os_error(e, "cannot write the run directory", self.path) from None

    def _clear_earlier_run(self) -> None:
        """Remove what would make the earlier run's files look like this run's: its completion mark, log,
        checkpoint and TensorBoard events (other files stay, and artifacts of this run overwrite theirs)."""
        for name in (METRICS_FILE, LOG_FILE, CONFIG_FILE, IDENTITY_FILE):
            (self.path / name).unlink(missing_ok=True)
        for name in (CHECKPOINT_DIR, "tensorboard"):
            if (self.path / name).is_dir():
                shutil.rmtree(self.path / name)

    # paths
    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_DIR / CHECKPOINT_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    # completion
    def completed_metrics(self) -> dict | None:
        """The final metrics if this run already finished (metrics.json is written last), else None."""
        if not self.metrics_path.is_file():
            return None
        try:
            return json.loads(self.metrics_path.read_text())
        except json.JSONDecodeError:
            return None

    def finish(self, metrics: dict) -> dict:
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        try:
            atomic_write_text(self.metrics_path, json.dumps(clean, indent=2, sort_keys=True) + "\n")
        except OSError as e:
            raise os_error(e, "cannot write", self.metrics_path) from None
        return clean

    # logging
    def log(self, step: int, metrics: dict, *, tb_prefix: str = "") -> None:
        """One log.jsonl line; with report_to=tensorboard also a scalar per number, tagged `tb_prefix + key`
        (training rows pass "train/", so TensorBoard's tags are metrics.json's keys)."""
        row = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        try:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as e:
            raise os_error(e, "cannot write", self.log_path) from None
        if self.config.get("report_to") == "tensorboard":
            if self._tb is None:
                self._tb = self._tb_factory()
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(tb_prefix + k, v, global_step=int(step))
            self._tb.flush()
        if not self.quiet and not sys.stderr.isatty():
            # No progress bar when not on a terminal: a plain line per logged step instead.
            shown = " ".join(f"{k}={format_value(v)}" for k, v in list(row.items())[1:8])
            print(f"[step {step}] {shown}", file=sys.stderr, flush=True)

    def truncate_log(self, after_step: int) -> None:
        """Drop log lines past `after_step` (a resumed run will log those steps again)."""
        if not self.log_path.is_file():
            return
        keep = []
        for line in self.log_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", -1) <= after_step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill mid-write
        try:
            atomic_write_text(self.log_path, "".join(x + "\n" for x in keep))
        except OSError as e:
            raise os_error(e, "cannot write", self.log_path) from None

    def read_log(self) -> list[dict]:
        if not self.log_path.is_file():
            return []
        rows = []
        for line in self.log_path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return rows

    # checkpoints
    def save_checkpoint(self, state: dict) -> None:
        try:
            atomic_torch_save({**state, IDENTITY_KEY: self.identity}, self.checkpoint_path)
        except OSError as e:  # a full disk: the previous checkpoint is untouched (write-to-temp + rename)
            err = os_error(e, "cannot write checkpoint", self.checkpoint_path)
            if self.checkpoint_path.is_file():
                err = DataError(f"{err}; the previous checkpoint is kept (rerun the same command to resume)")
            raise err from None

    def load_checkpoint(self) -> dict | None:
        if not self.checkpoint_path.is_file():
            return None
        state = safe_torch_load(self.checkpoint_path)
        if isinstance(state, dict):
            state.pop(IDENTITY_KEY, None)  # checked when the RunDir was opened (check_run_identity)
        return state

    # progress
    def progress(self, total: int, initial: int = 0, desc: str = ""):
        from tqdm.auto import tqdm

        return _CountingBar(tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                                 disable=self.quiet or not sys.stderr.isatty()), initial)


class _CountingBar:
    """A tqdm bar that counts also when it is disabled (quiet, or not a terminal), and leaves its count where
    `progress_step` reads it. `n` is that count; everything else is the tqdm bar's."""

    def __init__(self, bar, initial: int):
        self._bar, self.n = bar, int(initial)
        _progress["step"] = self.n

    def update(self, k: int = 1) -> None:
        self.n += int(k)
        _progress["step"] = self.n
        self._bar.update(k)

    def __getattr__(self, name: str):
        return getattr(self._bar, name)


def _jsonable(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def format_value(v: Any) -> str:
    """A metric as a log line or a report table shows it: floats to 4 significant digits, None as blank."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)
