"""Sharded runs (issue 22, "Sharded runs save one shard"): under FSDP2 on 2 CPU processes (gloo) every process takes
part in gathering the checkpoint and the final model, which hold the full parameters; a resume loads them (and the
full optimizer state) back into the shards and ends where a single-process run of the same global batch ends (sft),
and dpo's sharded run equals its single-process run. What is not verified (ZeRO-3, FSDP with generation or LoRA) is
refused in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipelines import dpo, sft
from pipelines.models import load_causal_lm, load_tokenizer
from pipelines.sharded import check_launch
from reins.config import from_dict
from reins.errors import ConfigError
from reins.runio import safe_torch_load
from tests.helpers import launch_two_cpu_ranks
from tests.pipelines.helpers import stage_overrides

ROOT = Path(__file__).resolve().parents[2]


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "log.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "grad_norm" in r}


def _params(path: Path, cfg) -> dict[str, torch.Tensor]:
    model = load_causal_lm(from_dict(sft.Config, {**cfg, "model": str(path)}), load_tokenizer(
        from_dict(sft.Config, {**cfg, "model": str(path)})))
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.slow
def test_fsdp2_on_two_cpu_ranks_saves_full_state_and_resumes(tmp_path):
    keys = {"max_steps": 4, "save_every": 2, "learning_rate": 3e-3, "max_eval_samples": 4, "eval_every": 2}
    two = stage_overrides(tmp_path / "two", grad_accum=1, **keys)
    dpo_keys = {"max_steps": 2, "save_every": 2, "learning_rate": 3e-3, "max_eval_samples": 4}
    two_dpo = stage_overrides(tmp_path / "two_dpo", grad_accum=1, **dpo_keys)
    # Before the fix the main process evaluated and saved alone, waiting forever on a gather: a timeout.
    proc = launch_two_cpu_ranks(str(ROOT / "tests" / "pipelines" / "fsdp_worker.py"), json.dumps(two),
                                json.dumps(two_dpo), timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    types = json.loads((tmp_path / "two" / "param_types.json").read_text())
    assert set(types.values()) == {"DTensor"}  # the model really was sharded
    assert json.loads((tmp_path / "two" / "resumed_from.json").read_text()) == 2  # from the step-2 checkpoint

    # The same global batch (8) in one process: 2 accumulation micro-batches instead of 2 ranks.
    one = stage_overrides(tmp_path / "one", grad_accum=2, **keys)
    sft.train(from_dict(sft.Config, one))
    a, b = _losses(tmp_path / "two" / "run"), _losses(tmp_path / "one" / "run")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]  # steps 3, 4 after the resume from step 2's checkpoint
    for s in a:
        assert a[s] == pytest.approx(b[s], abs=1e-4)

    # The checkpoint holds every parameter whole (not one process's shard), and the optimizer state too.
    ck2 = safe_torch_load(tmp_path / "two" / "run" / "checkpoints" / "checkpoint.pt")
    ck1 = safe_torch_load(tmp_path / "one" / "run" / "checkpoints" / "checkpoint.pt")
    assert ck2["step"] == ck1["step"] == 4 and set(ck2["model"]) == set(ck1["model"])
    for n, v in ck1["model"].items():
        assert ck2["model"][n].shape == v.shape
        torch.testing.assert_close(ck2["model"][n], v, atol=1e-5, rtol=0)
    moments = {n: s["exp_avg"] for n, s in ck2["optimizer"]["state"].items()}
    assert set(moments) == set(ck1["model"]) and all(moments[n].shape == ck1["model"][n].shape for n in moments)

    # The final model directory: the gathered weights, equal to the single-process model's.
    p2, p1 = _params(tmp_path / "two" / "run" / "model", one), _params(tmp_path / "one" / "run" / "model", one)
    for n in p1:
        torch.testing.assert_close(p2[n], p1[n], atol=1e-5, rtol=0)
    gathered = torch.load(tmp_path / "two" / "fsdp_final.pt")
    torch.testing.assert_close(p2["model.embed_tokens.weight"], gathered["model.embed_tokens.weight"])

    # dpo (a frozen reference beside the sharded policy) gives the single-process run's losses and model too.
    one_dpo = stage_overrides(tmp_path / "one_dpo", grad_accum=2, **dpo_keys)
    dpo.train(from_dict(dpo.Config, one_dpo))
    a, b = _losses(tmp_path / "two_dpo" / "run"), _losses(tmp_path / "one_dpo" / "run")
    assert sorted(a) == sorted(b) == [1, 2] and all(a[s] == pytest.approx(b[s], abs=1e-4) for s in a)
    p2, p1 = (_params(tmp_path / d / "run" / "model", one) for d in ("two_dpo", "one_dpo"))
    for n in p1:
        torch.testing.assert_close(p2[n], p1[n], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,stage,kw,match", [
    ("zero3", "sft", {"generates": False}, "sft under DeepSpeed ZeRO-3 is not verified"),
    ("fsdp", "grpo", {"generates": True}, "grpo with generation under FSDP is not verified"),
    ("fsdp", "sft", {"generates": True}, "eval_prompts=none"),
    ("fsdp", "dpo", {"generates": False, "lora": True}, "dpo with LoRA under FSDP is not verified"),
])
def test_unverified_sharded_launches_are_refused_in_one_line(kind, stage, kw, match):
    with pytest.raises(ConfigError, match=match) as e:
        check_launch(kind, stage, **kw)
    assert "\n" not in str(e.value)
    check_launch("fsdp", stage, generates=False)  # what the test above runs
    check_launch(None, stage, generates=True, lora=True)  # not sharded: nothing to refuse


def test_preferences_refuses_a_zero3_launch(monkeypatch, tmp_path):
    from pipelines import preferences

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    with pytest.raises(ConfigError, match="preferences under DeepSpeed ZeRO-3 is not verified"):
        preferences.train(preferences.Config(output_dir=str(tmp_path / "p")))
    assert not (tmp_path / "p").exists()
