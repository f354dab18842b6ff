"""The staged runner: references, caching, overrides, dry run, --only/--from, resume after a crash, report."""

import json
from pathlib import Path

import pytest

from pipelines.runner import main, run_recipe
from reins.errors import ConfigError

RECIPE = """
name: t
output_dir: {out}
stages:
  - name: a
    stage: plugin:tests.e2e.dummy_stage
    steps: 10
  - name: b
    stage: plugin:tests.e2e.dummy_stage
    input_file: ${{a.output_dir}}/value.txt
    scale: 0.5
"""


@pytest.fixture
def recipe(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(RECIPE.format(out=tmp_path / "run"))
    return p


def calls(path):
    f = Path(path) / "calls.txt"
    return int(f.read_text()) if f.exists() else 0


def test_run_cache_and_override(recipe, tmp_path):
    out = tmp_path / "run"
    res = run_recipe(recipe)
    a_val = float((out / "a" / "value.txt").read_text())
    assert res["a"]["total"] == pytest.approx(a_val)
    assert (out / "report.md").is_file() and "## Stages" in (out / "report.md").read_text()
    assert (out / "curves_a.png").is_file()
    # Second run: everything cached, no stage code runs.
    res2 = run_recipe(recipe)
    assert res2 == res and calls(out / "a") == 1 and calls(out / "b") == 1
    # An override of b re-runs only b, in a new output dir (the old one holds another config).
    res3 = run_recipe(recipe, {"b.scale": 2.0, "b.output_dir": str(out / "b2")})
    assert calls(out / "a") == 1 and calls(out / "b2") == 1
    assert res3["b"]["total"] != res["b"]["total"]


def test_crash_then_rerun_equals_uninterrupted(recipe, tmp_path, monkeypatch):
    clean = tmp_path / "clean.yaml"
    clean.write_text(RECIPE.format(out=tmp_path / "clean"))
    reference = run_recipe(clean)
    monkeypatch.setenv("DUMMY_CRASH_AT", "7")
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe)
    out = tmp_path / "run"
    assert (out / "a" / "checkpoints" / "checkpoint.pt").is_file()
    assert not (out / "a" / "metrics.json").exists()  # a partial stage is never complete
    monkeypatch.delenv("DUMMY_CRASH_AT")
    resumed = run_recipe(recipe)
    assert resumed == reference
    steps = [r["step"] for r in map(json.loads, (out / "a" / "log.jsonl").read_text().splitlines())]
    assert steps == list(range(1, 11))  # steps after the checkpoint were not logged twice


def test_dry_run_only_from(recipe, tmp_path, capsys):
    assert main([str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "a " in out and "run" in out
    with pytest.raises(ConfigError, match="stage 'a' is needed"):
        run_recipe(recipe, only="b")
    run_recipe(recipe, only="a")
    assert calls(tmp_path / "run" / "a") == 1 and calls(tmp_path / "run" / "b") == 0
    run_recipe(recipe, start="b")
    assert calls(tmp_path / "run" / "b") == 1
    assert main([str(recipe), "--dry-run"]) == 0
    assert capsys.readouterr().out.count("cached") == 2


@pytest.mark.parametrize("body, msg", [
    ("stages:\n  - name: a\n    stage: nope\n", "unknown stage 'nope'"),
    ("stages:\n  - name: a\n    stage: plugin:tests.e2e.dummy_stage\n    bogus: 1\n", "unknown key 'bogus'"),
    ("stages:\n  - name: a\n    stage: plugin:tests.e2e.dummy_stage\n    input_file: ${zz.output_dir}\n",
     "names no earlier stage"),
    ("stages: []\n", "non-empty list"),
    ("stagez: []\n", "needs a 'stages:' list"),
])
def test_bad_recipes(tmp_path, body, msg, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text(f"output_dir: {tmp_path / 'o'}\n" + body)
    assert main([str(p)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


DATA_RECIPE = """
name: t
output_dir: {out}
stages:
  - name: a
    stage: plugin:tests.e2e.dummy_stage
    steps: 6
    input_file: {data}
  - name: b
    stage: plugin:tests.e2e.dummy_stage
    steps: 6
    input_file: ${{a.output_dir}}/value.txt
  - name: c
    stage: plugin:tests.e2e.dummy_stage
    steps: 6
"""


def test_edited_input_reruns_its_stage_and_what_depends_on_it(tmp_path, capsys):
    """Caching follows the inputs, not only config.yaml (issue 22): a's data file is edited -> a and b (which reads
    a's output) run again, c (independent) stays cached; with nothing changed everything is cached."""
    data = tmp_path / "data.txt"
    data.write_text("1.0")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(DATA_RECIPE.format(out=tmp_path / "run", data=data))
    out = tmp_path / "run"
    first = run_recipe(recipe)
    stamps = {n: (out / n / "metrics.json").stat().st_mtime_ns for n in "abc"}
    data.write_text("1.0")  # rewritten, same content: the same input
    assert run_recipe(recipe) == first
    assert {n: (out / n / "metrics.json").stat().st_mtime_ns for n in "abc"} == stamps
    assert all(calls(out / n) == 1 for n in "abc")

    data.write_text("101.0")
    capsys.readouterr()
    assert main([str(recipe), "--dry-run"]) == 0
    plan = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "rerun (changed input_file)" in plan["a"] and "rerun (a runs again)" in plan["b"]
    assert "cached" in plan["c"]
    second = run_recipe(recipe)
    # The walk is the same seeded one, shifted by the new base: a moves by exactly 100, and b reads a's new value.
    assert second["a"]["total"] == pytest.approx(first["a"]["total"] + 100.0)
    assert second["b"]["total"] == pytest.approx(first["b"]["total"] + 100.0)
    assert second["c"] == first["c"] and (out / "c" / "metrics.json").stat().st_mtime_ns == stamps["c"]
    assert json.loads((out / "a" / "identity.json").read_text())["inputs"] != {}
    assert run_recipe(recipe) == second  # and now everything is cached again
    assert all(calls(out / n) == 1 for n in "abc")
