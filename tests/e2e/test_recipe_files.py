"""Every committed pipeline recipe resolves: known stages, valid keys, references to earlier stages."""

from pathlib import Path

import pytest
import yaml

from pipelines.runner import load_recipe, plan

ROOT = Path(__file__).resolve().parents[2]
PIPELINES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "stages" in (yaml.safe_load(p.read_text()) or {}))


def test_pipeline_recipes_exist():
    names = {p.relative_to(ROOT / "recipes").as_posix() for p in PIPELINES}
    assert {"quickstart.yaml", "smollm2-quickstart.yaml", "rlhf/smollm2-135m.yaml", "offline/hopper.yaml"} <= names


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_pipeline_recipe_plans(path, tmp_path):
    stages = plan(load_recipe(path, {"output_dir": str(tmp_path / "run")}), where=str(path))
    assert stages and all(not s.cached for s in stages)
    dirs = [s.config.output_dir for s in stages]
    assert len(set(dirs)) == len(dirs) and all(d.startswith(str(tmp_path)) for d in dirs)
