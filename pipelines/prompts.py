"""Prompt sets of the sampling stages (ppo, grpo): loading, tokenising, and each iteration's seeded slice."""

from __future__ import annotations

import torch

from pipelines.data import (
    BUILTIN,
    BUILTIN_CHAT,
    chat_roles,
    encode_prompt,
    load_records,
    normalise_prompts,
    note_chat_use,
)
from reins.errors import DataError

ARITHMETIC = "builtin:arithmetic"
ARITHMETIC_CHAT = "builtin:arithmetic-chat"   # the same problems as user messages (instruction-tuned models)


def builtin_prompts(source: str, n: int, *, seed: int, split: str, max_operand: int = 99) -> list | None:
    """`n` prompts of a built-in task (`split` "train" or "eval"), or None when `source` names none."""
    if source in (BUILTIN, BUILTIN_CHAT):
        from pipelines.task import as_chat, sentiment_prompts

        prompts = sentiment_prompts(n, seed=seed, split=split)
        return [as_chat(p) for p in prompts] if source == BUILTIN_CHAT else prompts
    if source in (ARITHMETIC, ARITHMETIC_CHAT):
        from pipelines.arithmetic import arithmetic_prompts

        return arithmetic_prompts(n, seed=seed, split=split, max_operand=max_operand, chat=source == ARITHMETIC_CHAT)
    return None


def prompt_rows(source: str, split: str, tok=None) -> tuple[list, list[dict], str]:
    """(prompts, each prompt's other columns, where) of a prompt-only file / dataset `split`: the columns a
    reward function may read (all but those TRL does not pass, pipelines.reward_funcs.NOT_PASSED)."""
    from pipelines.reward_funcs import NOT_PASSED

    rows, where = load_records(source, split)
    prompts = normalise_prompts(rows, where, roles=chat_roles(tok))
    keys = list(dict.fromkeys(k for r in rows for k in r if k not in NOT_PASSED))
    return prompts, [{k: r.get(k) for k in keys} for r in rows], where


def load_prompts(source: str, tok, *, split: str = "train", builtin_size: int, seed: int,
                 max_train_samples: int | None, max_prompt_length: int,
                 max_operand: int = 99) -> tuple[list, list[list[int]], int, list[dict]]:
    """(prompts, their token ids, number dropped as longer than max_prompt_length, each kept prompt's other
    columns) from a built-in task (builtin:sentiment(-chat), builtin:arithmetic(-chat); no columns) or a
    prompt-only file / dataset."""
    prompts = builtin_prompts(source, builtin_size, seed=seed, split="train", max_operand=max_operand)
    if prompts is None:
        prompts, columns, _ = prompt_rows(source, split, tok)
    else:
        columns = [{} for _ in prompts]
    if max_train_samples is not None:
        prompts, columns = prompts[: max_train_samples], columns[: max_train_samples]
    note_chat_use(tok, prompts)
    kept, ids, cols = [], [], []
    for p, c in zip(prompts, columns):
        e = encode_prompt(tok, p, limit=max_prompt_length)  # a huge prompt is not tokenised in full
        if 0 < len(e) <= max_prompt_length:
            kept.append(p)
            ids.append(e)
            cols.append(c)
    if not kept:
        raise DataError(f"{source}: no prompt of at most max_prompt_length={max_prompt_length} tokens")
    return kept, ids, len(prompts) - len(kept), cols


def iteration_prompts(n_prompts: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The prompt indices of iteration `step`: the step-th slice of a seeded per-epoch permutation."""
    per_epoch = n_prompts // batch_size
    epoch, k = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n_prompts, generator=g)[k * batch_size:(k + 1) * batch_size].tolist()


def param_sync_gap(accelerator, model) -> float:
    """Max |difference| between processes of per-tensor parameter sums (0 when DDP keeps ranks in sync)."""
    if accelerator.num_processes == 1:
        return 0.0
    v = torch.stack([p.detach().double().sum() for p in model.parameters() if p.requires_grad])
    g = accelerator.gather(v.reshape(1, -1))
    return float((g - g[0:1]).abs().max())
