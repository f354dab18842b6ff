"""Reward functions with the data: TRL's calling convention (keywords, every other prompt column aligned with the
completions), old `(prompts, completions)` functions, None rewards left out of the weighted sum (and a completion
with none applicable an error), prompt columns kept from JSONL / parquet / datasets directories, the worked
word-problem example's rewards, and grpo passing the columns through rollouts and the evaluation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml

from pipelines import grpo, word_problems
from pipelines.generation import Samples
from pipelines.prompts import load_prompts, prompt_rows
from pipelines.reward_funcs import (
    check_columns,
    column_lists,
    keyword_call,
    resolve_reward_funcs,
    reward_matrix,
    reward_stats,
    weighted_rewards,
)
from reins.config import from_dict
from reins.errors import ConfigError, DataError
from tests.pipelines import grpo_rewards
from tests.pipelines.helpers import grpo_toy_cfg, grpo_toy_policy, grpo_train_rows, log_rows, ppo_toy_cfg

CHAT = [[{"role": "user", "content": "q1"}], [{"role": "user", "content": "q2"}]]


def _samples(n: int) -> Samples:
    return Samples(prompt_ids=[[1]] * n, completion_ids=[[5 + i, 2] for i in range(n)], texts=["a", "b"][:n],
                   finished=[True] * n)


# ----------------------------------------------------------------------------------------- calling convention
def test_keyword_call_passes_what_each_signature_names():
    got = {}

    def trl(prompts, completions, completion_ids, **kwargs):
        got["trl"] = (completions, completion_ids, kwargs)
        return [0.0, 0.0]

    def old(prompts, completions):
        got["old"] = completions
        return [0.0, 0.0]

    def one_column(completions, answer):
        got["one"] = (completions, answer)
        return [0.0, 0.0]

    cols = {"answer": ["1", "2"], "tag": ["x", "y"]}
    for fn in (trl, old, one_column):
        call, needs = keyword_call(fn, "m:f")
        call(CHAT, ["a", "b"], _samples(2), cols)
    # TRL: conversational completions as assistant messages, ids, every column by keyword
    assert got["trl"] == ([[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]],
                          [[5, 2], [6, 2]], cols)
    assert got["old"] == ["a", "b"]                     # reins' original signature keeps getting text
    assert got["one"] == ([[{"role": "assistant", "content": "a"}], [{"role": "assistant", "content": "b"}]],
                          ["1", "2"])
    assert keyword_call(one_column, "m:f")[1] == ("answer",) and keyword_call(trl, "m:f")[1] == ()

    def positional(p, c, /):
        return [0.0]

    with pytest.raises(ConfigError, match="'p' is positional-only"):
        keyword_call(positional, "m:positional")


def test_missing_column_is_named_before_the_run():
    funcs = resolve_reward_funcs(["tests.pipelines.grpo_rewards:needs_solution"], None, None)
    with pytest.raises(ConfigError, match=r"'needs_solution' .* needs column 'solution', which data.jsonl does not "
                                          r"have \(its columns: answer, tag\)"):
        check_columns(funcs, ["answer", "tag"], "data.jsonl")
    check_columns(funcs, ["solution"], "data.jsonl")


# ----------------------------------------------------------------------------------------- None rewards
def test_none_rewards_are_left_out_of_the_weighted_sum():
    nan = float("nan")
    per_fn = torch.tensor([[1.0, nan], [nan, 0.5], [0.0, 2.0]], dtype=torch.float64)
    funcs = resolve_reward_funcs(["builtin:arithmetic", "builtin:gold"], None, None)
    assert weighted_rewards(per_fn, [1.0, 2.0], funcs, ["a", "b", "c"]).tolist() == [1.0, 1.0, 4.0]
    assert reward_stats(per_fn[:, 1]) == (1.25, pytest.approx(1.0606601717798212, abs=1e-15))   # over 0.5, 2.0
    assert reward_stats(torch.tensor([nan, nan], dtype=torch.float64)) is None
    with pytest.raises(DataError, match=r"completion 1 \('bee'\) has no applicable reward: every reward function "
                                        r"\(arithmetic, gold\) returned None"):
        weighted_rewards(torch.tensor([[1.0, nan], [nan, nan]], dtype=torch.float64), [1.0, 1.0], funcs[:2],
                         ["a", "bee"])


def test_reward_matrix_marks_none_and_still_rejects_nan():
    funcs = resolve_reward_funcs(["tests.pipelines.grpo_rewards:even_only",
                                  "tests.pipelines.grpo_rewards:returns_nan"], None, None)
    m = reward_matrix(funcs[:1], ["p", "q"], ["a", "b"], None, {"answer": ["4", "7"]})
    assert m[0, 0] == 2.0 and torch.isnan(m[1, 0])
    with pytest.raises(Exception, match="returned nan for completion 0"):
        reward_matrix(funcs[1:], ["p"], ["a"], None, {})


# ----------------------------------------------------------------------------------------- prompt files keep columns
def _rows(chat: bool) -> list[dict]:
    rows = word_problems.make_rows(6, "train", seed=1, chat=chat)
    return [{**r, "tag": f"t{i}"} for i, r in enumerate(rows)]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "disk"])
@pytest.mark.parametrize("chat", [False, True])
def test_prompt_files_keep_their_other_columns(tmp_path, fmt, chat):
    import datasets

    rows = _rows(chat)
    if fmt == "jsonl":
        src = tmp_path / "p.jsonl"
        src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        src = tmp_path / "p.parquet"
        datasets.Dataset.from_list(rows).to_parquet(str(src))
    else:
        src = tmp_path / "ds"
        datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(src))
    prompts, columns, _ = prompt_rows(str(src), "train")
    assert prompts == [r["prompt"] for r in rows]
    # every column but prompt / completion (TRL does not pass those), row by row
    assert columns == [{"answer": r["answer"], "tag": r["tag"]} for r in rows]
    assert column_lists(columns[:2]) == {"answer": [rows[0]["answer"], rows[1]["answer"]], "tag": ["t0", "t1"]}


def test_dropped_prompts_drop_their_columns_too(tmp_path):
    from pipelines.models import ModelArgs, load_tokenizer

    rows = [{"prompt": "short", "answer": "1"}, {"prompt": "long " * 200, "answer": "2"},
            {"prompt": "also short", "answer": "3"}]
    src = tmp_path / "p.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = load_tokenizer(ModelArgs(model=grpo_toy_policy()))
    prompts, ids, dropped, cols = load_prompts(str(src), tok, builtin_size=0, seed=0, max_train_samples=None,
                                               max_prompt_length=16)
    assert prompts == ["short", "also short"] and dropped == 1 and cols == [{"answer": "1"}, {"answer": "3"}]


# ----------------------------------------------------------------------------------------- the worked example
def test_word_problem_rewards_and_held_out_split():
    c = word_problems.correct_answer([" #### 8", "so \\boxed{8}.", "8", " #### 1,0", "#### 7", "x"],
                                     ["8", "8", "8", "10", "8", None])
    assert c == [1.0, 1.0, 0.0, 1.0, 0.0, None]
    chat = [[{"role": "assistant", "content": "3 + 4 = 7\n#### 7"}]]
    assert word_problems.correct_answer(chat, ["7"]) == [1.0]
    assert word_problems.answer_format([" #### 8", "#### 8 apples", "\\boxed{3}", "8"]) == [1.0, 0.5, 1.0, 0.0]
    train = word_problems.make_rows(3000, "train", seed=0)
    test = word_problems.make_rows(500, "test", seed=3)
    strip = re.compile(r"\b(" + "|".join(word_problems.NAMES + word_problems.THINGS) + r")\b")
    problems = [{strip.sub("_", r["prompt"]) for r in rows} for rows in (train, test)]
    assert len(problems[0]) == 204 and len(problems[1]) == 51 and not problems[0] & problems[1]
    for r in train[:50]:   # the answer column is the problem's answer
        nums = [int(x) for x in re.findall(r"\d+", r["prompt"])]
        assert int(r["answer"]) in (nums[0] + nums[1], nums[0] - nums[1])
        assert r["completion"] == f" #### {r['answer']}"
    assert word_problems.make_rows(5, "test", seed=3) == test[:5]   # seeded


# ----------------------------------------------------------------------------------------- through grpo
def _prompt_file(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def word_data(tmp_path):
    rows = [{**r, "tag": f"t{i}"} for i, r in enumerate(word_problems.make_rows(8, "train", seed=0))]
    held = [{**r, "tag": f"e{i}"} for i, r in enumerate(word_problems.make_rows(4, "test", seed=0))]
    grpo_rewards.ANSWERS = {r["prompt"]: r["answer"] for r in rows + held}
    grpo_rewards.SEEN.clear()
    yield _prompt_file(tmp_path / "train.jsonl", rows), _prompt_file(tmp_path / "test.jsonl", held), rows + held
    grpo_rewards.ANSWERS = {}
    grpo_rewards.SEEN.clear()


def test_grpo_passes_each_completion_its_own_prompts_columns_and_sums_only_applicable_rewards(tmp_path, word_data):
    train, test, rows = word_data
    out = tmp_path / "run"
    m = grpo.train(from_dict(grpo.Config, grpo_toy_cfg(
        out, data=train, eval_prompts=test, max_prompt_length=80, max_steps=2,
        reward_funcs=["tests.pipelines.grpo_rewards:aligned", "tests.pipelines.grpo_rewards:even_only"],
        reward_weights=[1.0, 0.5])))
    tags = {r["prompt"]: r["tag"] for r in rows}
    # the probe (2 prompts x 1), evaluation before and after (4 prompts each), 2 rollouts of 4 prompts x 4
    assert len(grpo_rewards.SEEN) == 2 + 4 + 4 + 2 * 16
    assert all(tags[p] == t for p, _, t, _ in grpo_rewards.SEEN)
    assert all(ids for *_, ids in grpo_rewards.SEEN[2:])   # sampled completion ids (empty only in the probe)
    # the 2 iterations cover the 8 training prompts once; even_only's mean is over the rows it applies to (and
    # absent from an iteration where it applied to none)
    assert any(int(r["answer"]) % 2 == 0 for r in rows[:8]) and any(int(r["answer"]) % 2 for r in rows[:8])
    means = [r.get("rewards/even_only/mean") for r in grpo_train_rows(out)]
    assert all(r["rewards/aligned/mean"] == 1.0 for r in grpo_train_rows(out))
    assert 2.0 in means and set(means) <= {2.0, None}
    assert m["eval/rewards/aligned"] == 1.0 and m["init/rewards/aligned"] == 1.0
    answers = {r["prompt"]: int(r["answer"]) for r in rows}
    samples = [x for row in log_rows(out) if "samples" in row for x in row["samples"]]
    assert {answers[x["prompt"]] % 2 for x in samples} == {0, 1}   # both cases occur
    for x in samples:   # total = 1 x aligned + 0.5 x even_only, the None of an odd answer left out
        assert x["reward"] == 1.0 + (1.0 if answers[x["prompt"]] % 2 == 0 else 0.0)


def test_a_completion_no_reward_applies_to_is_a_one_line_error(tmp_path, word_data, capsys):
    train, test, rows = word_data
    assert any(int(r["answer"]) % 2 for r in rows)
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(yaml.safe_dump({"stage": "grpo", **grpo_toy_cfg(
        tmp_path / "run", data=train, eval_prompts="none", max_prompt_length=80, max_steps=1,
        reward_funcs=["tests.pipelines.grpo_rewards:even_only"], reward_weights=None)}))
    capsys.readouterr()
    assert grpo.main(["--config", str(cfg)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "has no applicable reward" in err and "(even_only) returned None" in err


def test_grpo_names_a_missing_column_before_writing(tmp_path, word_data):
    train, test, _ = word_data
    with pytest.raises(ConfigError, match="needs column 'solution'"):
        grpo.train(from_dict(grpo.Config, grpo_toy_cfg(tmp_path / "run", data=train, max_prompt_length=80,
                                                  reward_funcs=["tests.pipelines.grpo_rewards:needs_solution"],
                                                  reward_weights=None)))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ppo_reward_functions_get_the_columns_and_add_to_the_score(tmp_path, word_data):
    from pipelines import ppo
    train, _, rows = word_data
    tags = {r["prompt"]: r["tag"] for r in rows}
    base = {"data": train, "max_prompt_length": 80, "max_steps": 1, "eval_prompts": "none", "batch_size": 8,
            "missing_eos_penalty": None}
    # reward functions alone (no reward model; the value model starts from the policy)
    m = ppo.train(from_dict(ppo.Config, ppo_toy_cfg(tmp_path / "funcs", reward_model="", **base,
                                                   reward_funcs=["tests.pipelines.grpo_rewards:aligned"])))
    assert len(grpo_rewards.SEEN) == 2 + 8 and all(tags[p] == t for p, _, t, _ in grpo_rewards.SEEN)
    assert m["train/objective/raw_scores"] == 1.0 and m["train/rewards/aligned/mean"] == 1.0
    # beside the reward model: its score plus 0.5 x aligned (= 1 on every row)
    rm = ppo.train(from_dict(ppo.Config, ppo_toy_cfg(tmp_path / "rm", **base)))
    both = ppo.train(from_dict(ppo.Config, ppo_toy_cfg(tmp_path / "both", **base, reward_weights=[0.5],
                                                      reward_funcs=["tests.pipelines.grpo_rewards:aligned"])))
    assert both["train/objective/raw_scores"] == pytest.approx(rm["train/objective/raw_scores"] + 0.5, abs=1e-6)
    with pytest.raises(ConfigError, match="may be empty only with reward_funcs"):
        ppo.train(from_dict(ppo.Config, ppo_toy_cfg(tmp_path / "none", reward_model="", **base)))


@pytest.mark.slow
def test_word_problem_example_runs_from_the_script_through_the_recipe(tmp_path):
    from pipelines.runner import run_recipe

    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "data"
    assert word_problems.main(["--out", str(data), "--n-train", "64", "--n-test", "8"]) == 0
    small = {"grpo.max_steps": 2, "grpo.batch_size": 4, "grpo.num_generations": 4, "grpo.save_every": 2,
             "grpo.eval.num_prompts": 8, "sft.max_steps": 3}
    res = run_recipe(root / "recipes" / "grpo" / "tiny-word-problems.yaml",
                     {"output_dir": str(tmp_path / "run"), "sft.data": str(data), "grpo.data": str(data),
                      "grpo.eval_prompts": str(data), "sft.quiet": True, "grpo.quiet": True, **small})
    m = res["grpo"]
    # held-out accuracy before and after, from the reward that reads the `answer` column
    for key in ("init/rewards/correct_answer", "eval/rewards/correct_answer", "train/rewards/correct_answer/mean"):
        assert 0.0 <= m[key] <= 1.0, key
    samples = [x for row in log_rows(tmp_path / "run" / "grpo") if "samples" in row for x in row["samples"]]
    held = {json.loads(x)["prompt"] for x in (data / "test.jsonl").read_text().splitlines()}
    assert samples and all(x["prompt"] in held for x in samples)   # evaluated on the held-out split
