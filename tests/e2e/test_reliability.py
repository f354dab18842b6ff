"""Issue 14, classes 1, 3, 5, 8 and 9, through the real `reins` entry point (the contract of test_bad_inputs.py:
a non-zero exit, exactly one stderr line `reins <stage>: error: ...` naming what is wrong, no traceback).

1. validate before writing: a bad input leaves a fresh output_dir absent, so the corrected command just runs;
3. OS errors: output_dir that is a file or unwritable, a full disk at a checkpoint (the previous one survives),
   truncated or corrupt HDF5/arrow dataset files;
5. a PPO/DPO reward model (or PPO value model given by path) without a trained scalar head is refused;
8. YAML errors name the file, line and column;
9. a 10 MB single-line row is refused after tokenising a bounded prefix of it, not the whole text.
"""

from __future__ import annotations

import errno
import io
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import TINY_MODEL, TINY_TRAIN, run_cli, snapshot, write_jsonl

GOOD_PAIR = {"prompt": "I stayed at the inn and", "chosen": " it was lovely.", "rejected": " it was dirty."}
OFFLINE = ["max_steps=2", "batch_size=4", "hidden=[8]", "eval_episodes=0", "eval_every=2", "log_every=1",
           "checkpoint_every=1", "torch_threads=1", "normalize_score=false"]
NO_EVAL = ["eval_prompts=none"]


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _one_line_error(code, err, stage: str, expect: list[str]) -> None:
    assert code not in (0, None), err
    assert len(err) == 1, err
    assert err[0].startswith(f"reins {stage}: error: "), err
    for s in expect:
        assert s in err[0], (s, err[0])


def _pairs(d: Path, n: int) -> Path:
    return write_jsonl(d / f"pairs{n}.jsonl", [{**GOOD_PAIR, "prompt": f"Stay {i}: I stayed at the inn and"}
                                               for i in range(n)])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A plain causal LM dir (no score head) and a reward-model dir (score head saved, as `reins reward` writes)."""
    from pipelines.models import load_reward_model, save_model
    from tests.pipelines.helpers import small_args, small_model, small_tok

    root = tmp_path_factory.mktemp("models")
    tok = small_tok()
    save_model(small_model(tok), tok, root / "lm")
    save_model(load_reward_model(small_args(), tok, seed=1), tok, root / "reward" / "model")  # reward stage layout
    from transformers import AutoModelForSequenceClassification

    from pipelines.models import tiny_config

    two = tiny_config(small_args().tiny, tok)
    two.num_labels = 2  # a classifier, not a scalar reward model
    save_model(AutoModelForSequenceClassification.from_config(two), tok, root / "two-labels")
    return {"lm": str(root / "lm"), "rm": str(root / "reward"), "two": str(root / "two-labels")}


# ----------------------------------------------------------------------------------------- class 1
# Inputs found bad only after the run dir was opened (old code): each must leave a fresh output_dir absent.
def _batch_over_dpo(d, out):
    return ["dpo", f"data={_pairs(d, 4)}", f"output_dir={out}", *TINY_TRAIN, *NO_EVAL], \
        ["batch_size=8", "larger than the 4 training examples"]


def _batch_over_reward(d, out):
    return ["reward", f"data={_pairs(d, 5)}", "eval_fraction=0", f"output_dir={out}", *TINY_TRAIN], \
        ["batch_size=8", "larger than the 5 training examples"]


def _batch_over_sft(d, out):
    f = write_jsonl(d / "sft.jsonl", [{"prompt": f"Stay {i}:", "completion": " fine."} for i in range(3)])
    return ["sft", f"data={f}", f"output_dir={out}", *TINY_TRAIN, *NO_EVAL], ["larger than the 3 training"]


def _ppo_reward_model_typo(d, out):
    return ["ppo", f"reward_model={d / 'rewrad'}", f"output_dir={out}", *TINY_MODEL, "batch_size=4",
            "builtin_size=8", "eval_prompts=none"], ["rewrad", "not a directory"]


def _dpo_eval_prompts_missing(d, out):
    return ["dpo", f"eval_prompts={d / 'prompts.jsonl'}", f"output_dir={out}", *TINY_TRAIN], \
        ["prompts.jsonl", "not found"]


def _collect_scripted_other_env(d, out):
    return ["collect", f"output_dir={out}", "behaviour=scripted", "env_id=CartPole-v1", "steps_per_tier=10",
            "ref_episodes=1", "dataset_prefix=test/cp"], ["scripted", "Pendulum only", "CartPole-v1"]


def _collect_online_run_without_snapshots(d, out):
    (d / "online").mkdir()
    (d / "online" / "policy.pt").write_bytes(b"")
    return ["collect", f"output_dir={out}", f"behaviour_run={d / 'online'}", "tiers=[medium]", "env_id=Pendulum-v1",
            "dataset_prefix=test/on"], ["online", "no snapshots/index.json"]


def _collect_online_run_with_a_bad_policy(d, out):
    (d / "online2").mkdir()
    (d / "online2" / "policy.pt").write_bytes(b"not a policy")
    return ["collect", f"output_dir={out}", f"behaviour_run={d / 'online2'}", "tiers=[expert]",
            "env_id=Pendulum-v1", "dataset_prefix=test/on2"], ["online2/policy.pt", "refused to load"]


def _dpo_ref_model_typo(d, out):
    return ["dpo", f"ref_model={d / 'sft-typo' / 'model'}", f"output_dir={out}", *TINY_TRAIN, *NO_EVAL], \
        ["sft-typo", "does not exist"]


def _ppo_value_model_typo(d, out):
    from pipelines.models import load_reward_model, save_model
    from tests.pipelines.helpers import small_args, small_tok

    tok = small_tok()
    save_model(load_reward_model(small_args(), tok, seed=1), tok, d / "rm")
    return ["ppo", f"reward_model={d / 'rm'}", f"value_model={d / 'vm-typo'}", f"output_dir={out}", *TINY_MODEL,
            "batch_size=4", "builtin_size=8", "eval_prompts=none"], ["vm-typo", "not a directory"]


def _sft_model_without_weights(d, out):
    from tests.pipelines.helpers import small_model, small_tok

    tok, path = small_tok(), d / "no-weights"
    small_model(tok).config.save_pretrained(path)
    tok.save_pretrained(path)
    return ["sft", f"model={path}", f"output_dir={out}", *TINY_TRAIN, *NO_EVAL], ["no-weights", "cannot load model"]


def _iql_equal_returns_with_reward_scaling(d, out):
    from tests.offline.helpers import make_episode, write_dataset

    eps = [make_episode([[0, 0, 0], [1, 0, 0], [2, 0, 0]], [[0.5], [-1.0]], [1.0, 1.0], [0, 1], [0, 0]),
           make_episode([[5, 0, 0], [6, 0, 0], [7, 0, 0]], [[1.5], [0.0]], [0.5, 1.5], [0, 1], [0, 0])]
    write_dataset("test/flat-v0", eps)
    return ["iql", "dataset=test/flat-v0", "normalize_reward=true", f"output_dir={out}", *OFFLINE], \
        ["test/flat-v0", "all episode returns are equal"]


def _bc_cuda_without_cuda(d, out):
    from tests.offline.helpers import two_episodes, write_dataset

    write_dataset("test/two-v0", two_episodes())
    return ["bc", "dataset=test/two-v0", "device=cuda", f"output_dir={out}", *OFFLINE], ["cuda", "not available"]


VALIDATE_FIRST = {"dpo-batch-over-data": _batch_over_dpo, "reward-batch-over-data": _batch_over_reward,
                  "sft-batch-over-data": _batch_over_sft, "ppo-reward-model-typo": _ppo_reward_model_typo,
                  "dpo-eval-prompts-missing": _dpo_eval_prompts_missing, "dpo-ref-model-typo": _dpo_ref_model_typo,
                  "ppo-value-model-typo": _ppo_value_model_typo,
                  "sft-model-without-weights": _sft_model_without_weights,
                  "collect-scripted-on-another-env": _collect_scripted_other_env,
                  "collect-online-run-without-snapshots": _collect_online_run_without_snapshots,
                  "collect-online-run-with-a-bad-policy": _collect_online_run_with_a_bad_policy,
                  "iql-reward-scaling-of-equal-returns": _iql_equal_returns_with_reward_scaling}
if not torch.cuda.is_available():
    VALIDATE_FIRST["bc-cuda-device-without-cuda"] = _bc_cuda_without_cuda


def test_bad_inputs_write_nothing_into_a_fresh_output_dir(workdir, capfd):
    for cid, build in VALIDATE_FIRST.items():
        out = workdir / f"out-{cid}"
        argv, expect = build(workdir, out)
        code, err = run_cli([*argv, "--quiet"], capfd)
        _one_line_error(code, err, argv[0], expect)
        assert not out.exists(), (cid, snapshot(out))


def test_corrected_rerun_just_works(workdir, capfd):
    """The issue's report: dpo with a batch larger than the data, then the fixed command in the same dir."""
    out = workdir / "out"
    argv = ["dpo", f"data={_pairs(workdir, 6)}", f"output_dir={out}", *TINY_TRAIN, *NO_EVAL, "--quiet"]
    code, err = run_cli(argv, capfd)
    _one_line_error(code, err, "dpo", ["batch_size=8", "larger than the 6 training examples"])
    code, err = run_cli([*argv, "batch_size=2"], capfd)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2


def test_reins_run_checks_every_stage_dir_before_the_first_stage(workdir, capfd):
    """A later stage's output_dir holding another run's config is refused before the first stage trains."""
    recipe = workdir / "recipe.yaml"
    recipe.write_text(f"""stages:
  - name: sft
    stage: sft
    output_dir: {workdir / 'sft'}
    max_length: 48
    builtin_size: 32
    batch_size: 8
    max_steps: 1
    eval_prompts: none
    tiny: {{hidden_size: 32, num_layers: 2, num_heads: 2, intermediate_size: 64, vocab_size: 400}}
  - name: dpo
    stage: dpo
    model: ${{sft.output_dir}}/model
    output_dir: {workdir / 'dpo'}
""")
    (workdir / "dpo").mkdir()
    (workdir / "dpo" / "config.yaml").write_text("seed: 7\noutput_dir: elsewhere\n")
    code, err = run_cli(["run", str(recipe), "--quiet", "--no-report"], capfd)
    _one_line_error(code, err, "run", [str(workdir / "dpo"), "different run's config"])
    assert not (workdir / "sft").exists()


# ----------------------------------------------------------------------------------------- class 3
def _minari(name: str, fmt: str) -> str:
    from tests.offline.helpers import two_episodes, write_dataset

    ds = f"test/{name}-v0"
    write_dataset(ds, two_episodes(), data_format=fmt)
    return ds


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_os_errors_are_one_line_user_errors(workdir, capfd):
    a_file = workdir / "a-file"
    a_file.write_text("not a directory\n")
    hdf5 = _minari("cut-hdf5", "hdf5")
    _cut(workdir / "minari" / hdf5 / "data" / "main_data.hdf5")
    arrow = _minari("bad-arrow", "arrow")
    (workdir / "minari" / arrow / "data" / "0" / "part-0.arrow").write_bytes(b"ARROW1 but not really")
    import datasets

    prefs = workdir / "prefs"
    datasets.DatasetDict({"train": datasets.Dataset.from_list([GOOD_PAIR] * 16)}).save_to_disk(str(prefs))
    _cut(next((prefs / "train").glob("*.arrow")))
    cases = [
        (["sft", f"output_dir={a_file}", *TINY_TRAIN], [str(a_file), "existing file, not a directory"]),
        (["iql", f"dataset={_minari('ok', 'hdf5')}", f"output_dir={a_file / 'run'}", *OFFLINE],
         [str(a_file), "is a file, not a directory"]),
        (["bc", f"dataset={hdf5}", f"output_dir={workdir / 'o1'}", *OFFLINE],
         [f"{hdf5}/data", "cannot read", "truncated file"]),
        (["cql", f"dataset={arrow}", f"output_dir={workdir / 'o2'}", *OFFLINE],
         [f"{arrow}/data", "cannot read", "part-0.arrow"]),
        (["dpo", f"data={prefs}", f"output_dir={workdir / 'o3'}", *TINY_TRAIN], [str(prefs)]),
    ]
    for argv, expect in cases:
        before = a_file.read_bytes()
        code, err = run_cli([*argv, "--quiet"], capfd)
        _one_line_error(code, err, argv[0], expect)
        assert a_file.read_bytes() == before
    assert not any((workdir / f"o{i}").exists() for i in (1, 2, 3))


def test_unwritable_output_dir(workdir, capfd, monkeypatch):
    """A read-only place: checked up front (os.access) and, where that cannot tell (root on a writable file
    system), when the run dir's first write fails (simulated: EACCES from the temp file it writes)."""
    import os
    import tempfile

    ro = workdir / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        code, err = run_cli(["sft", f"output_dir={ro / 'run'}", *TINY_TRAIN, "--quiet"], capfd)
        ro.chmod(0o755)
        _one_line_error(code, err, "sft", [str(ro), "not writable"])

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", k.get("dir"))

    ds = _minari("ok2", "hdf5")
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    code, err = run_cli(["iql", f"dataset={ds}", f"output_dir={ro / 'run'}", *OFFLINE, "--quiet"], capfd)
    _one_line_error(code, err, "iql", ["cannot write the run directory", str(ro / "run"), "Permission denied"])


def test_full_disk_at_a_checkpoint_keeps_the_previous_one(workdir, capfd, monkeypatch):
    from reins.runio import safe_torch_load

    real_save, calls = torch.save, []

    class FullDisk(io.RawIOBase):
        """The checkpoint's file on a disk that fills up after its first 100 bytes."""

        def __init__(self, f):
            self.f, self.n = f, 0

        def writable(self):
            return True

        def write(self, b):
            if self.n + len(b) > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.n += len(b)
            return self.f.write(b)

    def save(obj, f, *a, **k):
        calls.append(f)
        return real_save(obj, f if len(calls) < 2 else io.BufferedWriter(FullDisk(f)), *a, **k)

    monkeypatch.setattr(torch, "save", save)
    out = workdir / "out"
    argv = ["sft", f"output_dir={out}", *TINY_TRAIN, *NO_EVAL, "max_steps=3", "--quiet"]
    code, err = run_cli(argv, capfd)
    ckpt = out / "checkpoints" / "checkpoint.pt"
    _one_line_error(code, err, "sft", [str(ckpt), "No space left on device", "previous checkpoint is kept"])
    assert safe_torch_load(ckpt)["step"] == 1
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["checkpoint.pt"]  # no temp file left behind
    monkeypatch.setattr(torch, "save", real_save)
    code, err = run_cli(argv, capfd)  # space freed: the same command resumes from step 1 and finishes
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3


# ----------------------------------------------------------------------------------------- class 5
def test_scoring_models_without_a_trained_head_are_refused(workdir, capfd, models):
    ppo = ["ppo", f"model={models['lm']}", *TINY_MODEL, "batch_size=4", "builtin_size=8", "eval_prompts=none"]
    cases = [
        ([*ppo, f"reward_model={models['lm']}"], [models["lm"], "no trained scalar head", "score.weight",
                                                  "LlamaForCausalLM"]),
        ([*ppo, f"reward_model={models['rm']}", f"value_model={models['lm']}"],
         [models["lm"], "no trained scalar head"]),
        (["dpo", f"reward_model={models['lm']}", *TINY_TRAIN, "eval.num_prompts=2"],
         [models["lm"], "no trained scalar head"]),
        (["dpo", "reward_model=tiny", *TINY_TRAIN, "eval.num_prompts=2"], ["'tiny'", "no trained scalar head"]),
        ([*ppo, f"reward_model={models['two']}"], [models["two"], "cannot load model", "mismatched"]),
    ]
    for i, (argv, expect) in enumerate(cases):
        out = workdir / f"out{i}"
        code, err = run_cli([*argv, f"output_dir={out}", "--quiet"], capfd)
        _one_line_error(code, err, argv[0], expect)
        assert not out.exists()


# ----------------------------------------------------------------------------------------- class 8
YAML_CASES = [
    ("stage: sft\nlearning_rate: [0.1,\n", "line 3, column 1", "expected the node content"),
    ("stage: sft\nmax_steps: 2\n  batch_size: 4\n", "line 3, column 13", "mapping values are not allowed"),
    ("stage: sft\n\tmax_steps: 2\n", "line 2, column 1", "'\\t'"),
    ("stage: sft\noutput_dir: \"runs/x\n", "line 3, column 1", "unexpected end of stream"),
    ("stage: sft\nmax_steps: 2\nseed: 1\nmax_steps: 3\n", "line 4, column 1", "duplicate key 'max_steps' (first "
     "given at line 2, column 1)"),
]


def test_yaml_errors_name_file_line_and_column(workdir, capfd):
    for i, (text, at, what) in enumerate(YAML_CASES):
        f = workdir / f"bad{i}.yaml"
        f.write_text(text)
        code, err = run_cli(["sft", "--config", str(f), f"output_dir={workdir / 'out'}", "--quiet"], capfd)
        _one_line_error(code, err, "sft", [f"{f}: {at}: invalid YAML", what])
    f = workdir / "latin1.yaml"
    f.write_bytes("stage: sft\nseed: 1 # café\n".encode("latin-1"))
    code, err = run_cli(["sft", "--config", str(f), "--quiet"], capfd)
    _one_line_error(code, err, "sft", [str(f), "not UTF-8", "byte 24, line 2"])
    recipe = workdir / "recipe.yaml"
    recipe.write_text("stages:\n  - name: sft\n    stage: sft\n   output_dir: x\n")
    code, err = run_cli(["run", str(recipe), "--quiet"], capfd)
    _one_line_error(code, err, "run", [f"{recipe}: line 4, column 4: invalid YAML"])
    assert not (workdir / "out").exists()
    from reins.config import read_yaml

    merged = workdir / "merge.yaml"  # keys beside a `<<: *anchor` merge override it: not duplicates
    merged.write_text("base: &b {x: 1, y: 2}\nover:\n  <<: *b\n  y: 3\n")
    assert read_yaml(merged) == {"base": {"x": 1, "y": 2}, "over": {"x": 1, "y": 3}}


# ----------------------------------------------------------------------------------------- class 9
def test_a_10mb_row_is_refused_after_tokenising_a_bounded_prefix(workdir, capfd, monkeypatch):
    from transformers import PreTrainedTokenizerFast

    seen: list[int] = []
    real_call = PreTrainedTokenizerFast.__call__

    def call(self, text=None, *a, **k):
        seen.append(len(text) if isinstance(text, str) else 0)
        return real_call(self, text, *a, **k)

    monkeypatch.setattr(PreTrainedTokenizerFast, "__call__", call)
    huge = "the inn was lovely and " * 450_000  # 10.35 MB on one line
    rows = [{"prompt": f"Stay {i}: I stayed at the inn and", "completion": " it was lovely."} for i in range(16)]
    sft = write_jsonl(workdir / "sft.jsonl", [*rows[:5], {**rows[5], "prompt": huge}, *rows[6:]])
    pairs = [{**GOOD_PAIR, "prompt": f"Stay {i}: I stayed"} for i in range(16)]
    dpo = write_jsonl(workdir / "dpo.jsonl", [*pairs[:3], {**pairs[3], "chosen": huge}, *pairs[4:]])
    msgs = write_jsonl(workdir / "chat.jsonl", [{"messages": [{"role": "user", "content": huge},
                                                              {"role": "assistant", "content": "ok"}]}])
    cases = [
        (["sft", f"data={sft}"], [str(sft), "row 5", "field 'prompt' is more than", "max_length is 48"]),
        (["dpo", f"data={dpo}", "on_overlong=error"], [str(dpo), "row 3", "prompt + 'chosen' is more than"]),
        (["sft", f"data={msgs}"], [str(msgs), "row 0", "field 'prompt' is more than"]),
    ]
    for i, (argv, expect) in enumerate(cases):
        out = workdir / f"out{i}"
        seen.clear()
        code, err = run_cli([*argv, f"output_dir={out}", *TINY_TRAIN, *NO_EVAL, "--quiet"], capfd)
        _one_line_error(code, err, argv[0], expect)
        assert seen and max(seen) < 100_000, max(seen)  # the tokenizer never saw the 10 MB text
        assert not out.exists()


def test_long_text_truncation_equals_full_tokenisation():
    """A completion tokenised only in part is cut to the same ids as the whole text tokenised and cut."""
    from pipelines.data import encode_completion, encode_prompt, max_token_chars, tokenize_preferences
    from tests.pipelines.helpers import small_tok

    tok = small_tok()
    long = "the inn was lovely, and the staff were kind to us. " * (4 * max_token_chars(tok))
    rows = [{"prompt": "I stayed at", "chosen": long, "rejected": " it was dirty."}]
    (ex,), stats = tokenize_preferences(tok, rows, "f", 40)
    budget = 40 - len(encode_prompt(tok, "I stayed at"))
    assert len(encode_completion(tok, "I stayed at", long)) > 4 * budget  # far past the budget: cut in part
    assert ex["chosen_ids"] == encode_completion(tok, "I stayed at", long)[:budget]
    assert stats.truncated == 1
    (kept,), _ = tokenize_preferences(tok, rows + [{**rows[0], "chosen": " fine."}], "f", 40, "drop")
    assert kept["chosen_ids"] == encode_completion(tok, "I stayed at", " fine.")
