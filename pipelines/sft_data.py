"""SFT examples as token sequences with a per-token loss mask: every assistant turn of a conversation, and
best-fit-decreasing packing of whole examples into rows whose examples never see each other.

A sequence example is {'input_ids', 'loss_mask'} (loss_mask[t] = 1: token t is a target; token 0 of an example
never is, nothing precedes it); a packed row adds 'seq_lens', the lengths of the examples it holds, in order.

Assistant turns (`assistant_only_loss`): the conversation is rendered with the chat template and tokenised
once. Each assistant turn's span runs from the end of the conversation before it, rendered with the
generation prompt, to the end of the conversation through it: the tokens the model would generate for that
turn, end-of-turn marker included (for the last turn these are exactly the completion tokens the prompt /
completion split gives). Both ends are checked to be exact: the rendered prefix must be a text prefix of the
whole conversation and its tokens a token prefix of the whole's tokens. A template that renders earlier turns
differently inside the whole (one that drops past reasoning, say), or a boundary that falls inside a token, is
refused in one line rather than trained on a guessed mask.

Packing (`packing_strategy: bfd`): whole examples go longest first into the row with the least room that still
fits them (best-fit decreasing), so no example is cut. In a row each example's positions restart at 0 and a
block-diagonal causal mask lets a token attend only to earlier tokens of its own example (a 4-D mask for eager
and sdpa attention; flash-attention takes the restarting position_ids alone, transformers' packed-sequence
path), so a packed example gets exactly the logits, loss and gradient it gets alone.
"""

from __future__ import annotations

from bisect import bisect_left, insort

import torch

from pipelines.data import TruncationStats, _ids, max_token_chars, normalise_sft, note_chat_use
from pipelines.scoring import pad
from reins.errors import DataError


# ----------------------------------------------------------------------------------------- assistant turns
def chat_conversations(rows: list[dict], where: str, *, roles) -> list[tuple[list[dict], int]]:
    """(conversation, index of its first trainable turn) per row: a `messages` row trains from turn 0, a
    conversational prompt/completion row from its completion (its prompt is never trained on). String data
    has no turns: a one-line error."""
    norm = normalise_sft(rows, where, roles=roles)
    if not isinstance(norm[0]["completion"], list):
        raise DataError(f"{where}: assistant_only_loss=true needs conversational data ('messages', or 'prompt'/"
                        f"'completion' as message lists); row 0 is plain text")
    if "messages" in rows[0]:
        return [(list(r["prompt"]) + list(r["completion"]), 0) for r in norm]
    return [(list(r["prompt"]) + list(r["completion"]), len(r["prompt"])) for r in norm]


def _render(tok, messages: list[dict], where: str, i: int, *, gen: bool) -> str:
    try:
        return tok.apply_chat_template(messages, add_generation_prompt=gen, tokenize=False)
    except Exception as e:  # noqa: BLE001 - a template that cannot render a prefix of the conversation
        raise DataError(f"{where}: row {i}: the chat template cannot render the first {len(messages)} "
                        f"message(s) on their own: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _boundary(tok, full: str, ids: list[int], prefix: str, where: str, i: int, j: int, end: str) -> int:
    """Number of tokens of `ids` (the whole conversation's) that `prefix` covers exactly; a one-line error when
    `prefix` is not a text prefix of `full`, or its own tokens are not a token prefix of `ids`."""
    if not full.startswith(prefix):
        raise DataError(f"{where}: row {i}: the chat template renders the conversation up to the {end} of "
                        f"assistant message {j} differently from the whole conversation; assistant turns cannot "
                        f"be located exactly (use assistant_only_loss=false: last assistant turn only)")
    pids = tok(prefix, add_special_tokens=False)["input_ids"]
    if len(pids) > len(ids) or list(pids) != ids[:len(pids)]:
        raise DataError(f"{where}: row {i}: the {end} of assistant message {j} falls inside a token of the "
                        f"tokenised conversation; its turn cannot be masked exactly")
    return len(pids)


def assistant_turn_mask(tok, messages: list[dict], first: int, limit: int, where: str,
                        i: int) -> tuple[list[int], list[int], bool]:
    """(token ids of the whole conversation, loss mask = 1 on the tokens of assistant turns from index `first`
    on, whether only part of the text was tokenised because it is far over `limit` tokens; see data._ids)."""
    full = _render(tok, messages, where, i, gen=False)
    ids, partial = _ids(tok, full, limit)
    mask = [0] * len(ids)
    cap = 2 * (limit + 1) * max_token_chars(tok)  # a longer prefix has more than `limit` tokens: past the cut
    for j in range(first, len(messages)):
        if messages[j]["role"] != "assistant":
            continue
        before = _render(tok, messages[:j], where, i, gen=True)
        if len(before) > cap:
            break
        start = _boundary(tok, full, ids, before, where, i, j, "start")
        if start >= limit:
            break
        through = _render(tok, messages[:j + 1], where, i, gen=False)
        end = _boundary(tok, full, ids, through, where, i, j, "end") if len(through) <= cap else len(ids)
        mask[start:end] = [1] * (end - start)
    if mask:
        mask[0] = 0  # nothing precedes the first token
    return ids, mask, partial


def tokenize_assistant_turns(tok, convs: list[tuple[list[dict], int]], where: str, max_length: int,
                             on_overlong: str = "truncate") -> tuple[list[dict], TruncationStats]:
    """[{'input_ids', 'loss_mask'}] (every assistant turn trained) and truncation counts; a conversation over
    max_length is cut at the end, dropped or refused (`on_overlong`), one whose first trained token lies past
    max_length is refused (as an over-long prompt is)."""
    if not getattr(tok, "chat_template", None):
        raise DataError("conversational data needs a tokenizer with a chat template")
    note_chat_use(tok, [c for c, _ in convs])
    stats, out = TruncationStats(), []
    for i, (messages, first) in enumerate(convs):
        ids, mask, partial = assistant_turn_mask(tok, messages, first, max_length, where, i)
        if 1 not in mask[:max_length]:
            raise DataError(f"{where}: row {i}: no token of a trained assistant turn within the first "
                            f"max_length={max_length} tokens")
        if len(ids) > max_length:
            if on_overlong == "error":
                more = "more than " if partial else ""
                raise DataError(f"{where}: row {i}: conversation is {more}{len(ids)} tokens; max_length is "
                                f"{max_length}")
            if on_overlong == "drop":
                stats.dropped += 1
                continue
            stats.truncated += 1
            ids, mask = ids[:max_length], mask[:max_length]
        out.append({"input_ids": ids, "loss_mask": mask})
    if not out:
        raise DataError(f"{where}: every row was dropped as longer than max_length={max_length}")
    return out, stats


# ----------------------------------------------------------------------------------------- sequences and packing
def as_sequence(ex: dict) -> dict:
    """A {'prompt_ids', 'completion_ids'} example as a sequence example (loss on the completion tokens)."""
    p, c = ex["prompt_ids"], ex["completion_ids"]
    mask = [0] * len(p) + [1] * len(c)
    if mask:
        mask[0] = 0
    return {"input_ids": p + c, "loss_mask": mask}


def pack_bfd(examples: list[dict], max_length: int) -> list[dict]:
    """Sequence examples packed whole into rows of at most `max_length` tokens, best-fit decreasing: longest
    first (ties in data order), each into the open row with the least room that still holds it, else a new
    row. Rows come in the order they were opened; each keeps its examples' lengths as 'seq_lens'."""
    lens = [len(e["input_ids"]) for e in examples]
    if any(n > max_length for n in lens):
        raise ValueError(f"an example of {max(lens)} tokens does not fit a row of max_length={max_length}")
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row) of rows with room left, ascending
    for i in sorted(range(len(examples)), key=lambda k: -lens[k]):
        k = bisect_left(room, (lens[i], -1))
        if k == len(room):
            rows.append([i])
            r, free = len(rows) - 1, max_length - lens[i]
        else:
            free, r = room.pop(k)
            rows[r].append(i)
            free -= lens[i]
        if free > 0:
            insort(room, (free, r))
    return [{"input_ids": [t for i in row for t in examples[i]["input_ids"]],
             "loss_mask": [m for i in row for m in examples[i]["loss_mask"]],
             "seq_lens": [lens[i] for i in row]} for row in rows]


def sequence_batch(examples: list[dict], pad_id: int, *, attention: str = "mask") -> dict:
    """Right-padded batch of sequence examples or packed rows: input_ids, attention_mask, completion_mask (the
    loss mask). Packed rows also get position_ids restarting at 0 per example and, with attention="mask",
    `allowed` [B, 1, T, T] (True where a query may attend to a key: earlier tokens of its own example; pad
    tokens see themselves only); attention="position_ids" leaves the separation to the restarting position_ids
    (flash-attention's varlen path) and sets attention_mask to None."""
    ids, attn = pad([e["input_ids"] for e in examples], pad_id)
    cmask, _ = pad([e["loss_mask"] for e in examples], 0)
    batch = {"input_ids": ids, "attention_mask": attn, "completion_mask": cmask}
    if not any("seq_lens" in e for e in examples):
        return batch
    B, T = ids.shape
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)  # -1: padding
    for b, e in enumerate(examples):
        at = 0
        for s, n in enumerate(e.get("seq_lens", [len(e["input_ids"])])):
            pos[b, at:at + n], seg[b, at:at + n] = torch.arange(n), s
            at += n
        pos[b, at:] = torch.arange(T - at)  # padding as one more sequence (flash-attention's view of it)
    batch["position_ids"] = pos
    if attention == "position_ids":
        batch["attention_mask"] = None
        return batch
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal & (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
    batch["allowed"] = (allowed | torch.eye(T, dtype=torch.bool))[:, None]
    return batch


def n_targets(ex: dict) -> int:
    """Loss-carrying tokens of a sequence example or packed row."""
    return sum(ex["loss_mask"])
