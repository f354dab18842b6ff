"""What a run was made from: fingerprints of the local files and directories its config names.

    inputs = config_inputs(config_dict, output_dir)   # {"dataset": "sha256:...", "model": "run:sha256:..."}

A config value that names an existing local path (a data file, a `datasets` directory, a model directory) is an
input of the run. Its fingerprint is the sha256 of its content (a directory: of its files' relative paths and
contents), hashed once per process per (path, size, mtime), so a big file costs one read per run. A path inside
a completed run directory (an upstream stage's model, a `preferences` data file) is fingerprinted by that run's
metrics.json instead: every run writes it last, so it changes when the run is rebuilt, and reading it is cheap
whatever the artifact's size. Paths are compared by content, never by name or mtime: a copied or touched file
is the same input, an edited one is not.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

# The files that make a directory a completed run (reins.runio's CONFIG_FILE and METRICS_FILE).
_RUN_MARKERS = ("config.yaml", "metrics.json")
_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, cached per (resolved path, size, mtime) for the life of the process."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _digests[key] = h.hexdigest()
    return _digests[key]


def _enclosing_run(p: Path) -> Path | None:
    for q in (p, *p.parents):
        if all((q / m).is_file() for m in _RUN_MARKERS):
            return q
    return None


def path_fingerprint(path: str | Path) -> str:
    """The fingerprint of a local file or directory (see the module docstring)."""
    p = Path(path).expanduser().resolve()
    run = _enclosing_run(p)
    if run is not None:
        rel = p.relative_to(run).as_posix()
        return f"run:{file_digest(run / _RUN_MARKERS[1])}:{rel}"
    if p.is_file():
        return f"sha256:{file_digest(p)}"
    h = hashlib.sha256()
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            if f.is_file():
                h.update(f"{f.relative_to(p).as_posix()}\0{file_digest(f)}\0".encode())
    return f"sha256-dir:{h.hexdigest()}"


def _local_path(value: str) -> Path | None:
    if not value or len(value) > 4096 or "\n" in value or "://" in value:
        return None
    p = Path(value).expanduser()
    try:
        return p if p.exists() else None
    except OSError:  # a name too long for the file system, a permission on a parent
        return None


def config_inputs(config: dict, output_dir: str | Path) -> dict[str, str]:
    """{dotted key: fingerprint} of every string in `config` that names an existing local path, except the run's
    own output_dir, paths inside it and its ancestors (e.g. `.`)."""
    out = Path(output_dir).expanduser().resolve()
    found: dict[str, str] = {}

    def walk(x: Any, key: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                if not (key == "" and k == "output_dir"):
                    walk(v, f"{key}.{k}" if key else str(k))
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{key}[{i}]")
        elif isinstance(x, str):
            p = _local_path(x)
            if p is not None:
                rp = p.resolve()
                if not (rp == out or out in rp.parents or rp in out.parents):
                    found[key] = path_fingerprint(rp)

    walk(config, "")
    return found
