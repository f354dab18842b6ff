"""reins' KTO and SimPO (+ the RPO NLL term) agree with TRL 1.16's KTOTrainer and CPOTrainer(loss_type="simpo",
cpo_alpha) at step 1 on the same tiny model and data (benchmarks/interop/trl_kto_simpo.py drives both sides; TRL
runs in its own Python with reins not importable).

Needs a Python with trl 1.16: REINS_TRL_PYTHON, else the benchmark venv `.venv-bench` (benchmarks/README.md);
skipped when neither has trl."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks.interop.trl_kto_simpo import KTO_KEYS, SIMPO_KEYS, make_models, run_pair, step1_diffs, write_data

ROOT = Path(__file__).resolve().parents[2]


def _trl_python() -> str | None:
    for python in (os.environ.get("REINS_TRL_PYTHON"), str(ROOT / ".venv-bench" / "bin" / "python")):
        if python and Path(python).is_file():
            probe = subprocess.run([python, "-I", "-c", "import trl; print(trl.__version__)"], capture_output=True,
                                   text=True)
            if probe.returncode == 0 and probe.stdout.startswith("1."):
                return python
    return None


TRL_PYTHON = _trl_python()
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(TRL_PYTHON is None, reason="no Python with trl 1.x (set REINS_TRL_PYTHON)")]


def test_step1_metrics_equal_trl(tmp_path):
    a = SimpleNamespace(beta=0.1, lr=1e-4, steps=1, max_length=128, seed=0, simpo_gamma=0.5, cpo_alpha=1.0)
    policy, reference = make_models(tmp_path)
    data = write_data(tmp_path, 16, 0)
    for name, keys in (("kto-standard", KTO_KEYS), ("simpo", SIMPO_KEYS)):
        res = run_pair(tmp_path, name, data[name], policy, reference, a, TRL_PYTHON)
        diffs = step1_diffs(res, keys)
        assert set(diffs) == set(keys), (name, diffs)
        for key, (ours, theirs, d) in diffs.items():
            # log-probs are sums of ~100 float32 terms: compared relative to their size
            assert d <= 1e-5 * max(1.0, abs(theirs)), (name, key, ours, theirs)
        if name == "kto-standard":
            assert diffs["kl"][1] > 0.01  # policy != reference: the reference point is really compared
        else:
            assert diffs["nll_loss"][1] > 1.0  # the NLL term is on (cpo_alpha = rpo_alpha = 1)
