"""Safety: data and recipes never run code nobody asked for, and a run directory has one writer.

Each test stands for one promise of the README's "Security" section: a dataset's env spec, a recipe's stage
name or a model path never runs or fetches anything; the code that may run (reward modules,
trust_remote_code) is announced; a second process on a run directory exits 2; a Ctrl-C in a checkpoint write
still ends in the one-line interrupt; files get the user's umask.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY_TRAIN, run_cli, snapshot, subprocess_env
from tests.offline.helpers import two_episodes, write_dataset

OFFLINE = ["max_steps=4", "batch_size=4", "hidden=[8]", "eval_every=2", "log_every=1", "checkpoint_every=1",
           "torch_threads=1", "--quiet"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------------------- a dataset's env
def _hostile_dataset(root: Path, ds_id: str, field: str, marker: Path, **change) -> str:
    """Pendulum data whose recorded env spec (`field`: env_spec or eval_env_spec) is changed by `change`."""
    write_dataset(ds_id, two_episodes(), ref_min=-10.0, ref_max=10.0)
    meta_path = root / ds_id / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    spec = json.loads(meta["env_spec"])
    spec.update({k: v(marker) if callable(v) else v for k, v in change.items()})
    meta[field] = json.dumps(spec)
    meta_path.write_text(json.dumps(meta))
    return ds_id


HOSTILE = {
    "eval-spec-runs-os-system": ("eval_env_spec", {"entry_point": "os:system",
                                                   "kwargs": lambda m: {"command": f"touch {m}"}}, "entry_point"),
    "env-spec-runs-os-system": ("env_spec", {"entry_point": "os:system",
                                             "kwargs": lambda m: {"command": f"touch {m}"}}, "entry_point"),
    "wrapper-runs-code": ("eval_env_spec", {"additional_wrappers": lambda m: [
        {"name": "W", "entry_point": "os:system", "kwargs": {"command": f"touch {m}"}}]}, "additional_wrappers"),
    "kwargs-differ": ("eval_env_spec", {"kwargs": {"g": 99.0}}, "kwargs"),
    "unregistered-id": ("eval_env_spec", {"id": "os:Pendulum-v1", "entry_point": "os:system"}, "not registered"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_dataset_env_spec_never_runs_code(workdir, capfd, case):
    field, change, what = HOSTILE[case]
    marker = workdir / "marker"
    ds = _hostile_dataset(workdir / "minari", "test/hostile-v0", field, marker, **change)
    out = workdir / "out"
    code, err = run_cli(["iql", f"dataset={ds}", f"output_dir={out}", "eval_episodes=1", *OFFLINE], capfd)
    assert not marker.exists()  # nothing the dataset named ran
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("reins iql: error: test/hostile-v0") and what in err[0], err[0]
    assert "trust_dataset_env=true" in err[0]
    assert snapshot(out) == {}


def test_trust_dataset_env_is_the_opt_in_and_documented(workdir, capfd):
    """With trust_dataset_env=true the recorded spec is what is made (here: it runs the marker command, as
    the user asked), and the key has help in `reins iql --help`."""
    marker = workdir / "marker"
    ds = _hostile_dataset(workdir / "minari", "test/trusted-v0", "eval_env_spec", marker, entry_point="os:system",
                          kwargs=lambda m: {"command": f"touch {m}"})
    code, err = run_cli(["iql", f"dataset={ds}", f"output_dir={workdir / 'out'}", "eval_episodes=1",
                         "trust_dataset_env=true", *OFFLINE], capfd)
    assert marker.exists() and code == 2  # os.system returned an int, not an env: refused after it ran
    from reins.cli import main

    assert main(["iql", "--help"]) == 0
    help_text = capfd.readouterr().out
    lines = help_text.splitlines()
    at = next(i for i, x in enumerate(lines) if x.lstrip().startswith("trust_dataset_env"))
    assert "runs the code" in " ".join(lines[at:at + 4])  # the key, then its help


def test_a_registered_spec_still_evaluates(workdir, capfd):
    """A dataset recorded in the registered env (what `reins collect` writes) is evaluated as before."""
    write_dataset("test/ok-v0", two_episodes(), ref_min=-10.0, ref_max=10.0)
    out = workdir / "out"
    code, err = run_cli(["iql", "dataset=test/ok-v0", f"output_dir={out}", "eval_episodes=1", *OFFLINE], capfd)
    assert code == 0, err
    assert "eval/normalized_score" in json.loads((out / "metrics.json").read_text())


# ----------------------------------------------------------------------------------------- one writer
def _hold_lock(path: Path) -> subprocess.Popen:
    """Another process holding `path`'s run-directory lock (as a running stage does) until it is killed."""
    path.mkdir(parents=True, exist_ok=True)
    code = ("import sys, time\nfrom reins.runio import lock_run_dir\n"
            f"lock = lock_run_dir({str(path)!r})\nprint('locked', flush=True)\ntime.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


@pytest.mark.slow  # two fresh interpreters importing torch: ~10-30 s on a loaded 2-core machine
def test_two_stage_processes_on_one_output_dir(workdir):
    """The second `reins iql` on a directory a first one is writing exits 2 naming the first one's pid, and
    writes nothing; once the first is killed (SIGKILL: no cleanup), the lock it left never blocks."""
    write_dataset("test/ok-v0", two_episodes(), ref_min=-10.0, ref_max=10.0)
    out = workdir / "out"
    cmd = [sys.executable, "-m", "reins.cli", "iql", "dataset=test/ok-v0", f"output_dir={out}", "eval_episodes=0",
           "max_steps=100000000", "batch_size=4", "hidden=[8]", "log_every=10", "checkpoint_every=1000000",
           "torch_threads=1", "--quiet"]
    env = subprocess_env(MINARI_DATASETS_PATH=workdir / "minari")
    first = subprocess.Popen(cmd, env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not (out / "log.jsonl").is_file() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read().decode()
        before = (out / "config.yaml").read_bytes()
        second = subprocess.run(cmd, env=env, cwd=workdir, capture_output=True, text=True, timeout=120)
        err = [x for x in second.stderr.splitlines() if x.strip()]
        assert second.returncode == 2 and len(err) == 1, second.stderr
        assert f"pid {first.pid}" in err[0] and str(out) in err[0] and err[0].startswith("reins iql: error: ")
        assert (out / "config.yaml").read_bytes() == before
    finally:
        first.kill()
        first.wait()
    from reins.runio import lock_run_dir

    lock = lock_run_dir(out)  # the killed process's lock file is there, its lock is not
    assert lock is not None
    lock.release()


@pytest.mark.parametrize("command", ["sft", "collect", "run", "export"])
def test_every_command_takes_the_lock(workdir, capfd, command):
    """sft, collect, `reins run` and `reins export` refuse a directory another process holds, in one line."""
    target = workdir / ("run" if command == "run" else "out")
    target.mkdir()
    argv = {
        "sft": ["sft", f"output_dir={target}", *TINY_TRAIN, "--quiet"],
        "collect": ["collect", f"output_dir={target}", "behaviour=scripted", "tiers=[random]", "steps_per_tier=20",
                    "ref_episodes=1", "dataset_prefix=test/locked", "--quiet"],
        "run": ["run", str(_recipe(workdir, target)), "--quiet"],
        "export": ["export", str(target), "--out", str(workdir / "exported"), "--quiet"],
    }[command]
    holder = _hold_lock(target if command != "run" else target / "a")
    try:
        code, err = run_cli(argv, capfd)
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and len(err) == 1, err
    assert f"pid {holder.pid}" in err[0] and "in use by another reins process" in err[0]


def _recipe(workdir: Path, out: Path) -> Path:
    p = workdir / "r.yaml"
    p.write_text(f"output_dir: {out}\nstages:\n  - name: a\n    stage: iql\n    dataset: test/ok-v0\n"
                 "    max_steps: 2\n    eval_episodes: 0\n    hidden: [8]\n    batch_size: 4\n")
    write_dataset("test/ok-v0", two_episodes(), ref_min=-10.0, ref_max=10.0)
    return p


def test_a_foreign_output_dir_is_refused_unless_overwrite(workdir, capfd):
    """`reins sft output_dir=.` in a directory holding someone's metrics.json neither returns that file as its
    result nor writes a config.yaml there; overwrite_output_dir=true trains there, replacing it."""
    out = workdir / "theirs"
    out.mkdir()
    (out / "metrics.json").write_text('{"their": 1}\n')
    (out / "notes.txt").write_text("keep me\n")
    before = snapshot(out)
    code, err = run_cli(["sft", f"output_dir={out}", *TINY_TRAIN, "--quiet"], capfd)
    assert code == 2 and len(err) == 1, err
    assert "is not empty" in err[0] and "overwrite_output_dir=true" in err[0] and str(out) in err[0]
    assert snapshot(out) == before
    code, err = run_cli(["sft", f"output_dir={out}", *TINY_TRAIN, "overwrite_output_dir=true", "--quiet"], capfd)
    assert code == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    assert "their" not in metrics and metrics["steps"] == 2 and "train/loss" in metrics
    assert (out / "notes.txt").read_text() == "keep me\n" and (out / "model").is_dir()


# ----------------------------------------------------------------------------------------- recipes
def _evil_package(workdir: Path) -> Path:
    """A package whose import creates a marker file (what a recipe's `stage: evilpkg.evil` would run)."""
    pkg = workdir / "evilpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    marker = workdir / "imported"
    (pkg / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return marker


def test_a_recipe_stage_name_imports_nothing(workdir, capsys, monkeypatch):
    from pipelines.runner import main

    marker = _evil_package(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    recipe = workdir / "r.yaml"
    for stage in ("evilpkg.evil", "evilpkg.evil:x"):
        recipe.write_text(f"output_dir: {workdir / 'o'}\nstages:\n  - name: a\n    stage: {stage}\n")
        for dry in ([], ["--dry-run"]):
            assert main([str(recipe), *dry]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"unknown stage '{stage}'" in err[0], err
    # The explicit plugin form is user code too, but a dry run does not import it.
    recipe.write_text(f"output_dir: {workdir / 'o'}\nstages:\n  - name: a\n    stage: plugin:evilpkg.evil\n")
    assert main([str(recipe), "--dry-run"]) == 0
    assert "plugin, not imported" in capsys.readouterr().out
    assert not marker.exists() and not (workdir / "o").exists()


@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "x y"])
def test_stage_names_stay_inside_output_dir(workdir, capsys, name):
    from pipelines.runner import main

    write_dataset("test/ok-v0", two_episodes())
    recipe = workdir / "deep" / "r.yaml"
    recipe.parent.mkdir()
    recipe.write_text(f"output_dir: {workdir / 'deep' / 'o'}\nstages:\n  - name: {json.dumps(name)}\n"
                      "    stage: iql\n    dataset: test/ok-v0\n    max_steps: 2\n    eval_episodes: 0\n")
    before = sorted(str(p) for p in workdir.rglob("*"))
    assert main([str(recipe)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be letters, digits" in err[0], err
    assert sorted(str(p) for p in workdir.rglob("*")) == before


# ----------------------------------------------------------------------------------------- user code
def test_reward_module_is_found_from_the_current_directory(workdir, monkeypatch):
    """`reins` (a console script: its bin/ first on sys.path) finds `module:function` where `python -m
    pipelines.grpo` does: in the current directory."""
    from pipelines.reward_funcs import resolve_reward_funcs

    (workdir / "my_reward_mod_s22.py").write_text("def score(prompts, completions):\n"
                                                  "    return [float(len(c)) for c in completions]\n")
    monkeypatch.setattr(sys, "path", [str(Path(sys.executable).parent)]
                        + [p for p in sys.path if p not in ("", os.getcwd(), str(workdir))])
    monkeypatch.delitem(sys.modules, "my_reward_mod_s22", raising=False)
    (fn,) = resolve_reward_funcs(["my_reward_mod_s22:score"], None, None)
    assert fn.call(["p", "q"], ["ab", "abcd"], None, {}) == [2.0, 4.0]


def test_trust_remote_code_names_each_model_once(tmp_path, capfd, monkeypatch):
    """One warning line per model the flag applies to (the tokenizer and the weights of one model: one line)."""
    from pipelines import models
    from pipelines.models import ModelArgs, TinySpec, load_causal_lm, load_tokenizer, save_tokenizer

    monkeypatch.setattr(models, "_TRUST_WARNED", set())
    tiny = TinySpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=400)
    tok = load_tokenizer(ModelArgs(model="tiny", tiny=tiny))
    base = load_causal_lm(ModelArgs(model="tiny", tiny=tiny), tok)
    dirs = []
    for name in ("m1", "m2"):
        base.save_pretrained(tmp_path / name)
        save_tokenizer(tok, tmp_path / name)
        dirs.append(str(tmp_path / name))
    capfd.readouterr()
    for d in dirs:
        args = ModelArgs(model=d, trust_remote_code=True)
        load_causal_lm(args, load_tokenizer(args))
    err = [x for x in capfd.readouterr().err.splitlines() if "trust_remote_code" in x]
    assert len(err) == 2 and all(f"'{d}'" in line for d, line in zip(dirs, err)), err
    assert all(line.startswith("reins: warning: trust_remote_code is on") for line in err)


def test_revision_pins_the_hub_model_only(monkeypatch):
    from pipelines import models
    from pipelines.models import ModelArgs
    from pipelines.rlhf_models import _args_for
    from reins.errors import ConfigError

    seen = []

    class Fake:
        @staticmethod
        def from_pretrained(name, **kw):
            seen.append((name, kw.get("revision"), kw.get("trust_remote_code")))
            return "model"

    args = ModelArgs(model="org/policy", revision="0123abc")
    assert models._from_pretrained(Fake, "org/policy", args) == "model"
    models._from_pretrained(Fake, "org/ref", _args_for(args, "org/ref", trainable=False))
    assert seen == [("org/policy", "0123abc", False), ("org/ref", None, False)]
    with pytest.raises(ConfigError, match="revision applies to a Hub id"):
        ModelArgs(model="./local", revision="main").validate_model()


# ----------------------------------------------------------------------------------------- local paths
def test_a_missing_path_under_a_local_directory_is_not_a_hub_id(workdir, capfd, monkeypatch):
    import datasets

    from pipelines.data import load_records
    from tests.helpers import block_network

    (workdir / "outputs").mkdir()
    attempts = block_network(monkeypatch)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code, err = run_cli(["sft", "model=outputs/sft", f"output_dir={workdir / 'o'}", *TINY_TRAIN[6:], "--quiet"],
                        capfd)
    assert code == 2 and len(err) == 1 and "model path outputs/sft does not exist (no such directory" in err[0], err
    with pytest.raises(Exception, match="data file not found: outputs/prefs"):
        load_records("outputs/prefs", "train")
    assert attempts == []
    seen = {}
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: seen.update(kw) or (_ for _ in ()).throw(
        ValueError("offline")))
    with pytest.raises(Exception, match="offline"):
        load_records("someorg/somedata", "train")
    assert seen.get("trust_remote_code") is False


# ----------------------------------------------------------------------------------------- floors
def test_dependency_floors_exclude_published_bypasses():
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.version import Version

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    deps = {Requirement(d).name: Requirement(d) for d in
            tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    fixed = {"torch": "2.10.0", "transformers": "5.5.0", "jinja2": "3.1.6"}
    for name, first_fixed in fixed.items():
        spec = deps[name].specifier
        assert spec.contains(first_fixed)
        for bad in ("2.5.1", "2.9.1", "5.2.0", "5.4.0", "3.1.4", "3.1.5"):
            if Version(bad) < Version(first_fixed):
                assert not spec.contains(bad), (name, bad)
        assert spec.contains(version(name).split("+")[0]), (name, version(name))  # this venv satisfies them
    assert deps["torch"].specifier.contains("2.13.0")


# ----------------------------------------------------------------------------------------- interrupts, modes
def test_ctrl_c_during_a_checkpoint_write(workdir, capfd, monkeypatch):
    """A SIGINT that arrives while the second checkpoint is half written: the write completes, then the run
    ends with the one-line interrupt (exit 130), and that checkpoint loads with the step the line names."""
    import torch

    from reins.runio import safe_torch_load

    write_dataset("test/ok-v0", two_episodes(), ref_min=-10.0, ref_max=10.0)
    real_save, saves = torch.save, []

    class SignalMidWrite:
        def __init__(self, f):
            self.f, self.sent = f, False

        def write(self, b):
            if not self.sent:
                self.sent = True
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # the handler runs here, at the next bytecode, mid-write
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def save(obj, f, *a, **kw):
        saves.append(1)
        if len(saves) == 2 and isinstance(obj, dict) and "step" in obj:
            return real_save(obj, SignalMidWrite(f), *a, **kw)
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", save)
    out = workdir / "out"
    code, err = run_cli(["iql", "dataset=test/ok-v0", f"output_dir={out}", "eval_episodes=0", "max_steps=20",
                         "batch_size=4", "hidden=[8]", "log_every=1", "checkpoint_every=3", "torch_threads=1",
                         "--quiet"], capfd)
    assert code == 130 and err == ["reins iql: interrupted at step 6; rerun the same command to resume"], err
    state = safe_torch_load(out / "checkpoints" / "checkpoint.pt")
    assert state["step"] == 6
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["checkpoint.pt"]


def test_files_get_the_users_umask_and_directories_are_synced(tmp_path, monkeypatch):
    from reins import runio

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)) or real_fsync(fd))
    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)):
        old = os.umask(mask)
        try:
            runio.atomic_write_text(tmp_path / f"f{mask}", "x")
            d = runio.make_temp_dir(tmp_path, prefix="d")
        finally:
            os.umask(old)
        assert stat.S_IMODE((tmp_path / f"f{mask}").stat().st_mode) == file_mode
        assert stat.S_IMODE(d.stat().st_mode) == dir_mode
    assert synced.count(True) == 3 and synced.count(False) == 3  # each file, then its directory after the rename


def test_run_and_export_files_get_the_umask(workdir, capfd):
    write_dataset("test/ok-v0", two_episodes(), ref_min=-10.0, ref_max=10.0)
    old = os.umask(0o022)
    try:
        out = workdir / "out"
        assert run_cli(["iql", "dataset=test/ok-v0", f"output_dir={out}", "eval_episodes=0", *OFFLINE],
                       capfd)[0] == 0
        assert run_cli(["export", str(out), "--out", str(workdir / "exp"), "--quiet"], capfd)[0] == 0
    finally:
        os.umask(old)
    for p in ("out/config.yaml", "out/metrics.json", "out/checkpoints/checkpoint.pt", "out/policy.pt"):
        assert stat.S_IMODE((workdir / p).stat().st_mode) == 0o644, p
    assert stat.S_IMODE((workdir / "exp").stat().st_mode) == 0o755
