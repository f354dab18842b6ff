"""The docs site is checked like code: `mkdocs build --strict` (a broken link or a page missing from the nav fails)
and every shell block the docs mark runnable (`<!-- runnable -->` on the line before a ```bash fence) runs."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUNNABLE = re.compile(r"<!-- runnable -->\n```bash\n(.*?)\n```", re.S)


def _env(tmp_path: Path) -> dict:
    """PATH with `reins` and `python` bound to this interpreter and this checkout, as an installed venv has them."""
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    for name, args in (("reins", "-m reins.cli"), ("python", "")):
        shim = shims / name
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" {args} "$@"\n')
        shim.chmod(0o755)
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": pythonpath,
            "NO_MKDOCS_2_WARNING": "1", "MINARI_DATASETS_PATH": str(tmp_path / "minari")}


def _keys(cls: type) -> list[str]:
    from reins.config import config_help

    return [line.strip().split(": ", 1)[0] for line in config_help(cls)[::2]]


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="the docs extra (mkdocs) is not installed")
def test_site_builds_strict_with_every_stage_and_key(tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from reins.entry import STAGES

    reference = (site / "reference" / "config" / "index.html").read_text()
    sft_page = (site / "stages" / "sft" / "index.html").read_text()
    for name, (module, _) in STAGES.items():  # every stage of the CLI, with every key its --help prints
        assert f'id="{name}"' in reference, name
        cls = getattr(importlib.import_module(module), "Config", None)
        if cls is not None and dataclasses.is_dataclass(cls):
            for key in _keys(cls):
                assert f"<code>{key}</code>" in reference, (name, key)
    sft = importlib.import_module(STAGES["sft"][0]).Config
    assert all(f"<code>{key}</code>" in sft_page for key in _keys(sft))
    assert "fonts.googleapis" not in sft_page  # the theme's font fetch is off


def test_every_stage_has_a_page_in_the_nav():
    from reins.entry import STAGES

    nav = (ROOT / "mkdocs.yml").read_text()
    for name in STAGES:
        assert (DOCS / "stages" / f"{name}.md").is_file(), f"docs/stages/{name}.md missing"
        assert f"stages/{name}.md" in nav, f"stages/{name}.md not in mkdocs.yml's nav"


def _runnable_blocks() -> list[tuple[str, str]]:
    out = []
    for page in sorted(DOCS.rglob("*.md")):
        out += [(str(page.relative_to(DOCS)), block) for block in RUNNABLE.findall(page.read_text())]
    return out


def test_docs_mark_runnable_blocks():
    pages = {page for page, _ in _runnable_blocks()}
    assert {"getting-started.md", "stages/convert.md", "pgcore.md"} <= pages


@pytest.mark.parametrize("page,block", _runnable_blocks(), ids=lambda v: v if v.endswith(".md") else "")
def test_runnable_block_runs(page, block, tmp_path):
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{page}:\n{block}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
