"""Every bound the ppo, grpo and reward stages check on their own options: the value at the bound is accepted,
the one just past it is refused with a ConfigError that names the option."""

from __future__ import annotations

import pytest

from pipelines import grpo, ppo
from pipelines import reward_model as reward
from reins.config import from_dict
from reins.errors import ConfigError

# (stage, option (a.b: nested), accepted values, refused values)
BOUNDS = [
    (ppo, "generation.temperature", [0.01], [0.0]),
    (ppo, "kl_coef", [0.0], [-0.01]),
    (ppo, "kl_target", [0.01], [0.0]),
    (ppo, "kl_horizon", [1], [0]),
    (ppo, "ppo_epochs", [1], [0]),
    (ppo, "num_minibatches", [1], [0]),
    (ppo, "gamma", [0.0, 1.0], [-0.01, 1.01]),
    (ppo, "lam", [0.0, 1.0], [-0.01, 1.01]),
    (ppo, "cliprange", [0.01], [0.0]),
    (ppo, "cliprange_value", [0.01], [0.0]),
    (ppo, "vf_coef", [0.0], [-0.01]),
    (ppo, "entropy_coef", [0.0], [-0.01]),
    (ppo, "missing_eos_penalty", [None, 0.0], [-0.01]),
    (ppo, "score_clip", [None, 0.01], [0.0]),
    (ppo, "max_prompt_length", [1], [0]),
    (grpo, "generation.temperature", [0.01], [0.0]),
    (grpo, "num_generations", [2], [1]),
    (grpo, "epsilon", [0.01], [0.0]),
    (grpo, "epsilon_high", [None, 0.01], [0.0]),
    (grpo, "num_iterations", [1], [0]),
    (grpo, "num_minibatches", [1], [0]),
    (grpo, "beta", [0.0], [-0.01]),
    (grpo, "max_prompt_length", [1], [0]),
    (grpo, "max_operand", [1], [0]),
    (reward, "center_coef", [0.0], [-0.01]),
    (reward, "eval_fraction", [0.0, 0.99], [-0.01, 1.0]),
]


def _nested(key: str, value) -> dict:
    head, _, rest = key.partition(".")
    return {head: _nested(rest, value) if rest else value}


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


@pytest.mark.parametrize("mod,key,good,bad", BOUNDS, ids=[f"{m.__name__.split('.')[-1]}-{k}" for m, k, _, _ in BOUNDS])
def test_option_bounds(mod, key, good, bad):
    for value in good:
        assert _get(from_dict(mod.Config, _nested(key, value)), key) == value
    for value in bad:
        with pytest.raises(ConfigError, match=key.split(".")[-1]):
            from_dict(mod.Config, _nested(key, value))


def test_grpo_reward_lists_and_reference():
    with pytest.raises(ConfigError, match="reward_funcs"):
        from_dict(grpo.Config, {"reward_funcs": []})
    with pytest.raises(ConfigError, match="reward_weights has 1 entries for 2 reward_funcs"):
        from_dict(grpo.Config, {"reward_weights": [1.0]})
    assert from_dict(grpo.Config, {"reward_weights": [1.0, 0.5]}).weights == [1.0, 0.5]
    assert from_dict(grpo.Config, {}).weights == [1.0, 1.0]
    with pytest.raises(ConfigError, match="ref_model is only used with beta > 0"):
        from_dict(grpo.Config, {"ref_model": "somewhere"})
    assert from_dict(grpo.Config, {"ref_model": "somewhere", "beta": 0.01}).ref_model == "somewhere"
