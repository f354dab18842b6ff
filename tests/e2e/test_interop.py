"""Interop with the tools users already have, in a Python where reins cannot be imported (fixtures.run_without_reins):
plain transformers/peft load sft, dpo (LoRA), ppo and reward outputs and compute what reins computes; Minari tiers
written by `collect` load with minari (environments, reference scores, `minari show`); TRL-format preference data
(standard and conversational; JSONL, parquet, a `datasets` directory) trains in `reins dpo`.

Set REINS_TRANSFORMERS4_PYTHON to a python with transformers 4.x, torch and peft (no reins) to also check that
release line reads the outputs (`make t4env` builds one, .venv-t4/bin/python; CI does so); skipped otherwise."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_TRAIN, run_cli, run_without_reins, write_jsonl

QUIET = ["--quiet", "eval_prompts=none"]
TEXT = "The room was clean and the staff"
PROMPT, COMPLETIONS = "The hotel was", [" lovely, with friendly staff.", " dirty and very loud."]

# Plain transformers / peft: logits at TEXT of each causal LM, a greedy continuation, and reward scores of
# token ids (those reins scored); `paths`, `rm_ids`, `text` and `prompt_text` are set before it.
PLAIN_LOAD = """
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
result = {"logits": {}, "generated": {}}
for name, path in paths.items():
    if name == "reward":
        continue
    tok = AutoTokenizer.from_pretrained(path)
    cls = AutoPeftModelForCausalLM if name == "dpo" else AutoModelForCausalLM  # dpo: a LoRA adapter
    model = cls.from_pretrained(path).eval()
    ids = torch.tensor([tok(text)["input_ids"]])
    with torch.no_grad():
        result["logits"][name] = model(input_ids=ids).logits[0, -1].tolist()
        out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
    result["generated"][name] = tok.decode(out[0, ids.shape[1]:])
from transformers import pipeline
generate = pipeline("text-generation", model=paths["dpo-merged"])
result["pipeline"] = generate("The room was", max_new_tokens=8)[0]["generated_text"]
rm = AutoModelForSequenceClassification.from_pretrained(paths["reward"]).eval()
with torch.no_grad():
    result["scores"] = [rm(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in rm_ids]
    rm_tok = AutoTokenizer.from_pretrained(paths["reward"])
    result["text_score"] = rm(**rm_tok(prompt_text, return_tensors="pt")).logits[0, 0].item()
"""


def _reins_view(lm_runs):
    """What reins computes with the same artifacts: logits at TEXT, reward scores and the ids it scored."""
    from pipelines.data import encode_prompt
    from pipelines.evaluation import encode_scored_completion, score_texts
    from pipelines.models import load_causal_lm, load_reward_model, load_tokenizer
    from tests.pipelines.helpers import small_args

    logits = {}
    for name in ("sft", "dpo", "ppo"):
        args = small_args(model=str(lm_runs / name / "model"))
        tok = load_tokenizer(args)
        with torch.no_grad():
            ids = torch.tensor([tok(TEXT)["input_ids"]])
            logits[name] = load_causal_lm(args, tok, trainable=False)(input_ids=ids).logits[0, -1]
    args = small_args(model=str(lm_runs / "reward" / "model"))
    tok = load_tokenizer(args)
    rm = load_reward_model(args, tok, trainable=False)
    scores = score_texts(rm, tok, [PROMPT] * 2, COMPLETIONS)
    rm_ids = [encode_prompt(tok, PROMPT) + encode_scored_completion(tok, PROMPT, c) for c in COMPLETIONS]
    return logits, scores, rm_ids


def _plain_script(lm_runs) -> tuple[str, dict]:
    logits, scores, rm_ids = _reins_view(lm_runs)
    paths = {name: str(lm_runs / name / "model") for name in ("sft", "dpo", "ppo", "reward")}
    paths["dpo-merged"] = str(lm_runs / "dpo-merged")
    logits["dpo-merged"] = logits["dpo"]  # merging the adapter in changes nothing the model computes
    code = (f"paths, rm_ids, text = {paths!r}, {rm_ids!r}, {TEXT!r}\n"
            f"prompt_text = {PROMPT + COMPLETIONS[0]!r}\n" + PLAIN_LOAD)
    return code, {"logits": logits, "scores": scores}


def test_plain_transformers_and_peft_load_every_lm_output(lm_runs, tmp_path):
    code, ours = _plain_script(lm_runs)
    theirs = run_without_reins(code, cwd=tmp_path)
    for name in ("sft", "dpo", "ppo", "dpo-merged"):
        torch.testing.assert_close(torch.tensor(theirs["logits"][name]), ours["logits"][name], atol=1e-5, rtol=1e-5)
        assert theirs["generated"][name]  # greedy decoding produced text
    assert theirs["pipeline"].startswith("The room was") and len(theirs["pipeline"]) > len("The room was")
    # dpo (an adapter) and ppo differ from their sft start: the comparison above is not of one model thrice
    assert (ours["logits"]["dpo"] - ours["logits"]["sft"]).abs().max() > 1e-3
    assert (ours["logits"]["ppo"] - ours["logits"]["sft"]).abs().max() > 1e-6
    torch.testing.assert_close(torch.tensor(theirs["scores"]), ours["scores"], atol=1e-5, rtol=1e-5)
    assert ours["scores"][0] != ours["scores"][1] and math.isfinite(theirs["text_score"])


@pytest.mark.skipif(not os.environ.get("REINS_TRANSFORMERS4_PYTHON"),
                    reason="set REINS_TRANSFORMERS4_PYTHON to a python with transformers 4.x (no reins): make t4env")
def test_transformers4_reads_every_lm_output(lm_runs, tmp_path):
    python = os.environ["REINS_TRANSFORMERS4_PYTHON"]
    check = subprocess.run([python, "-c", "import transformers; print(transformers.__version__)"],
                           capture_output=True, text=True)
    assert check.stdout.startswith("4."), check.stdout + check.stderr
    code, ours = _plain_script(lm_runs)
    theirs = run_without_reins(code, cwd=tmp_path, python=python)
    for name in ("sft", "dpo", "ppo", "dpo-merged"):
        torch.testing.assert_close(torch.tensor(theirs["logits"][name]), ours["logits"][name], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.tensor(theirs["scores"]), ours["scores"], atol=1e-5, rtol=1e-5)
    assert theirs["pipeline"].startswith("The room was") and len(theirs["pipeline"]) > len("The room was")


# ----------------------------------------------------------------------------------------- Minari
TIERS = ("random", "medium", "expert")


@pytest.fixture(scope="module")
def tiers(tmp_path_factory):
    """Three scripted Pendulum tiers written by `reins collect` into a private MINARI_DATASETS_PATH."""
    from offline.collect import Config, train

    root = tmp_path_factory.mktemp("interop-minari")
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root / "datasets")
    try:
        cfg = Config(output_dir=str(root / "collect"), behaviour="scripted", steps_per_tier=400, ref_episodes=2,
                     n_envs=2, tiers=list(TIERS), dataset_prefix="interop/pend", quiet=True)
        cfg.validate()
        metrics = train(cfg)
    finally:
        if old is None:
            del os.environ["MINARI_DATASETS_PATH"]
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
    return root / "datasets", metrics


MINARI_LOAD = """
import minari, numpy as np
result = {}
for tier in TIERS:
    ds = minari.load_dataset(f"interop/pend/{tier}-v0")
    returns = np.array([ep.rewards.sum() for ep in ds.iterate_episodes()])
    info = {"episodes": ds.total_episodes, "steps": ds.total_steps, "return": float(returns.mean()),
            "normalized": float(minari.get_normalized_score(ds, returns.mean()))}
    for key, env in (("env", ds.recover_environment()), ("eval_env", ds.recover_environment(eval_env=True))):
        obs, _ = env.reset(seed=0)
        obs2, reward, *_ = env.step(env.action_space.sample())
        info[key] = [env.spec.id, list(obs2.shape), bool(np.isfinite(reward))]
    result[tier] = info
"""


def test_collected_tiers_load_in_plain_minari(tiers, tmp_path):
    root, metrics = tiers
    code = f"TIERS = {TIERS!r}\n" + MINARI_LOAD
    env = {"MINARI_DATASETS_PATH": str(root)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        theirs = run_without_reins(code, cwd=tmp_path)
        show = subprocess.run([str(Path(sys.executable).parent / "minari"), "show", "interop/pend/medium-v0"],
                              capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"})
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k)
            else:
                os.environ[k] = v
    for tier in TIERS:
        info = theirs[tier]
        assert info["episodes"] == metrics[f"{tier}/episodes"] and info["steps"] == metrics[f"{tier}/steps"]
        assert info["normalized"] * 100 == pytest.approx(metrics[f"{tier}/normalized_score"], abs=1e-6)
        assert info["env"] == info["eval_env"] == ["Pendulum-v1", [3], True]
    assert theirs["random"]["normalized"] < theirs["expert"]["normalized"]
    assert show.returncode == 0, show.stderr[-2000:]
    assert "interop/pend/medium-v0" in show.stdout and "Pendulum-v1" in show.stdout
    assert str(metrics["medium/episodes"]) in show.stdout  # Total Episodes


# ----------------------------------------------------------------------------------------- TRL data formats
def _pairs(n: int, chat: bool) -> list[dict]:
    good, bad = "A lovely stay, the staff were kind.", "A dreadful stay, the room was dirty."
    rows = []
    for i in range(n):
        prompt = f"Review {i} of the inn:"
        if chat:
            rows.append({"prompt": [{"role": "user", "content": prompt}],
                         "chosen": [{"role": "assistant", "content": good}],
                         "rejected": [{"role": "assistant", "content": bad}]})
        else:
            rows.append({"prompt": prompt, "chosen": " " + good, "rejected": " " + bad})
    return rows


def _write(kind: str, rows: list[dict], path: Path) -> Path:
    if kind == "jsonl":
        return write_jsonl(path.with_suffix(".jsonl"), rows)
    import datasets

    if kind == "parquet":
        datasets.Dataset.from_list(rows).to_parquet(str(path.with_suffix(".parquet")))
        return path.with_suffix(".parquet")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows[:16]),
                          "test": datasets.Dataset.from_list(rows[16:])}).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("chat", [False, True], ids=["standard", "conversational"])
@pytest.mark.parametrize("kind", ["jsonl", "parquet", "load_from_disk"])
def test_trl_preference_formats_train_in_reins_dpo(lm_runs, tmp_path, capfd, monkeypatch, kind, chat):
    monkeypatch.chdir(tmp_path)
    data = _write(kind, _pairs(20, chat), tmp_path / "pairs")
    code, err = run_cli(["dpo", f"data={data}", f"model={lm_runs / 'sft' / 'model'}", "output_dir=run",
                         *TINY_TRAIN, *QUIET], capfd)
    assert code == 0, err
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    pairs = next(r["data/train_pairs"] for r in log if "data/train_pairs" in r)
    assert pairs == (16 if kind == "load_from_disk" else 20)  # the directory's test split is held out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (kind == "load_from_disk") == ("eval/rewards/accuracies" in metrics)
    assert metrics["train/loss"] > 0 and metrics["steps"] == 2
    # conversational pairs train the chat template, so the saved model carries it; standard ones do not
    assert (tmp_path / "run" / "model" / "chat_template.jinja").is_file() == chat
