"""Shared evaluation of LM policies (used by sft, dpo and ppo): gold reward, KL to the reference, win rate.

On a fixed set of eval prompts, with a fixed seed and temperature:
- `eval/gold_reward`: mean gold-judge score of the policy's completions (VADER compound for `sentiment`);
- `eval/kl_to_ref`: sequence-level KL(pi || pi_ref) estimated on the policy's own samples, the mean over
  samples of sum_t k1(log pi - log pi_ref) (pgcore.kl.kl_estimate; unbiased for the tempered distributions
  the samples come from); `eval/kl_to_ref_k3` is the non-negative k3 estimate of the same quantity;
- `eval/win_rate_vs_ref`: fraction of prompts where the gold judge prefers the policy's completion to the
  reference's (ties count 1/2);
- `eval/reward_model_score`: mean reward-model score of the policy's completions, when a reward model is given
  (texts are decoded and re-tokenised with the reward model's own tokenizer, so tokenizers may differ; a
  completion cut off at max_new_tokens is scored without the closing EOS / end of turn, as PPO scores it);
- `eval/completion_length`, `eval/eos_rate`; and a few sample completions for the log, each beside the
  reference's completion of the same prompt (`ref_completion`, `ref_gold`): before vs after training.
Runs on the main process only (other processes wait); the reference's completions are cached across calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pgcore.kl import kl_estimate
from pipelines.data import encode_completion, encode_prompt
from pipelines.generation import GenerationArgs, generate
from pipelines.scoring import Reference, batched_logps, completion_batch, reward_scores, to_device


@dataclass
class EvalArgs:
    num_prompts: int = field(default=128,
                             metadata={"help": "held-out prompts the generation eval samples completions for"})
    seed: int = field(default=1234,
                      metadata={"help": "sampling seed of the generation eval (the same prompts and draws each time)"})
    temperature: float = field(default=1.0,
                               metadata={"help": "sampling temperature of the generation eval (0: greedy)"})
    max_new_tokens: int = field(default=32, metadata={"help": "longest completion of the generation eval"})
    batch_size: int = field(default=64, metadata={"help": "prompts per generate call of the eval"})
    num_samples_logged: int = field(default=4, metadata={"help": "completions logged under `samples` per evaluation"})


def _judge(name: str):
    if name == "sentiment":
        from pipelines.task import gold_reward

        return gold_reward
    raise ValueError(f"unknown gold judge {name!r}")


def _chat_turn_tail(rm_tok, prompt: list) -> str | None:
    """The text the chat template renders after an assistant message's content (its end of turn), or None.

    Rendered with a probe content and read off after it, so it is exactly what `encode_completion` appends
    to a completion's text (e.g. `<|endoftext|>` for the tiny template, `<|im_end|>\n` for ChatML).
    """
    probe = "reins-probe-completion"
    ptext = rm_tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = rm_tok.apply_chat_template(list(prompt) + [{"role": "assistant", "content": probe}], tokenize=False)
    i = full.rfind(probe)
    return full[i + len(probe):] if i >= len(ptext) else None


def encode_scored_completion(rm_tok, prompt, text: str, ended: bool = True) -> list[int]:
    """Completion ids the reward model scores for a decoded completion `text` following `prompt`.

    `ended` (the policy generated EOS): `encode_completion`'s ids, which close the turn (EOS, or the chat
    template's end of turn). Cut off at max_new_tokens: the same ids without what the encoding appends after
    the text (the EOS; the chat template's end-of-turn text), so the reward model reads the last generated
    token, as PPO's `score_responses` does. An empty text keeps EOS: there must be a completion token to read.
    """
    if ended:
        if isinstance(prompt, list):
            return encode_completion(rm_tok, prompt, [{"role": "assistant", "content": text}])
        return encode_completion(rm_tok, prompt, text) if text else [rm_tok.eos_token_id]
    rendered = text
    if isinstance(prompt, list):
        ptext = rm_tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        full = rm_tok.apply_chat_template(list(prompt) + [{"role": "assistant", "content": text}],
                                          tokenize=False)
        tail = _chat_turn_tail(rm_tok, prompt)
        # encode_completion tokenises full[len(ptext):] = (anything the template puts before the content) +
        # content + tail; drop the tail. A template whose end of turn depends on the content: the bare text.
        if full.startswith(ptext) and tail is not None and full.endswith(tail):
            rendered = full[len(ptext): len(full) - len(tail)]
    # The standard encoding is the text's ids + EOS (encode_completion): here without the EOS.
    ids = list(rm_tok(rendered, add_special_tokens=False)["input_ids"]) if rendered else []
    return ids or [rm_tok.eos_token_id]


@torch.no_grad()
def score_texts(reward_model, rm_tok, prompts: list, completions: list[str], *, ended: list[bool] | None = None,
                batch_size: int = 32):
    """Reward-model scores of (prompt, completion text) pairs, tokenised with the reward model's tokenizer.

    `ended[i]` False marks a completion cut off at max_new_tokens (no EOS generated): it is scored without the
    closing EOS / end of turn (`encode_scored_completion`); default: every completion ended.
    """
    ended = [True] * len(completions) if ended is None else list(ended)
    if len(ended) != len(completions):
        raise ValueError(f"ended has {len(ended)} entries for {len(completions)} completions")
    device = next(reward_model.parameters()).device
    pids = [encode_prompt(rm_tok, p) for p in prompts]
    cids = [encode_scored_completion(rm_tok, p, c, e) for p, c, e in zip(prompts, completions, ended)]
    scores = []
    was = reward_model.training
    reward_model.eval()
    for s in range(0, len(pids), batch_size):
        b = completion_batch(pids[s:s + batch_size], cids[s:s + batch_size], rm_tok.pad_token_id)
        scores.append(reward_scores(reward_model, to_device(b, device)).float().cpu())
    reward_model.train(was)
    return torch.cat(scores)


class PolicyEvaluator:
    """Evaluates a policy against a fixed reference on fixed prompts (see the module docstring)."""

    def __init__(self, tok, prompts: list, reference: Reference | None, args: EvalArgs, *, judge: str = "sentiment",
                 reward_model=None, rm_tok=None):
        self.tok, self.args, self.reference = tok, args, reference
        self.prompts = prompts[: args.num_prompts]
        self.prompt_ids = [encode_prompt(tok, p) for p in self.prompts]
        self.judge = _judge(judge)
        self.reward_model, self.rm_tok = reward_model, rm_tok or tok
        self.gen = GenerationArgs(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  batch_size=args.batch_size)
        self._ref_gold: torch.Tensor | None = None
        self._ref_texts: list[str] = []

    def _ref_scores(self) -> torch.Tensor:
        if self._ref_gold is None:
            with self.reference.active() as ref:
                s = generate(ref, self.tok, self.prompt_ids, self.gen, seed=self.args.seed)
            self._ref_gold = torch.tensor(self.judge(s.texts), dtype=torch.float64)
            self._ref_texts = s.texts
        return self._ref_gold

    @torch.no_grad()
    def __call__(self, policy) -> tuple[dict, list[dict]]:
        a = self.args
        s = generate(policy, self.tok, self.prompt_ids, self.gen, seed=a.seed)
        gold = torch.tensor(self.judge(s.texts), dtype=torch.float64)
        m = {"eval/gold_reward": gold.mean().item(),
             "eval/completion_length": sum(map(len, s.completion_ids)) / len(s.completion_ids),
             "eval/eos_rate": sum(s.finished) / len(s.finished)}
        if self.reference is not None:
            device = next(policy.parameters()).device
            temp = a.temperature if a.temperature > 0 else 1.0
            lp, _ = batched_logps(policy, s.prompt_ids, s.completion_ids, self.tok.pad_token_id,
                                  batch_size=a.batch_size, temperature=temp, device=device)
            rlp, _ = batched_logps(self.reference, s.prompt_ids, s.completion_ids, self.tok.pad_token_id,
                                   batch_size=a.batch_size, temperature=temp, device=device)
            m["eval/kl_to_ref"] = kl_estimate(lp.double(), rlp.double(), "k1").mean().item()
            m["eval/kl_to_ref_k3"] = kl_estimate(lp.double(), rlp.double(), "k3").mean().item()
            ref_gold = self._ref_scores()
            m["eval/ref_gold_reward"] = ref_gold.mean().item()
            m["eval/win_rate_vs_ref"] = ((gold > ref_gold).double() + 0.5 * (gold == ref_gold).double()).mean().item()
        if self.reward_model is not None:
            scores = score_texts(self.reward_model, self.rm_tok, self.prompts, s.texts, ended=s.finished)
            m["eval/reward_model_score"] = scores.mean().item()
        samples = [{"prompt": p, "completion": t, "gold": g}  # a conversational prompt stays a message list
                   for p, t, g in zip(self.prompts[: a.num_samples_logged], s.texts, gold.tolist())]
        if self.reference is not None:  # the untouched model's completion of the same prompt: before vs after
            for i, item in enumerate(samples):
                item["ref_completion"], item["ref_gold"] = self._ref_texts[i], self._ref_gold[i].item()
        return m, samples
