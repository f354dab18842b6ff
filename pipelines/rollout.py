"""Rollout tensors of RLHF-PPO: batch layout, reward-model scores, KL-shaped per-token rewards, advantages.

Layout (`rollout_batch`): prompts LEFT-padded to a common width P, responses RIGHT-padded to a common width R,
so response token j of every row sits in column P + j and per-token tensors are [B, R] with `response_mask`
1 on real response tokens (up to and including EOS; nothing after it). Position ids come from the attention
mask, so padding never shifts positions.

Reward (Ziegler et al. 2019 §2.2; TRL PPOv2; Huang et al. 2024, "The N+ implementation details of RLHF with
PPO", details 10-11), per response token t of row i:
    r_{i,t} = -kl_coef * k(log pi(y_t|.) - log pi_ref(y_t|.))  +  [t = last_i] * s_i
where k is the per-token KL estimator (pgcore.kl.kl_estimate, k1 by default, k3 selectable) and s_i the
transformed reward-model score placed on the LAST response token: the EOS token itself when the response
stopped (this settles trl#3750, where TRL added it to the pad after EOS), else the last sampled token.
Score transforms, in this order: batch standardisation (`score_norm`), minus `missing_eos_penalty` for
responses without EOS (TRL), clipping to +-`score_clip`.
Advantages: pgcore.advantages.gae over the response tokens (terminal after the last token), then whitened
(pgcore.advantages.whiten); `returns = A + V`, the lambda-return (Sutton & Barto 2018 §12.1), are the value
targets (GAE's own §5 regresses V on Monte-Carlo returns).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pgcore.advantages import gae, whiten
from pgcore.kl import adaptive_kl_beta, kl_estimate, proportional_kl_coef
from pipelines.data import encode_completion, encode_prompt
from pipelines.scoring import completion_batch, last_logits_kwargs, position_ids, reward_scores, to_device


def rollout_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> dict:
    """{'input_ids' [B, P+R], 'attention_mask', 'response' [B, R], 'response_mask' [B, R], 'prompt_width' P}."""
    B = len(prompt_ids)
    P = max(len(p) for p in prompt_ids)
    R = max(1, max(len(r) for r in response_ids))
    ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + R), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        attn[i, P - len(p):P] = 1
        if r:
            ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
            attn[i, P:P + len(r)] = 1
    return {"input_ids": ids, "attention_mask": attn, "response": ids[:, P:].clone(),
            "response_mask": attn[:, P:].clone(), "prompt_width": P}


def last_index(response_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last response token (0 for an empty row)."""
    return (response_mask.long().sum(-1) - 1).clamp_min(0)


def response_logits(model, batch: dict) -> torch.Tensor:
    """Logits [B, R, V] that predict the response tokens of a `rollout_batch` (differentiable)."""
    R = batch["response"].shape[1]
    ids, attn = batch["input_ids"], batch["attention_mask"]
    out = model(input_ids=ids, attention_mask=attn, position_ids=position_ids(attn), use_cache=False,
                **last_logits_kwargs(model, R + 1))
    return out.logits[:, -R - 1:-1]


@torch.no_grad()
def lm_logits(model, batch: dict) -> torch.Tensor:
    """Logits [B, R, V] that predict the response tokens (for the reference, or a policy without values)."""
    return response_logits(model, batch)


def retokenise(rm_tok, prompt, text: str, finished: bool) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a decoded response in the reward model's tokenizer; EOS iff it stopped."""
    p_ids = encode_prompt(rm_tok, prompt)
    if isinstance(prompt, list) and finished:   # the chat template closes the assistant turn
        return p_ids, encode_completion(rm_tok, prompt, [{"role": "assistant", "content": text}])
    c_ids = list(rm_tok(text, add_special_tokens=False)["input_ids"]) if text else []
    return p_ids, c_ids + ([rm_tok.eos_token_id] if finished or not c_ids else [])


@torch.no_grad()
def score_responses(reward_model, rm_tok, prompts: list, prompt_ids: list[list[int]],
                    response_ids: list[list[int]], texts: list[str], finished: list[bool], *,
                    same_tokenizer: bool, pad_id: int, batch_size: int = 32) -> torch.Tensor:
    """Reward-model score per response [B] (float32 on CPU), at the last token of prompt + response.

    Same tokenizer: the policy's ids are scored as they are. Different tokenizer: the prompt and the decoded
    response text are re-tokenised with the reward model's own tokenizer (`retokenise`). Either way the
    sequence ends with EOS exactly when the response stopped, and the head reads its last token (right
    padding), so a stopped response is scored at its EOS as the reward stage trained it.
    """
    if not same_tokenizer:
        pairs = [retokenise(rm_tok, p, t, f) for p, t, f in zip(prompts, texts, finished)]
        prompt_ids, response_ids, pad_id = [a for a, _ in pairs], [b for _, b in pairs], rm_tok.pad_token_id
    device = next(reward_model.parameters()).device
    out = []
    for s in range(0, len(prompt_ids), batch_size):
        b = completion_batch(prompt_ids[s:s + batch_size], [r or [pad_id] for r in response_ids[s:s + batch_size]],
                             pad_id)
        out.append(reward_scores(reward_model, to_device(b, device)).float().cpu())
    return torch.cat(out)


def transform_scores(scores: torch.Tensor, finished: torch.Tensor, *, missing_eos_penalty: float | None = None,
                     score_clip: float | None = None, score_norm: bool = False,
                     norm_stats: tuple[float, float] | None = None) -> torch.Tensor:
    """Standardise (with `norm_stats` = global (mean, std) when given), penalise missing EOS, then clip."""
    s = scores
    if score_norm:
        mean, std = norm_stats if norm_stats is not None else (s.mean().item(), s.std().item())
        s = (s - mean) / (std + 1e-8)
    if missing_eos_penalty is not None:
        s = s - missing_eos_penalty * (~finished.bool()).to(s.dtype)
    if score_clip is not None:
        s = s.clamp(-score_clip, score_clip)
    return s


def shape_rewards(logps: torch.Tensor, ref_logps: torch.Tensor, scores: torch.Tensor, response_mask: torch.Tensor,
                  *, kl_coef: float, kl_estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rewards [B, R], per-token kl [B, R], non_score_reward [B, R]); all 0 off the response mask."""
    m = response_mask.to(logps.dtype)
    kl = kl_estimate(logps, ref_logps, kl_estimator) * m
    non_score = -kl_coef * kl
    rewards = non_score.clone()
    rows = torch.arange(rewards.shape[0], device=rewards.device)
    has = response_mask.sum(-1) > 0
    idx = last_index(response_mask)
    rewards[rows[has], idx[has]] += scores.to(rewards.dtype)[has]
    return rewards, kl, non_score


def advantages_and_returns(rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, *,
                           gamma: float, lam: float, whiten_rewards: bool = False,
                           whiten_advantages: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over response tokens (the last token is terminal); returns (advantages, value targets)."""
    m = response_mask.to(rewards.dtype)
    if whiten_rewards:   # TRL's option: rescale, keep the mean (Ziegler et al. 2019)
        rewards = whiten(rewards, m, shift_mean=False)
    adv, ret = gae(rewards, values, gamma=gamma, lam=lam, mask=m)
    if whiten_advantages:
        adv = whiten(adv, m)
    return adv, ret


@dataclass
class KLController:
    """kl_coef of the reward's KL penalty: fixed, proportional (Ziegler et al. 2019) or halve/double
    (Schulman et al. 2017 §4).

    `update(kl, n_steps)` is called once per PPO iteration with the mean sequence KL of that iteration's
    rollouts (all processes) and the number of rollouts; its state is `value` (checkpointed).
    """

    value: float
    kind: str = "fixed"          # fixed | proportional | halve_double
    target: float = 6.0
    horizon: int = 10000

    def update(self, kl: float, n_steps: int) -> float:
        if self.kind == "proportional":
            self.value = proportional_kl_coef(self.value, kl, target=self.target, horizon=self.horizon,
                                              n_steps=n_steps)
        elif self.kind == "halve_double":
            self.value = adaptive_kl_beta(self.value, kl, self.target)
        return self.value
