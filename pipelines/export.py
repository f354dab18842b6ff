"""`reins export RUN_DIR --out DIR [--merge]`: a finished run's artifact in a form other tools load without reins.

- LM runs (sft, reward, dpo, ppo, grpo): an HF model directory (safetensors, tokenizer in the form transformers 4.x
  and 5.x read, the chat template only where the model was trained with it, generation_config.json with the
  run's sampling settings, a model card README.md). `--merge` folds a LoRA adapter into its base, so plain
  `transformers` loads the result and `pipeline("text-generation")` runs it; without `--merge` an adapter
  stays an adapter (its base recorded by absolute path), loadable with `peft`.
- Online/offline policy runs (`policy.pt`): `policy.safetensors` + `policy.json` and a README.md whose
  15-line example acts in the gymnasium env with numpy alone (rl.portable).

Nothing is written until the run has been checked; the export is assembled in a temporary directory beside
`--out` and renamed into place, so a failed export leaves no partial directory.
Like the runner, this module reaches into online/ and offline/ (lazily) only to dispatch to them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from pathlib import Path

import yaml

from reins.errors import ConfigError, DataError
from reins.runio import CONFIG_FILE, METRICS_FILE, fsync_dir, held_run_locks, lock_run_dir, make_temp_dir

# A key only that stage's config has: config.yaml does not name its stage. First match wins: grpo's config
# also has `loss_type` (token/sequence aggregation), so it is asked before dpo's.
STAGE_KEYS = (("packing", "sft"), ("desirable_weight", "kto"), ("num_generations", "grpo"), ("loss_type", "dpo"),
              ("kl_coef", "ppo"), ("center_coef", "reward"))


def stage_of_config(config: dict, where: Path) -> str:
    """The LM stage whose run wrote `config` (a run's config.yaml as a dict), told by STAGE_KEYS."""
    for key, stage in STAGE_KEYS:
        if key in config:
            return stage
    raise DataError(f"{where / CONFIG_FILE}: not the config of an sft, reward, dpo, kto, ppo or grpo run")


def _read_run(run_dir: Path) -> tuple[dict, dict]:
    if not run_dir.is_dir():
        raise DataError(f"run directory {run_dir} does not exist")
    if not (run_dir / METRICS_FILE).is_file():
        raise DataError(f"{run_dir}: the run is not complete (no {METRICS_FILE}); finish it first")
    try:
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) or {}
        metrics = json.loads((run_dir / METRICS_FILE).read_text())
    except (OSError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise DataError(f"{run_dir}: unreadable {CONFIG_FILE} or {METRICS_FILE} ({str(e).splitlines()[0]})") from None
    if not isinstance(config, dict) or not isinstance(metrics, dict):
        raise DataError(f"{run_dir}: {CONFIG_FILE} and {METRICS_FILE} must hold mappings")
    return config, metrics


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--out {out} already exists and is not an empty directory; choose a new one")


# ----------------------------------------------------------------------------------------- language models
def _generation_settings(model, config: dict) -> None:
    """The run's own sampling settings (ppo: its rollout generation; others: their evaluation) as defaults."""
    gen = getattr(model, "generation_config", None)
    if gen is None:
        return
    src = config.get("generation") or config.get("eval") or {}
    temperature = float(src.get("temperature", 1.0))
    gen.max_new_tokens = int(src.get("max_new_tokens", 32))
    gen.do_sample = temperature > 0
    if gen.do_sample:
        gen.temperature = temperature
        gen.top_p = float(src.get("top_p", 1.0))


def _training_command(model_dir: Path) -> list[str]:
    """The command line the run's own model card recorded (runs from before model cards have none)."""
    card = model_dir / "README.md"
    m = re.search(r"## How it was made\n\n```\n(.*?)\n```", card.read_text()) if card.is_file() else None
    return [m.group(1)] if m else []


def export_lm(run_dir: Path, tmp: Path, config: dict, metrics: dict, *, merge: bool) -> str:
    from pipelines.model_card import invocation, write_model_card
    from pipelines.models import (
        ModelArgs,
        TinySpec,
        chat_template_trained,
        load_causal_lm,
        load_reward_model,
        load_tokenizer,
        save_model,
    )

    stage = stage_of_config(config, run_dir)
    model_dir = run_dir / "model"
    adapter = (model_dir / "adapter_config.json").is_file()
    if merge and not adapter:
        raise ConfigError(f"--merge: {model_dir} is a full model, not a LoRA adapter (export it without --merge)")
    # In the run's dtype (a bfloat16 run exports bfloat16 weights).
    args = ModelArgs(model=str(model_dir), dtype=config.get("dtype", "float32"),
                     tiny=TinySpec(**(config.get("tiny") or {})))
    tok = load_tokenizer(args)
    if stage == "reward":
        model = load_reward_model(args, tok, trainable=False)
    else:
        model = load_causal_lm(args, tok, trainable=False)
        if merge:
            model = model.merge_and_unload()
        _generation_settings(model, config)
    model.eval()
    save_model(model, tok, tmp)
    write_model_card(tmp, stage=stage, config=config, metrics=metrics, chat_trained=chat_template_trained(tok),
                     run_dir=run_dir, command="\n".join(_training_command(model_dir) + [invocation()]),
                     exported_from=str(run_dir.resolve()), merged=merge)
    return "merged model" if merge else ("adapter" if adapter else "model")


# ----------------------------------------------------------------------------------------- policies
def export_policy_file(path: Path, tmp: Path) -> str:
    from reins.runio import safe_torch_load
    from rl import portable

    state = safe_torch_load(path)
    fmt = state.get("format") if isinstance(state, dict) else None
    try:
        from rl.policy_io import FORMAT, Policy, export_portable

        if fmt == FORMAT:
            spec = export_portable(Policy(state), tmp)
        else:
            raise DataError(f"{path}: not a reins policy file (format {fmt!r})")
    except (KeyError, RuntimeError, ValueError) as e:
        raise DataError(f"{path}: malformed policy file: {str(e).splitlines()[0]}") from None
    (tmp / "README.md").write_text(portable.readme(spec, str(path.resolve())))
    return "policy"


# ----------------------------------------------------------------------------------------- command
def export(run_dir: str | Path, out: str | Path, *, merge: bool = False) -> str:
    """Export `run_dir`'s artifact into the new directory `out`; returns what was exported."""
    run_dir, out = Path(run_dir), Path(out)
    _check_out(out)
    _lock = None
    try:  # no stage writes the run while it is read (other exports may read it too); a directory without a
        # lock file was never written under one, and is read without creating one there
        _lock = lock_run_dir(run_dir, create=False, shared=True)
    except (PermissionError, NotADirectoryError):
        pass  # a read-only run directory (nothing writes it either), or not a directory (refused below)
    policy = run_dir / "policy.pt"
    if policy.is_file():
        if merge:
            raise ConfigError("--merge applies to LoRA language-model runs, not to policies")
        if not (run_dir / METRICS_FILE).is_file():
            raise DataError(f"{run_dir}: the run is not complete (no {METRICS_FILE}); finish it first")
        build = lambda tmp: export_policy_file(policy, tmp)  # noqa: E731
    else:
        config, metrics = _read_run(run_dir)
        if not (run_dir / "model").is_dir():
            raise DataError(f"{run_dir}: nothing to export (no model/ of an LM stage, no policy.pt)")
        build = lambda tmp: export_lm(run_dir, tmp, config, metrics, merge=merge)  # noqa: E731
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.", suffix=".export")
    try:
        what = build(tmp)
        try:
            if out.exists():
                out.rmdir()  # empty (checked above)
            os.replace(tmp, out)
        except OSError:  # another export wrote `out` meanwhile
            raise DataError(f"--out {out} was written by another process during this export; choose a new "
                            "one") from None
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return what


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="reins export", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a finished run's output_dir")
    parser.add_argument("--out", required=True, help="the new directory to write")
    parser.add_argument("--merge", action="store_true", help="merge a LoRA adapter into its base model")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from pipelines.common import quiet_libraries
    from reins.entry import flush_denormals, run_command

    flush_denormals()
    quiet_libraries(args.quiet)
    done: dict[str, str] = {}

    def body() -> None:
        with held_run_locks():
            done["what"] = export(args.run_dir, args.out, merge=args.merge)

    code = run_command("reins export", body)
    if not code and not args.quiet:
        print(f"exported {done['what']}: {args.out}")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
