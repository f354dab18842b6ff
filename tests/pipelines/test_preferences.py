"""Preference labelling by the gold judge, and the preferences stage (dataset written, exact resume)."""

from __future__ import annotations

import math
import random

import pytest

from pipelines import preferences
from reins.config import from_dict
from tests.pipelines.helpers import SMALL, crash_at_step


def _cfg(tmp_path, **kw):
    base = {"output_dir": str(tmp_path / "run"), "quiet": True, "tiny": dict(SMALL), "num_train_prompts": 6,
            "num_test_prompts": 2, "num_samples": 3, "chunk_size": 3, "min_margin": 0.0,
            "generation": {"max_new_tokens": 10}}
    base.update(kw)
    return from_dict(preferences.Config, base)


def test_max_margin_labels_best_vs_worst(tmp_path):
    cfg = _cfg(tmp_path, min_margin=0.3)
    rng = random.Random(0)
    assert preferences.label_pair(["a", "b", "c"], [0.1, 0.9, -0.5], cfg, rng) == (1, 2)
    assert preferences.label_pair(["a", "b", "c"], [0.1, 0.2, 0.0], cfg, rng) is None  # margin 0.2 < 0.3
    assert preferences.label_pair(["a", " ", "c"], [0.1, 0.9, -0.5], cfg, rng) == (0, 2)  # empty never paired
    assert preferences.label_pair(["a", "a"], [0.9, -0.9], cfg, rng) is None  # identical texts


@pytest.mark.parametrize("temp", [0.5, 1.0])
def test_bradley_terry_labels_follow_sigmoid(tmp_path, temp):
    cfg = _cfg(tmp_path, labeling="bradley_terry", bt_temperature=temp)
    rng = random.Random(1)
    n, first = 4000, 0
    for _ in range(n):
        c, r = preferences.label_pair(["x", "y"], [1.0, 0.0], cfg, rng)
        first += c == 0
    p = 1 / (1 + math.exp(-1.0 / temp))  # P(x > y) = sigma((s_x - s_y) / T)
    assert first / n == pytest.approx(p, abs=4 * math.sqrt(p * (1 - p) / n))



def test_preferences_stage_writes_pairs_and_resumes_exactly(tmp_path):
    import datasets

    full = preferences.train(_cfg(tmp_path / "a"))
    with crash_at_step(2):
        preferences.train(_cfg(tmp_path / "b"))
    resumed = preferences.train(_cfg(tmp_path / "b"))
    assert resumed == full
    da = datasets.load_from_disk(str(tmp_path / "a" / "run" / "data"))
    db = datasets.load_from_disk(str(tmp_path / "b" / "run" / "data"))
    assert set(da) == {"train", "test"}
    assert da["train"].to_list() == db["train"].to_list()
    assert da["train"].column_names == ["prompt", "chosen", "rejected", "chosen_score", "rejected_score"]
    for row in da["train"].to_list() + da["test"].to_list():
        assert row["chosen_score"] >= row["rejected_score"] and row["chosen"] != row["rejected"]
    assert full["pairs/train"] + full["pairs/test"] + full["pairs/skipped"] == 8


def test_chat_prompts_give_conversational_pairs_the_dpo_data_loader_takes(tmp_path):
    """builtin:sentiment-chat pairs are stored as assistant messages, and without held-out prompts the
    directory has only a train split; both load in the data stages (before: a mixed-format error, and an
    empty test split that `datasets` could not load back)."""
    import datasets

    from pipelines.data import load_records, normalise_preferences

    m = preferences.train(_cfg(tmp_path, prompts="builtin:sentiment-chat", num_test_prompts=0))
    data = tmp_path / "run" / "data"
    assert set(datasets.load_from_disk(str(data))) == {"train"}
    rows, where = load_records(str(data), "train")
    pairs = normalise_preferences(rows, where)
    assert len(pairs) == m["pairs/train"] >= 1
    for p in pairs:
        assert p["prompt"][0]["role"] == "user" and "Continue this short review" in p["prompt"][0]["content"]
        assert [c["role"] for c in p["chosen"] + p["rejected"]] == ["assistant", "assistant"]
        assert p["chosen"][0]["content"] != p["rejected"][0]["content"]


def test_unpaired_format_is_trls_unpairing_of_the_same_pairs(tmp_path):
    import datasets

    from pipelines.data import load_records
    from pipelines.unpaired import normalise_unpaired

    paired = preferences.train(_cfg(tmp_path / "p"))
    unpaired = preferences.train(_cfg(tmp_path / "u", format="unpaired"))
    for split in ("train", "test"):
        pairs = datasets.load_from_disk(str(tmp_path / "p" / "run" / "data"))[split].to_list()
        rows = datasets.load_from_disk(str(tmp_path / "u" / "run" / "data"))[split].to_list()
        want = ([{"prompt": p["prompt"], "completion": p["chosen"], "label": True, "score": p["chosen_score"]}
                 for p in pairs] + [{"prompt": p["prompt"], "completion": p["rejected"], "label": False,
                                     "score": p["rejected_score"]} for p in pairs])
        assert rows == want
    assert unpaired["rows/train"] == 2 * paired["pairs/train"] and unpaired["rows/desirable"] == unpaired[
        "rows/undesirable"]
    rows, where = load_records(str(tmp_path / "u" / "run" / "data"), "train")
    assert len(normalise_unpaired(rows, where)) == unpaired["rows/train"]  # what `reins kto` reads


def test_threshold_labels_every_sample_by_its_score(tmp_path):
    import datasets

    from reins.errors import ConfigError

    m = preferences.train(_cfg(tmp_path, format="unpaired", labeling="threshold", desirable_threshold=0.05))
    data = datasets.load_from_disk(str(tmp_path / "run" / "data"))
    rows = data["train"].to_list() + data["test"].to_list()
    assert rows and all(r["label"] == (r["score"] >= 0.05) for r in rows)
    assert all(r["completion"].strip() for r in rows)
    per_prompt = {}
    for r in rows:
        per_prompt.setdefault(r["prompt"], []).append(r["completion"])
    assert all(len(c) == len(set(c)) <= 3 for c in per_prompt.values())  # distinct samples, num_samples at most
    assert m["rows/desirable"] + m["rows/undesirable"] == len(rows) > 8  # more than one row per prompt
    with pytest.raises(ConfigError, match="needs format=unpaired"):
        _cfg(tmp_path, labeling="threshold")
