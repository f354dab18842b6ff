"""`reins ppo` end to end on tiny models: the stage contract, exact resume after SIGKILL, the NaN stop, LoRA with
an adapter-disabled reference and a reward model with another tokenizer, the KL controller's wiring, a real
2-process CPU `accelerate launch`, and a seeded run whose gold reward rises."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest
import torch
import yaml

from pgcore.kl import adaptive_kl_beta
from pipelines import ppo
from reins.config import from_dict
from reins.errors import NonFiniteError
from reins.runio import safe_torch_load
from tests.helpers import launch_two_cpu_ranks, signal_when
from tests.pipelines.helpers import SMALL, log_rows, ppo_toy_cfg, ppo_toy_models, ppo_train_rows

ROOT = Path(__file__).resolve().parents[2]
TRAIN_METRICS = ["objective/kl", "objective/entropy", "objective/rlhf_reward", "objective/scores", "policy/approxkl",
                 "policy/clipfrac", "val/clipfrac", "val/vpred", "loss/policy", "loss/value", "val/ratio",
                 "val/ratio_max", "kl_coef"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ppo") / "full"
    return out, ppo.train(from_dict(ppo.Config, ppo_toy_cfg(out)))


def test_run_follows_the_stage_contract(uninterrupted):
    out, metrics = uninterrupted
    for f in ("config.yaml", "metrics.json", "log.jsonl", "checkpoints/checkpoint.pt", "model/config.json",
              "value_model/config.json"):
        assert (out / f).is_file(), f
    rows = ppo_train_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for name in TRAIN_METRICS:
        assert all(name in r for r in rows) and f"train/{name}" in metrics, name
    # The first rollout's policy IS the reference: the KL estimate is exactly 0 and the first ratios 1.
    assert rows[0]["objective/kl"] == 0.0 and rows[0]["objective/non_score_reward"] == 0.0
    assert rows[0]["objective/rlhf_reward"] == rows[0]["objective/scores"]
    for key in ("eval/gold_reward", "eval/kl_to_ref", "eval/win_rate_vs_ref", "eval/reward_model_score"):
        assert key in metrics
    samples = [r["samples"] for r in log_rows(out) if "samples" in r]
    assert len(samples) == 2 and isinstance(samples[0], list) and "completion" in samples[0][0]
    assert safe_torch_load(out / "checkpoints" / "checkpoint.pt")["step"] == 3
    # A finished run is not retrained: the same call returns the stored metrics.
    assert ppo.train(from_dict(ppo.Config, ppo_toy_cfg(out))) == metrics
    # Killed after the last checkpoint but before metrics.json: the re-run ends with the same metrics.
    (out / "metrics.json").unlink()
    assert ppo.train(from_dict(ppo.Config, ppo_toy_cfg(out))) == metrics


def test_nan_stops_keeps_last_good_checkpoint_and_resumes_exactly(tmp_path, monkeypatch, uninterrupted):
    calls = {"n": 0}
    real = ppo.score_responses

    def nan_on_third(*a, **kw):
        calls["n"] += 1
        s = real(*a, **kw)
        return torch.full_like(s, float("nan")) if calls["n"] == 3 else s

    monkeypatch.setattr(ppo, "score_responses", nan_on_third)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError, match="non-finite"):
        ppo.train(from_dict(ppo.Config, ppo_toy_cfg(out)))
    state = safe_torch_load(out / "checkpoints" / "checkpoint.pt")
    assert state["step"] == 2 and not (out / "metrics.json").exists()
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    monkeypatch.setattr(ppo, "score_responses", real)
    # Re-running the same command resumes from step 2 and ends exactly where an uninterrupted run ends.
    assert ppo.train(from_dict(ppo.Config, ppo_toy_cfg(out))) == uninterrupted[1]


def _write_cfg(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump({"stage": "ppo", **cfg}))
    return path


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": str(torch.get_num_threads())}


def test_sigkill_then_rerun_matches_uninterrupted(tmp_path, uninterrupted):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.ppo", "--config", str(_write_cfg(tmp_path / "ppo.yaml", ppo_toy_cfg(out)))]
    ckpt = out / "checkpoints" / "checkpoint.pt"
    signal_when(cmd, ckpt.is_file, signal.SIGKILL, env=_env(), timeout=240)
    killed_at = safe_torch_load(ckpt)["step"]
    assert killed_at < 3 and not (out / "metrics.json").exists()   # it really died mid-run
    res = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    # The same final metrics as the uninterrupted (in-process, same thread count) run, bit for bit.
    assert json.loads((out / "metrics.json").read_text()) == uninterrupted[1]
    assert [r["step"] for r in ppo_train_rows(out)] == [1, 2, 3]   # no step logged twice


def test_lora_policy_with_foreign_tokenizer_reward_model(tmp_path):
    out = tmp_path / "run"
    m = ppo.train(from_dict(ppo.Config, ppo_toy_cfg(out, max_steps=2, lora={"r": 4}, learning_rate=1e-2,
                                                reward_model=ppo_toy_models()["rm_foreign"])))
    first = log_rows(out)[0]
    assert first["reward_model/same_tokenizer"] is False     # texts were re-tokenised for the reward model
    rows = ppo_train_rows(out)
    # Reference = the policy with its adapter disabled; LoRA's B starts at 0, so the first KL is exactly 0 ...
    assert rows[0]["objective/kl"] == 0.0
    # ... and the adapters moved after one update, so the second is not.
    assert rows[1]["objective/kl"] != 0.0 and m["steps"] == 2
    assert (out / "model" / "adapter_config.json").is_file()


def test_shared_value_head_and_halve_double_kl_controller(tmp_path):
    out = tmp_path / "run"
    ppo.train(from_dict(ppo.Config, ppo_toy_cfg(out, max_steps=3, value_model="shared", kl_control="halve_double",
                                            kl_target=0.5, kl_coef=0.1, learning_rate=1e-2)))
    rows = ppo_train_rows(out)
    for prev, cur in zip(rows, rows[1:]):
        assert cur["kl_coef"] == adaptive_kl_beta(prev["kl_coef"], prev["objective/kl"], 0.5)
    assert rows[1]["kl_coef"] == 0.05   # the first KL is 0 < target / 1.5: halved
    assert not (out / "value_model").exists()


def test_two_process_accelerate_launch_keeps_ranks_in_sync(tmp_path):
    out = tmp_path / "run"
    cfg = _write_cfg(tmp_path / "ppo.yaml", ppo_toy_cfg(out, max_steps=2, learning_rate=1e-2))
    proc = launch_two_cpu_ranks("-m", "pipelines.ppo", "--config", str(cfg), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["dist/world_size"] == 2            # two data-parallel ranks, not two rank-0 copies
    assert m["dist/param_sync_gap"] == 0.0      # identical parameters on both ranks after the updates
    assert m["train/rollout/tokens"] > 0 and m["steps"] == 2


# ----------------------------------------------------------------------------------------- learning
LEARN_TINY = {**SMALL, "vocab_size": 1024}   # whole words are tokens, so the reward model's words are VADER's


@lru_cache(maxsize=1)
def learned_models() -> dict[str, str]:
    """A briefly SFT-ed policy and a reward model trained on its own samples labelled by the gold judge."""
    from pipelines import preferences, reward_model, sft

    root = Path(tempfile.mkdtemp(prefix="reins-ppo-learn-"))
    common = {"quiet": True, "tiny": LEARN_TINY}
    sft.train(from_dict(sft.Config, {**common, "output_dir": str(root / "sft"), "max_length": 48,
                                     "builtin_size": 480, "max_eval_samples": 8, "batch_size": 16,
                                     "learning_rate": 1e-2, "lr_scheduler": "constant", "save_every": 1000,
                                     "eval_prompts": None}))
    preferences.train(from_dict(preferences.Config, {
        **common, "output_dir": str(root / "prefs"), "model": str(root / "sft" / "model"), "num_train_prompts": 256,
        "num_test_prompts": 16, "num_samples": 4, "generation": {"max_new_tokens": 8, "batch_size": 128}}))
    reward_model.train(from_dict(reward_model.Config, {
        **common, "output_dir": str(root / "reward"), "model": str(root / "sft" / "model"),
        "data": str(root / "prefs" / "data"), "max_length": 48, "batch_size": 16, "learning_rate": 3e-3,
        "num_epochs": 3, "lr_scheduler": "constant", "save_every": 1000}))
    return {"sft": str(root / "sft" / "model"), "reward": str(root / "reward")}


def test_seeded_run_raises_gold_reward(tmp_path):
    m = learned_models()
    out = tmp_path / "run"
    final = ppo.train(from_dict(ppo.Config, {
        "output_dir": str(out), "quiet": True, "model": m["sft"], "reward_model": m["reward"], "builtin_size": 256,
        # 20 updates: at 10 the gain (+0.14 with one thread) sat on the threshold, at 20 it is +0.55.
        "batch_size": 16, "max_steps": 20, "learning_rate": 3e-3, "kl_coef": 0.05, "save_every": 100,
        "generation": {"max_new_tokens": 8}, "eval": {"num_prompts": 64, "max_new_tokens": 8}}))
    init = next(r for r in log_rows(out) if "init/gold_reward" in r)
    assert final["eval/gold_reward"] > init["init/gold_reward"] + 0.15
    assert final["eval/reward_model_score"] > init["init/reward_model_score"] + 1.0
    assert final["eval/win_rate_vs_ref"] > 0.55


@pytest.mark.parametrize("key", ["group_by_length", "torch_compile", "shuffle"])
def test_trainer_only_options_are_not_rollout_stage_keys(key, tmp_path):
    """ppo and grpo take OptimArgs, not the Trainer's batching keys: such a key is unknown (an error naming it),
    and a config.yaml saved while they had it (at any value: it never changed a rollout) still resumes."""
    import dataclasses

    from pipelines import grpo
    from reins.errors import ConfigError
    from reins.runio import config_changes, run_config

    for mod in (ppo, grpo):
        assert key not in {f.name for f in dataclasses.fields(mod.Config)}
        with pytest.raises(ConfigError, match=f"unknown key '{key}'"):
            from_dict(mod.Config, {"output_dir": "unused", key: True})
        cfg = from_dict(mod.Config, {"output_dir": str(tmp_path), "model": "tiny", "reward_model": "x"}
                        if mod is ppo else {"output_dir": str(tmp_path), "model": "tiny"})
        saved = {**run_config(cfg), "group_by_length": False, "shuffle": True, "torch_compile": False}
        assert config_changes(saved, cfg) == []
        assert config_changes({**saved, "learning_rate": 1.0}, cfg) == ["learning_rate"]
