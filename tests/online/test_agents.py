"""Every agent learns on a small problem within a short seeded budget (evaluated on separate env instances
with deterministic actions), compared against a uniformly random policy on the same evaluation episodes."""

import numpy as np
import pytest

from online.common import evaluate_policy
from online.stage import Config, train
from reins.config import from_dict

# Small networks, an early start and larger steps keep each run to a few thousand updates.
SMALL_OFF = {"hidden": [64, 64], "learning_starts": 500, "batch_size": 64, "critic_lr": 1e-3, "actor_lr": 1e-3}


class RandomPolicy:
    def __init__(self, env_id):
        import gymnasium as gym

        self.space = gym.make(env_id).action_space
        self.space.seed(0)

    def act(self, obs, deterministic=True):
        return np.stack([self.space.sample() for _ in range(len(obs))])


def random_return(env_id):
    return evaluate_policy(RandomPolicy(env_id), env_id, 10, 1_000_000)["eval/return_mean"]


def run(tmp_path, **kw):
    cfg = from_dict(Config, {"output_dir": str(tmp_path / "run"), "quiet": True, "eval_every": 0,
                             "checkpoint_every": 0, "seed": 1, **kw})
    return train(cfg)


# Bounds with margin below what these seeded runs reach (seed 1, and seeds 0 and 2 as a check of how far a change of
# rounding alone can move them; benchmarks/online/README.md, "Learning tests"): a refactor that moves a final return
# below its bound changed the numerics, and the quality tables it touches must be re-measured.
CARTPOLE = [
    ("ppo", 20_000, {}, 400.0),
    ("ppo", 15_000, {"ppo": {"loss": "kl_penalty"}}, 350.0),
    ("a2c", 25_000, {}, 300.0),
    ("reinforce", 25_000, {}, 100.0),
    ("trpo", 12_000, {}, 350.0),
    ("npg", 15_000, {}, 200.0),
    ("dqn", 15_000, {"dqn": {"learning_starts": 1000, "exploration_fraction": 0.3}}, 150.0),
]


@pytest.mark.parametrize("algo,steps,extra,target", CARTPOLE, ids=[f"{c[0]}-{i}" for i, c in enumerate(CARTPOLE)])
def test_cartpole_agents_learn(tmp_path, algo, steps, extra, target):
    m = run(tmp_path, algo=algo, env_id="CartPole-v1", total_steps=steps, **extra)
    assert random_return("CartPole-v1") < 30  # the untrained reference point
    assert m["eval/return_mean"] >= target, m


PENDULUM = [
    ("sac", 3000, {"sac": SMALL_OFF}),
    ("td3", 4000, {"td3": {**SMALL_OFF, "actor_lr": 2e-3, "tau": 0.01}}),
    ("ddpg", 3000, {"ddpg": SMALL_OFF}),
]


@pytest.mark.parametrize("algo,steps,extra", PENDULUM, ids=[c[0] for c in PENDULUM])
def test_pendulum_agents_improve_400_over_random(tmp_path, algo, steps, extra):
    m = run(tmp_path, algo=algo, env_id="Pendulum-v1", total_steps=steps, **extra)
    rand = random_return("Pendulum-v1")
    assert rand < -900
    assert m["eval/return_mean"] >= rand + 400, (m, rand)


@pytest.mark.slow
def test_ppo_cartpole_recipe_meets_its_target(tmp_path):
    """The recipe's own promise (mean eval return >= 475 at 100k env steps), at its seed: a schedule or numerics
    change that moves PPO off its target fails here. ~30 s alone."""
    from pathlib import Path

    from reins.config import load_config

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "online" / "ppo-cartpole.yaml"
    cfg = load_config(Config, str(recipe), {"output_dir": str(tmp_path / "run"), "quiet": True}, stage="online")
    m = train(cfg)
    assert m["eval/return_mean"] >= 475.0, m
