"""Multi-turn SFT (every assistant turn trained) and packing that keeps examples apart (best-fit decreasing)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from pipelines import sft
from pipelines.data import normalise_sft, tokenize_sft
from pipelines.sft_data import (
    as_sequence,
    chat_conversations,
    pack_bfd,
    sequence_batch,
    tokenize_assistant_turns,
)
from reins.config import from_dict
from reins.errors import ConfigError, DataError
from tests.helpers import run_cli
from tests.pipelines.helpers import crash_at_step, small_model, small_tok, stage_overrides, write_jsonl

CHAT = [{"role": "system", "content": "Be kind."},
        {"role": "user", "content": "Rate the hotel."},
        {"role": "assistant", "content": "It was lovely."},
        {"role": "user", "content": "And the food?"},
        {"role": "assistant", "content": "Good soup."},
        {"role": "user", "content": "Anything else?"},
        {"role": "assistant", "content": "No."}]


def _pieces_oracle(tok, pieces: list[tuple[str, int]]) -> tuple[list[int], list[int]]:
    """Token ids and loss mask built piece by piece: the tiny template's role markers and <|endoftext|> are
    special tokens, so the conversation's tokens are the concatenation of its pieces' tokens."""
    ids, mask = [], []
    for text, trained in pieces:
        t = tok(text, add_special_tokens=False)["input_ids"]
        ids += t
        mask += [trained] * len(t)
    return ids, mask


def test_three_turn_chat_loss_mask_token_by_token():
    tok = small_tok()
    ids, mask = _pieces_oracle(tok, [
        ("<|system|>", 0), ("Be kind.", 0), ("<|endoftext|>", 0),
        ("<|user|>", 0), ("Rate the hotel.", 0), ("<|endoftext|>", 0),
        ("<|assistant|>", 0), ("It was lovely.", 1), ("<|endoftext|>", 1),
        ("<|user|>", 0), ("And the food?", 0), ("<|endoftext|>", 0),
        ("<|assistant|>", 0), ("Good soup.", 1), ("<|endoftext|>", 1),
        ("<|user|>", 0), ("Anything else?", 0), ("<|endoftext|>", 0),
        ("<|assistant|>", 0), ("No.", 1), ("<|endoftext|>", 1)])
    convs = chat_conversations([{"messages": CHAT}], "d", roles=sft.chat_roles(tok))
    (ex,), stats = tokenize_assistant_turns(tok, convs, "d", 128)
    assert ex["input_ids"] == ids
    assert ex["loss_mask"] == mask
    assert stats.truncated == 0 and sum(mask) > 0


def test_last_turn_span_equals_the_completion_split():
    # One exchange: the assistant span is exactly the completion tokens the prompt/completion path trains.
    tok = small_tok()
    rows = [{"messages": CHAT[:3]}]
    old, _ = tokenize_sft(tok, normalise_sft(rows, "d"), "d", 128)
    new, _ = tokenize_assistant_turns(tok, chat_conversations(rows, "d", roles=sft.chat_roles(tok)), "d", 128)
    assert new == [as_sequence(old[0])]


def test_prompt_completion_chat_trains_only_completion_assistant_turns():
    tok = small_tok()
    rows = [{"prompt": CHAT[:3] + CHAT[3:4], "completion": CHAT[4:5]}]
    (ex,), _ = tokenize_assistant_turns(tok, chat_conversations(rows, "d", roles=sft.chat_roles(tok)), "d", 128)
    _, mask = _pieces_oracle(tok, [("<|system|>Be kind.<|endoftext|><|user|>Rate the hotel.<|endoftext|>"
                                    "<|assistant|>It was lovely.<|endoftext|><|user|>And the food?<|endoftext|>"
                                    "<|assistant|>", 0), ("Good soup.<|endoftext|>", 1)])
    assert ex["loss_mask"] == mask


def test_tool_turns_are_not_trained():
    tok = copy.deepcopy(small_tok())
    tok.chat_template = ("{% for message in messages %}{% if message['role'] == 'tool' %}<|user|>tool:"
                         "{% else %}<|{{ message['role'] }}|>{% endif %}{{ message['content'] }}<|endoftext|>"
                         "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    conv = [CHAT[1], CHAT[2], {"role": "tool", "content": "42"}, {"role": "assistant", "content": "Yes."}]
    (ex,), _ = tokenize_assistant_turns(tok, chat_conversations([{"messages": conv}], "d",
                                                                roles=sft.chat_roles(tok)), "d", 128)
    _, mask = _pieces_oracle(tok, [("<|user|>Rate the hotel.<|endoftext|><|assistant|>", 0),
                                   ("It was lovely.<|endoftext|>", 1), ("<|user|>tool:42<|endoftext|><|assistant|>", 0),
                                   ("Yes.<|endoftext|>", 1)])
    assert ex["loss_mask"] == mask


def test_template_that_rewrites_earlier_turns_is_refused():
    tok = copy.deepcopy(small_tok())
    # Earlier assistant turns are rendered shortened (as templates that drop past reasoning do).
    tok.chat_template = ("{% for message in messages %}<|{{ message['role'] }}|>{% if message['role'] == "
                         "'assistant' and not loop.last %}...{% else %}{{ message['content'] }}{% endif %}"
                         "<|endoftext|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    convs = chat_conversations([{"messages": CHAT}], "d", roles=sft.chat_roles(tok))
    with pytest.raises(DataError, match="row 0: the chat template renders .* assistant message 2 differently"):
        tokenize_assistant_turns(tok, convs, "d", 128)


def test_turn_boundary_inside_a_token_is_refused():
    tok = copy.deepcopy(small_tok())
    tok.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"  # no separators
    # "th" + "e" renders "the", one token pair that does not start with the tokens of "th".
    assert tok("the", add_special_tokens=False)["input_ids"][:1] != tok("th", add_special_tokens=False)["input_ids"]
    conv = [{"role": "user", "content": "th"}, {"role": "assistant", "content": "e"}]
    convs = chat_conversations([{"messages": conv}], "d", roles=sft.chat_roles(tok))
    with pytest.raises(DataError, match="row 0: the start of assistant message 1 falls inside a token"):
        tokenize_assistant_turns(tok, convs, "d", 128)


def test_overlong_conversation_is_cut_dropped_or_refused():
    tok = small_tok()
    convs = chat_conversations([{"messages": CHAT}], "d", roles=sft.chat_roles(tok))
    (full,), _ = tokenize_assistant_turns(tok, convs, "d", 128)
    n = len(full["input_ids"]) - 3
    (cut,), st = tokenize_assistant_turns(tok, convs, "d", n)
    assert cut == {"input_ids": full["input_ids"][:n], "loss_mask": full["loss_mask"][:n]} and st.truncated == 1
    with pytest.raises(DataError, match="every row was dropped"):
        tokenize_assistant_turns(tok, convs, "d", n, "drop")
    with pytest.raises(DataError, match=f"row 0: conversation is {n + 3} tokens; max_length is {n}"):
        tokenize_assistant_turns(tok, convs, "d", n, "error")
    with pytest.raises(DataError, match="no token of a trained assistant turn within the first max_length=5"):
        tokenize_assistant_turns(tok, convs, "d", 5)


def test_bfd_packs_whole_examples_best_fit_decreasing():
    exs = [{"input_ids": [i] * n, "loss_mask": [0] + [1] * (n - 1)} for i, n in enumerate([5, 3, 4, 2, 6, 1])]
    rows = pack_bfd(exs, 8)
    # Longest first: 6 opens row 0 (2 free), 5 row 1 (3 free), 4 row 2 (4 free); 3 fits row 1 exactly, 2 fits
    # row 0 exactly, 1 goes to row 2, the only one with room.
    assert [r["seq_lens"] for r in rows] == [[6, 2], [5, 3], [4, 1]]
    assert rows[0]["input_ids"] == [4] * 6 + [3] * 2 and rows[2]["input_ids"] == [2] * 4 + [5]
    assert rows[1]["loss_mask"] == [0, 1, 1, 1, 1, 0, 1, 1]
    b = sequence_batch(rows, pad_id=0)
    assert b["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 0, 1]
    assert b["position_ids"][2].tolist() == [0, 1, 2, 3, 0, 0, 1, 2]  # the padding counts as its own sequence
    allowed = b["allowed"][2, 0]
    assert allowed[4].tolist() == [False] * 4 + [True] + [False] * 3  # the 1-token example sees itself only
    assert allowed[3].tolist() == [True] * 4 + [False] * 4
    assert allowed[6].tolist() == [False] * 6 + [True, False]  # a pad token: itself only


def _examples(tok) -> list[dict]:
    rows = [{"prompt": "I stayed at the inn and", "completion": " it was lovely."},
            {"prompt": "The room", "completion": " was dirty and the staff were rude to us."},
            {"text": "A plain text line with no prompt at all."},
            {"prompt": "Food:", "completion": " good."},
            {"prompt": "We came back", "completion": " twice."}]
    out = []
    for r in rows:
        norm = normalise_sft([r], "d")
        out += tokenize_sft(tok, norm, "d", 40)[0]
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_and_gradients_equal_unpacked(attn):
    tok = small_tok()
    exs = _examples(tok)
    rows = pack_bfd([as_sequence(e) for e in exs], 64)
    assert len(rows) < len(exs) and any(len(r["seq_lens"]) >= 3 for r in rows)
    loss_fn = sft.make_loss_fn(tok.pad_token_id)
    denom = float(sum(sft.n_predicted(e) for e in exs))
    assert denom == sum(sft.n_predicted(r) for r in rows)

    def run(batch):
        model = small_model(tok, seed=3, attn_implementation=attn)
        loss, stats = loss_fn(model, batch, denom)
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    ref_loss, ref_grads = run(exs)  # the unpacked prompt/completion path
    loss, grads = run(rows)
    assert loss == pytest.approx(ref_loss, abs=1e-5)
    for n, g in ref_grads.items():
        assert torch.allclose(grads[n], g, atol=1e-5, rtol=0), n
    assert max(g.abs().max().item() for g in ref_grads.values()) > 1e-3  # gradients that could differ


def test_position_ids_path_separates_examples_like_the_mask():
    # The flash-attention path gives transformers only the restarting position_ids (attention_mask None). Its
    # packed-sequence detection runs for sdpa too when no cache is used (transformers 5.x), so that input
    # convention (padding included) is checked here against the 4-D mask, and both against a leaky forward.
    tok = small_tok()
    rows = pack_bfd([as_sequence(e) for e in _examples(tok)], 64)
    model = small_model(tok, seed=3)
    masked = sft.make_loss_fn(tok.pad_token_id)(model, rows, 1.0)[0].item()
    by_pos = sft.make_loss_fn(tok.pad_token_id, attention="position_ids")(model, rows, 1.0)[0].item()
    assert by_pos == pytest.approx(masked, abs=1e-5)
    b = sequence_batch(rows, tok.pad_token_id)
    b.pop("allowed"), b.pop("position_ids")  # one causal sequence per row: examples see each other
    leaky = -sft.sequence_logps(model, b)["logps"].sum().item()
    assert abs(leaky - masked) > 1e-2


def _chat_file(tmp_path, n=24):
    rows = [{"messages": [{"role": "user", "content": f"Rate hotel {i}."},
                          {"role": "assistant", "content": "It was lovely." if i % 2 else "Dirty."},
                          {"role": "user", "content": "Why?"},
                          {"role": "assistant", "content": "The staff." if i % 3 else "Clean rooms."}]}
            for i in range(n)]
    return write_jsonl(tmp_path / "chat.jsonl", rows)


def _cfg(tmp_path, **kw):
    return from_dict(sft.Config, stage_overrides(tmp_path, **kw))



def test_packed_multi_turn_run_resumes_exactly(tmp_path):
    kw = {"data": str(_chat_file(tmp_path)), "assistant_only_loss": True, "packing": True, "max_length": 96,
          "batch_size": 2, "max_steps": 4, "save_every": 2, "learning_rate": 3e-3}
    full = sft.train(_cfg(tmp_path / "a", **kw))
    log = [json.loads(x) for x in (tmp_path / "a" / "run" / "log.jsonl").read_text().splitlines()]
    assert 0.5 < log[0]["data/packed_fill"] <= 1.0 and log[0]["data/train_rows"] < 24
    with crash_at_step(3):
        sft.train(_cfg(tmp_path / "b", **kw))
    resumed = sft.train(_cfg(tmp_path / "b", **kw))
    assert resumed.keys() == full.keys()
    for k in full:
        assert resumed[k] == pytest.approx(full[k], rel=1e-6, abs=1e-9), k
    assert full["train/loss"] < log[1]["loss"]  # it learns


def test_bad_combinations_are_one_line_errors(tmp_path, capfd):
    chat = str(_chat_file(tmp_path))
    base = ["sft", "--quiet", f"output_dir={tmp_path / 'run'}", "tiny.hidden_size=32", "tiny.num_layers=1",
            "tiny.num_heads=2", "tiny.intermediate_size=64", "tiny.vocab_size=400", "builtin_size=64",
            "eval_prompts=none", "batch_size=8"]
    cases = [(["assistant_only_loss=true"], "assistant_only_loss=true needs conversational data"),
             ([f"data={chat}", "packing=true", "packing_strategy=wrapped"], "packing_strategy=wrapped is for plain"),
             ([f"data={chat}", "packing=true", "packing_strategy=wrapped", "assistant_only_loss=true"],
              "cannot be combined with assistant_only_loss"),
             (["packing=true", "packing_strategy=stream"], "packing_strategy")]
    for extra, msg in cases:
        code, err = run_cli(base + extra, capfd)
        assert code == 2 and len(err) == 1 and msg in err[0], (extra, err)
        assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError):
        _cfg(tmp_path, packing=True, packing_strategy="wrapped", assistant_only_loss=True).validate()
