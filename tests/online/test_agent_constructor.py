"""Every online agent is built the same way, `cls(agent_config, env_spec, generator, total_steps=...)`; what tells
npg from trpo or ddpg from td3 is the agent config's class, not an extra argument."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from online.stage import AGENTS, Config
from rl.envs import EnvSpec


def _spec(discrete: bool) -> EnvSpec:
    if discrete:
        return EnvSpec("toy", 3, np.full(3, -1.0), np.full(3, 1.0), True, 2)
    return EnvSpec("toy", 3, np.full(3, -1.0), np.full(3, 1.0), False, 2, np.full(2, -1.0, np.float32),
                   np.full(2, 1.0, np.float32))


def test_one_constructor_signature_for_every_agent():
    params = {algo: list(inspect.signature(cls.__init__).parameters) for algo, (cls, _, _) in AGENTS.items()}
    assert set(map(tuple, params.values())) == {("self", "cfg", "spec", "gen", "total_steps")}, params


@pytest.mark.parametrize("algo", list(AGENTS))
def test_stage_builds_each_agent_from_its_section(algo):
    cls, needs, _ = AGENTS[algo]
    cfg = Config(output_dir="x", algo=algo, total_steps=1234)
    agent = cls(cfg.agent_config, _spec(needs == "discrete"), torch.Generator().manual_seed(0),
                total_steps=cfg.total_steps)
    assert agent.cfg is cfg.agent_config and agent.total_steps == 1234
    if algo in ("npg", "trpo"):
        assert agent.line_search is (algo == "trpo")  # NPG takes the full natural-gradient step
    if algo in ("ddpg", "td3"):
        assert agent.critic.n == (1 if algo == "ddpg" else 2)
