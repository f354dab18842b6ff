"""Artifacts that travel: model paths recorded absolute, tokenizers and configs in the form transformers 4.x
reads too, chat templates saved only where trained, TensorBoard tags named like metrics.json (issue 18)."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from pipelines.models import TINY_CHAT_TEMPLATE, load_causal_lm, load_tokenizer, save_model
from tests.helpers import TINY_TRAIN, run_cli, snapshot, write_jsonl
from tests.pipelines.helpers import small_args, small_model, small_tok

QUIET = ["--quiet", "eval_prompts=none"]


def _logits(model, tok, text="I stayed at the inn"):
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_adapter_of_a_relative_base_loads_from_another_directory(tmp_path, monkeypatch, capfd):
    """The issue's path: `reins sft` with LoRA on `runs/sft/model` (relative), then from another directory
    `reins dpo model=<that adapter>` and plain peft's AutoPeftModelForCausalLM."""
    home, away = tmp_path / "home", tmp_path / "away"
    home.mkdir()
    away.mkdir()
    monkeypatch.chdir(home)
    code, err = run_cli(["sft", "output_dir=runs/sft", *TINY_TRAIN, *QUIET], capfd)
    assert code == 0, err
    code, err = run_cli(["sft", "output_dir=runs/lora", "model=runs/sft/model", "lora.r=2", *TINY_TRAIN, *QUIET],
                        capfd)
    assert code == 0, err
    base = str(home / "runs" / "sft" / "model")
    adapter = home / "runs" / "lora" / "model"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    assert yaml.safe_load((home / "runs" / "lora" / "config.yaml").read_text())["model"] == base
    # The same command again (relative path, same directory) is the same run: cached, not "a different run".
    code, err = run_cli(["sft", "output_dir=runs/lora", "model=runs/sft/model", "lora.r=2", *TINY_TRAIN, *QUIET],
                        capfd)
    assert code == 0, err

    monkeypatch.chdir(away)
    tok = load_tokenizer(small_args(model=str(adapter)))
    ours = load_causal_lm(small_args(model=str(adapter)), tok, trainable=False)
    from peft import AutoPeftModelForCausalLM

    plain = AutoPeftModelForCausalLM.from_pretrained(str(adapter))
    assert torch.allclose(_logits(ours, tok), _logits(plain, tok), atol=1e-6)
    code, err = run_cli(["dpo", f"model={adapter}", "output_dir=dpo", *TINY_TRAIN, *QUIET], capfd)
    assert code == 0, err
    assert (away / "dpo" / "metrics.json").is_file()


@pytest.mark.parametrize("stage", ["dpo", "ppo"])
def test_adapter_with_a_missing_relative_base_is_one_error_before_any_output(tmp_path, monkeypatch, capfd, stage):
    tok = small_tok()
    adapter = tmp_path / "adapter"
    from reins.config import from_dict

    model = load_causal_lm(from_dict(type(small_args()), {"tiny": dict(small_args().tiny.__dict__),
                                                          "lora": {"r": 2}}), tok)
    save_model(model, tok, adapter)
    cfg_path = adapter / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = "runs/sft/model"  # what an adapter saved before the fix recorded
    cfg_path.write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    extra = [f"reward_model={adapter}", "builtin_size=64"] if stage == "ppo" else TINY_TRAIN
    code, err = run_cli([stage, f"model={adapter}", "output_dir=out", *extra, *QUIET], capfd)
    assert code == 2
    assert len(err) == 1 and "adapter_config.json" in err[0] and "runs/sft/model does not exist" in err[0], err
    assert snapshot(tmp_path / "out") == {}  # no stray config.yaml


def test_saved_model_uses_the_spelling_transformers4_reads(tmp_path):
    tok = small_tok()
    model = small_model(tok)
    save_model(model, tok, tmp_path / "m")
    tcfg = json.loads((tmp_path / "m" / "tokenizer_config.json").read_text())
    assert tcfg["tokenizer_class"] == "PreTrainedTokenizerFast"  # 4.x has no TokenizersBackend
    assert not isinstance(tcfg.get("extra_special_tokens"), list)  # a list there breaks 4.x (it wants a dict)
    assert tcfg["additional_special_tokens"] == ["<|system|>", "<|user|>", "<|assistant|>"]
    mcfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert mcfg["rope_theta"] == mcfg.get("rope_parameters", mcfg)["rope_theta"]  # 4.x reads only rope_theta
    # transformers 5 reads the rewritten files to the same tokenizer and model.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    again = AutoTokenizer.from_pretrained(tmp_path / "m")
    text = "<|user|>a fine room<|endoftext|><|assistant|>great"
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.all_special_tokens == tok.all_special_tokens and again.pad_token_id == tok.pad_token_id
    assert torch.allclose(_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "m"), again),
                          _logits(model, tok), atol=1e-6)


def test_chat_template_saved_only_when_trained(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    code, err = run_cli(["sft", "output_dir=plain", *TINY_TRAIN, *QUIET], capfd)
    assert code == 0, err
    from transformers import AutoTokenizer

    assert not (tmp_path / "plain" / "model" / "chat_template.jinja").exists()
    assert AutoTokenizer.from_pretrained(tmp_path / "plain" / "model").chat_template is None
    # reins still renders conversational data for that model (its template, marked untrained)...
    assert load_tokenizer(small_args(model=str(tmp_path / "plain" / "model"))).chat_template == TINY_CHAT_TEMPLATE
    # ...and a run that trains on it saves the template it trained with.
    rows = [{"messages": [{"role": "user", "content": f"Review {i}"},
                          {"role": "assistant", "content": "A lovely stay, great staff."}]} for i in range(16)]
    data = write_jsonl(tmp_path / "chat.jsonl", rows)
    code, err = run_cli(["sft", "output_dir=chat", "model=plain/model", f"data={data}", *TINY_TRAIN, *QUIET],
                        capfd)
    assert code == 0, err
    assert AutoTokenizer.from_pretrained(tmp_path / "chat" / "model").chat_template == TINY_CHAT_TEMPLATE


@pytest.mark.parametrize("stage", ["dpo", "ppo"])
def test_tensorboard_tags_of_training_rows_are_metrics_json_keys(tmp_path, monkeypatch, capfd, stage):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    if stage == "dpo":
        argv, key = ["dpo", *TINY_TRAIN], "train/loss"
    else:  # ppo from a saved small model, scored by a saved sequence-classification head (numbers do not matter)
        from pipelines.models import load_reward_model

        tok = small_tok()
        save_model(small_model(tok), tok, tmp_path / "policy")
        save_model(load_reward_model(small_args(), tok, seed=1), tok, tmp_path / "rm")
        argv = ["ppo", "model=policy", "reward_model=rm", "builtin_size=64", "batch_size=8", "max_steps=2",
                "ppo_epochs=1", "generation.max_new_tokens=4"]
        key = "train/objective/kl"
    code, err = run_cli([*argv, "output_dir=run", "report_to=tensorboard", *QUIET], capfd)
    assert code == 0, err
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    train_keys = {k for k in metrics if k.startswith("train/")}
    assert key in train_keys and train_keys <= tags
    assert not {t for t in tags if not t.startswith(("train/", "eval/", "model/", "data/", "reward_model/"))}
    assert acc.Scalars(key)[-1].value == float(torch.tensor(metrics[key]).float())
    assert acc.Scalars(key)[-1].step == metrics["steps"]


def test_config_written_with_a_relative_model_path_still_matches(tmp_path, monkeypatch):
    """A config.yaml from before absolute paths (relative `model`) is the same run when re-run from where it
    was written; one written now (absolute) is the same run from any directory."""
    from pipelines import dpo
    from reins.config import from_dict, to_dict
    from reins.runio import config_changes, run_config

    (tmp_path / "a" / "runs" / "sft" / "model").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    cfg = from_dict(dpo.Config, {"model": "runs/sft/model", "ref_model": "runs/sft/model", "output_dir": "out"})
    old = to_dict(cfg)  # what config.yaml held before: the paths as given
    assert old["model"] == "runs/sft/model"
    assert run_config(cfg)["model"] == run_config(cfg)["ref_model"] == str(tmp_path / "a" / "runs" / "sft" / "model")
    assert run_config(cfg)["output_dir"] == "out"  # only model paths are rewritten
    assert config_changes(old, cfg) == []
    written = run_config(cfg)
    monkeypatch.chdir(tmp_path / "b")
    again = from_dict(dpo.Config, {"model": written["model"], "ref_model": written["ref_model"], "output_dir": "out"})
    assert config_changes(written, again) == []
    assert config_changes(old, again) == ["model", "ref_model"]  # from b, the old relative path names b/runs/...
