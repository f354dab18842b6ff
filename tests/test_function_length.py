"""No function or method outside tests/ is longer than 60 lines (def line to last line, docstring included).

The rule of DESIGN.md's style section, held by a check instead of by review: a longer function is split into
named steps. Every .py below the repository root is read except tests/, hidden directories and virtual
environments.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_LINES = 60
SKIP_DIRS = {"tests", "runs", "node_modules", "__pycache__", "build", "dist", "site"}
# (path, function) pairs allowed over the limit: none.
EXEMPT: set[tuple[str, str]] = set()


def _python_files(root: Path):
    for path in sorted(root.iterdir()):
        if path.is_dir():
            if path.name.startswith(".") or path.name in SKIP_DIRS or (path / "pyvenv.cfg").exists():
                continue
            yield from _python_files(path)
        elif path.suffix == ".py":
            yield path


def long_functions(root: Path, max_lines: int = MAX_LINES) -> list[tuple[str, str, int, int]]:
    """(path relative to root, function name, first line, length) of every function longer than max_lines."""
    found = []
    for path in _python_files(root):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > max_lines:
                    found.append((path.relative_to(root).as_posix(), node.name, node.lineno, length))
    return found


def test_long_functions_finds_a_long_one(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "m.py").write_text(f"def short():\n    return 1\n\n\ndef long():\n{body}\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_m.py").write_text(f"def long():\n{body}\n")  # tests/ is not checked
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "lib.py").write_text(f"def long():\n{body}\n")
    assert long_functions(tmp_path) == [("pkg/m.py", "long", 5, 61)]


def test_no_function_outside_tests_is_longer_than_60_lines():
    over = [f for f in long_functions(ROOT) if (f[0], f[1]) not in EXEMPT]
    assert not over, "functions over 60 lines (split them into named steps):\n" + "\n".join(
        f"  {p}:{line} {name} ({n} lines)" for p, name, line, n in over)
