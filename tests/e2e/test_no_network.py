"""No network at run time (issue 7): the quickstart's stages, at tiny sizes, run with every socket blocked.

Connections and name lookups raise, and every attempt is recorded: the chains must complete AND nothing may even
try to connect (a library that tried, failed and silently fell back would still be caught). The stages are
chained as the quickstart chains them, so each one reads the previous one's artifact.
"""

from __future__ import annotations

import json
import math
import socket

import pytest

from tests.helpers import ROOT, run_cli

TINY = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "vocab_size": 400,
        "max_position_embeddings": 128}
EVAL = {"num_prompts": 2, "max_new_tokens": 4}
LM_RECIPE = {
    "name": "offline-lm",
    "quiet": True,
    "stages": [
        {"name": "sft", "stage": "sft", "tiny": TINY, "max_length": 48, "builtin_size": 64, "max_eval_samples": 8,
         "batch_size": 8, "max_steps": 2, "learning_rate": 1e-2, "eval": EVAL},
        {"name": "prefs", "stage": "preferences", "model": "${sft.output_dir}/model", "tiny": TINY,
         "num_train_prompts": 16, "num_test_prompts": 4, "num_samples": 2, "min_margin": 0.0,
         "generation": {"max_new_tokens": 6}},
        {"name": "reward", "stage": "reward", "model": "${sft.output_dir}/model", "tiny": TINY,
         "data": "${prefs.output_dir}/data", "max_length": 48, "batch_size": 4, "max_steps": 2},
        {"name": "dpo", "stage": "dpo", "model": "${sft.output_dir}/model", "tiny": TINY,
         "data": "${prefs.output_dir}/data", "max_length": 48, "batch_size": 4, "max_steps": 2,
         "reward_model": "${reward.output_dir}/model", "eval": EVAL},
        {"name": "ppo", "stage": "ppo", "model": "${sft.output_dir}/model", "tiny": TINY,
         "reward_model": "${reward.output_dir}", "builtin_size": 16, "batch_size": 4, "max_steps": 1,
         "ppo_epochs": 1, "generation": {"max_new_tokens": 4}, "eval": EVAL},
    ],
}


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Block the network for the test; yields the list of attempted connections / lookups."""
    from tests.helpers import block_network

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.chdir(tmp_path)
    attempts = block_network(monkeypatch)
    with pytest.raises(OSError, match="network blocked"):  # the block itself works ...
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(OSError, match="network blocked"):
        socket.getaddrinfo("pypi.org", 443)
    attempts.clear()  # ... and the stages start with a clean record
    return attempts


def _metrics(path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def test_lm_chain_sft_preferences_reward_dpo_ppo(offline, tmp_path, capfd):
    import yaml

    recipe = tmp_path / "lm.yaml"
    recipe.write_text(yaml.safe_dump({**LM_RECIPE, "output_dir": str(tmp_path / "lm")}))
    code, err = run_cli(["run", str(recipe), "--quiet"], capfd)
    assert code == 0, err
    assert offline == []
    out = tmp_path / "lm"
    sft, prefs, reward, dpo, ppo = (_metrics(out / n) for n in ("sft", "prefs", "reward", "dpo", "ppo"))
    assert sft["steps"] == reward["steps"] == dpo["steps"] == 2 and ppo["steps"] == 1
    assert prefs["pairs/train"] + prefs["pairs/test"] + prefs["pairs/skipped"] == 20
    # each stage really consumed the previous stage's artifact
    assert (out / "prefs" / "data" / "dataset_dict.json").is_file() and (out / "report.md").is_file()
    for m in (dpo, ppo):
        assert math.isfinite(m["eval/gold_reward"]) and math.isfinite(m["eval/reward_model_score"])


def test_offline_chain_collect_then_iql(offline, tmp_path, capfd):
    minari = tmp_path / "minari"
    code, err = run_cli(["collect", "--config", str(ROOT / "recipes/offline/collect-pendulum-scripted.yaml"),
                         f"output_dir={tmp_path / 'collect'}", "dataset_prefix=test/pend", "tiers=[medium]",
                         "steps_per_tier=200", "ref_episodes=2", "n_envs=2", "--quiet"], capfd)
    assert code == 0, err
    code, err = run_cli(["iql", "--config", str(ROOT / "recipes/offline/iql-pendulum.yaml"),
                         f"output_dir={tmp_path / 'iql'}", "dataset=test/pend/medium-v0", "max_steps=20",
                         "batch_size=16", "hidden=[16]", "eval_every=20", "eval_episodes=1", "log_every=10",
                         "checkpoint_every=10", "--quiet"], capfd)
    assert code == 0, err
    assert offline == []
    collect, iql = _metrics(tmp_path / "collect"), _metrics(tmp_path / "iql")
    assert (minari / "test" / "pend" / "medium-v0" / "data" / "metadata.json").is_file()
    assert iql["train/steps"] == 20 and iql["data/transitions"] == collect["medium/steps"]
    assert math.isfinite(iql["eval/normalized_score"])
