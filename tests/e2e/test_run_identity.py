"""A checkpoint and a run directory remember which run made them (issue 22, "Resume and caching trust config.yaml
alone"): the semantic config and the fingerprints of the local files it names. Resuming or reusing them under a
different config or on changed data is one line and exit 2, with nothing in the directory changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines import sft
from reins.fingerprint import config_inputs, path_fingerprint
from reins.runio import RunDir
from tests.pipelines.helpers import stage_overrides, write_jsonl


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _config(tmp_path: Path, data: Path, **kw) -> Path:
    cfg = stage_overrides(tmp_path, **{"data": str(data), "eval_data": str(data), "max_steps": 4, "save_every": 2,
                                       **kw})
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _interrupt_after_first_checkpoint(monkeypatch, config: Path) -> None:
    """Run sft until its first checkpoint (step 2) is written, then stop it as a kill would."""
    original = RunDir.save_checkpoint

    def save_then_stop(self, state):
        original(self, state)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(RunDir, "save_checkpoint", save_then_stop)
        assert sft.main(["--config", str(config)]) == 130


@pytest.fixture
def data(tmp_path):
    rows = [{"prompt": f"q{i} ", "completion": f"answer {i % 7}"} for i in range(24)]
    return write_jsonl(tmp_path / "train.jsonl", rows)


def test_resume_refuses_a_checkpoint_of_another_config_or_other_data(tmp_path, data, monkeypatch, capsys):
    config = _config(tmp_path, data)
    _interrupt_after_first_checkpoint(monkeypatch, config)
    out = tmp_path / "run"
    assert (out / "checkpoints" / "checkpoint.pt").is_file() and not (out / "metrics.json").exists()
    (out / "config.yaml").unlink()  # the scenario: config.yaml gone, the checkpoint stays
    before = _snapshot(out)
    capsys.readouterr()

    assert sft.main(["--config", str(config), "learning_rate=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning_rate" in err[0] and "checkpoint" in err[0], err
    assert _snapshot(out) == before  # nothing written: no config.yaml, no log rows, same checkpoint

    # Same config, but the training data was edited since the checkpoint: refused, naming the input.
    data.write_text(data.read_text().replace("answer 3", "answer 4"))
    assert sft.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input data" in err[0] and "learning_rate" not in err[0], err
    assert _snapshot(out) == before


def test_same_run_resumes_and_a_resume_may_change_log_every(tmp_path, data, monkeypatch, capsys):
    config = _config(tmp_path, data)
    _interrupt_after_first_checkpoint(monkeypatch, config)
    (tmp_path / "run" / "config.yaml").unlink()
    data.write_text(data.read_text())  # touched (new mtime), same bytes: the same input
    assert sft.main(["--config", str(config), "log_every=3"]) == 0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 4


def test_a_completed_run_on_edited_data_is_not_reused(tmp_path, data, capsys):
    config = _config(tmp_path, data, max_steps=2)
    assert sft.main(["--config", str(config)]) == 0
    before = _snapshot(tmp_path / "run")
    assert sft.main(["--config", str(config)]) == 0  # unchanged: the finished run's metrics, no retraining
    (tmp_path / "run" / "config.yaml").unlink()
    before = _snapshot(tmp_path / "run")
    capsys.readouterr()
    assert sft.main(["--config", str(config), "learning_rate=0.5"]) == 2  # not another run's metrics
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "learning_rate" in err[0] and "finished run" in err[0], err
    data.write_text(data.read_text() + json.dumps({"prompt": "new ", "completion": "row"}) + "\n")
    capsys.readouterr()
    assert sft.main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "input data" in err[0] and "another config or other inputs" in err[0], err
    assert _snapshot(tmp_path / "run") == before


def test_fingerprints_follow_content_and_upstream_runs(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("x")
    b = tmp_path / "b.txt"
    b.write_text("x")
    assert path_fingerprint(a) == path_fingerprint(b)  # content, not name
    b.write_text("y")
    assert path_fingerprint(a) != path_fingerprint(b)
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_text("1")
    before = path_fingerprint(d)
    (d / "sub" / "f").write_text("2")
    assert path_fingerprint(d) != before
    # A path inside a completed run is identified by that run's metrics.json (cheap for a big model dir).
    up = tmp_path / "up"
    (up / "model").mkdir(parents=True)
    (up / "config.yaml").write_text("a: 1\n")
    (up / "metrics.json").write_text('{"loss": 1.0}')
    fp = path_fingerprint(up / "model")
    (up / "model" / "weights").write_text("changed without a new run")
    assert path_fingerprint(up / "model") == fp
    (up / "metrics.json").write_text('{"loss": 0.5}')
    assert path_fingerprint(up / "model") != fp
    # The run's own output_dir, paths inside it and its ancestors are not inputs; missing paths are not either.
    cfg = {"output_dir": str(up), "data": str(a), "m": str(up / "model"), "root": str(tmp_path), "x": "nope",
           "nested": {"files": [str(b)]}}
    assert set(config_inputs(cfg, up)) == {"data", "nested.files[0]"}


def test_offline_resume_refuses_a_rewritten_minari_dataset(tmp_path, monkeypatch):
    """The offline family: `dataset` is a Minari id, resolved to its directory by OfflineConfig.input_paths."""
    import shutil

    from offline import bc
    from reins.errors import ConfigError
    from tests.offline.helpers import make_episode, write_dataset

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))

    def episodes(reward: float):
        obs = [[float(i), 0.0, 0.0] for i in range(9)]
        return [make_episode(obs, [[0.1 * i] for i in range(8)], [reward] * 8, [0] * 7 + [1], [0] * 8, seed=s)
                for s in range(2)]

    write_dataset("test/ident-v0", episodes(1.0))
    cfg = bc.Config(dataset="test/ident-v0", output_dir=str(tmp_path / "bc"), hidden=[8], batch_size=4, max_steps=6,
                    checkpoint_every=2, log_every=2, eval_every=6, eval_episodes=0, normalize_score=False,
                    quiet=True, torch_threads=1)
    original = RunDir.save_checkpoint

    def save_then_stop(self, state):
        original(self, state)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(RunDir, "save_checkpoint", save_then_stop)
        with pytest.raises(KeyboardInterrupt):
            bc.train(cfg)
    shutil.rmtree(tmp_path / "minari" / "test")
    write_dataset("test/ident-v0", episodes(2.0))  # same id, other rewards
    before = _snapshot(tmp_path / "bc")
    with pytest.raises(ConfigError, match="checkpoint belongs to a different run .*input dataset"):
        bc.train(cfg)
    assert _snapshot(tmp_path / "bc") == before
