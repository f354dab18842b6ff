"""config.yaml of an online run holds only the selected agent's section; other agents' defaults do not matter."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from online.sac import SACConfig
from online.stage import AGENTS, Config, train
from reins.config import dump_yaml, from_dict, to_dict
from reins.errors import ConfigError
from reins.runio import CONFIG_FILE, RunDir, config_changes


def _cfg(path, **kw):
    return from_dict(Config, {"output_dir": str(path), "quiet": True, **kw})


def _saved(path) -> dict:
    return yaml.safe_load((path / CONFIG_FILE).read_text())


def _change_sac_default(monkeypatch, key: str, value):
    """Change SACConfig's default for `key` (as a new release would), restored after the test."""
    names = [f.name for f in dataclasses.fields(SACConfig)]
    defaults = list(SACConfig.__init__.__defaults__)
    assert len(defaults) == len(names) and defaults[names.index(key)] != value
    defaults[names.index(key)] = value
    monkeypatch.setattr(SACConfig.__init__, "__defaults__", tuple(defaults))
    assert getattr(Config(output_dir="x").sac, key) == value


def test_config_yaml_holds_only_the_selected_agent(tmp_path):
    cfg = _cfg(tmp_path, algo="ppo", ppo={"clip_eps": 0.1})
    RunDir(tmp_path, cfg)
    saved = _saved(tmp_path)
    full = to_dict(cfg)
    assert "sac" not in saved and [k for k in saved if k in AGENTS] == ["ppo"]
    assert saved == {k: v for k, v in full.items() if k not in AGENTS or k == "ppo"}
    assert saved["ppo"]["clip_eps"] == 0.1
    # The saved file still repeats the run: loading it gives the same config.
    assert to_dict(from_dict(Config, saved)) == full


def test_other_agent_default_change_resumes(tmp_path, monkeypatch):
    RunDir(tmp_path, _cfg(tmp_path, algo="ppo")).finish({"eval/return_mean": 1.0})
    _change_sac_default(monkeypatch, "alpha", 0.5)
    _change_sac_default(monkeypatch, "actor_lr", 1e-3)
    assert RunDir(tmp_path, _cfg(tmp_path, algo="ppo")).completed_metrics() == {"eval/return_mean": 1.0}
    # ... but a run of sac itself is a different run when its defaults change.
    sac_dir = tmp_path / "sac"
    monkeypatch.undo()
    RunDir(sac_dir, _cfg(sac_dir, algo="sac", env_id="Pendulum-v1"))
    _change_sac_default(monkeypatch, "alpha", 0.5)
    with pytest.raises(ConfigError, match=r"differs in: sac\.alpha"):
        RunDir(sac_dir, _cfg(sac_dir, algo="sac", env_id="Pendulum-v1"))


def test_run_saved_with_every_section_resumes(tmp_path):
    """A saved config.yaml holding every agent's section resumes when only the other agents' sections differ."""
    old = to_dict(_cfg(tmp_path, algo="ppo"))
    old["sac"]["alpha"] = 0.7            # saved with an older sac / dqn default
    old["dqn"]["gamma"] = 0.5
    (tmp_path / CONFIG_FILE).write_text(dump_yaml(old))
    cfg = _cfg(tmp_path, algo="ppo")
    assert config_changes(old, cfg) == []  # also what `reins run` uses to skip a finished stage
    RunDir(tmp_path, cfg)
    assert "sac" not in _saved(tmp_path)   # rewritten in the new form
    old["ppo"]["clip_eps"] = 0.3
    (tmp_path / CONFIG_FILE).write_text(dump_yaml(old))
    with pytest.raises(ConfigError, match=r"differs in: ppo\.clip_eps\)"):
        RunDir(tmp_path, cfg)


def test_selected_agent_changes_are_still_refused(tmp_path):
    RunDir(tmp_path, _cfg(tmp_path, algo="ppo"))
    with pytest.raises(ConfigError, match=r"differs in: ppo\.clip_eps\)"):
        RunDir(tmp_path, _cfg(tmp_path, algo="ppo", ppo={"clip_eps": 0.3}))
    with pytest.raises(ConfigError, match=r"differs in: algo\)"):  # the saved run is another algo
        RunDir(tmp_path, _cfg(tmp_path, algo="npg"))
    with pytest.raises(ConfigError, match=r"differs in: total_steps"):  # shared keys are compared as before
        RunDir(tmp_path, _cfg(tmp_path, algo="ppo", total_steps=5))


def test_option_added_to_the_selected_section_since_saving(tmp_path):
    """A key the saved section lacks (added in a newer version) counts only when set away from its default."""
    RunDir(tmp_path, _cfg(tmp_path, algo="ppo"))
    saved = _saved(tmp_path)
    del saved["ppo"]["clip_value"]
    (tmp_path / CONFIG_FILE).write_text(dump_yaml(saved))
    RunDir(tmp_path, _cfg(tmp_path, algo="ppo"))
    (tmp_path / CONFIG_FILE).write_text(dump_yaml(saved))
    with pytest.raises(ConfigError, match=r"differs in: ppo\.clip_value"):
        RunDir(tmp_path, _cfg(tmp_path, algo="ppo", ppo={"clip_value": True}))


def test_missing_output_dir_is_still_an_error():
    with pytest.raises(ConfigError, match="output_dir must be set"):
        from_dict(Config, {"algo": "ppo"})


def test_finished_run_is_reused_after_a_sac_default_change(tmp_path, monkeypatch):
    """Through the stage itself: a finished ppo run returns its metrics instead of refusing the directory."""
    kw = dict(algo="ppo", total_steps=32, eval_every=0, eval_episodes=1, checkpoint_every=0,
              ppo={"num_envs": 1, "num_steps": 32, "hidden": [8], "update_epochs": 1, "num_minibatches": 1})
    first = train(_cfg(tmp_path, **kw))
    assert "sac" not in _saved(tmp_path)
    _change_sac_default(monkeypatch, "alpha", 0.5)
    assert train(_cfg(tmp_path, **kw)) == first
