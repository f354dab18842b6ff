"""Run a script in a peer venv's Python with reins not importable, even where that venv has reins installed
editable (benchmarks/run_all.py's `ensure_venv` does so): `-I -S` skips PYTHONPATH, the script's directory and
every .pth file (the editable install's finder among them); the venv's site-packages go back on sys.path by hand."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


def peer_command(python: str, script: Path, *args: str) -> list[str]:
    probe = [python, "-I", "-c", "import json, site; print(json.dumps(site.getsitepackages()))"]
    paths = json.loads(subprocess.run(probe, capture_output=True, text=True, check=True).stdout)
    code = (f"import runpy, sys\nsys.path[:0] = {paths!r}\nsys.argv = {[str(script), *args]!r}\n"
            f"runpy.run_path({str(script)!r}, run_name='__main__')\n")
    return [python, "-I", "-S", "-c", code]
