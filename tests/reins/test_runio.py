"""The run directory: atomic files, config guard, log truncation, safe checkpoint loading, RNG round trip,
finiteness checks."""

import json
import os
import pickle
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from reins.errors import ConfigError, DataError, NonFiniteError
from reins.runio import (
    FiniteGuard,
    RunDir,
    check_finite,
    get_rng_state,
    safe_torch_load,
    seed_everything,
    set_rng_state,
)


@dataclass
class Cfg:
    output_dir: str
    lr: float = 0.1
    quiet: bool = True


def test_config_guard_refuses_other_run_and_keeps_its_files(tmp_path):
    run = RunDir(tmp_path, Cfg(str(tmp_path)))
    run.finish({"loss": 1.0})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match=r"holds a different run's config \(differs in: lr\)"):
        RunDir(tmp_path, Cfg(str(tmp_path), lr=0.2))
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert before == after
    # Same config (a non-semantic key may differ): accepted, completed metrics visible.
    again = RunDir(tmp_path, Cfg(str(tmp_path), quiet=False))
    assert again.completed_metrics() == {"loss": 1.0}


def test_log_truncation_and_nonfinite_values(tmp_path):
    run = RunDir(tmp_path, Cfg(str(tmp_path)))
    for s in range(5):
        run.log(s, {"loss": float(s), "bad": float("nan")})
    with open(run.log_path, "a") as f:
        f.write('{"step": 5, "loss"')  # a line cut by a kill
    run.truncate_log(2)
    rows = run.read_log()
    assert [r["step"] for r in rows] == [0, 1, 2]
    assert rows[0]["bad"] is None  # NaN is not valid JSON: stored as null


def test_checkpoint_roundtrip_and_pickle_refused(tmp_path):
    run = RunDir(tmp_path, Cfg(str(tmp_path)))
    state = {"w": torch.arange(3.0), "step": 4, "opt": {"lr": 0.1}, "rng": get_rng_state()}
    run.save_checkpoint(state)
    loaded = run.load_checkpoint()
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 4
    assert not [p for p in run.checkpoint_path.parent.iterdir() if p.name.endswith(".tmp")]

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": Evil()}))
    with pytest.raises(DataError, match="refused to load"):
        safe_torch_load(evil)
    assert not marker.exists()


def test_rng_state_roundtrip(tmp_path):
    seed_everything(3)
    state = get_rng_state()
    a = (random.random(), np.random.rand(), torch.rand(2))
    path = tmp_path / "rng.pt"
    torch.save(state, path)
    set_rng_state(torch.load(path, weights_only=True))
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_check_finite():
    check_finite("loss", torch.tensor(1.0))
    with pytest.raises(NonFiniteError, match="non-finite loss at step 7"):
        check_finite("loss", torch.tensor([1.0, float("inf")]), step=7)
    with pytest.raises(NonFiniteError):
        check_finite("reward", float("nan"))


def _no_host_reads(monkeypatch) -> list[str]:
    """Count every tensor-to-host read (the ways a Tensor becomes a Python value)."""
    reads: list[str] = []
    for name in ("item", "tolist", "numpy", "__float__", "__bool__", "__int__", "__index__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            reads.append(_name)
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


def test_finite_guard_names_the_first_bad_step_of_each_metric_without_host_reads(monkeypatch):
    nan, inf = float("nan"), float("inf")
    series = {  # step -> metrics; "q" turns bad at 4 and stays bad, "pi" at 6 (a vector), "v" never
        s: {"q": torch.tensor(nan if s >= 4 else 1.0), "pi": torch.tensor([0.0, inf if s == 6 else 2.0]),
            "v": torch.tensor(float(s), dtype=torch.float64)}
        for s in range(1, 9)}
    guard = FiniteGuard()
    reads = _no_host_reads(monkeypatch)
    for s in range(1, 4):
        guard.record(s, series[s])
    assert reads == []
    monkeypatch.undo()
    guard.check()  # steps 1-3 are finite
    assert guard.first_bad() is None
    reads = _no_host_reads(monkeypatch)
    for s in range(4, 9):
        guard.record(s, series[s])
    assert reads == []  # recording never reads the device, also after a bad step
    monkeypatch.undo()
    msg = r"^non-finite q at step 4; stopping \(the last good checkpoint is kept\)$"
    with pytest.raises(NonFiniteError, match=msg):
        guard.check()
    first = dict(zip(guard.names, guard._first.tolist()))
    assert first == {"q": 4, "pi": 6, "v": -1}  # each metric keeps its own first bad step


def test_finite_guard_earliest_step_wins_then_the_first_watched_metric():
    guard = FiniteGuard()
    guard.record(1, {"a": torch.tensor(1.0), "b": torch.tensor(1.0)})
    guard.record(2, {"a": torch.tensor(1.0), "b": torch.tensor(float("-inf"))})
    guard.record(3, {"a": torch.tensor(float("nan")), "b": torch.tensor(float("nan"))})
    assert guard.first_bad() == ("b", 2)  # b's step 2 before a's step 3, though a is watched first
    tie = FiniteGuard()
    tie.record(5, {"loss": torch.tensor(float("nan")), "grad_norm": torch.tensor(float("nan"))})
    assert tie.first_bad() == ("loss", 5)


def test_finite_guard_takes_numbers_and_metrics_that_come_and_go():
    guard = FiniteGuard()
    guard.record(10, {"critic": 1.0})                              # host numbers are checked too
    guard.record(11, {"critic": 2.0, "actor": torch.tensor(3.0)})  # a metric first seen at step 11
    guard.record(12, {"critic": 2.5})                              # and missing at 12: not checked there
    guard.check()
    guard.record(13, {"actor": torch.tensor(float("nan")), "critic": float("inf")})
    assert guard.first_bad() == ("critic", 13)  # a tie: the metric watched first, not the order given at 13


def test_metrics_written_atomically(tmp_path):
    run = RunDir(tmp_path, Cfg(str(tmp_path)))
    assert run.completed_metrics() is None
    run.finish({"a/b": torch.tensor(2.0), "c": np.float32(1.5)})
    assert json.loads(run.metrics_path.read_text()) == {"a/b": 2.0, "c": 1.5}


@dataclass
class TbCfg:
    output_dir: str
    report_to: str = "tensorboard"
    quiet: bool = True


def test_report_to_tensorboard_writes_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = RunDir(tmp_path, TbCfg(str(tmp_path)))
    for s in range(3):
        run.log(s, {"loss": 1.0 / (s + 1), "samples": ["text"], "flag": True})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert acc.Tags()["scalars"] == ["loss"]
    assert [(e.step, round(e.value, 6)) for e in acc.Scalars("loss")] == [(0, 1.0), (1, 0.5), (2, 0.333333)]
    assert len(run.read_log()) == 3  # jsonl is always written too


def test_report_to_rejects_unknown_backend(tmp_path):
    with pytest.raises(ConfigError, match="report_to must be one of none, jsonl, tensorboard, got 'wandb'"):
        RunDir(tmp_path, TbCfg(str(tmp_path), report_to="wandb"))
    assert not (tmp_path / "config.yaml").exists()


@dataclass
class CfgV2:
    """Cfg after a release added an option."""

    output_dir: str = ""
    lr: float = 0.1
    quiet: bool = True
    new_option: int = 3


def test_added_option_at_default_is_the_same_run(tmp_path):
    RunDir(tmp_path, Cfg(str(tmp_path))).finish({"loss": 1.0})
    # The new option at its default: still this run (resumable, cached) ...
    assert RunDir(tmp_path, CfgV2(str(tmp_path))).completed_metrics() == {"loss": 1.0}
    # ... set away from its default: a different run.
    other = tmp_path / "other"
    RunDir(other, Cfg(str(other)))
    with pytest.raises(ConfigError, match=r"differs in: new_option"):
        RunDir(other, CfgV2(str(other), new_option=4))


def test_finite_guard_watches_a_list_of_tensors_as_one_metric():
    net = torch.nn.Linear(4, 3)
    guard = FiniteGuard()
    guard.record(1, {"policy parameters": list(net.parameters())})
    guard.check()
    with torch.no_grad():
        net.bias[2] = float("-inf")
    guard.record(2, {"policy parameters": list(net.parameters())})
    with pytest.raises(NonFiniteError, match="non-finite policy parameters at step 2"):
        guard.check()
