"""Runs shared by the export and interop suites: made once per session on the small tiny model."""

from __future__ import annotations

import pytest

from tests.helpers import TINY_TRAIN

QUIET = ["--quiet", "eval_prompts=none"]


@pytest.fixture(scope="session")
def lm_runs(tmp_path_factory):
    """sft (full), reward and ppo from it, dpo with LoRA on it: two steps each (ppo: two iterations); and
    dpo-merged, `reins export dpo --merge`."""
    from reins.cli import main

    root = tmp_path_factory.mktemp("lm-runs")
    sft = root / "sft" / "model"
    assert main(["sft", f"output_dir={root / 'sft'}", *TINY_TRAIN, *QUIET]) == 0
    assert main(["dpo", f"output_dir={root / 'dpo'}", f"model={sft}", "lora.r=2", "learning_rate=0.05", *TINY_TRAIN,
                 *QUIET]) == 0
    assert main(["export", str(root / "dpo"), "--out", str(root / "dpo-merged"), "--merge", "--quiet"]) == 0
    assert main(["reward", f"output_dir={root / 'reward'}", f"model={sft}", *TINY_TRAIN, "--quiet"]) == 0
    assert main(["ppo", f"output_dir={root / 'ppo'}", f"model={sft}", f"reward_model={root / 'reward'}",
                 "builtin_size=64", "batch_size=8", "max_steps=2", "ppo_epochs=1", "generation.max_new_tokens=6",
                 "generation.batch_size=8", *QUIET]) == 0
    return root
