"""Config loading: YAML + overrides, unknown keys named, types coerced, validation run."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from reins.config import check, from_dict, load_config, parse_argv, parse_overrides, to_dict
from reins.errors import ConfigError


@dataclass
class Lora:
    r: int = 8
    alpha: float = 16.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj"])


@dataclass
class Cfg:
    output_dir: str = "runs/x"
    lr: float = 1e-3
    steps: int = 10
    gamma: float = 0.99
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    lora: Lora | None = None
    quiet: bool = False

    def validate(self):
        check(0.0 <= self.gamma <= 1.0, f"gamma must be in [0, 1], got {self.gamma}")


def test_overrides_forms():
    o = parse_overrides(["lr=3e-4", "--steps", "5", "--loss-type=ipo", "lora.r=4"])
    assert o == {"lr": 3e-4, "steps": 5, "loss_type": "ipo", "lora.r": 4}


def test_argv_config_quiet_and_overrides_in_any_order():
    """parse_argv, the one argv parser: `--config` in both forms (the last wins), the flag `--quiet` (it does
    not swallow the argument after it), overrides around them."""
    assert parse_argv(["--quiet", "lr=0.5", "--config", "a.yaml", "--steps", "3"]) == (
        "a.yaml", {"quiet": True, "lr": 0.5, "steps": 3})
    assert parse_argv(["--config=a.yaml", "--config=b.yaml", "--quiet=false"]) == ("b.yaml", {"quiet": False})
    assert parse_argv([]) == (None, {})


@pytest.mark.parametrize("argv, msg", [
    (["lr=1", "--config"], "--config needs a file"),
    (["--steps"], "override '--steps' has no value"),
    (["lr"], "cannot parse override 'lr': expected key=value"),
    (["=1"], "override '=1' has an empty key"),
])
def test_argv_errors_are_one_line(argv, msg):
    with pytest.raises(ConfigError) as e:
        parse_argv(argv)
    assert str(e.value) == msg


def test_overrides_alone_refuse_a_config_file():
    """`reins run RECIPE [overrides]` takes its recipe positionally: a `--config` among the overrides is refused."""
    with pytest.raises(ConfigError, match="--config is not taken here"):
        parse_overrides(["lr=1", "--config", "x.yaml"])


def test_yaml_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stage: dpo\nlr: 0.01\nlora:\n  r: 2\n")
    cfg = load_config(Cfg, p, {"steps": 7, "lora.alpha": 4}, stage="dpo")
    assert cfg.lr == 0.01 and cfg.steps == 7
    assert cfg.lora == Lora(r=2, alpha=4.0)
    assert from_dict(Cfg, to_dict(cfg)) == cfg


def test_unknown_key_names_key_and_valid_ones(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'lrr'.*valid keys: gamma, lora, loss_type, lr"):
        load_config(Cfg, p)
    with pytest.raises(ConfigError, match=r"unknown key 'rank'"):
        load_config(Cfg, None, {"lora.rank": 3})


@pytest.mark.parametrize("override, msg", [
    ({"steps": 1.5}, "steps: expected an integer"),
    ({"steps": "ten"}, "steps: expected an integer"),
    ({"lr": "fast"}, "lr: expected a number"),
    ({"quiet": "maybe"}, "quiet: expected true/false"),
    ({"loss_type": "hinge"}, "loss_type: must be one of"),
    ({"gamma": 1.5}, "gamma must be in"),
])
def test_bad_values(override, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(Cfg, None, override)


def test_wrong_stage_and_missing_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stage: ppo\n")
    with pytest.raises(ConfigError, match="recipe is for stage 'ppo', not 'dpo'"):
        load_config(Cfg, p, stage="dpo")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Cfg, bad)
