"""Helpers shared by the e2e tests and the stage tests that run the CLI or subprocesses: tiny stage settings, the
real CLI with captured stderr, output directory snapshots, blocked sockets, hostile files (a pickle that runs
code, a model dir with custom code), signals to a running child, a free port, a two-rank accelerate launch."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The small tiny-Llama of tests/pipelines/helpers.py as CLI overrides (seconds per stage on 2 cores).
TINY_MODEL = ["tiny.hidden_size=32", "tiny.num_layers=2", "tiny.num_heads=2", "tiny.intermediate_size=64",
              "tiny.vocab_size=400", "tiny.max_position_embeddings=128"]
# Training-stage settings (sft, reward, dpo) on top of the model: two steps on a slice of the built-in task.
TINY_TRAIN = TINY_MODEL + ["max_length=48", "builtin_size=64", "max_eval_samples=8", "batch_size=8",
                           "max_steps=2", "save_every=1", "log_every=1"]


def run_cli(argv: list[str], capfd) -> tuple[int, list[str]]:
    """`reins <argv>` in-process; returns (exit code, non-empty stderr lines).

    Warnings are shown as a plain `python -m reins.cli` would show them (pytest would otherwise swallow them),
    and stderr is captured at the file-descriptor level so library loggers are seen too. An exception that
    escapes the CLI is a bug (a traceback for the user): it is reported as exit code None with its text.
    """
    from reins.cli import main

    capfd.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        for cat in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
            warnings.filterwarnings("ignore", category=cat)
        warnings.showwarning = _print_warning
        try:
            code = main(list(argv))
        except BaseException as e:  # noqa: BLE001 - any escape is what the test reports
            out = capfd.readouterr()
            return None, [f"TRACEBACK {type(e).__name__}: {e}"] + _lines(out.err)
    out = capfd.readouterr()
    return code, _lines(out.err)


def _print_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _lines(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip()]


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under `path` (relative name -> bytes); {} when it does not exist."""
    path = Path(path)
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def write_jsonl(path: Path, rows: list, raw: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + raw)
    return path


def resolved_config_yaml(stage: str, argv: list[str]) -> str | None:
    """The config.yaml a run of `reins <stage> <argv>` would write, or None when the config does not resolve."""
    import importlib

    from reins.config import dump_yaml, load_config, parse_argv, to_dict
    from reins.entry import STAGES
    from reins.errors import ReinsError

    mod = importlib.import_module(STAGES[stage][0])
    try:
        path, over = parse_argv(argv)
        return dump_yaml(to_dict(load_config(mod.Config, path, over, stage=stage)))
    except ReinsError:
        return None


# ----------------------------------------------------------------------------------------- hostile files
class _RunsCode:
    """Unpickling this calls os.system: the classic malicious checkpoint."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious_pickle(path: Path, marker: Path, *, torch_zip: bool = False) -> Path:
    """A .pt file whose loading with plain pickle / torch.load(weights_only=False) creates `marker`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"step": 3, "model": _RunsCode(marker), "format": _RunsCode(marker)}
    if torch_zip:
        import torch

        torch.save(payload, path)  # the zip container torch writes, with the payload pickled inside
    else:
        path.write_bytes(pickle.dumps(payload))
    return path


def write_remote_code_model(path: Path, marker: Path) -> Path:
    """A model directory whose config/tokenizer point at custom code (auto_map) that creates `marker`."""
    path.mkdir(parents=True, exist_ok=True)
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (path / "evil.py").write_text(code)
    auto = {"AutoConfig": "evil.EvilConfig", "AutoModelForCausalLM": "evil.EvilModel",
            "AutoModelForSequenceClassification": "evil.EvilModel", "AutoTokenizer": ["evil.EvilTok", None]}
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["EvilModel"],
                                                  "auto_map": auto}))
    (path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "EvilTok",
                                                            "auto_map": {"AutoTokenizer": ["evil.EvilTok", None]}}))
    return path


# ----------------------------------------------------------------------------------------- no network
class NetworkBlocked(OSError):
    pass


def block_network(monkeypatch) -> list:
    """Make every outgoing connection and name lookup fail; returns the list of attempts (for asserting none)."""
    attempts: list = []

    def refuse(kind):
        def f(*args, **kwargs):
            attempts.append((kind, args[1:2] if kind.startswith("socket.") else args[:1]))
            raise NetworkBlocked(f"network blocked in tests ({kind})")
        return f

    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "gethostbyname", refuse("gethostbyname"))
    return attempts


def subprocess_env(**extra) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ----------------------------------------------------------------------------------------- without reins
NOT_IMPORTABLE = ("reins", "pipelines", "pgcore", "online", "offline")


def run_without_reins(code: str, cwd: Path, *, python: str | None = None, timeout: int = 300) -> dict:
    """Run `code` in a fresh Python that cannot import reins; returns the dict `code` leaves in `result`.

    This interpreter runs with `-I -S`: no PYTHONPATH, no script or working directory on sys.path, no .pth files
    (so not the editable install's finder either), and its site-packages put back on sys.path by hand. Another
    `python` (e.g. a venv with transformers 4.x and no reins) runs with `-I`. A prelude asserts that none of
    reins' packages imports, so a pass cannot come from reins being there after all.
    """
    import site
    import subprocess

    if python is None:
        paths = [p for p in site.getsitepackages() if Path(p).is_dir() and Path(p).resolve() != ROOT]
        cmd, prelude = [sys.executable, "-I", "-S"], f"import sys\nsys.path[:0] = {paths!r}\n"
    else:
        cmd, prelude = [python, "-I"], ""
    prelude += (f"for _name in {NOT_IMPORTABLE!r}:\n"
                "    try:\n        __import__(_name)\n    except ModuleNotFoundError:\n        pass\n"
                "    else:\n        raise SystemExit(f'{_name} is importable: the check would prove nothing')\n")
    epilogue = "\nimport json as _json\nprint('RESULT ' + _json.dumps(result))\n"
    env = {k: v for k, v in subprocess_env().items() if k != "PYTHONPATH"}
    proc = subprocess.run([*cmd, "-c", prelude + code + epilogue], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert lines, proc.stdout[-2000:]
    return json.loads(lines[-1][len("RESULT "):])


def signal_when(cmd: list[str], ready, sig: int, *, env: dict | None = None, cwd: Path = ROOT,
                timeout: float = 180.0) -> tuple[int, str]:
    """Start `cmd`, send `sig` as soon as `ready()` is true (polled every few ms); its exit code and stderr.
    Fails if the process ended before `ready()` held: a signal after the end would prove nothing."""
    import subprocess
    import time

    proc = subprocess.Popen(cmd, env=env or subprocess_env(), cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.003)
    assert proc.poll() is None, f"it finished before the signal: {proc.stderr.read().decode()[-2000:]}"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err.decode()


def free_port() -> int:
    """A TCP port free on localhost now (for accelerate's --main_process_port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_cpu_ranks(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """`accelerate launch` of `args` (a script path, or "-m", module, ...) on two CPU processes with
    recipes/accelerate/cpu-2proc.yaml, one thread each, offline, from the repository root; output captured."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "recipes" / "accelerate" / "cpu-2proc.yaml"), "--num_processes", "2",
           "--main_process_port", str(free_port()), *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
