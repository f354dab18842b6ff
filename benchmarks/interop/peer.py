"""Run a script in a peer venv's Python with reins not importable, even where that venv has reins installed
editable (benchmarks/run_all.py's `ensure_venv` does so): `-I -S` skips PYTHONPATH, the script's directory and
every .pth file (the editable install's finder among them); the venv's site-packages go back on sys.path by hand,
after the script's own directory (for peer_side.py, which holds nothing of reins)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def peer_command(python: str, script: Path, *args: str) -> list[str]:
    probe = [python, "-I", "-c", "import json, site; print(json.dumps(site.getsitepackages()))"]
    paths = json.loads(subprocess.run(probe, capture_output=True, text=True, check=True).stdout)
    paths = [str(Path(script).resolve().parent), *paths]
    code = (f"import runpy, sys\nsys.path[:0] = {paths!r}\nsys.argv = {[str(script), *args]!r}\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    return [python, "-I", "-S", "-c", code]


def fresh_workdir(work: str) -> Path:
    """`work` (relative to the repository) emptied and made: a fresh run, since the stages would otherwise resume
    from, or refuse, the last one's run directories."""
    path = (REPO / work).resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def offline_env(**extra: str) -> dict:
    """The environment both sides' processes run in: no Hub, no GPU, one thread, no tracker, plus `extra`."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "CUDA_VISIBLE_DEVICES": "", "WANDB_DISABLED": "true", "TOKENIZERS_PARALLELISM": "false", **extra}
