"""Bad inputs across stages, through the real `reins` entry point.

Every case is a malformed file or config given to a real stage. The contract checked for each one:
- a non-zero exit code, never a traceback;
- stderr is exactly one line, `reins <stage>: error: ...`, naming the field, row or file that is wrong;
- an output directory left by an earlier run (config.yaml, log.jsonl, model files) is byte-identical afterwards.
The earlier run's config.yaml is the one the failing command itself resolves to (a resume after the data was
edited), so a stage that validated only after opening its run directory would still be caught changing files.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    ROOT,
    TINY_MODEL,
    TINY_TRAIN,
    resolved_config_yaml,
    run_cli,
    snapshot,
    subprocess_env,
    write_jsonl,
)

GOOD_PAIR = {"prompt": "I stayed at the inn and", "chosen": " it was lovely.", "rejected": " it was dirty."}
GOOD_SFT = {"prompt": "I stayed at the inn and", "completion": " it was lovely."}
OFFLINE = ["max_steps=2", "batch_size=4", "hidden=[8]", "eval_episodes=1", "eval_every=2", "log_every=1",
           "checkpoint_every=1", "torch_threads=1"]


# ----------------------------------------------------------------------------------------- minari inputs
def _minari(d: Path, name: str, *, bad_reward=False, bad_obs=False) -> str:
    from tests.offline.helpers import make_episode, two_episodes, write_dataset

    eps = two_episodes()
    if bad_reward:
        eps[1] = make_episode([[10, 1, 1], [11, 1, 1], [12, 1, 1]], [[0.0], [0.0]], [-1.0, float("nan")], [0, 0],
                              [0, 1])
    if bad_obs:
        eps[0] = make_episode([[0, 0, 0], [1, 0, float("inf")], [2, 0, 0], [3, 0, 0]], [[0.5], [-1.0], [2.0]],
                              [1.0, 2.0, 3.0], [0, 0, 1], [0, 0, 0])
    ds = f"test/{name}-v0"
    write_dataset(ds, eps, ref_min=-10.0, ref_max=10.0)
    return ds


# ----------------------------------------------------------------------------------------- the cases
# id -> (stage, build(tmp dir, output dir) -> argv, substrings the error line must contain)
def _sft_missing_column(d, out):
    f = write_jsonl(d / "sft.jsonl", [GOOD_SFT, {"prompt": "The staff were"}])
    return [f"data={f}", f"output_dir={out}", *TINY_TRAIN], ["sft.jsonl", "row 1", "missing field 'completion'"]


def _sft_other_formats_columns(d, out):
    f = write_jsonl(d / "pairs.jsonl", [GOOD_PAIR])  # preference columns given to SFT
    return [f"data={f}", f"output_dir={out}", *TINY_TRAIN], ["pairs.jsonl", "row 0", "'completion'",
                                                             "fields: chosen, prompt, rejected"]


def _sft_empty_file(d, out):
    f = d / "empty.jsonl"
    f.write_text("\n")
    return [f"data={f}", f"output_dir={out}", *TINY_TRAIN], ["empty.jsonl", "no rows"]


def _dpo_empty_string(d, out):
    f = write_jsonl(d / "prefs.jsonl", [GOOD_PAIR, {**GOOD_PAIR, "chosen": ""}])
    return [f"data={f}", f"output_dir={out}", *TINY_TRAIN], ["prefs.jsonl", "row 1", "field 'chosen' is empty"]


def _dpo_broken_json_line(d, out):
    f = write_jsonl(d / "prefs.jsonl", [GOOD_PAIR, GOOD_PAIR], raw='{"prompt": "x", "chosen": \n')
    return [f"data={f}", f"output_dir={out}", *TINY_TRAIN], ["prefs.jsonl", "line 3", "invalid JSON"]


def _dpo_parquet_wrong_type(d, out):
    import datasets

    f = d / "prefs.parquet"
    datasets.Dataset.from_list([{**GOOD_PAIR, "chosen": 7}, {**GOOD_PAIR, "chosen": 8}]).to_parquet(str(f))
    return [f"data={f}", f"output_dir={out}", *TINY_TRAIN], ["prefs.parquet", "row 0", "'chosen' must be a string",
                                                             "got int"]


def _reward_wrong_type(d, out):
    f = write_jsonl(d / "prefs.jsonl", [GOOD_PAIR, GOOD_PAIR, {**GOOD_PAIR, "prompt": 5}])
    return [f"data={f}", f"output_dir={out}", *TINY_TRAIN], ["prefs.jsonl", "row 2", "'prompt' must be a string"]


def _reward_nan_margin(d, out):
    rows = [{**GOOD_PAIR, "prompt": f"Stay {i}: the inn", "margin": 1.0} for i in range(16)]
    rows[3]["margin"] = float("nan")  # json.dumps writes NaN; Python's json (and pandas) read it back
    f = write_jsonl(d / "prefs.jsonl", rows)
    return [f"data={f}", "use_margin=true", f"output_dir={out}", *TINY_TRAIN], ["prefs.jsonl", "row 3", "margin"]


def _dpo_negative_beta(d, out):
    return ["beta=-0.5", f"output_dir={out}", *TINY_TRAIN], ["beta", "-0.5"]


def _kto_label_not_bool(d, out):
    good = {"prompt": "The hotel was", "completion": " lovely.", "label": True}
    f = write_jsonl(d / "feedback.jsonl", [good, {**good, "label": "yes"}])
    return [f"data={f}", f"output_dir={out}", *TINY_TRAIN], ["feedback.jsonl", "row 1", "'label' must be true or false"]


def _kto_zero_weight(d, out):
    return ["undesirable_weight=0", f"output_dir={out}", *TINY_TRAIN], ["undesirable_weight must be > 0"]


def _kto_micro_batch_of_one(d, out):
    return [f"output_dir={out}", *TINY_TRAIN, "batch_size=2", "grad_accum=2"], ["1 example(s) per micro-batch"]


def _dpo_simpo_with_ref_model(d, out):
    return ["loss_type=simpo", "ref_model=x", f"output_dir={out}", *TINY_TRAIN], ["ref_model has no effect"]


def _sft_unknown_key(d, out):
    return ["learning_rat=0.1", f"output_dir={out}", *TINY_TRAIN], ["unknown key 'learning_rat'", "learning_rate"]


def _dpo_wrong_config_type(d, out):
    return [f"output_dir={out}", *TINY_TRAIN, "batch_size=ten"], ["batch_size", "expected an integer", "ten"]


def _sft_unknown_hub_model(d, out):
    return [f"output_dir={out}", *TINY_TRAIN, "model=nobody-reins/no-such-model"], ["nobody-reins/no-such-model"]


def _dpo_unknown_hub_dataset(d, out):
    return ["data=nobody-reins/no-such-dataset", f"output_dir={out}", *TINY_TRAIN], ["nobody-reins/no-such-dataset"]


def _dpo_missing_model_path(d, out):
    return [f"model={d / 'no-model'}", f"output_dir={out}", *TINY_TRAIN], ["no-model", "does not exist"]


def _sft_invalid_yaml(d, out):
    f = d / "bad.yaml"
    f.write_text("stage: sft\nlearning_rate: [0.1,\n")
    return ["--config", str(f), f"output_dir={out}", *TINY_TRAIN], ["bad.yaml", "invalid YAML"]


def _dpo_recipe_of_other_stage(d, out):
    return ["--config", str(ROOT / "recipes/sft/tiny.yaml"), f"output_dir={out}"], ["tiny.yaml", "'sft'", "'dpo'"]


def _preferences_empty_prompt(d, out):
    f = write_jsonl(d / "prompts.jsonl", [{"prompt": "I stayed at"}, {"prompt": "   "}, {"prompt": "The inn"}])
    argv = [f"prompts={f}", f"output_dir={out}", "num_train_prompts=2", "num_test_prompts=1", "num_samples=2",
            "generation.max_new_tokens=4", *TINY_MODEL]
    return argv, ["prompts.jsonl", "row 1", "field 'prompt' is empty"]


def _ppo_gamma_above_one(d, out):
    return ["gamma=1.5", f"reward_model={d / 'rm'}", f"output_dir={out}", *TINY_MODEL], ["gamma", "[0, 1]"]


def _iql_nan_reward(d, out):
    return [f"dataset={_minari(d, 'nanrew', bad_reward=True)}", f"output_dir={out}", *OFFLINE], \
        ["test/nanrew-v0", "episode 1", "non-finite rewards at step 1"]


def _iql_inf_observation(d, out):
    return [f"dataset={_minari(d, 'infobs', bad_obs=True)}", f"output_dir={out}", *OFFLINE], \
        ["test/infobs-v0", "episode 0", "non-finite observations at step 1"]


def _iql_unknown_dataset(d, out):
    return ["dataset=test/missing-v0", f"output_dir={out}", *OFFLINE], ["unknown dataset 'test/missing-v0'"]


def _cql_gamma_above_one(d, out):
    return [f"dataset={_minari(d, 'ok')}", "gamma=1.01", f"output_dir={out}", *OFFLINE], ["gamma", "1.01"]


def _bc_wrong_list_type(d, out):
    return [f"dataset={_minari(d, 'ok')}", f"output_dir={out}", *OFFLINE, "hidden=[8, wide]"], \
        ["hidden[1]", "expected an integer"]


def _collect_unknown_env(d, out):
    return [f"output_dir={out}", "behaviour=scripted", "env_id=NoSuchEnv-v0", "steps_per_tier=10", "ref_episodes=1",
            "dataset_prefix=test/bad"], ["NoSuchEnv-v0"]


def _online_gamma_above_one(d, out):
    return [f"output_dir={out}", "algo=ppo", "ppo.gamma=1.5", "total_steps=64"], ["gamma", "1.5"]


def _online_unknown_env(d, out):
    return [f"output_dir={out}", "env_id=NoSuchEnv-v0", "total_steps=64"], ["NoSuchEnv-v0"]


CASES = {
    "sft-missing-column": ("sft", _sft_missing_column),
    "sft-columns-of-another-format": ("sft", _sft_other_formats_columns),
    "sft-empty-file": ("sft", _sft_empty_file),
    "dpo-empty-string": ("dpo", _dpo_empty_string),
    "dpo-broken-json-line": ("dpo", _dpo_broken_json_line),
    "dpo-parquet-wrong-type": ("dpo", _dpo_parquet_wrong_type),
    "reward-wrong-type": ("reward", _reward_wrong_type),
    "reward-nan-margin": ("reward", _reward_nan_margin),
    "dpo-negative-beta": ("dpo", _dpo_negative_beta),
    "kto-label-not-bool": ("kto", _kto_label_not_bool),
    "kto-zero-weight": ("kto", _kto_zero_weight),
    "kto-micro-batch-of-one": ("kto", _kto_micro_batch_of_one),
    "dpo-simpo-with-ref-model": ("dpo", _dpo_simpo_with_ref_model),
    "sft-unknown-config-key": ("sft", _sft_unknown_key),
    "dpo-wrong-config-type": ("dpo", _dpo_wrong_config_type),
    "sft-unknown-hub-model": ("sft", _sft_unknown_hub_model),
    "dpo-unknown-hub-dataset": ("dpo", _dpo_unknown_hub_dataset),
    "dpo-missing-model-path": ("dpo", _dpo_missing_model_path),
    "sft-invalid-yaml": ("sft", _sft_invalid_yaml),
    "dpo-recipe-of-another-stage": ("dpo", _dpo_recipe_of_other_stage),
    "preferences-empty-prompt": ("preferences", _preferences_empty_prompt),
    "ppo-gamma-above-one": ("ppo", _ppo_gamma_above_one),
    "iql-nan-reward": ("iql", _iql_nan_reward),
    "iql-inf-observation": ("iql", _iql_inf_observation),
    "iql-unknown-dataset": ("iql", _iql_unknown_dataset),
    "cql-gamma-above-one": ("cql", _cql_gamma_above_one),
    "bc-wrong-list-type": ("bc", _bc_wrong_list_type),
    "collect-unknown-env": ("collect", _collect_unknown_env),
    "online-gamma-above-one": ("online", _online_gamma_above_one),
    "online-unknown-env": ("online", _online_unknown_env),
}


def _params():
    out = []
    for cid, (stage, build) in CASES.items():
        out.append(pytest.param(stage, build, id=cid))
    return out


def _earlier_run(out: Path, config_text: str) -> None:
    """What an earlier (interrupted) run left in `out`."""
    (out / "model").mkdir(parents=True)
    (out / "config.yaml").write_text(config_text)
    (out / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (out / "model" / "model.safetensors").write_bytes(bytes(range(256)) * 4)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.chdir(tmp_path)  # a stage that writes to a default relative path would write here
    return tmp_path


@pytest.mark.parametrize("stage,build", _params())
def test_bad_input_one_line_error_and_no_change(workdir, capfd, stage, build):
    out = workdir / "out"
    argv, expect = build(workdir, out)
    argv = [*argv, "--quiet"]
    _earlier_run(out, resolved_config_yaml(stage, argv) or "seed: 0\noutput_dir: elsewhere\n")
    before = snapshot(out)
    code, err = run_cli([stage, *argv], capfd)
    assert code not in (0, None), err
    assert len(err) == 1, err
    assert err[0].startswith(f"reins {stage}: error: "), err
    for s in expect:
        assert s in err[0], (s, err[0])
    assert snapshot(out) == before
    assert sorted(p.name for p in workdir.iterdir() if p.name != "minari" and p.suffix not in (".jsonl", ".yaml",
                                                                                                ".parquet")) == ["out"]


def test_output_dir_of_another_run_is_refused_and_kept(workdir, capfd):
    out = workdir / "out"
    argv = [f"output_dir={out}", *TINY_TRAIN, "--quiet"]
    _earlier_run(out, resolved_config_yaml("dpo", [*argv, "beta=0.3"]))
    (out / "metrics.json").write_text('{"train/loss": 0.6}\n')
    before = snapshot(out)
    code, err = run_cli(["dpo", *argv], capfd)
    assert code == 2 and len(err) == 1, err
    assert "holds a different run's config" in err[0] and "beta" in err[0] and str(out) in err[0]
    assert snapshot(out) == before


# A failed bad-input run must not leave a config.yaml in a fresh output_dir: the corrected command (a typo
# fixed in the config) would then be refused as "a different run's config".
FRESH = {
    "sft": lambda d: ["data=" + str(d / "missing.jsonl")],
    "preferences": lambda d: ["prompts=" + str(d / "missing.jsonl"), *TINY_MODEL],
    "collect": lambda d: ["behaviour=scripted", "env_id=NoSuchEnv-v0", "dataset_prefix=test/bad"],
}


@pytest.mark.parametrize("stage", list(FRESH))
def test_failed_run_leaves_a_fresh_output_dir_empty(workdir, capfd, stage):
    out = workdir / "fresh"
    code, err = run_cli([stage, f"output_dir={out}", *FRESH[stage](workdir), "--quiet"], capfd)
    assert code == 2 and len(err) == 1, err
    assert snapshot(out) == {}


# Two cases as real processes: what a user's terminal shows, with nothing of pytest in between.
@pytest.mark.parametrize("cid", ["sft-missing-column", "iql-nan-reward"])
def test_bad_input_in_a_real_process(workdir, cid):
    stage, build = CASES[cid]
    out = workdir / "out"
    argv, expect = build(workdir, out)
    proc = subprocess.run([sys.executable, "-m", "reins.cli", stage, *argv, "--quiet"], cwd=workdir,
                          env=subprocess_env(MINARI_DATASETS_PATH=workdir / "minari"), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=120)
    err = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert all(s in err[0] for s in expect), err[0]
    assert proc.stdout == "" and not out.exists()
