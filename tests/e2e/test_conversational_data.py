"""Conversational data through the real `reins` entry point (issue 14, class 2).

Each case is a data file a user could plausibly hand to a stage: a message role the chat template does not know,
a file that switches between the string and the message-list format part-way, a file that is not UTF-8. Each
must end in one line `reins <stage>: error: ...` naming the file, the row (or byte offset) and the field, a
non-zero exit, and an earlier run's output directory byte-identical afterwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import TINY_MODEL, TINY_TRAIN, resolved_config_yaml, run_cli, snapshot, write_jsonl


def _msgs(*pairs: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in pairs]


CHAT_SFT = {"messages": _msgs(("user", "Tell me about the inn."), ("assistant", "It was lovely."))}
CHAT_PAIR = {"prompt": _msgs(("user", "How was the inn?")), "chosen": _msgs(("assistant", "It was lovely.")),
             "rejected": _msgs(("assistant", "It was dirty."))}
STR_PAIR = {"prompt": "I stayed at the inn and", "chosen": " it was lovely.", "rejected": " it was dirty."}
STR_SFT = {"prompt": "I stayed at the inn and", "completion": " it was lovely."}
CHAT_PC = {"prompt": _msgs(("user", "How was the inn?")), "completion": _msgs(("assistant", "It was lovely."))}
PAD = 12  # well-formed rows after the bad one, so a whole batch of 8 fits and the old code trained on the file


def _sft_unknown_role(d):
    bad = {"messages": _msgs(("user", "Tell me."), ("bot", "Hello."), ("assistant", "It was lovely."))}
    f = write_jsonl(d / "chat.jsonl", [CHAT_SFT, CHAT_SFT, bad] + PAD * [CHAT_SFT])
    return "sft", [f"data={f}"], ["chat.jsonl", "row 2", "field 'messages'", "message 1", "role 'bot'",
                                  "assistant, system, user"]


def _dpo_misspelt_role(d):
    bad = {**CHAT_PAIR, "rejected": _msgs(("asistant", "It was dirty."))}
    f = write_jsonl(d / "prefs.jsonl", [CHAT_PAIR, bad] + PAD * [CHAT_PAIR])
    return "dpo", [f"data={f}"], ["prefs.jsonl", "row 1", "field 'rejected'", "message 0", "role 'asistant'"]


def _reward_role_in_prompt(d):
    bad = {**CHAT_PAIR, "prompt": _msgs(("human", "How was the inn?"))}
    f = write_jsonl(d / "prefs.jsonl", [CHAT_PAIR] * 3 + [bad] + PAD * [CHAT_PAIR])
    return "reward", [f"data={f}"], ["prefs.jsonl", "row 3", "field 'prompt'", "role 'human'"]


def _dpo_strings_then_messages(d):
    f = write_jsonl(d / "prefs.jsonl", [STR_PAIR, STR_PAIR, CHAT_PAIR, STR_PAIR] + PAD * [STR_PAIR])
    return "dpo", [f"data={f}"], ["prefs.jsonl", "row 2", "field 'chosen' is a message list", "row 0 used a string"]


def _reward_messages_then_strings(d):
    f = write_jsonl(d / "prefs.jsonl", [CHAT_PAIR, STR_PAIR] + PAD * [CHAT_PAIR])
    return "reward", [f"data={f}"], ["prefs.jsonl", "row 1", "field 'chosen' is a string",
                                     "row 0 used a message list"]


def _dpo_string_prompt_message_completions(d):
    f = write_jsonl(d / "prefs.jsonl", [CHAT_PAIR, {**CHAT_PAIR, "prompt": "How was the inn?"}] + PAD * [CHAT_PAIR])
    return "dpo", [f"data={f}"], ["prefs.jsonl", "row 1", "'prompt' and 'chosen'/'rejected' must all be strings"]


def _sft_mixed_prompt_completion(d):
    f = write_jsonl(d / "sft.jsonl", [CHAT_PC, CHAT_PC, CHAT_PC, STR_SFT] + PAD * [CHAT_PC])
    return "sft", [f"data={f}"], ["sft.jsonl", "row 3", "field 'prompt' is a string", "row 0 used a message list"]


def _preferences_mixed_prompts(d):
    f = write_jsonl(d / "prompts.jsonl", [{"prompt": "I stayed at"}, {"prompt": _msgs(("user", "The inn"))},
                                          {"prompt": "The staff"}])
    argv = [f"prompts={f}", "num_train_prompts=2", "num_test_prompts=1", "num_samples=2",
            "generation.max_new_tokens=4"]
    return "preferences", argv, ["prompts.jsonl", "row 1", "field 'prompt' is a message list"]


def _sft_latin1_jsonl(d):
    f = d / "latin1.jsonl"
    good = json.dumps(STR_SFT).encode() + b"\n"
    f.write_bytes(good * 2 + '{"prompt": "Le caf\u00e9 \u00e9tait", "completion": " bon."}\n'.encode("latin-1"))
    offset = len(good) * 2 + len('{"prompt": "Le caf')
    return "sft", [f"data={f}"], ["latin1.jsonl", "not UTF-8", "0xe9", f"byte offset {offset}", "line 3"]


def _dpo_utf16_json(d):
    f = d / "prefs.json"
    f.write_bytes(json.dumps([STR_PAIR]).encode("utf-16"))  # starts with the BOM 0xff 0xfe
    return "dpo", [f"data={f}"], ["prefs.json", "not UTF-8", "0xff", "byte offset 0"]


CASES = {
    "sft-unknown-role": _sft_unknown_role,
    "dpo-misspelt-role": _dpo_misspelt_role,
    "reward-unknown-role-in-prompt": _reward_role_in_prompt,
    "dpo-strings-then-messages": _dpo_strings_then_messages,
    "reward-messages-then-strings": _reward_messages_then_strings,
    "dpo-string-prompt-message-completions": _dpo_string_prompt_message_completions,
    "sft-mixed-prompt-completion": _sft_mixed_prompt_completion,
    "preferences-mixed-prompts": _preferences_mixed_prompts,
    "sft-latin1-jsonl": _sft_latin1_jsonl,
    "dpo-utf16-json": _dpo_utf16_json,
}


@pytest.mark.parametrize("build", list(CASES.values()), ids=list(CASES))
def test_conversational_data_error_is_one_line_and_changes_nothing(tmp_path, monkeypatch, capfd, build):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    stage, argv, expect = build(tmp_path)
    argv = [*argv, f"output_dir={out}", *(TINY_MODEL if stage == "preferences" else TINY_TRAIN), "--quiet"]
    # What an earlier, interrupted run of this same command left behind.
    (out / "model").mkdir(parents=True)
    (out / "config.yaml").write_text(resolved_config_yaml(stage, argv))
    (out / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (out / "model" / "model.safetensors").write_bytes(bytes(range(256)))
    before = snapshot(out)
    code, err = run_cli([stage, *argv], capfd)
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"reins {stage}: error: "), err
    for s in expect:
        assert s in err[0], (s, err[0])
    assert snapshot(out) == before


def test_roles_a_chat_template_names_are_accepted(tmp_path):
    """A template that handles a 'tool' role explicitly accepts it; the tiny template, which prints any role
    verbatim, accepts only system/user/assistant."""
    from pipelines.data import chat_roles, normalise_preferences
    from reins.errors import DataError
    from tests.pipelines.helpers import small_tok

    tok = small_tok()
    row = {**CHAT_PAIR, "prompt": _msgs(("user", "Look it up."), ("tool", "The inn: 4 stars."))}
    assert chat_roles(tok) == {"system", "user", "assistant"}
    with pytest.raises(DataError, match="row 0: field 'prompt' message 1 has role 'tool'"):
        normalise_preferences([row], "x.jsonl", roles=chat_roles(tok))
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'tool' %}<|user|>[tool] {{ m['content'] }}"
                         "{% elif m.role != \"ipython\" %}<|{{ m['role'] }}|>{{ m['content'] }}{% endif %}"
                         "<|endoftext|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert chat_roles(tok) == {"system", "user", "assistant", "tool", "ipython"}
    assert normalise_preferences([row], "x.jsonl", roles=chat_roles(tok))[0]["prompt"][1]["role"] == "tool"


def test_a_well_formed_chat_file_still_trains(tmp_path, capfd):
    """The same checks pass a clean conversational file: sft trains two steps on it."""
    f = write_jsonl(tmp_path / "chat.jsonl", [CHAT_SFT] * 8 + [
        {"messages": _msgs(("system", "Be brief."), ("user", "And the food?"), ("assistant", "Good."))}] * 8)
    out = tmp_path / "out"
    code, err = run_cli(["sft", f"data={f}", f"output_dir={out}", *TINY_TRAIN, "eval_prompts=none", "--quiet"],
                        capfd)
    assert code == 0, err
    assert json.loads(Path(out / "metrics.json").read_text())["steps"] == 2
