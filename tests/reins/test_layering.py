"""The import floors of DESIGN.md, read from the source with ast (imports inside functions count too):

    pgcore   imports nothing of ours
    reins    (but cli) imports pgcore at most
    rl       imports pgcore and reins: what online/ and offline/ share
    online   imports pgcore, reins and rl
    offline  imports pgcore, reins and rl; online/ only where `collect` takes behaviour policies from online agents
    nothing below the command line imports reins.cli; nothing below pipelines imports pipelines
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"pgcore", "reins", "rl", "online", "offline", "pipelines"}
ALLOWED = {
    "pgcore": {"pgcore"},
    "reins": {"reins", "pgcore"},
    "rl": {"rl", "reins", "pgcore"},
    "online": {"online", "rl", "reins", "pgcore"},
    "offline": {"offline", "rl", "reins", "pgcore"},
}
OFFLINE_TAKES_ONLINE = {"offline/collect.py", "offline/behaviour.py"}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of every module `path` imports (relative imports resolved against its package)."""
    package = path.relative_to(ROOT).parent.parts
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[:len(package) - node.level + 1], *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)  # `from reins import cli` names reins.cli
    return names


def files(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def test_imported_modules_reads_every_form(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    src = pkg / "m.py"
    src.write_text("import os\nfrom reins import cli\nfrom .sub import x\n\ndef f():\n    from online.sac import SAC\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert imported_modules(src) == {"os", "reins", "reins.cli", "pkg.sub", "pkg.sub.x", "online.sac",
                                     "online.sac.SAC"}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_packages_import_only_lower_floors(package):
    bad = []
    for path in files(package):
        rel = path.relative_to(ROOT).as_posix()
        if rel == "reins/cli.py":
            continue  # the top floor
        allowed = ALLOWED[package] | ({"online"} if rel in OFFLINE_TAKES_ONLINE else set())
        for name in imported_modules(path):
            top = name.split(".")[0]
            if top in OURS and top not in allowed:
                bad.append(f"{rel} imports {name}")
    assert not bad, "\n".join(bad)


def test_nothing_below_the_command_line_imports_it():
    bad = [f"{p.relative_to(ROOT)} imports reins.cli" for pkg in sorted(OURS) for p in files(pkg)
           if p.relative_to(ROOT).as_posix() != "reins/cli.py"
           and any(n == "reins.cli" or n.startswith("reins.cli.") for n in imported_modules(p))]
    assert not bad, "\n".join(bad)

