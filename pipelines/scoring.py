"""Batching and scoring of prompt+completion sequences: sequence log-probs, reward-model scores, the reference.

Sequences are lists of token ids; batches are padded with the tokenizer's pad id (never EOS) and carry
explicit `position_ids` (cumulative attention), so left-padded (generated) and right-padded (training) batches
score identically.
"""

from __future__ import annotations

import functools
import inspect
import sys
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


def _unwrapped(model):
    """The model inside DDP, torch.compile and PEFT wrappers (whose forwards pass keyword arguments on)."""
    m = model
    for _ in range(8):
        inner = getattr(m, "module", None) or getattr(m, "_orig_mod", None)
        if inner is None and hasattr(m, "get_base_model"):
            inner = m.get_base_model()
        if inner is None or inner is m:
            break
        m = inner
    return m


def logits_to_keep_support(model) -> str | None:
    """How `model` (through DDP, torch.compile and PEFT wrappers) takes a `logits_to_keep` argument: "mask" when
    it computes its LM head only at the True positions of a boolean [B, T] mask (transformers' causal LMs do),
    "last" when it takes only an int (the last n positions: custom code, older transformers releases), None
    when its forward has no such argument."""
    return _keep_support(type(_unwrapped(model)))


@functools.cache
def _keep_support(cls: type) -> str | None:
    try:
        if "logits_to_keep" not in inspect.signature(cls.forward).parameters:
            return None
    except (TypeError, ValueError):
        return None
    return "mask" if _slices_bool_mask(cls) else "last"


def _slices_bool_mask(cls: type) -> bool:
    # transformers >= 5 slices the hidden states with `slice_logits_to_keep`, which takes a boolean [B, T]
    # mask; older releases (and custom code) index a 1-D position set or an int only.
    # Asked of the helper itself on a 3-position probe, not read from its source text: a mask-aware helper keeps
    # positions 0 and 2 as a flat [2, 2]; an older one raises or returns something else.
    helper = getattr(sys.modules.get(cls.__module__), "slice_logits_to_keep", None)
    if helper is None:
        return False
    hidden = torch.arange(6.0).view(1, 3, 2)
    try:
        out = helper(hidden, torch.tensor([[True, False, True]]))
    except Exception:  # noqa: BLE001 - any failure means "no boolean mask support"
        return False
    return isinstance(out, torch.Tensor) and out.shape == (2, 2) and torch.equal(out, hidden[0, [0, 2]])


def last_logits_kwargs(model, n: int) -> dict:
    """Keyword arguments that make `model` compute logits for its last `n` positions only, where it can; the
    caller slices `logits[:, -n:]` either way, so models without `logits_to_keep` give the same result."""
    return {"logits_to_keep": n} if logits_to_keep_support(model) is not None else {}


def scored_logits(model, keep: torch.Tensor, **inputs) -> tuple[torch.Tensor, bool]:
    """The model's logits at the True positions of `keep` [B, T] as [N, V] in row-major order, with the LM
    head applied to those positions only (`logits_to_keep` as a boolean mask); or, for a model without that
    argument, the full [B, T, V] logits. The flag says which of the two came back."""
    if logits_to_keep_support(model) == "mask" and bool(keep.any()):
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
        return logits, logits.dim() == 2
    return model(**inputs, use_cache=False).logits, False


class FullLogits(torch.nn.Module):
    """`model` behind a forward that takes no `logits_to_keep`, so scoring computes logits at every position
    (the reference path that tests and benchmarks compare `scored_logits` against)."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask, position_ids, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=use_cache)


def _at(flat_rows: torch.Tensor, keep: torch.Tensor, fill=0.0) -> torch.Tensor:
    """Scatter per-position values [N] of the True positions of `keep` [B, T] back into a [B, T] tensor."""
    out = torch.full(keep.shape, fill, dtype=flat_rows.dtype, device=flat_rows.device)
    return out.masked_scatter(keep, flat_rows)


def sequence_logps(model, batch: dict, *, temperature: float = 1.0, with_entropy: bool = False) -> dict:
    """Per-sequence sums of completion-token log-probs (log pi(y|x) = sum_t log pi(y_t|...)).

    Returns {'logps' [B], 'token_logps' [B, T-1] (0 off the completion), 'mask' [B, T-1], 'n_tokens' [B],
    'logits_mean' [B] (the sequence's mean completion logit over tokens and vocabulary)}; with `with_entropy`
    also the per-position 'entropy' and 'correct' (argmax == label) [B, T-1] and their per-sequence sums
    'entropy_sum', 'correct_sum' [B].
    The LM head runs only at the positions that predict completion tokens where the model allows it
    (`scored_logits`): prompt and padding positions never get [V]-wide logits.
    """
    ids, attn = batch["input_ids"], batch["attention_mask"]
    pos = batch.get("position_ids")  # given for packed rows (with a 4-D or no attention mask)
    cm = batch["completion_mask"][:, 1:] != 0
    keep = torch.nn.functional.pad(cm, (0, 1))  # position t predicts token t + 1
    logits, flat = scored_logits(model, keep, input_ids=ids, attention_mask=attn,
                                 position_ids=position_ids(attn) if pos is None else pos)
    if flat:
        nxt = torch.nn.functional.pad(ids[:, 1:], (0, 1))
        tlp = _at(token_logprobs(logits, nxt[keep], temperature=temperature), keep)[:, :-1]
        mask = cm.to(tlp.dtype)
        per_pos = lambda v: _at(v, keep)[:, :-1]  # noqa: E731
    else:
        logits = logits[:, :-1]
        mask = cm.to(logits.dtype)
        tlp = token_logprobs(logits, ids[:, 1:], temperature=temperature, mask=mask)
        per_pos = lambda v: v  # noqa: E731
    n = mask.sum(-1)
    res = {"logps": tlp.sum(-1), "token_logps": tlp, "mask": mask, "n_tokens": n}
    with torch.no_grad():
        lg = logits.detach()
        res["logits_mean"] = (per_pos(lg.mean(-1)) * mask).sum(-1) / n.clamp_min(1)
        if with_entropy:
            res["entropy"] = per_pos(entropy_from_logits(lg, temperature=temperature)) * mask
            res["correct"] = per_pos((lg.argmax(-1) == (nxt[keep] if flat else ids[:, 1:])).to(mask.dtype)) * mask
            res["entropy_sum"], res["correct_sum"] = res["entropy"].sum(-1), res["correct"].sum(-1)
    return res


def shared_prompt_batch(prompt_ids: list[list[int]], chosen_ids: list[list[int]], rejected_ids: list[list[int]],
                        pad_id: int) -> dict:
    """One row per preference pair, [prompt | chosen | rejected], the prompt shared by both completions.

    Instead of two padded rows (prompt+chosen, prompt+rejected) each pair is one row of p + c + r tokens;
    rejected tokens carry positions p, p+1, ... (as if they followed the prompt directly) and a 4-D attention
    mask lets each token see the prompt and the earlier tokens of its own segment only, so every completion
    token gets exactly the logits it gets in its own sequence. This skips the prompt's second pass and most of
    the padding. `allowed` [B, 1, T, T] is True where a query may attend to a key; pad rows attend to themselves
    only so no softmax row is empty.
    """
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("shared_prompt_batch needs a non-empty prompt per pair (its last token predicts both "
                         "completions' first tokens)")
    B = len(prompt_ids)
    lens = [len(p) + len(c) + len(r) for p, c, r in zip(prompt_ids, chosen_ids, rejected_ids)]
    T = max(lens)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), 3, dtype=torch.long)  # 0 prompt, 1 chosen, 2 rejected, 3 pad
    for i, (p, c, r) in enumerate(zip(prompt_ids, chosen_ids, rejected_ids)):
        n_p, n_c, n_r = len(p), len(c), len(r)
        ids[i, : lens[i]] = torch.tensor(p + c + r, dtype=torch.long)
        pos[i, : n_p + n_c] = torch.arange(n_p + n_c)
        pos[i, n_p + n_c: lens[i]] = torch.arange(n_p, n_p + n_r)
        seg[i, :n_p], seg[i, n_p: n_p + n_c], seg[i, n_p + n_c: lens[i]] = 0, 1, 2
    q, k = seg[:, :, None], seg[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    allowed = causal & ((k == 0) | (k == q)) & (q != 3)
    allowed |= torch.eye(T, dtype=torch.bool)  # pad rows: themselves only
    return {"input_ids": ids, "position_ids": pos, "allowed": allowed[:, None], "segments": seg,
            "prompt_lens": torch.tensor([len(p) for p in prompt_ids]),
            "chosen_lens": torch.tensor([len(c) for c in chosen_ids]),
            "rejected_lens": torch.tensor([len(r) for r in rejected_ids])}


def shared_prompt_on(cfg) -> bool:
    """Whether a stage config's `shared_prompt` layout can be used: flash_attention_2 takes no 4-D mask."""
    return bool(cfg.shared_prompt) and cfg.attn_implementation != "flash_attention_2"


def pair_batch(examples: list[dict], pad_id: int, device, *, shared: bool) -> dict:
    """Preference pairs (`prompt_ids`, `chosen_ids`, `rejected_ids`) as one batch on `device`: one row per pair
    (`shared_prompt_batch`, which carries 'segments') when `shared` and every prompt is non-empty, else two
    right-padded rows per pair, all chosen rows then all rejected rows (`completion_batch`)."""
    prompts = [e["prompt_ids"] for e in examples]
    chosen, rejected = [e["chosen_ids"] for e in examples], [e["rejected_ids"] for e in examples]
    if shared and all(prompts):
        return to_device(shared_prompt_batch(prompts, chosen, rejected, pad_id), device)
    return to_device(completion_batch(prompts * 2, chosen + rejected, pad_id), device)


def _additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where `allowed`, the dtype's minimum elsewhere: the 4-D mask form transformers' eager and sdpa
    attention both take as given."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def pair_logps(model, batch: dict, *, temperature: float = 1.0, with_entropy: bool = False) -> dict:
    """Sequence log-probs of chosen and rejected from one `shared_prompt_batch` forward.

    Returns {'logps' [2B] (chosen then rejected, as `sequence_logps` on the concatenated batch), 'n_tokens' [2B],
    'logits_mean' [2B]} and, with `with_entropy`, 'entropy_sum' and 'correct_sum' [2B] (per sequence, the sum
    over its completion tokens of the predictive entropy and of argmax == token, as `sequence_logps`).
    Token t of a completion is scored by the logits at t - 1, except the first rejected
    token, which the prompt's last token predicts (its row predecessor is the last chosen token). The LM head
    runs only at those positions where the model allows it (`scored_logits`).
    """
    ids, seg = batch["input_ids"], batch["segments"]
    mask4 = _additive_mask(batch["allowed"], next(model.parameters()).dtype)
    B, T = ids.shape
    rows = torch.arange(B, device=ids.device)
    first_rej = batch["prompt_lens"] + batch["chosen_lens"]          # row index of the first rejected token
    tgt_seg = seg[:, 1:]
    cmask = (tgt_seg == 1)
    rmask = (tgt_seg == 2)
    rmask[rows, (first_rej - 1).clamp(max=T - 2)] = False  # scored from the prompt instead
    has_rej = batch["rejected_lens"] > 0
    last_prompt = batch["prompt_lens"] - 1
    first_tok = ids[rows, first_rej.clamp(max=T - 1)]
    scored = torch.nn.functional.pad(cmask | rmask, (0, 1))
    keep = scored.clone()
    keep[rows, last_prompt] |= has_rej
    logits, flat = scored_logits(model, keep, input_ids=ids, attention_mask=mask4,
                                 position_ids=batch["position_ids"])
    if flat:
        nxt = torch.nn.functional.pad(ids[:, 1:], (0, 1))
        tlp = _at(token_logprobs(logits, nxt[keep], temperature=temperature, mask=scored[keep]), keep)[:, :-1]
        row_of = (keep.flatten().long().cumsum(0) - 1).view(B, T)  # flat row of each kept position
        at_prompt = logits[row_of[rows, last_prompt].clamp_min(0)]
        lm = _at(logits.detach().mean(-1), keep)[:, :-1]
    else:
        tlp = token_logprobs(logits[:, :-1], ids[:, 1:], temperature=temperature, mask=cmask | rmask)
        at_prompt = logits[rows, last_prompt]
        lm = logits.detach()[:, :-1].mean(-1)
    lp0 = token_logprobs(at_prompt, first_tok, temperature=temperature, mask=has_rej)
    chosen = (tlp * cmask).sum(-1)
    rejected = (tlp * rmask).sum(-1) + lp0
    res = {"logps": torch.cat([chosen, rejected]),
           "n_tokens": torch.cat([batch["chosen_lens"], batch["rejected_lens"]]).to(logits.dtype)}
    with torch.no_grad():
        lm0 = at_prompt.detach().mean(-1)
        nc, nr = res["n_tokens"][:B].clamp_min(1), res["n_tokens"][B:].clamp_min(1)
        res["logits_mean"] = torch.cat([(lm * cmask).sum(-1) / nc,
                                        ((lm * rmask).sum(-1) + lm0 * has_rej) / nr])
        if with_entropy:
            res.update(_pair_token_sums(logits.detach(), at_prompt.detach(), flat, keep, ids, first_tok, has_rej,
                                        cmask, rmask, temperature))
    return res


def _pair_token_sums(logits, at_prompt, flat: bool, keep, ids, first_tok, has_rej, cmask, rmask,
                     temperature: float) -> dict:
    """Per-sequence sums of predictive entropy and of argmax == token over the completion tokens of a shared
    row (chosen then rejected, [2B]), from the logits `pair_logps` computed; the first rejected token is
    predicted at the prompt's last position (`at_prompt`)."""
    dt = at_prompt.dtype
    ent, hit = entropy_from_logits(logits, temperature=temperature), logits.argmax(-1)
    if flat:
        nxt = torch.nn.functional.pad(ids[:, 1:], (0, 1))
        hit = (hit == nxt[keep]).to(dt)
        ent, hit = _at(ent, keep)[:, :-1], _at(hit, keep)[:, :-1]
    else:
        ent, hit = ent[:, :-1], (hit[:, :-1] == ids[:, 1:]).to(dt)
    ent0 = entropy_from_logits(at_prompt, temperature=temperature) * has_rej
    hit0 = (at_prompt.argmax(-1) == first_tok).to(dt) * has_rej
    return {"entropy_sum": torch.cat([(ent * cmask).sum(-1), (ent * rmask).sum(-1) + ent0]),
            "correct_sum": torch.cat([(hit * cmask).sum(-1), (hit * rmask).sum(-1) + hit0])}


def reward_scores(reward_model, batch: dict) -> torch.Tensor:
    """Scalar reward per sequence: the sequence-classification head at the last non-pad token (the EOS)."""
    ids, attn = batch["input_ids"], batch["attention_mask"]
    out = reward_model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False)
    return out.logits[:, 0]


def _score_head(model):
    """The module producing per-token scalar scores of a sequence classifier (transformers names it `score`),
    looked up through DDP/PEFT wrappers; None when there is none."""
    inner = getattr(model, "module", model)  # DistributedDataParallel
    found = [(name, m) for name, m in inner.named_modules() if name == "score" or name.endswith(".score")]
    return min(found, key=lambda nm: len(nm[0]))[1] if found else None


def pair_reward_scores(reward_model, batch: dict) -> torch.Tensor | None:
    """Chosen then rejected scalar rewards [2B] from one `shared_prompt_batch` forward, or None when the model
    has no `score` head to read per-token scores from (the caller falls back to two rows per pair).

    transformers' sequence classifiers pool the head at the last non-pad token of a row, which in a shared row
    is the rejected completion's end; the head's per-token output is caught with a forward hook instead (the
    forward still goes through the wrapper, so DDP's gradient hooks fire) and read at both ends.
    """
    head = _score_head(reward_model)
    if head is None:
        return None
    caught = []
    handle = head.register_forward_hook(lambda mod, inp, out: caught.append(out))
    try:
        mask4 = _additive_mask(batch["allowed"], next(reward_model.parameters()).dtype)
        reward_model(input_ids=batch["input_ids"], attention_mask=mask4, position_ids=batch["position_ids"],
                     use_cache=False)
    finally:
        handle.remove()
    if len(caught) != 1 or caught[0].dim() != 3:
        return None
    scores = caught[0][..., 0]  # [B, T]
    rows = torch.arange(scores.shape[0], device=scores.device)
    end_c = batch["prompt_lens"] + batch["chosen_lens"] - 1
    end_r = end_c + batch["rejected_lens"]
    return torch.cat([scores[rows, end_c], scores[rows, end_r]])


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
    def pair_logps(self, batch: dict, *, temperature: float = 1.0) -> dict:
        with self.active() as m:
            return pair_logps(m, batch, temperature=temperature)


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
