"""`reins export` round-trips for every LM stage (sft, reward, dpo with LoRA merged and as an adapter, ppo and its
value model's run, grpo): plain transformers/peft load the export and compute exactly the logits reins computes
with the run's own artifact, and the model card names the stage that made it."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import run_cli

TEXT = "The room was clean and the staff"


@pytest.fixture(scope="module")
def grpo_run(lm_runs, tmp_path_factory):
    """Two GRPO iterations from the sft model with a dense (length) reward, so that the policy moves."""
    from reins.cli import main

    out = tmp_path_factory.mktemp("grpo-export") / "grpo"
    assert main(["grpo", f"output_dir={out}", f"model={lm_runs / 'sft' / 'model'}", "max_operand=9", "batch_size=2",
                 "num_generations=4", "max_steps=2", "learning_rate=0.05", "generation.max_new_tokens=6",
                 "reward_funcs=[tests.pipelines.grpo_rewards:length_penalty]", "eval_prompts=none",
                 "--quiet"]) == 0
    return out


def _reins_logits(model_dir, reward: bool = False) -> torch.Tensor:
    """What reins computes with a run's artifact (a LoRA adapter applied to its base)."""
    from pipelines.models import load_causal_lm, load_reward_model, load_tokenizer
    from tests.pipelines.helpers import small_args

    args = small_args(model=str(model_dir))
    tok = load_tokenizer(args)
    ids = torch.tensor([tok(TEXT)["input_ids"]])
    with torch.no_grad():
        if reward:
            return load_reward_model(args, tok, trainable=False)(input_ids=ids).logits[0]
        return load_causal_lm(args, tok, trainable=False)(input_ids=ids).logits[0]


def _plain_logits(out, kind: str) -> torch.Tensor:
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    cls = {"lm": AutoModelForCausalLM, "reward": AutoModelForSequenceClassification,
           "adapter": AutoPeftModelForCausalLM}[kind]
    ids = torch.tensor([AutoTokenizer.from_pretrained(out)(TEXT)["input_ids"]])
    with torch.no_grad():
        return cls.from_pretrained(out).eval()(input_ids=ids).logits[0]


@pytest.mark.parametrize("stage,flags,kind", [
    ("sft", [], "lm"), ("reward", [], "reward"), ("dpo", ["--merge"], "lm"), ("dpo", [], "adapter"),
    ("ppo", [], "lm"), ("grpo", [], "lm")], ids=["sft", "reward", "dpo-merged", "dpo-adapter", "ppo", "grpo"])
def test_export_round_trip_equals_the_runs_model(lm_runs, grpo_run, tmp_path, capfd, stage, flags, kind):
    run = grpo_run if stage == "grpo" else lm_runs / stage
    out = tmp_path / "export"
    code, err = run_cli(["export", str(run), "--out", str(out), "--quiet", *flags], capfd)
    assert code == 0, err
    ours = _reins_logits(run / "model", reward=stage == "reward")
    torch.testing.assert_close(_plain_logits(out, kind), ours, rtol=1e-6, atol=1e-6)
    card = (out / "README.md").read_text()
    assert f"# reins {stage}: {run.name}" in card and f"Made by `reins {stage}`" in card
    assert f"tags: [reins, {stage}]" in card
    if stage in ("ppo", "grpo", "dpo"):  # the stage trained: the export is not its starting model
        start = _reins_logits(lm_runs / "sft" / "model")
        assert (ours - start).abs().max() > 1e-4


def test_grpo_run_is_not_taken_for_dpo(grpo_run):
    import yaml

    from pipelines.export import stage_of_config

    config = yaml.safe_load((grpo_run / "config.yaml").read_text())
    assert "loss_type" in config  # the key dpo is recognised by: grpo's own key must come first
    assert stage_of_config(config, grpo_run) == "grpo"
