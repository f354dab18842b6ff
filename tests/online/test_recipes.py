"""Every recipe under recipes/online loads into a valid config whose agent can act in its env."""

from pathlib import Path

import pytest

from online.stage import AGENTS, Config
from reins.config import load_config
from rl.envs import check_algo_spaces, make_env

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes" / "online").glob("*.yaml"))
REQUIRED = {("reinforce", "CartPole-v1"), ("a2c", "CartPole-v1"), ("ppo", "CartPole-v1"), ("npg", "CartPole-v1"),
            ("trpo", "CartPole-v1"), ("dqn", "CartPole-v1"), ("sac", "Pendulum-v1"), ("td3", "Pendulum-v1"),
            ("ddpg", "Pendulum-v1"), ("ppo", "Pendulum-v1"), ("sac", "Hopper-v5"), ("td3", "Hopper-v5"),
            ("sac", "HalfCheetah-v5"), ("td3", "HalfCheetah-v5")}


def test_the_issue_recipes_exist():
    found = set()
    for path in RECIPES:
        cfg = load_config(Config, path, stage="online")
        found.add((cfg.algo, cfg.env_id))
    assert REQUIRED <= found, REQUIRED - found


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_is_valid(path):
    cfg = load_config(Config, path, stage="online")
    assert path.stem.split("-")[0] == cfg.algo
    env, spec = make_env(cfg.env_id)
    env.close()
    check_algo_spaces(cfg.algo, spec, needs=AGENTS[cfg.algo][1])


def test_cli_runs_a_recipe_and_reports_bad_env_ids(tmp_path, capsys):
    from reins.cli import main

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "online" / "ppo-cartpole.yaml"
    out = tmp_path / "cli"
    rc = main(["online", "--config", str(recipe), f"output_dir={out}", "total_steps=256", "eval_episodes=1",
               "ppo.num_steps=32", "ppo.hidden=[8]", "--quiet"])
    assert rc == 0
    for name in ("config.yaml", "metrics.json", "log.jsonl", "policy.pt", "checkpoints/checkpoint.pt"):
        assert (out / name).is_file(), name
    rc = main(["online", "--config", str(recipe), f"output_dir={tmp_path / 'bad'}", "env_id=CartPole-v99"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "CartPole-v99" in err[0]
