"""`reins grpo` end to end on tiny models: the stage contract and TRL's metric names, exact resume after a NaN stop
and after SIGKILL, bad reward functions (one-line errors naming them, nothing written), zero-variance groups
leaving the policy unchanged, the exact ratio of one update per rollout, LoRA without a reference at beta 0, and a
seeded run on the arithmetic task whose accuracy rises."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipelines import arithmetic, grpo
from pipelines.models import ModelArgs, TinySpec, load_causal_lm, load_tokenizer, save_model
from reins.config import from_dict
from reins.errors import NonFiniteError, ReinsError
from reins.runio import safe_torch_load
from tests.helpers import launch_two_cpu_ranks, signal_when
from tests.pipelines import grpo_rewards
from tests.pipelines.helpers import SMALL, grpo_toy_cfg, grpo_toy_policy, grpo_train_rows, log_rows

pytestmark = pytest.mark.usefixtures("reset_flaky")

ROOT = Path(__file__).resolve().parents[2]
TRL_METRICS = ["reward", "reward_std", "frac_reward_zero_std", "kl", "entropy", "clip_ratio/low_mean",
               "clip_ratio/high_mean", "clip_ratio/region_mean", "completions/mean_length", "completions/min_length",
               "completions/max_length", "completions/clipped_ratio", "completions/mean_terminated_length",
               "rewards/arithmetic/mean", "rewards/arithmetic/std", "rewards/flaky/mean", "num_tokens", "loss",
               "grad_norm"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("grpo") / "full"
    return out, grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out)))


def test_arithmetic_task_rewards_and_split():
    assert arithmetic.answer("What is 37+48? Answer:") == 85
    assert arithmetic.correct_reward(["What is 37+48? Answer:"] * 5, [" 85", "37 + 48 = 85", " 85 or 58", " 58",
                                                                      " eighty"]) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert arithmetic.answer([{"role": "user", "content": "What is 2+3? Answer:"}]) == 5
    assert arithmetic.format_reward([""] * 4, [" 85", "85 apples", " -3 ", ""]) == [1.0, 0.0, 1.0, 0.0]
    train = set(arithmetic.problems(1000, seed=0, split="train", max_operand=9))
    held = set(arithmetic.problems(1000, seed=3, split="eval", max_operand=9))
    assert len(train) == 80 and len(held) == 20 and not train & held   # every pair once, held out
    assert arithmetic.arithmetic_sft_rows(1, 0, "train", max_operand=9)[0]["completion"].strip().isdigit()


def test_run_follows_the_stage_contract(uninterrupted):
    out, metrics = uninterrupted
    for f in ("config.yaml", "metrics.json", "log.jsonl", "checkpoints/checkpoint.pt", "model/config.json"):
        assert (out / f).is_file(), f
    rows = grpo_train_rows(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for name in TRL_METRICS:
        assert all(name in r for r in rows) and f"train/{name}" in metrics, name
    assert log_rows(out)[0]["reference/loaded"] is True
    # 4 prompts x 4 completions per iteration; the reward is the weighted sum of both functions' means
    assert rows[-1]["episode"] == 3 * 16
    r = rows[0]
    assert r["reward"] == pytest.approx(r["rewards/arithmetic/mean"] + 0.5 * r["rewards/flaky/mean"], abs=1e-9)
    assert all(r["kl"] > 0 for r in rows[1:])   # the policy has left the reference
    for key in ("eval/accuracy", "eval/reward", "eval/rewards/arithmetic", "eval/rewards/flaky"):
        assert key in metrics
    assert safe_torch_load(out / "checkpoints" / "checkpoint.pt")["step"] == 3
    assert grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out))) == metrics
    (out / "metrics.json").unlink()   # killed after the last checkpoint: the re-run ends with the same metrics
    assert grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out))) == metrics


def test_nan_reward_stops_names_the_function_and_resumes_exactly(tmp_path, uninterrupted):
    out = tmp_path / "run"
    grpo_rewards.CALLS["flaky"] = 0
    grpo_rewards.NAN_FROM_CALL = 4   # calls: 1 the probe, 2 the initial evaluation, 3 and 4 the rollouts
    with pytest.raises(NonFiniteError, match="'flaky'"):
        grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out)))
    state = safe_torch_load(out / "checkpoints" / "checkpoint.pt")
    assert state["step"] == 1 and not (out / "metrics.json").exists()
    grpo_rewards.NAN_FROM_CALL = None
    assert grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out))) == uninterrupted[1]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
            "OMP_NUM_THREADS": str(torch.get_num_threads())}


def test_sigkill_then_rerun_matches_uninterrupted(tmp_path, uninterrupted):
    out = tmp_path / "run"
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(yaml.safe_dump({"stage": "grpo", **grpo_toy_cfg(out)}))
    cmd = [sys.executable, "-m", "pipelines.grpo", "--config", str(cfg)]
    ckpt = out / "checkpoints" / "checkpoint.pt"
    signal_when(cmd, ckpt.is_file, signal.SIGKILL, env=_env(), timeout=240)
    assert safe_torch_load(ckpt)["step"] < 3 and not (out / "metrics.json").exists()
    res = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "metrics.json").read_text()) == uninterrupted[1]
    assert [r["step"] for r in grpo_train_rows(out)] == [1, 2, 3]


def test_two_process_accelerate_launch_keeps_ranks_in_sync(tmp_path):
    out = tmp_path / "run"
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(yaml.safe_dump({"stage": "grpo", **grpo_toy_cfg(out, max_steps=2, scale_rewards="batch",
                                                              eval_prompts="none")}))
    proc = launch_two_cpu_ranks("-m", "pipelines.grpo", "--config", str(cfg), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["dist/world_size"] == 2 and m["dist/param_sync_gap"] == 0.0
    # the metrics cover both ranks' completions: 2 prompts x 4 completions on each of the 2 ranks
    assert m["train/episode"] == 2 * 16


@pytest.mark.parametrize("func, message", [
    ("raises", r"reward function 'raises' \(tests.pipelines.grpo_rewards:raises\) raised KeyError: 'answer'"),
    ("wrong_length", r"reward function 'wrong_length' .* returned 3 values for 2 completions"),
    ("returns_nan", r"reward function 'returns_nan' .* returned nan for completion 0"),
    ("not_numbers", r"reward function 'not_numbers' .* must return one number \(or None\) per completion"),
    ("missing", r"module 'tests.pipelines.grpo_rewards' has no callable 'missing'"),
])
def test_bad_reward_function_is_a_one_line_error_before_anything_is_written(tmp_path, capsys, func, message):
    out = tmp_path / "run"
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(yaml.safe_dump({"stage": "grpo", **grpo_toy_cfg(out, reward_funcs=[
        "builtin:arithmetic", f"tests.pipelines.grpo_rewards:{func}"], reward_weights=None)}))
    capsys.readouterr()   # drop the toy model's own save progress
    assert grpo.main(["--config", str(cfg)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists()          # validated before the output dir was created


def _params(path: str) -> dict:
    args = ModelArgs(model=path)
    return {k: v.clone() for k, v in load_causal_lm(args, load_tokenizer(args), seed=0).state_dict().items()}


def test_zero_variance_groups_give_zero_advantage_and_no_update(tmp_path):
    out = tmp_path / "run"
    grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out, reward_funcs=["tests.pipelines.grpo_rewards:constant"],
                                               reward_weights=None, beta=0.0, max_steps=2, eval_prompts="none")))
    rows = grpo_train_rows(out)
    assert all(r["frac_reward_zero_std"] == 1.0 and r["loss"] == 0.0 and r["grad_norm"] == 0.0 for r in rows)
    before, after = _params(grpo_toy_policy()), _params(str(out / "model"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_one_update_per_rollout_has_ratio_exactly_one(tmp_path):
    # With an absurdly tight clip, any ratio != 1 would be clipped. One pass, one minibatch: nothing is,
    # and the policy still moves. Two passes over the same rollout: the second pass is clipped.
    tight = {"epsilon": 1e-9, "beta": 0.0, "max_steps": 2, "eval_prompts": "none", "learning_rate": 1e-2}
    out = tmp_path / "one"
    grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out, num_iterations=1, **tight)))
    assert all(r["clip_ratio/region_mean"] == 0.0 for r in grpo_train_rows(out))
    before, after = _params(grpo_toy_policy()), _params(str(out / "model"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    out2 = tmp_path / "two"
    grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out2, num_iterations=2, **tight)))
    assert any(r["clip_ratio/region_mean"] > 0.0 for r in grpo_train_rows(out2))


def test_lora_at_beta_zero_loads_no_reference(tmp_path):
    out = tmp_path / "run"
    m = grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out, beta=0.0, lora={"r": 4}, max_steps=2, eval_prompts="none",
                                               learning_rate=1e-2)))
    first = log_rows(out)[0]
    assert first["reference/loaded"] is False and first["model/trainable"] < first["model/parameters"]
    assert "train/kl" not in m and m["steps"] == 2
    assert (out / "model" / "adapter_config.json").is_file()


def test_sentiment_with_gold_judge_and_reward_model_rewards(tmp_path):
    from pipelines.models import load_reward_model

    args = ModelArgs(tiny=TinySpec(**SMALL))
    tok = load_tokenizer(args)
    save_model(load_reward_model(args, tok, seed=1), tok, tmp_path / "reward" / "model")   # a reward stage's layout
    out = tmp_path / "run"
    m = grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out, data="builtin:sentiment", builtin_size=16, max_steps=1,
                                               reward_funcs=["builtin:gold", str(tmp_path / "reward")],
                                               generation={"max_new_tokens": 6, "batch_size": 16},
                                               eval={"num_prompts": 4, "max_new_tokens": 6})))
    row = grpo_train_rows(out)[0]
    assert row["reward"] == pytest.approx(row["rewards/gold/mean"] + 0.5 * row["rewards/reward/mean"], abs=1e-9)
    assert row["rewards/reward/std"] > 0          # the reward model scored the completions differently
    # the sentiment task's shared evaluation (gold judge, KL to the reference, win rate) beside the rewards
    for key in ("eval/gold_reward", "eval/kl_to_ref", "eval/win_rate_vs_ref", "eval/rewards/gold", "eval/reward"):
        assert key in m, key


def test_rloo_and_config_errors(tmp_path):
    cfg = from_dict(grpo.Config, grpo_toy_cfg(tmp_path / "x", advantage="rloo"))
    assert cfg.scale == "none" and from_dict(grpo.Config, grpo_toy_cfg(tmp_path / "x")).scale == "group"
    for bad, match in [({"num_generations": 1}, "num_generations"), ({"reward_weights": [1.0]}, "reward_weights"),
                       ({"beta": 0.0, "ref_model": grpo_toy_policy()}, "ref_model"),
                       ({"reward_funcs": ["not a function"], "reward_weights": None}, "is none of")]:
        with pytest.raises(ReinsError, match=match):
            grpo.train(from_dict(grpo.Config, grpo_toy_cfg(tmp_path / "y", **bad)))
    assert not (tmp_path / "y").exists()


# ----------------------------------------------------------------------------------------- learning
LEARN_TINY = {"hidden_size": 64, "num_layers": 2, "num_heads": 2, "intermediate_size": 128, "vocab_size": 400,
              "max_position_embeddings": 128}


@pytest.mark.slow
def test_grpo_raises_arithmetic_accuracy_after_a_short_sft(tmp_path):
    from pipelines import sft
    from tests.pipelines.helpers import write_jsonl

    sft.train(from_dict(sft.Config, {
        "output_dir": str(tmp_path / "sft"), "quiet": True, "data": "builtin:arithmetic", "max_operand": 9,
        "tiny": LEARN_TINY, "builtin_size": 4000, "max_steps": 60, "batch_size": 32, "learning_rate": 3e-3,
        "lr_scheduler": "constant", "max_length": 32, "eval_prompts": None, "max_eval_samples": 32}))
    # Greedy accuracy on all 80 training problems, before and after (the held-out 20 are too few to move).
    probs = sorted(set(arithmetic.problems(80, split="train", max_operand=9)))
    prompts = write_jsonl(tmp_path / "train_problems.jsonl",
                          [{"prompt": arithmetic.PROMPT.format(a=a, b=b)} for a, b in probs])
    out = tmp_path / "grpo"
    m = grpo.train(from_dict(grpo.Config, {
        "output_dir": str(out), "quiet": True, "model": str(tmp_path / "sft" / "model"), "max_operand": 9,
        "max_steps": 100, "batch_size": 16, "num_generations": 8, "num_minibatches": 2, "learning_rate": 5e-4,
        "lr_scheduler": "constant", "reward_weights": [1.0, 0.1], "save_every": 100,
        "generation": {"max_new_tokens": 4, "batch_size": 128}, "eval_prompts": str(prompts),
        "eval": {"num_prompts": 80, "max_new_tokens": 4, "temperature": 0.0, "batch_size": 80}}))
    # measured: 0.125 -> 0.4375
    assert m["eval/accuracy"] >= m["init/accuracy"] + 0.15, (m["init/accuracy"], m["eval/accuracy"])
    rewards = [r["rewards/arithmetic/mean"] for r in grpo_train_rows(out)]
    assert sum(rewards[-20:]) / 20 > sum(rewards[:20]) / 20 + 0.05    # sampled accuracy during training (+0.11)


def test_tiny_arithmetic_recipe_through_the_runner_writes_the_grpo_report(tmp_path):
    from pipelines.runner import run_recipe

    small = {"max_steps": 2, "batch_size": 4, "num_generations": 4, "eval.num_prompts": 4, "save_every": 2}
    overrides = {"output_dir": str(tmp_path / "run"), "sft.max_steps": 3,
                 **{f"{s}.{k}": v for s in ("grpo", "rloo") for k, v in small.items()},
                 **{f"{s}.quiet": True for s in ("sft", "grpo", "rloo")}}
    res = run_recipe(ROOT / "recipes" / "grpo" / "tiny-arithmetic.yaml", overrides)
    assert res["grpo"]["steps"] == 2 and res["rloo"]["steps"] == 2
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## GRPO policies on their own reward functions" in report
    assert "| grpo |" in report and "| rloo |" in report and "(reward +" in report   # samples show the reward
    assert (tmp_path / "run" / "curves_grpo.png").is_file()


def test_loss_types_reach_the_loss_with_their_denominators(tmp_path):
    # One on-policy step (ratio 1, beta 0) on the same first rollout: the per-token loss is -A_i on completion i.
    # token: -sum_i A_i n_i / sum_i n_i; dr_grpo: the same sum over (completions x max_new_tokens); sequence:
    # -mean_i A_i, which is 0 because group advantages sum to 0 within each group.
    loss = {}
    for kind in ("token", "dr_grpo", "sequence"):
        out = tmp_path / kind
        grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out, loss_type=kind, beta=0.0, num_iterations=1, max_steps=1,
                                                   eval_prompts="none")))
        row = grpo_train_rows(out)[0]
        loss[kind], tokens = row["loss"], row["rollout/tokens"]
    assert loss["token"] != 0
    assert loss["dr_grpo"] == pytest.approx(loss["token"] * tokens / (16 * 4), rel=1e-5)
    assert abs(loss["sequence"]) < 1e-6


def test_tensorboard_tags_are_metrics_json_keys_and_the_model_has_a_card(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    m = grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out, max_steps=2, report_to="tensorboard")))
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    train_keys = {k for k in m if k.startswith("train/")}
    assert "train/reward" in train_keys and train_keys <= tags
    card = (out / "model" / "README.md").read_text()
    assert "tags: [reins, grpo]" in card and f"base_model: \"{grpo_toy_policy()}\"" in card
