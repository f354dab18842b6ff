"""Runs interrupted after a checkpoint and re-run end where an uninterrupted run ends: the same metrics and the
same saved weights, bit for bit (LoRA sft and dpo, whose checkpoints hold only the adapter; the reward stage,
whose LoRA model is saved merged)."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from pipelines import dpo, sft
from pipelines import reward_model as reward
from reins.config import from_dict
from reins.runio import RunDir
from tests.pipelines.helpers import crash_at_step, stage_overrides


def _cfg(mod, tmp_path, **kw):
    names = {f.name for f in dataclasses.fields(mod.Config)}
    return from_dict(mod.Config, {k: v for k, v in stage_overrides(tmp_path, **kw).items() if k in names})


def _weights(model_dir) -> dict[str, torch.Tensor]:
    files = sorted(model_dir.glob("*.safetensors"))
    assert files, f"no weights in {model_dir}"
    return {f"{f.name}:{k}": v for f in files for k, v in load_file(f).items()}


@pytest.mark.parametrize("mod,kw", [(sft, {"lora": {"r": 2}}), (dpo, {"lora": {"r": 2}}), (reward, {}),
                                    (reward, {"lora": {"r": 2}})],
                         ids=["sft-lora", "dpo-lora", "reward", "reward-lora"])
def test_interrupted_run_ends_bit_equal(tmp_path, mod, kw):
    kw = {"max_steps": 4, "save_every": 2, "learning_rate": 1e-2, "eval_every": 2, **kw}
    full = mod.train(_cfg(mod, tmp_path / "a", **kw))
    with crash_at_step(3):
        mod.train(_cfg(mod, tmp_path / "b", **kw))
    state = RunDir(str(tmp_path / "b" / "run"), _cfg(mod, tmp_path / "b", **kw)).load_checkpoint()
    assert state["step"] == 2 and not (tmp_path / "b" / "run" / "model").exists()
    resumed = mod.train(_cfg(mod, tmp_path / "b", **kw))
    assert resumed == full   # every metric, exactly (these stages log no wall-clock figures)
    a, b = _weights(tmp_path / "a" / "run" / "model"), _weights(tmp_path / "b" / "run" / "model")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])]
    if "lora" in kw and mod is not reward:
        assert any("lora_" in k for k in a)   # the artifact is the adapter
    log_a = [json.loads(x) for x in (tmp_path / "a" / "run" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()]
    assert log_a == log_b
