"""The model card (README.md) every LM artifact carries: what it is, what it came from, how well it did, how
it was made and how to load it without reins.

    write_model_card(run.path / "model", stage="dpo", config=run.config, metrics=final, chat_trained=True)
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

STAGES = {
    "sft": "supervised fine-tuning: negative log-likelihood of the completion tokens",
    "reward": "Bradley-Terry reward model: a sequence classifier with one score per text",
    "dpo": "direct preference optimisation (Rafailov et al. 2023) against a frozen reference",
    "kto": "Kahneman-Tversky optimisation (Ethayarajh et al. 2024) on unpaired feedback against a frozen reference",
    "ppo": "RLHF: KL-penalised PPO (Ouyang et al. 2022) against a reward model",
    "ppo-value": "the value model (critic) of a PPO run",
    "grpo": "group-relative policy optimisation (GRPO, Shao et al. 2024; or RLOO) on scored completions",
}
# Final metrics shown first when present; the rest of eval/* follows.
KEY_METRICS = ("eval/gold_reward", "eval/win_rate_vs_ref", "eval/kl_to_ref", "eval/reward_model_score",
               "eval/accuracy", "eval/rewards/accuracies", "eval/rewards/margins", "eval/loss", "train/loss",
               "train/objective/scores", "train/objective/kl", "steps")
MAX_ROWS = 16
HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # reins' model names


def invocation() -> str:
    """The command line of this process, as the user typed it when it was the `reins` command."""
    prog = Path(sys.argv[0]).name
    if prog in ("reins", "accelerate"):
        return shlex.join([prog, *sys.argv[1:]])
    return shlex.join([Path(sys.executable).name, *sys.argv])


def _base_model(config: dict) -> str:
    model = str(config.get("model", "?"))
    if model == "tiny":
        return "tiny (a small Llama initialised from scratch by reins, byte-level BPE tokenizer)"
    return model


def _data(stage: str, config: dict) -> str:
    data = config.get("data", "?")
    if stage in ("ppo", "ppo-value"):
        return f"prompts from `{data}`; scores from the reward model `{config.get('reward_model', '?')}`"
    if stage == "grpo":
        return f"prompts from `{data}`; rewards from `{', '.join(map(str, config.get('reward_funcs') or ['?']))}`"
    if stage in ("dpo", "reward"):
        return f"preference pairs from `{data}`"
    if stage == "kto":
        return f"unpaired feedback (desirable / undesirable completions) from `{data}`"
    return f"`{data}`"


def _metrics_table(metrics: dict) -> list[str]:
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    keys = [k for k in KEY_METRICS if k in numbers]
    keys += sorted(k for k in numbers if k.startswith("eval/") and k not in keys)
    rows = ["| metric | value |", "|---|---|"]
    rows += [f"| `{k}` | {numbers[k]:.4g} |" if isinstance(numbers[k], float) else f"| `{k}` | {numbers[k]} |"
             for k in keys[:MAX_ROWS]]
    return rows


def _usage(stage: str, adapter: bool, path: str) -> str:
    if stage in ("reward", "ppo-value"):  # sequence classifiers with one score
        return ("from transformers import AutoModelForSequenceClassification, AutoTokenizer\n"
                f"tok = AutoTokenizer.from_pretrained({path!r})\n"
                f"rm = AutoModelForSequenceClassification.from_pretrained({path!r})\n"
                "score = rm(**tok(\"a prompt and its completion\", return_tensors=\"pt\")).logits[0, 0]")
    if adapter:
        return ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n"
                f"model = AutoPeftModelForCausalLM.from_pretrained({path!r})  # loads the base, applies the adapter\n"
                f"tok = AutoTokenizer.from_pretrained({path!r})")
    return ("from transformers import pipeline\n"
            f"generate = pipeline(\"text-generation\", model={path!r})\n"
            "print(generate(\"The room was\", max_new_tokens=20)[0][\"generated_text\"])")


def model_card(*, stage: str, config: dict, metrics: dict, chat_trained: bool, adapter: dict | None, run_dir: str,
               command: str | None = None, exported_from: str | None = None, merged: bool = False) -> str:
    """The card's text; `adapter`: the adapter_config.json of an adapter directory (else None)."""
    base = _base_model(config)
    if adapter is not None:
        kind = f"a LoRA adapter (r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}) on its base model"
        if adapter.get("base_model_name_or_path") != config.get("model"):
            base = f"{adapter.get('base_model_name_or_path')} (the run started from {base})"
    elif merged:
        kind = "a full model: the run's LoRA adapter merged into its base model"
    else:
        kind = "a full model" + (" (full fine-tuning)" if stage != "ppo-value" else "")
    chat = ("trained: the run's data was rendered with it (`chat_template.jinja`)" if chat_trained else
            "none: the model never saw chat-formatted text, so no chat template is saved; prompt it with plain text")
    header = ["---", f"library_name: {'peft' if adapter is not None else 'transformers'}",
              "tags: [reins, " + stage + "]"]
    if config.get("model") not in (None, "tiny"):
        hub = HUB_IDS.get(str(config["model"]), str(config["model"]))  # HF cards name a Hub id or a path
        header.append(f"base_model: {json.dumps(hub)}")
    lines = header + ["---", "", f"# reins {stage}: {Path(run_dir).name}", "",
                      f"Made by `reins {stage.split('-')[0]}`, {STAGES.get(stage, stage)}. This directory is {kind}.",
                      "", f"- Base model: {base}", f"- Data: {_data(stage, config)}", f"- Chat template: {chat}"]
    if exported_from:
        lines.append(f"- Exported by `reins export` from the run `{exported_from}`")
    lines += ["", "## Final metrics", "", "From the run's metrics.json (eval/* on held-out data at the end).", ""]
    lines += _metrics_table(metrics)
    lines += ["", "## How it was made", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [f"The run's full resolved config is `{run_dir}/config.yaml`; `reins {stage.split('-')[0]} --config "
              f"{run_dir}/config.yaml output_dir=NEW_DIR` repeats it.", "", "## Load it without reins", "",
              "```python", _usage(stage, adapter is not None, "THIS_DIR"), "```", ""]
    return "\n".join(lines)


def write_model_card(model_dir: str | Path, *, stage: str, config: dict, metrics: dict, chat_trained: bool,
                     run_dir: str | Path, command: str | None = None, exported_from: str | None = None,
                     merged: bool = False) -> None:
    """README.md in `model_dir`; `run_dir` is the run's output directory (its config.yaml is named)."""
    model_dir = Path(model_dir)
    cfg = model_dir / "adapter_config.json"
    adapter = json.loads(cfg.read_text()) if cfg.is_file() else None
    text = model_card(stage=stage, config=config, metrics=metrics, chat_trained=chat_trained, adapter=adapter,
                      run_dir=str(Path(run_dir).resolve()),
                      command=command if command is not None else invocation(), exported_from=exported_from,
                      merged=merged)
    (model_dir / "README.md").write_text(text)
