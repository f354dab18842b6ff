"""`python -m offline.multiseed` parses its argv with the stages' own parser (reins.config.parse_argv)."""

from __future__ import annotations

import pytest

from offline import multiseed


@pytest.mark.parametrize("argv, msg", [
    (["iql", "--config"], "--config needs a file"),
    (["iql", "seeds=[0,x]"], "seeds must be integers"),
    (["iql", "--seeds"], "override '--seeds' has no value"),
    (["sac", "output_dir=x"], "unknown offline stage 'sac'"),
])
def test_bad_argv_is_a_one_line_error(argv, msg, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert multiseed.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("offline.multiseed: error: ") and msg in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []   # nothing written


def test_config_and_quiet_reach_every_seed(monkeypatch, tmp_path):
    seen = {}

    def fake_run_seeds(stage, config_path, overrides, seeds):
        seen.update(stage=stage, config_path=config_path, overrides=overrides, seeds=seeds)
        return {}

    monkeypatch.setattr(multiseed, "run_seeds", fake_run_seeds)
    assert multiseed.main(["bc", "--quiet", "steps=5", "--config=r.yaml", "seeds=[3,4]"]) == 0
    assert seen == {"stage": "bc", "config_path": "r.yaml", "overrides": {"steps": 5, "quiet": True},
                    "seeds": [3, 4]}
