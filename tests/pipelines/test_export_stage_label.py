"""`reins export` names the stage that made a run from its config.yaml keys (pipelines.export.STAGE_KEYS)."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest

from pipelines.export import stage_of_config
from pipelines.model_card import model_card
from reins.entry import STAGES


def _config_keys(stage: str) -> dict:
    cfg = importlib.import_module(STAGES[stage][0]).Config
    return {f.name: None for f in dataclasses.fields(cfg)}


@pytest.mark.parametrize("stage", ["sft", "reward", "dpo", "kto", "ppo", "grpo"])
def test_each_lm_stage_config_is_told_apart(stage):
    # grpo's config also has `loss_type`, which alone would read as dpo
    assert stage_of_config(_config_keys(stage), Path("run")) == stage


def test_grpo_model_card_says_reins_grpo():
    config = dict(_config_keys("grpo"), model="tiny", data="builtin", reward_funcs=["builtin:arithmetic"])
    card = model_card(stage=stage_of_config(config, Path("run")), config=config, metrics={}, chat_trained=False,
                      adapter=None, run_dir="runs/g")
    assert "Made by `reins grpo`" in card and "reins dpo" not in card
    assert "rewards from `builtin:arithmetic`" in card
