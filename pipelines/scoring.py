"""Batching and scoring of prompt+completion sequences: sequence log-probs, reward-model scores, the reference.

Sequences are lists of token ids; batches are padded with the tokenizer's pad id (never EOS) and carry
explicit `position_ids` (cumulative attention), so left-padded (generated) and right-padded (training) batches
score identically.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from pgcore.distributions import entropy_from_logits, token_logprobs


def pad(seqs: list[list[int]], pad_id: int, *, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [B, T], attention_mask [B, T]) padded on `side`."""
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), T), dtype=torch.long)
    for i, s in enumerate(seqs):
        if not s:
            continue
        if side == "right":
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        else:
            ids[i, T - len(s):] = torch.tensor(s)
            attn[i, T - len(s):] = 1
    return ids, attn


def completion_batch(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int) -> dict:
    """Right-padded prompt+completion batch with `completion_mask` = 1 exactly on completion tokens."""
    seqs = [p + c for p, c in zip(prompt_ids, completion_ids)]
    ids, attn = pad(seqs, pad_id)
    cmask = torch.zeros_like(attn)
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        cmask[i, len(p): len(p) + len(c)] = 1
    return {"input_ids": ids, "attention_mask": attn, "completion_mask": cmask}


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def sequence_logps(model, batch: dict, *, temperature: float = 1.0, with_entropy: bool = False) -> dict:
    """Per-sequence sums of completion-token log-probs (seed 001 §6.1.2: log pi(y|x) = sum_t log pi(y_t|...)).

    Returns {'logps' [B], 'token_logps' [B, T-1] (0 off the completion), 'mask' [B, T-1], 'n_tokens' [B],
    'logits_mean' [B] (mean completion logit, TRL's logits/* metric)} and 'entropy' [B, T-1] if asked.
    """
    ids, attn = batch["input_ids"], batch["attention_mask"]
    out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False)
    logits = out.logits[:, :-1]
    mask = batch["completion_mask"][:, 1:].to(logits.dtype)
    tlp = token_logprobs(logits, ids[:, 1:], temperature=temperature, mask=mask)
    n = mask.sum(-1)
    res = {"logps": tlp.sum(-1), "token_logps": tlp, "mask": mask, "n_tokens": n}
    with torch.no_grad():
        res["logits_mean"] = (logits.detach().mean(-1) * mask).sum(-1) / n.clamp_min(1)
        if with_entropy:
            res["entropy"] = entropy_from_logits(logits.detach(), temperature=temperature) * mask
            res["correct"] = (logits.detach().argmax(-1) == ids[:, 1:]).to(mask.dtype) * mask
    return res


def reward_scores(reward_model, batch: dict) -> torch.Tensor:
    """Scalar reward per sequence: the sequence-classification head at the last non-pad token (the EOS)."""
    ids, attn = batch["input_ids"], batch["attention_mask"]
    out = reward_model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False)
    return out.logits[:, 0]


class Reference:
    """The reference policy of DPO/PPO: a frozen separate model, or the policy with its LoRA adapter disabled.

    The adapter-disabled base avoids a second copy of the weights (TRL's behaviour under PEFT).
    """

    def __init__(self, model=None, *, adapter_host=None):
        if (model is None) == (adapter_host is None):
            raise ValueError("Reference needs exactly one of model / adapter_host")
        self.model, self.adapter_host = model, adapter_host

    @contextmanager
    def active(self):
        if self.model is not None:
            yield self.model
            return
        host = self.adapter_host
        was_training = host.training
        host.eval()
        try:
            with host.disable_adapter():
                yield host
        finally:
            host.train(was_training)

    @torch.no_grad()
    def logps(self, batch: dict, *, temperature: float = 1.0) -> dict:
        with self.active() as m:
            return sequence_logps(m, batch, temperature=temperature)


@torch.no_grad()
def batched_logps(model, prompt_ids, completion_ids, pad_id, *, batch_size: int = 32, temperature: float = 1.0,
                  device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sequence log-probs [N], per-sequence token counts [N]) of a list of completions, in batches."""
    logps, ns = [], []
    for s in range(0, len(prompt_ids), batch_size):
        b = completion_batch(prompt_ids[s:s + batch_size], completion_ids[s:s + batch_size], pad_id)
        if device is not None:
            b = to_device(b, device)
        r = (model.logps(b, temperature=temperature) if isinstance(model, Reference)
             else sequence_logps(model, b, temperature=temperature))
        logps.append(r["logps"].cpu())
        ns.append(r["n_tokens"].cpu())
    return torch.cat(logps), torch.cat(ns)
