"""One PPO rollout against float64 values written out by hand: sampled completions scored by the policy, the
reference, the value model and the reward model; the score transforms (`score_norm` over the batch, then
`missing_eos_penalty`, then `score_clip`), KL-shaped rewards (`kl_estimator` k1/k3, `kl_coef`), `whiten_rewards`,
GAE (`gamma`, `lam`), `whiten_advantages`, and the rollout's logged means."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pipelines import ppo
from pipelines.data import encode_prompt
from pipelines.generation import generate
from pipelines.models import ModelArgs, TinySpec, freeze, load_causal_lm, load_reward_model, load_tokenizer
from pipelines.rlhf_models import ActorCritic
from pipelines.scoring import Reference
from reins.config import from_dict
from tests.pipelines.helpers import SMALL

PROMPTS = ["The hotel was", "Our dinner at Luigi's was", "I watched the film and", "The museum"]
T = 0.8


@pytest.fixture(scope="module")
def models():
    args = ModelArgs(tiny=TinySpec(**SMALL), dtype="float64")
    tok = load_tokenizer(args)
    policy, critic = load_causal_lm(args, tok, seed=0), load_reward_model(args, tok, seed=1)
    # EOS made likely (+2.5 on its logit), so that some responses stop and others run to max_new_tokens
    policy.lm_head.register_forward_hook(lambda mod, inp, out: out + 2.5 * (
        torch.arange(out.shape[-1]) == tok.eos_token_id).to(out.dtype))
    ref, rm = freeze(load_causal_lm(args, tok, seed=2)), freeze(load_reward_model(args, tok, seed=3))
    return tok, policy, critic, ref, rm


def _hand_row(policy, critic, ref, rm, p: list[int], c: list[int]):
    """(log pi, log pi_ref, values) per response token and the reward-model score, one unpadded sequence."""
    ids = torch.tensor([p + c])
    at = torch.arange(len(p) - 1, len(p) - 1 + len(c))
    tgt = torch.tensor(c)
    lp = torch.log_softmax(policy(input_ids=ids).logits[0, at] / T, -1)[torch.arange(len(c)), tgt]
    rlp = torch.log_softmax(ref(input_ids=ids).logits[0, at] / T, -1)[torch.arange(len(c)), tgt]
    v = critic.score(critic.model(input_ids=ids).last_hidden_state[0, at]).squeeze(-1)
    return lp, rlp, v, rm(input_ids=ids).logits[0, 0].item()


def _masked_whiten(x: list[torch.Tensor], shift_mean=True) -> list[torch.Tensor]:
    flat = torch.cat(x)
    mean, var = flat.mean(), flat.var(unbiased=True)
    return [(r - mean) / math.sqrt(var + 1e-8) + (0 if shift_mean else mean) for r in x]


@pytest.mark.parametrize("opts", [
    {"kl_estimator": "k3", "score_norm": True, "missing_eos_penalty": 0.5, "score_clip": 0.9},
    {"kl_estimator": "k1", "whiten_rewards": True, "whiten_advantages": False, "score_clip": 0.05},
    {"kl_estimator": "k1", "score_norm": True, "n": 2},
], ids=["k3-norm-penalty-clip", "k1-whiten-rewards", "two-rollouts-norm"])
def test_rollout_equals_the_hand_computed_rewards_and_advantages(tmp_path, models, opts):
    tok, policy, critic, ref, rm = models
    opts = dict(opts)
    n_rows = opts.pop("n", 4)
    cfg = from_dict(ppo.Config, {"output_dir": str(tmp_path), "batch_size": n_rows, "gamma": 0.95, "lam": 0.9,
                                 "generation": {"temperature": T, "max_new_tokens": 6, "batch_size": 3}, **opts})
    ac = ActorCritic(copy.deepcopy(policy), critic=copy.deepcopy(critic))
    m_ = ppo.Models(tok, ac, ac, Reference(ref), rm, tok, True)
    prompts = PROMPTS[:n_rows]
    pids = [encode_prompt(tok, p) for p in prompts]
    data, m, _ = ppo.rollout(cfg, m_, prompts, pids, kl_coef=0.1, seed=7, reduce=lambda t: t)
    s = generate(policy, tok, pids, cfg.generation, seed=7)
    assert 0 < sum(s.finished) < n_rows
    with torch.no_grad():
        rows = [_hand_row(policy, critic, ref, rm, p, c) for p, c in zip(pids, s.completion_ids)]
    raw = torch.tensor([r[3] for r in rows], dtype=torch.float32).double()   # scores come back in float32
    score = raw
    if opts.get("score_norm"):
        score = (raw - raw.mean()) / (raw.std(unbiased=True) + 1e-8)
    if opts.get("missing_eos_penalty"):
        score = score - opts["missing_eos_penalty"] * torch.tensor([0.0 if f else 1.0 for f in s.finished],
                                                                  dtype=torch.float64)
    if "score_clip" in opts:
        assert (score.abs() > opts["score_clip"]).any() and (score.abs() < opts["score_clip"]).any()  # active
        score = score.clamp(-opts["score_clip"], opts["score_clip"])
    kls, rewards = [], []
    for (lp, rlp, _, _), sc in zip(rows, score):
        x = lp - rlp
        kl = x if opts["kl_estimator"] == "k1" else torch.exp(-x) - 1 + x
        r = -0.1 * kl
        r[-1] += sc
        kls.append(kl)
        rewards.append(r)
    if opts.get("whiten_rewards"):
        rewards = _masked_whiten(rewards, shift_mean=False)
    advs, rets = [], []
    for r, (_, _, v, _) in zip(rewards, rows):
        a, nxt = torch.zeros_like(r), 0.0
        for t in reversed(range(len(r))):
            v_next = v[t + 1] if t + 1 < len(r) else 0.0   # the last response token is terminal
            delta = r[t] + 0.95 * v_next - v[t]
            nxt = delta + 0.95 * 0.9 * nxt
            a[t] = nxt
        advs.append(a)
        rets.append(a + v)
    if cfg.whiten_advantages:
        advs = _masked_whiten(advs)
    for i, c in enumerate(s.completion_ids):
        n = len(c)
        assert data["response_mask"][i].sum() == n
        for key, want in (("logps", rows[i][0]), ("values", rows[i][2]), ("returns", rets[i]),
                          ("advantages", advs[i])):
            torch.testing.assert_close(data[key][i, :n], want, rtol=1e-7, atol=1e-9, msg=key)
            assert (data[key][i, n:] == 0).all(), key
    assert m["objective/kl"] == pytest.approx(sum(k.sum().item() for k in kls) / n_rows, rel=1e-7, abs=1e-12)
    assert m["objective/scores"] == pytest.approx(score.mean().item(), rel=1e-7, abs=1e-12)
    assert m["objective/raw_scores"] == pytest.approx(raw.mean().item(), rel=1e-7)
    assert m["objective/non_score_reward"] == pytest.approx(-0.1 * m["objective/kl"], rel=1e-7, abs=1e-12)
    assert m["objective/rlhf_reward"] == pytest.approx(m["objective/scores"] + m["objective/non_score_reward"])
    assert m["val/eos_rate"] == sum(s.finished) / n_rows
    assert m["response_length"] == sum(map(len, s.completion_ids)) / n_rows and m["rollout/tokens"] == sum(
        map(len, s.completion_ids))
    ent = [torch.distributions.Categorical(logits=policy(input_ids=torch.tensor([p + c])).logits[
        0, len(p) - 1:len(p) - 1 + len(c)] / T).entropy().sum().item() for p, c in zip(pids, s.completion_ids)]
    assert m["objective/entropy"] == pytest.approx(sum(ent) / n_rows, rel=1e-7)


def test_non_finite_scores_stop_the_rollout(tmp_path, models, monkeypatch):
    from reins.errors import NonFiniteError

    tok, policy, critic, ref, rm = models
    cfg = from_dict(ppo.Config, {"output_dir": str(tmp_path), "batch_size": 2,
                                 "generation": {"temperature": T, "max_new_tokens": 3}})
    ac = ActorCritic(copy.deepcopy(policy), critic=copy.deepcopy(critic))
    monkeypatch.setattr(ppo, "score_responses", lambda *a, **k: torch.tensor([0.5, float("nan")]))
    with pytest.raises(NonFiniteError, match="non-finite reward-model scores"):
        ppo.rollout(cfg, ppo.Models(tok, ac, ac, Reference(ref), rm, tok, True), PROMPTS[:2],
                    [encode_prompt(tok, p) for p in PROMPTS[:2]], kl_coef=0.1, seed=0, reduce=lambda t: t)


def test_an_empty_response_gets_no_score():
    from pipelines.rollout import shape_rewards

    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    rewards, kl, _ = shape_rewards(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64),
                                   torch.tensor([1.5, 2.0]), mask, kl_coef=0.1)
    assert rewards.tolist() == [[0.0, 1.5, 0.0], [0.0, 0.0, 0.0]] and kl.abs().sum() == 0
