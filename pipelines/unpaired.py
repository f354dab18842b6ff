"""Unpaired feedback data for `reins kto`: TRL's unpaired preference format, validated and tokenised.

Rows are {`prompt`, `completion`, `label`}: `label` true marks a desirable completion, false an undesirable one;
prompt and completion are both strings (standard) or both {"role", "content"} message lists (conversational,
rendered with the chat template), as TRL's KTOTrainer reads them. Paired preference data (`prompt`, `chosen`,
`rejected`, or an implicit prompt) is unpaired as TRL's `unpair_preference_dataset` does it: each pair gives a
desirable row (chosen) and an undesirable row (rejected), in blocks of 1000 pairs (the chosen rows of a block,
then its rejected rows, TRL's batched map), so a file-order (`shuffle=false`) run sees TRL's order.
Tokenisation is that of the other LM stages (pipelines.data): prompt and completion apart, EOS appended to a
standard completion, the same truncation rules and counts.
"""

from __future__ import annotations

from pipelines.data import (
    CHAT_ROLES,
    _kind,
    _OneFormat,
    _require_columns,
    normalise_preferences,
    tokenize_sft,
)
from reins.errors import DataError

UNPAIR_BLOCK = 1000  # TRL unpairs with a batched `datasets.map` (its default batch of 1000 rows)


def builtin_unpaired(n: int, seed: int, split: str) -> list[dict]:
    """The built-in task as unpaired feedback: at most n rows, the built-in pairs' chosen (desirable) and
    rejected (undesirable) completions alternating, so any prefix of the rows is balanced."""
    from pipelines.reward_model import builtin_pairs

    rows = []
    for p in builtin_pairs((n + 1) // 2, seed, split):
        rows += [{"prompt": p["prompt"], "completion": p["chosen"], "label": True},
                 {"prompt": p["prompt"], "completion": p["rejected"], "label": False}]
    return rows[:n]


def unpair(pairs: list[dict]) -> list[dict]:
    """{'prompt', 'completion', 'label'} rows from normalised preference pairs (extra fields kept on both)."""
    out = []
    for s in range(0, len(pairs), UNPAIR_BLOCK):
        block = pairs[s:s + UNPAIR_BLOCK]
        for key, label in (("chosen", True), ("rejected", False)):
            for row in block:
                extra = {k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")}
                out.append({**extra, "prompt": row["prompt"], "completion": row[key], "label": label})
    return out


def normalise_unpaired(rows: list[dict], where: str, *, roles: frozenset[str] = CHAT_ROLES) -> list[dict]:
    """Validated {'prompt', 'completion', 'label'} rows; paired rows (chosen/rejected) are unpaired first."""
    if not rows:
        raise DataError(f"{where}: no rows")
    if "completion" not in rows[0] and "chosen" in rows[0]:
        return unpair(normalise_preferences(rows, where, roles=roles))
    _require_columns(rows, where, ("prompt", "completion", "label"))
    out, one_format = [], _OneFormat(where)
    for i, row in enumerate(rows):
        kind = _kind(row["prompt"], where, i, "prompt", roles)
        if kind != _kind(row["completion"], where, i, "completion", roles):
            raise DataError(f"{where}: row {i}: 'prompt' and 'completion' must both be strings or both messages")
        one_format(kind, i, "prompt")
        if not isinstance(row["label"], bool):
            raise DataError(f"{where}: row {i}: field 'label' must be true or false, got {row['label']!r}")
        out.append(dict(row))
    return out


def tokenize_unpaired(tok, rows: list[dict], where: str, max_length: int, on_overlong: str = "truncate"):
    """[{'prompt_ids', 'completion_ids', 'label'}] and truncation counts (labels are checked bools)."""
    return tokenize_sft(tok, rows, where, max_length, on_overlong, keep=("label",))
