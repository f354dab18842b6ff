"""Data loading, validation and tokenisation: exact masks, truncation, and one clear error per bad input."""

from __future__ import annotations

import json

import pytest
import torch

from pipelines.data import (
    encode_completion,
    encode_prompt,
    load_records,
    normalise_preferences,
    normalise_sft,
    tokenize_preferences,
    tokenize_sft,
)
from pipelines.scoring import completion_batch
from reins.errors import DataError
from tests.pipelines.helpers import small_tok, write_jsonl


@pytest.fixture(scope="module")
def tok():
    return small_tok()


def test_standard_mask_is_exactly_the_completion(tok):
    prompt, completion = "I stayed at the Harbour Inn last week and", " the room was spotless. I loved it."
    pids = encode_prompt(tok, prompt)
    cids = encode_completion(tok, prompt, completion)
    assert pids == tok(prompt, add_special_tokens=False)["input_ids"]
    assert cids[-1] == tok.eos_token_id and cids.count(tok.eos_token_id) == 1  # EOS appended once
    assert tok.decode(cids[:-1]) == completion
    b = completion_batch([pids, pids[:3]], [cids, cids[:2]], tok.pad_token_id)
    row0 = b["input_ids"][0][b["completion_mask"][0].bool()].tolist()
    assert row0 == cids
    assert b["completion_mask"][0, : len(pids)].sum() == 0
    # The short row: prompt 3 tokens, completion 2, then padding (pad id, attention 0, mask 0).
    assert b["completion_mask"][1].tolist() == [0, 0, 0, 1, 1] + [0] * (b["input_ids"].shape[1] - 5)
    assert b["attention_mask"][1].sum() == 5
    assert (b["input_ids"][1, 5:] == tok.pad_token_id).all()
    # An explicit EOS in the data is not doubled.
    assert encode_completion(tok, prompt, completion + "<|endoftext|>") == cids


def test_chat_template_mask_is_the_assistant_turn(tok):
    prompt = [{"role": "user", "content": "Review the Harbour Inn."}]
    completion = [{"role": "assistant", "content": "The room was spotless."}]
    pids = encode_prompt(tok, prompt)
    cids = encode_completion(tok, prompt, completion)
    # Hand-rendered with the tiny template: <|user|>...<|endoftext|><|assistant|> | content<|endoftext|>
    assert tok.decode(pids) == "<|user|>Review the Harbour Inn.<|endoftext|><|assistant|>"
    assert tok.decode(cids) == "The room was spotless.<|endoftext|>"
    assert pids[-1] == tok.convert_tokens_to_ids("<|assistant|>")
    full = tok.apply_chat_template(prompt + completion, tokenize=False)
    assert tok(full, add_special_tokens=False)["input_ids"] == pids + cids  # no boundary drift


def test_implicit_prompt_is_extracted_at_a_word_boundary():
    rows = normalise_preferences([{"chosen": "The food was great.", "rejected": "The food was awful."}], "x")
    assert rows[0]["prompt"] == "The food was"
    assert rows[0]["chosen"] == " great." and rows[0]["rejected"] == " awful."
    conv = normalise_preferences([{
        "chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "bad"}]}], "x")
    assert conv[0]["prompt"] == [{"role": "user", "content": "hi"}]
    assert conv[0]["chosen"] == [{"role": "assistant", "content": "good"}]


def test_sft_formats():
    assert normalise_sft([{"text": "hello"}], "x") == [{"prompt": "", "completion": "hello"}]
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert normalise_sft([{"messages": msgs}], "x") == [{"prompt": msgs[:1], "completion": msgs[1:]}]


def test_truncation_policies_are_counted(tok):
    rows = [{"prompt": "I stayed at the Harbour Inn and", "chosen": " the room was spotless. " * 6,
             "rejected": " bad."}]
    plen = len(encode_prompt(tok, rows[0]["prompt"]))
    ex, stats = tokenize_preferences(tok, rows, "f.jsonl", max_length=plen + 5)
    assert len(ex[0]["chosen_ids"]) == 5 and stats.truncated == 1 and stats.dropped == 0
    assert ex[0]["chosen_ids"] == encode_completion(tok, rows[0]["prompt"], rows[0]["chosen"])[:5]  # keep start
    rows2 = rows + [{"prompt": "I stayed", "chosen": " ok.", "rejected": " no."}]
    ex, stats = tokenize_preferences(tok, rows2, "f.jsonl", max_length=plen + 5, on_overlong="drop")
    assert len(ex) == 1 and stats.dropped == 1
    with pytest.raises(DataError, match=r"f\.jsonl: row 0: prompt \+ 'chosen'"):
        tokenize_preferences(tok, rows, "f.jsonl", max_length=plen + 5, on_overlong="error")


# ----------------------------------------------------------------------------------------- bad inputs
BAD = [
    ({"prompt": "p", "chosen": "a"}, r"row 1: missing field 'rejected'"),
    ({"prompt": "p", "chosen": "  ", "rejected": "b"}, r"row 1: field 'chosen' is empty"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, r"row 1: 'chosen' and 'rejected' are identical"),
    ({"prompt": 5, "chosen": "a", "rejected": "b"}, r"row 1: field 'prompt' must be a string .* got int"),
    ({"prompt": "p", "chosen": ["x"], "rejected": "b"}, r"row 1: field 'chosen' must be a string .* got list"),
    ({"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": [{"role": "assistant", "content": "b"}]},
     r"row 1: field 'chosen' message 0 needs string 'role' and 'content'"),
]


@pytest.mark.parametrize("bad,msg", BAD)
def test_bad_preference_rows_name_file_row_field(tmp_path, bad, msg):
    good = {"prompt": "p", "chosen": "a", "rejected": "b"}
    path = write_jsonl(tmp_path / "prefs.jsonl", [good, bad])
    rows, where = load_records(str(path), "train")
    with pytest.raises(DataError, match=rf"prefs\.jsonl: {msg}"):
        normalise_preferences(rows, where)


def test_prompt_longer_than_max_length_errors(tmp_path, tok):
    path = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "I stayed at the inn " * 20, "completion": " ok"}])
    rows, where = load_records(str(path), "train")
    with pytest.raises(DataError, match=r"sft\.jsonl: row 0: field 'prompt' is \d+ tokens; max_length is 16"):
        tokenize_sft(tok, normalise_sft(rows, where), where, max_length=16)


def test_bad_files(tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"prompt": "a"}\n{not json\n')
    with pytest.raises(DataError, match=r"broken\.jsonl: line 2: invalid JSON"):
        load_records(str(tmp_path / "broken.jsonl"), "train")
    (tmp_path / "list.json").write_text(json.dumps([{"prompt": "a"}, 3]))
    with pytest.raises(DataError, match=r"list\.json: row 1: expected a JSON object, got int"):
        load_records(str(tmp_path / "list.json"), "train")
    with pytest.raises(DataError, match="data file not found"):
        load_records(str(tmp_path / "missing.jsonl"), "train")
    with pytest.raises(DataError, match=r"sft\.jsonl: row 0: missing field 'completion'"):
        normalise_sft([{"prompt": "a"}], "sft.jsonl")


def test_sources_json_parquet_and_datasets_dir_agree(tmp_path):
    import datasets

    rows = [{"prompt": "p", "chosen": "a", "rejected": "b"}, {"prompt": "q", "chosen": "c", "rejected": "d"}]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "a.parquet"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dd"))
    for src in ("a.json", "a.parquet", "dd"):
        got, _ = load_records(str(tmp_path / src), "train")
        assert got == rows
    with pytest.raises(DataError, match="no split 'test'"):
        load_records(str(tmp_path / "dd"), "test")


def test_masked_positions_carry_no_loss(tok):
    """Changing prompt or pad tokens leaves the completion-token labels and mask untouched."""
    b = completion_batch([[5, 6, 7], [5]], [[8, 9, 1], [8, 1]], tok.pad_token_id)
    labels = b["input_ids"][:, 1:][b["completion_mask"][:, 1:].bool()]
    assert labels.tolist() == [8, 9, 1, 8, 1]
    assert torch.equal(b["completion_mask"].sum(-1), torch.tensor([3, 2]))
