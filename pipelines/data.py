"""Data for the LM stages: load, validate, normalise (TRL formats) and tokenise with exact completion masks.

Formats (the conventions of TRL users, as TRL's dataset-formats documentation describes them):
- SFT: `text`; or `prompt` + `completion`; or `messages` (conversational; the last assistant turn is the
  completion, everything before it the prompt).
- Preference: `prompt` + `chosen` + `rejected`, or implicit prompt (`chosen` + `rejected` sharing a prefix).
- Prompt-only: `prompt` (preferences sampling, PPO).
Each field is a string (standard) or a list of {"role", "content"} messages (conversational, rendered with the
tokenizer's chat template). Sources: a local .json/.jsonl/.parquet file, a `datasets` directory (save_to_disk),
a Hub id, or `builtin:sentiment` (the built-in task, pipelines/task.py).

Tokenisation is exact by construction: prompt and completion are tokenised separately and concatenated, so the
prompt tokens a policy is trained on are the tokens it is prompted with at generation time, and the completion
mask is the second part; there is no re-tokenisation of prompt+completion whose boundary could drift
(trl#1679, #5213). Chat templates: the prompt is rendered with `add_generation_prompt=True`, the full
conversation without, and the completion is the text after the rendered prompt (an error if the template does
not render the prompt as a prefix). Standard completions get EOS appended if missing.
Truncation: a prompt of max_length tokens or more is an error; an overlong completion is cut at the end
(keep start) or the row dropped (`on_overlong`), and both are counted. A text far longer than max_length is
tokenised only as far as max_length matters (`_ids`), so a 10 MB row is refused, cut or dropped in milliseconds.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from reins.config import check
from reins.errors import DataError

BUILTIN = "builtin:sentiment"
BUILTIN_CHAT = "builtin:sentiment-chat"   # the same prompts as chat messages (instruction-tuned models)
CHAT_ROLES = frozenset({"system", "user", "assistant"})
# A role name a chat template compares against: message['role'] == 'tool', message.role != "ipython", ...
_TEMPLATE_ROLE = re.compile(r"""role['"]?\]?\s*[!=]=\s*['"]([A-Za-z_][\w-]*)['"]""")


@dataclass
class DataArgs:
    """Data options shared by the LM stages (a mixin of their Config dataclasses)."""

    data: str = field(default=BUILTIN, metadata={"help": "file, datasets dir, Hub id or builtin:sentiment"})
    eval_data: str | None = field(default=None,
                                  metadata={"help": "separate eval source (default: data's eval_split, if it has "
                                                    "one)"})
    train_split: str = field(default="train", metadata={"help": "split of `data` to train on"})
    eval_split: str = field(default="test", metadata={"help": "split of `data` to evaluate on (if it has one)"})
    max_length: int = field(default=128, metadata={"help": "prompt + completion tokens"})
    on_overlong: Literal["truncate", "drop", "error"] = field(
        default="truncate", metadata={"help": "an example longer than max_length: truncate it, drop it, or stop"})
    max_train_samples: int | None = field(default=None,
                                          metadata={"help": "use at most this many training examples (None: all)"})
    max_eval_samples: int | None = field(default=256,
                                         metadata={"help": "use at most this many evaluation examples (None: all)"})
    builtin_size: int = field(default=4000, metadata={"help": "rows of the built-in task's training corpus"})

    def validate_data(self):
        check(self.max_length >= 2, f"max_length must be >= 2, got {self.max_length}")
        check(self.max_train_samples is None or self.max_train_samples >= 1, "max_train_samples must be >= 1")


# ----------------------------------------------------------------------------------------- loading
def _read_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad file
            raise DataError(f"{path}: cannot read parquet: {str(e).splitlines()[0]}") from None
    if suffix not in (".json", ".jsonl"):
        raise DataError(f"{path}: unsupported file type '{suffix}' (use .json, .jsonl or .parquet)")
    text = _read_utf8(path)
    stripped = text.lstrip()
    if suffix == ".json" and stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: invalid JSON: {e}") from None
    else:
        rows = []
        for i, line in enumerate(text.splitlines()):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{path}: line {i + 1}: invalid JSON: {e}") from None
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {i}: expected a JSON object, got {type(row).__name__}")
    return rows


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"{path}: not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset {e.start} "
                        f"(line {line})") from None


def load_records(source: str, split: str, *, required: bool = True) -> tuple[list[dict], str] | None:
    """Rows of `split` from `source` as plain dicts, and a name for error messages."""
    p = Path(source).expanduser()
    if p.is_file():
        return _read_file(p), str(p)
    if p.is_dir():
        for ext in (".jsonl", ".json", ".parquet"):
            if (p / f"{split}{ext}").is_file():
                return _read_file(p / f"{split}{ext}"), str(p / f"{split}{ext}")
        import datasets

        try:
            ds = datasets.load_from_disk(str(p))
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{p}: not a datasets directory or split files: {str(e).splitlines()[0]}") from None
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                if not required:
                    return None
                raise DataError(f"{p}: no split '{split}' (splits: {', '.join(ds)})")
            ds = ds[split]
        elif split != "train" and not required:
            return None
        return ds.to_list(), f"{p}[{split}]"
    if source.startswith((".", "/", "~")) or source.endswith((".json", ".jsonl", ".parquet")) or (
            "/" in source and Path(source.split("/", 1)[0]).is_dir()):  # under a local directory: not a Hub id
        raise DataError(f"data file not found: {source}")
    import datasets

    try:  # a Hub dataset's own loading script never runs (datasets 4 dropped them; 3.x asks for this flag)
        ds = datasets.load_dataset(source, split=split, trust_remote_code=False)
    except ValueError as e:
        if not required and "split" in str(e).lower():
            return None
        raise DataError(f"dataset '{source}' split '{split}': {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - offline, missing, malformed: all one-line DataErrors
        raise DataError(f"cannot load dataset '{source}': {str(e).splitlines()[0]}") from None
    return ds.to_list(), f"{source}[{split}]"


def builtin_sft_rows(n: int, seed: int, split: str) -> list[dict]:
    from pipelines.task import sentiment_corpus

    return [{"prompt": r.prompt, "completion": r.completion}
            for r in sentiment_corpus(n, seed=seed, split="train" if split == "train" else "eval")]


def load_split_pair(args: DataArgs, *, seed: int, builtin,
                    builtin_name: str = BUILTIN) -> tuple[list[dict], str, list[dict] | None, str]:
    """(train rows, where, eval rows or None, where) for the stage's data options.

    `builtin(n, seed, split)` gives the rows of the built-in task `builtin_name` for this stage's format.
    """
    if args.data == builtin_name:
        train, tw = builtin(args.builtin_size, seed, "train"), builtin_name + "[train]"
        n_eval = args.max_eval_samples or max(1, args.builtin_size // 10)
        ev, ew = builtin(n_eval, seed, "eval"), builtin_name + "[eval]"
    else:
        train, tw = load_records(args.data, args.train_split)
        if args.eval_data is not None:
            ev, ew = load_records(args.eval_data, args.eval_split)
        else:
            got = load_records(args.data, args.eval_split, required=False) if Path(args.data).is_dir() else None
            ev, ew = got if got is not None else (None, "")
    if args.max_train_samples is not None:
        train = train[: args.max_train_samples]
    if ev is not None and args.max_eval_samples is not None:
        ev = ev[: args.max_eval_samples]
    if not train:
        raise DataError(f"{tw}: no rows")
    return train, tw, ev, ew


def load_examples(args: DataArgs, tok, *, seed: int, builtin, normalise, tokenize) -> tuple[list, Any, list]:
    """A stage's training and held-out examples: `load_split_pair`'s rows, each split normalised (`normalise(rows,
    where, roles=...)` with the tokenizer's chat roles) and tokenised (`tokenize(tok, rows, where, max_length,
    on_overlong)`); (train examples, their tokenisation stats, eval examples, [] without an eval split)."""
    train_rows, tw, eval_rows, ew = load_split_pair(args, seed=seed, builtin=builtin)
    roles = chat_roles(tok)
    train_ex, tstats = tokenize(tok, normalise(train_rows, tw, roles=roles), tw, args.max_length, args.on_overlong)
    eval_ex = []
    if eval_rows:
        eval_ex = tokenize(tok, normalise(eval_rows, ew, roles=roles), ew, args.max_length, args.on_overlong)[0]
    return train_ex, tstats, eval_ex


# ----------------------------------------------------------------------------------------- validation
def chat_roles(tok=None) -> frozenset[str]:
    """Message roles conversational data may use: system, user and assistant, plus any role `tok`'s chat
    template names in a comparison (e.g. `message['role'] == 'tool'`). A template that prints any role verbatim
    (ChatML, the tiny model's) would render a typo such as 'asistant' as text, so unnamed roles are refused."""
    template = getattr(tok, "chat_template", None) if tok is not None else None
    if isinstance(template, dict):  # named templates (transformers allows {"default": ..., "tool_use": ...})
        template = " ".join(str(t) for t in template.values())
    extra = set(_TEMPLATE_ROLE.findall(template)) if isinstance(template, str) else set()
    return CHAT_ROLES | extra


def _kind(value: Any, where: str, i: int, key: str, roles: frozenset[str] = CHAT_ROLES) -> str:
    """'str' or 'chat'; raises DataError for anything else, for empty content or for a role not in `roles`."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: row {i}: field '{key}' is empty")
        return "str"
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        for j, m in enumerate(value):
            if not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(f"{where}: row {i}: field '{key}' message {j} needs string 'role' and 'content'")
            if m["role"] not in roles:
                raise DataError(f"{where}: row {i}: field '{key}' message {j} has role '{m['role']}' "
                                f"(allowed: {', '.join(sorted(roles))})")
        if not any(m["content"].strip() for m in value):
            raise DataError(f"{where}: row {i}: field '{key}' is empty")
        return "chat"
    if isinstance(value, list) and not value:
        raise DataError(f"{where}: row {i}: field '{key}' is empty")
    raise DataError(f"{where}: row {i}: field '{key}' must be a string or a list of {{role, content}} messages, "
                    f"got {type(value).__name__}")


class _OneFormat:
    """Remembers the first row's format (string or messages) and refuses a later row in the other one: a file
    mixing the two would be tokenised two ways (chat template or not) and train silently on both."""

    def __init__(self, where: str):
        self.where, self.first = where, None

    def __call__(self, kind: str, i: int, key: str) -> None:
        if self.first is None:
            self.first = (kind, i)
        elif kind != self.first[0]:
            name = {"str": "a string", "chat": "a message list"}
            raise DataError(f"{self.where}: row {i}: field '{key}' is {name[kind]} but row {self.first[1]} used "
                            f"{name[self.first[0]]}; use one format (strings or messages) for the whole file")


def _require_columns(rows: list[dict], where: str, cols: tuple[str, ...]) -> None:
    for i, row in enumerate(rows):
        for c in cols:
            if c not in row or row[c] is None:
                have = ", ".join(sorted(row)) or "none"
                raise DataError(f"{where}: row {i}: missing field '{c}' (fields: {have})")


def _common_prefix_prompt(chosen: str, rejected: str, where: str, i: int) -> tuple[str, str, str]:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    # Cut at the last space inside the shared prefix so no word is split; the completions keep that space.
    cut = chosen.rfind(" ", 0, n)
    if cut <= 0:
        raise DataError(f"{where}: row {i}: no 'prompt' field and 'chosen'/'rejected' share no prefix")
    return chosen[:cut], chosen[cut:], rejected[cut:]


def normalise_preferences(rows: list[dict], where: str, *, roles: frozenset[str] = CHAT_ROLES) -> list[dict]:
    """Validated {'prompt', 'chosen', 'rejected'} rows (implicit prompts extracted), extra fields kept."""
    if not rows:
        raise DataError(f"{where}: no rows")
    explicit = "prompt" in rows[0]
    _require_columns(rows, where, ("prompt", "chosen", "rejected") if explicit else ("chosen", "rejected"))
    out, one_format = [], _OneFormat(where)
    for i, row in enumerate(rows):
        row = dict(row)
        kinds = {k: _kind(row[k], where, i, k, roles)
                 for k in ("chosen", "rejected") + (("prompt",) if explicit else ())}
        if kinds["chosen"] != kinds["rejected"]:
            raise DataError(f"{where}: row {i}: 'chosen' and 'rejected' must both be strings or both messages")
        if explicit and kinds["prompt"] != kinds["chosen"]:
            raise DataError(f"{where}: row {i}: 'prompt' and 'chosen'/'rejected' must all be strings or all messages")
        one_format(kinds["chosen"], i, "chosen")
        if row["chosen"] == row["rejected"]:
            raise DataError(f"{where}: row {i}: 'chosen' and 'rejected' are identical")
        if not explicit:
            if kinds["chosen"] == "str":
                row["prompt"], row["chosen"], row["rejected"] = _common_prefix_prompt(
                    row["chosen"], row["rejected"], where, i)
            else:
                k = 0
                while k < min(len(row["chosen"]), len(row["rejected"])) and row["chosen"][k] == row["rejected"][k]:
                    k += 1
                if k == 0:
                    raise DataError(f"{where}: row {i}: no 'prompt' field and 'chosen'/'rejected' share no turns")
                row["prompt"], row["chosen"], row["rejected"] = (row["chosen"][:k], row["chosen"][k:],
                                                                 row["rejected"][k:])
            for k2 in ("chosen", "rejected"):
                _kind(row[k2], where, i, k2, roles)
        out.append(row)
    return out


def normalise_sft(rows: list[dict], where: str, *, roles: frozenset[str] = CHAT_ROLES) -> list[dict]:
    """Validated {'prompt', 'completion'} rows; `text` rows become prompt '' (loss on all tokens)."""
    if not rows:
        raise DataError(f"{where}: no rows")
    first = rows[0]
    out, one_format = [], _OneFormat(where)
    if "messages" in first:
        _require_columns(rows, where, ("messages",))
        for i, row in enumerate(rows):
            kind = _kind(row["messages"], where, i, "messages", roles)
            if kind != "chat" or row["messages"][-1]["role"] != "assistant":
                raise DataError(f"{where}: row {i}: field 'messages' must end with an assistant message")
            out.append({"prompt": row["messages"][:-1], "completion": row["messages"][-1:]})
    elif "text" in first and "completion" not in first:
        _require_columns(rows, where, ("text",))
        for i, row in enumerate(rows):
            if _kind(row["text"], where, i, "text") != "str":
                raise DataError(f"{where}: row {i}: field 'text' must be a string")
            out.append({"prompt": "", "completion": row["text"]})
    else:
        _require_columns(rows, where, ("prompt", "completion"))
        for i, row in enumerate(rows):
            kind = _kind(row["prompt"], where, i, "prompt", roles)
            if kind != _kind(row["completion"], where, i, "completion", roles):
                raise DataError(f"{where}: row {i}: 'prompt' and 'completion' must both be strings or messages")
            one_format(kind, i, "prompt")
            out.append({"prompt": row["prompt"], "completion": row["completion"]})
    return out


def normalise_prompts(rows: list[dict], where: str, *, roles: frozenset[str] = CHAT_ROLES) -> list:
    if not rows:
        raise DataError(f"{where}: no rows")
    _require_columns(rows, where, ("prompt",))
    one_format = _OneFormat(where)
    for i, row in enumerate(rows):
        one_format(_kind(row["prompt"], where, i, "prompt", roles), i, "prompt")
    return [row["prompt"] for row in rows]


# ----------------------------------------------------------------------------------------- tokenisation
def note_chat_use(tok, prompts: list) -> None:
    """Training inputs rendered with the chat template make it a trained template (saved with the model)."""
    if any(isinstance(p, list) for p in prompts):
        from pipelines.models import mark_chat_trained

        mark_chat_trained(tok)


def _special_prefix(tok) -> list[int]:
    """Ids the tokenizer adds before a text (e.g. BOS) with add_special_tokens=True."""
    plain = tok("x", add_special_tokens=False)["input_ids"]
    full = tok("x", add_special_tokens=True)["input_ids"]
    for k in range(len(full) - len(plain) + 1):
        if full[k:k + len(plain)] == plain:
            return list(full[:k])
    return []


def max_token_chars(tok) -> int:
    """The most characters one token can stand for: the longest vocabulary entry (added tokens included).

    Byte-level BPE entries are spelled one character per byte and SentencePiece ones one per character, so a
    text of C characters has at least C / max_token_chars(tok) tokens. Cached on the tokenizer."""
    n = getattr(tok, "_reins_max_token_chars", None)
    if n is None:
        n = max((len(t) for t in tok.get_vocab()), default=1) or 1
        try:
            tok._reins_max_token_chars = n
        except AttributeError:
            pass
    return n


def _ids(tok, text: str, limit: int | None) -> tuple[list[int], bool]:
    """(token ids of `text` without special tokens, whether only a prefix of `text` was tokenised).

    With `limit` (the most tokens the caller can keep), a text far longer than that is tokenised only as far
    as matters: when its first 2 (limit + 1) max_token_chars characters already give more than 2 limit tokens,
    those ids are returned and the caller refuses, drops or cuts the row. A 10 MB row then costs milliseconds,
    not seconds and gigabytes. Regex pre-tokenisers split at whitespace and punctuation, so only the tokens of
    the word that spans the cut can differ from the whole text's; in ordinary text that word lies far past the
    `limit` ids a caller keeps."""
    if limit is not None:
        cap = 2 * (limit + 1) * max_token_chars(tok)
        if len(text) > cap:
            ids = tok(text[:cap], add_special_tokens=False)["input_ids"]
            if len(ids) > 2 * limit:
                return list(ids), True
    return list(tok(text, add_special_tokens=False)["input_ids"]), False


def encode_prompt(tok, prompt, *, limit: int | None = None) -> list[int]:
    """Prompt token ids exactly as they are given to the policy (chat template with generation prompt).
    `limit`: prompts of more than `limit` tokens are of no use to the caller (see `_ids`)."""
    return _prompt_ids(tok, prompt, limit)[0]


def encode_completion(tok, prompt, completion) -> list[int]:
    """Completion ids that follow `encode_prompt(tok, prompt)`; standard completions end with EOS."""
    return _completion_ids(tok, prompt, completion, None)[0]


def _prompt_ids(tok, prompt, limit: int | None) -> tuple[list[int], bool]:
    """(encode_prompt's ids, whether the text was tokenised only in part because it is over `limit`)."""
    if isinstance(prompt, list):
        if not getattr(tok, "chat_template", None):
            raise DataError("conversational data needs a tokenizer with a chat template")
        return _ids(tok, tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False), limit)
    prefix = _special_prefix(tok) if prompt else []
    ids, cut = _ids(tok, prompt, limit) if prompt else ([], False)
    if prefix and ids[: len(prefix)] == prefix:  # the text already starts with BOS: no double BOS
        prefix = []
    return prefix + ids, cut


def _completion_ids(tok, prompt, completion, limit: int | None) -> tuple[list[int], bool]:
    """(encode_completion's ids, whether tokenised only in part; such a completion gets no EOS: it is cut)."""
    if isinstance(completion, list):
        ptext = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full = tok.apply_chat_template(list(prompt) + list(completion), tokenize=False)
        if not full.startswith(ptext):
            raise DataError("the chat template does not render the prompt as a prefix of the conversation")
        return _ids(tok, full[len(ptext):], limit)
    ids, cut = _ids(tok, completion, limit)
    if not cut and (not ids or ids[-1] != tok.eos_token_id):
        ids.append(tok.eos_token_id)
    return ids, cut


@dataclass
class TruncationStats:
    truncated: int = 0
    dropped: int = 0

    def as_metrics(self, prefix: str) -> dict:
        return {f"{prefix}/truncated": self.truncated, f"{prefix}/dropped": self.dropped}


def _check_prompt(pids: list[int], max_length: int, where: str, i: int, partial: bool) -> None:
    if len(pids) >= max_length:
        more = "more than " if partial else ""
        raise DataError(f"{where}: row {i}: field 'prompt' is {more}{len(pids)} tokens; max_length is {max_length}")


def _fit(pids: list[int], cids: list[int], max_length: int, policy: str, stats: TruncationStats,
         where: str, i: int, field: str, partial: bool = False) -> list[int] | None:
    if len(pids) + len(cids) <= max_length:
        return cids
    if policy == "error":
        more = "more than " if partial else ""
        raise DataError(f"{where}: row {i}: prompt + '{field}' is {more}{len(pids) + len(cids)} tokens; "
                        f"max_length is {max_length}")
    if policy == "drop":
        return None
    return cids[: max_length - len(pids)]


def tokenize_sft(tok, rows: list[dict], where: str, max_length: int, on_overlong: str = "truncate",
                 keep: tuple[str, ...] = ()):
    """[{'prompt_ids', 'completion_ids'}, plus each row's `keep` fields] and truncation counts."""
    note_chat_use(tok, [row["prompt"] for row in rows])
    stats, out = TruncationStats(), []
    for i, row in enumerate(rows):
        pids, cut = _prompt_ids(tok, row["prompt"], max_length)
        _check_prompt(pids, max_length, where, i, cut)
        cids, cut = _completion_ids(tok, row["prompt"], row["completion"], max_length - len(pids))
        fitted = _fit(pids, cids, max_length, on_overlong, stats, where, i, "completion", cut)
        if fitted is None:
            stats.dropped += 1
            continue
        stats.truncated += len(fitted) < len(cids)
        out.append({"prompt_ids": pids, "completion_ids": fitted, **{k: row[k] for k in keep}})
    if not out:
        raise DataError(f"{where}: every row was dropped as longer than max_length={max_length}")
    return out, stats


def tokenize_preferences(tok, rows: list[dict], where: str, max_length: int, on_overlong: str = "truncate"):
    """[{'prompt_ids', 'chosen_ids', 'rejected_ids'}] (+ 'margin' when the data has it) and counts."""
    note_chat_use(tok, [row["prompt"] for row in rows])
    stats, out = TruncationStats(), []
    for i, row in enumerate(rows):
        pids, cut = _prompt_ids(tok, row["prompt"], max_length)
        _check_prompt(pids, max_length, where, i, cut)
        ex: dict[str, Any] = {"prompt_ids": pids}
        keep = True
        for key in ("chosen", "rejected"):
            cids, cut = _completion_ids(tok, row["prompt"], row[key], max_length - len(pids))
            fitted = _fit(pids, cids, max_length, on_overlong, stats, where, i, key, cut)
            if fitted is None:
                keep = False
                break
            stats.truncated += len(fitted) < len(cids)
            ex[f"{key}_ids"] = fitted
        if not keep:
            stats.dropped += 1
            continue
        if "margin" in row and row["margin"] is not None:
            if not isinstance(row["margin"], (int, float)) or isinstance(row["margin"], bool):
                raise DataError(f"{where}: row {i}: field 'margin' must be a number")
            if not math.isfinite(row["margin"]):
                raise DataError(f"{where}: row {i}: field 'margin' is not finite ({row['margin']})")
            ex["margin"] = float(row["margin"])
        out.append(ex)
    if not out:
        raise DataError(f"{where}: every row was dropped as longer than max_length={max_length}")
    return out, stats


def split_off(rows: list, fraction: float, seed: int) -> tuple[list, list]:
    """Seeded train/eval split of `rows` (used when a source has no eval split)."""
    idx = list(range(len(rows)))
    random.Random(seed).shuffle(idx)
    n_eval = int(round(fraction * len(rows)))
    ev = set(idx[:n_eval])
    return [r for i, r in enumerate(rows) if i not in ev], [r for i, r in enumerate(rows) if i in ev]
