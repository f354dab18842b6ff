"""`python -m offline.multiseed` parses its argv with the stages' own parser (reins.config.parse_argv)."""

from __future__ import annotations

from pathlib import Path

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


def test_sigterm_ends_with_one_interrupted_line_and_the_seed_resumes(tmp_path):
    """SIGTERM mid-seed: exit 143 and one line (the stages' own contract), the seed's checkpoint kept."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "ms"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    data = root / "tests" / "data" / "sb3-hopper-medium-replay-slice.npz"
    proc = subprocess.Popen(
        [sys.executable, "-m", "offline.multiseed", "bc", f"dataset={data}",
         f"output_dir={out}", "max_steps=10000000", "eval_every=1000000", "checkpoint_every=50", "hidden=[16,16]",
         "seeds=[0]", "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpt = out / "seed_0" / "checkpoints" / "checkpoint.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert ckpt.exists(), proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and lines[0].startswith("offline.multiseed: interrupted at step "), err
    assert ckpt.exists()
