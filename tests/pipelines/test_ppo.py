"""PPO (RLHF) pieces against hand-computed values: reward shaping, score transforms, batch layout and masks,
log-probs vs the sampler's own distribution, GAE on response tokens, the update with zero advantages, the KL
controllers, and reward-model scoring through a different tokenizer."""

from __future__ import annotations

import math

import pytest
import torch

from pipelines import ppo
from pipelines.models import ModelArgs, TinySpec, load_causal_lm, load_reward_model, load_tokenizer
from pipelines.rlhf_models import ActorCritic, same_tokenizer
from pipelines.rollout import (
    KLController,
    advantages_and_returns,
    rollout_batch,
    score_responses,
    shape_rewards,
    transform_scores,
)
from pipelines.scoring import position_ids
from pipelines.trainer import make_accelerator
from reins.config import from_dict
from tests.pipelines.helpers import SMALL


def _f64(*rows):
    return torch.tensor(rows, dtype=torch.float64)


# ----------------------------------------------------------------------------------------- reward shaping
def test_shape_rewards_k1_places_score_on_last_response_token():
    logps = _f64([-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0])
    ref = _f64([-1.5, -1.0, -0.5], [-0.3, -1.7, 0.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    scores = torch.tensor([2.0, -1.0], dtype=torch.float64)
    rewards, kl, non_score = shape_rewards(logps, ref, scores, mask, kl_coef=0.1, kl_estimator="k1")
    # log-ratios: row 0 (0.5, -1, 0); row 1 (0, 1, masked). non-score = -0.1 * kl.
    torch.testing.assert_close(kl, _f64([0.5, -1.0, 0.0], [0.0, 1.0, 0.0]), rtol=0, atol=1e-15)
    torch.testing.assert_close(non_score, _f64([-0.05, 0.1, 0.0], [0.0, -0.1, 0.0]), rtol=0, atol=1e-15)
    # The score lands on the LAST response token (the EOS when there is one), nowhere else; nothing after it.
    torch.testing.assert_close(rewards, _f64([-0.05, 0.1, 2.0], [0.0, -1.1, 0.0]), rtol=0, atol=1e-15)


def test_shape_rewards_k3_is_nonnegative_and_exact():
    logps = _f64([-1.0, -2.0, -0.5], [-0.3, -0.7, 0.0])
    ref = _f64([-1.5, -1.0, -0.5], [-0.3, -1.7, 0.0])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    _, kl, _ = shape_rewards(logps, ref, torch.zeros(2, dtype=torch.float64), mask, kl_coef=0.1, kl_estimator="k3")

    def k3(x):
        return math.exp(-x) - 1 + x

    expected = _f64([k3(0.5), k3(-1.0), 0.0], [0.0, k3(1.0), 0.0])
    torch.testing.assert_close(kl, expected, rtol=0, atol=1e-15)
    assert (kl >= 0).all()


def test_transform_scores_penalty_then_clip_and_norm():
    s = torch.tensor([1.0, 3.0, -5.0], dtype=torch.float64)
    finished = torch.tensor([True, False, True])
    out = transform_scores(s, finished, missing_eos_penalty=1.0, score_clip=2.5)
    torch.testing.assert_close(out, torch.tensor([1.0, 2.0, -2.5], dtype=torch.float64), rtol=0, atol=0)
    normed = transform_scores(s, finished, score_norm=True, norm_stats=(1.0, 2.0))
    torch.testing.assert_close(normed, torch.tensor([0.0, 1.0, -3.0], dtype=torch.float64), rtol=0, atol=1e-7)
    assert torch.equal(transform_scores(s, finished), s)


# ----------------------------------------------------------------------------------------- layout and masks
def test_truncation_after_eos_mask_and_eos_penalty_end_to_end():
    """Sampled rows -> truncated after EOS -> layout -> rewards: the score sits on the EOS token itself."""
    from pipelines.generation import truncate_after_eos

    EOS, PAD = 1, 0
    raw_rows = [[20, 21, EOS, 22, PAD], [30, 31, 32, 33, 34]]       # row 0 stopped; row 1 hit max_new_tokens
    cut = [truncate_after_eos(r, EOS, PAD) for r in raw_rows]
    responses, finished = [c for c, _ in cut], torch.tensor([f for _, f in cut])
    assert responses == [[20, 21, EOS], [30, 31, 32, 33, 34]] and finished.tolist() == [True, False]
    b = rollout_batch([[5, 6], [7]], responses, PAD)
    assert b["response_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    scores = transform_scores(torch.tensor([0.8, 0.8], dtype=torch.float64), finished, missing_eos_penalty=1.0)
    zeros = torch.zeros(2, 5, dtype=torch.float64)
    rewards, _, _ = shape_rewards(zeros, zeros, scores, b["response_mask"], kl_coef=0.05)
    torch.testing.assert_close(rewards, _f64([0, 0, 0.8, 0, 0], [0, 0, 0, 0, -0.2]), rtol=0, atol=1e-15)


def test_rollout_batch_layout_and_masks():
    b = rollout_batch([[5, 6, 7], [8]], [[9, 1], [10, 11, 12]], pad_id=0)
    assert b["prompt_width"] == 3
    assert b["input_ids"].tolist() == [[5, 6, 7, 9, 1, 0], [0, 0, 8, 10, 11, 12]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert b["response"].tolist() == [[9, 1, 0], [10, 11, 12]]
    assert b["response_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert position_ids(b["attention_mask"]).tolist() == [[0, 1, 2, 3, 4, 4], [0, 0, 0, 1, 2, 3]]


@pytest.fixture(scope="module")
def small64():
    """(tokenizer, float64 policy, float64 scalar-head critic) on the small tiny-Llama."""
    args = ModelArgs(tiny=TinySpec(**SMALL), dtype="float64")
    tok = load_tokenizer(args)
    return tok, load_causal_lm(args, tok, seed=0), load_reward_model(args, tok, seed=1)


def test_padded_rollout_logps_and_values_equal_unpadded(small64):
    tok, policy, critic = small64
    ac = ActorCritic(policy, critic=critic).eval()
    prompts, responses = [[7, 8, 9, 10], [11, 12]], [[20, 21, tok.eos_token_id], [30, 31, 32, 33, 34]]
    b = rollout_batch(prompts, responses, tok.pad_token_id)
    with torch.no_grad():
        logits, values = ac(b["input_ids"], b["attention_mask"], b["response"].shape[1])
        logp = torch.log_softmax(logits, -1).gather(-1, b["response"].unsqueeze(-1)).squeeze(-1)
        for i, (p, r) in enumerate(zip(prompts, responses)):
            ids = torch.tensor([p + r])
            full = policy(input_ids=ids).logits[0].log_softmax(-1)
            want = torch.stack([full[len(p) - 1 + j, t] for j, t in enumerate(r)])
            torch.testing.assert_close(logp[i, :len(r)], want, rtol=0, atol=1e-10)
            h = critic.model(input_ids=ids).last_hidden_state[0]
            want_v = critic.score(h[len(p) - 1:len(p) - 1 + len(r)]).squeeze(-1)
            torch.testing.assert_close(values[i, :len(r)], want_v, rtol=0, atol=1e-10)
    assert b["response_mask"].sum().item() == sum(map(len, responses))


def test_rollout_logps_are_the_samplers_tempered_distribution(small64):
    """Log-probs recomputed with logits / temperature equal those of the distribution generate sampled from."""
    from transformers import GenerationConfig

    from pgcore.distributions import token_logprobs

    tok, policy, _ = small64
    prompts = [[7, 8, 9, 10], [11, 12]]
    ids = torch.tensor([[7, 8, 9, 10], [tok.pad_token_id, tok.pad_token_id, 11, 12]])
    attn = (ids != tok.pad_token_id).long()
    gcfg = GenerationConfig(do_sample=True, temperature=0.7, top_k=0, top_p=1.0, max_new_tokens=5,
                            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, output_scores=True,
                            return_dict_in_generate=True)
    torch.manual_seed(0)
    with torch.no_grad():
        out = policy.generate(input_ids=ids, attention_mask=attn, generation_config=gcfg)
    gen = out.sequences[:, ids.shape[1]:]
    responses = []
    for row in gen.tolist():
        r = []
        for t in row:
            r.append(t)
            if t == tok.eos_token_id:
                break
        responses.append(r)
    b = rollout_batch(prompts, responses, tok.pad_token_id)
    ac = ActorCritic(policy, value_head=torch.nn.Linear(SMALL["hidden_size"], 1).double())
    with torch.no_grad():
        logits, _ = ac(b["input_ids"], b["attention_mask"], b["response"].shape[1])
        ours = token_logprobs(logits, b["response"], temperature=0.7, mask=b["response_mask"].double())
        untempered = token_logprobs(logits, b["response"], mask=b["response_mask"].double())
    gap = 0.0
    for i, r in enumerate(responses):
        for j, t in enumerate(r):
            # generate keeps its scores in float32, hence the tolerance.
            sampler = torch.log_softmax(out.scores[j][i].double(), -1)[t]
            assert abs(ours[i, j].item() - sampler.item()) < 1e-6
            gap = max(gap, abs(untempered[i, j].item() - sampler.item()))
    assert gap > 1e-3   # the temperature matters: log-probs of the raw logits are not the sampler's


# ----------------------------------------------------------------------------------------- advantages
def test_gae_on_response_tokens_hand_computed():
    rewards = _f64([0.0, 0.0, 1.0], [0.0, 2.0, 0.0])
    values = _f64([0.5, 0.2, 0.4], [0.1, 0.3, 9.0])       # 9.0 sits after row 1's last token: ignored
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = advantages_and_returns(rewards, values, mask, gamma=0.9, lam=0.5, whiten_advantages=False)
    # row 0: d2 = 1 - .4 = .6 (terminal); d1 = .9*.4 - .2 = .16, A1 = .16 + .45*.6 = .43;
    #        d0 = .9*.2 - .5 = -.32, A0 = -.32 + .45*.43 = -.1265
    # row 1: d1 = 2 - .3 = 1.7 (its last token is terminal); d0 = .9*.3 - .1 = .17, A0 = .17 + .45*1.7 = .935
    torch.testing.assert_close(adv, _f64([-0.1265, 0.43, 0.6], [0.935, 1.7, 0.0]), rtol=0, atol=1e-12)
    torch.testing.assert_close(ret, _f64([0.3735, 0.63, 1.0], [1.035, 2.0, 0.0]), rtol=0, atol=1e-12)
    white, _ = advantages_and_returns(rewards, values, mask, gamma=0.9, lam=0.5)
    valid = white[mask.bool()]
    assert abs(valid.mean().item()) < 1e-12 and abs(valid.std().item() - 1) < 1e-6 and white[1, 2] == 0


def test_kl_controllers():
    fixed = KLController(0.1, "fixed")
    assert fixed.update(100.0, 64) == 0.1
    prop = KLController(0.2, "proportional", target=6.0, horizon=10000)
    # e = clip(12/6 - 1, -.2, .2) = .2; beta *= 1 + .2 * 64 / 10000
    assert prop.update(12.0, 64) == pytest.approx(0.2 * (1 + 0.2 * 64 / 10000), rel=1e-15)
    hd = KLController(0.2, "halve_double", target=6.0)
    assert hd.update(10.0, 64) == 0.4 and hd.update(1.0, 64) == 0.2 and hd.update(6.0, 64) == 0.2


# ----------------------------------------------------------------------------------------- the update
def _update_setup(tmp_path, small64, **kw):
    tok, policy, critic = small64
    cfg = from_dict(ppo.Config, {"output_dir": str(tmp_path), "batch_size": 4, "num_minibatches": 2, "grad_accum": 2,
                                 "ppo_epochs": 2, "learning_rate": 1e-2, "generation": {"temperature": 0.7}, **kw})
    acc = make_accelerator(cfg)
    import copy

    ac = ActorCritic(copy.deepcopy(policy), critic=copy.deepcopy(critic))
    b = rollout_batch([[7, 8, 9], [11, 12], [13], [14, 15]], [[20, 21, 1], [30, 31], [40, 41, 42, 43], [50]],
                      tok.pad_token_id)
    with torch.no_grad():
        logits, values = ac(b["input_ids"], b["attention_mask"], b["response"].shape[1])
        m = b["response_mask"].double()
        from pgcore.distributions import token_logprobs

        logps = token_logprobs(logits, b["response"], temperature=0.7, mask=m)
    g = torch.Generator().manual_seed(0)
    data = {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "response": b["response"],
            "response_mask": b["response_mask"], "logps": logps, "values": values * m,
            "advantages": torch.zeros_like(logps), "returns": torch.randn(logps.shape, generator=g,
                                                                          dtype=torch.float64) * m}
    opt = ppo._optimizer(cfg, ac)
    model, opt = acc.prepare(ac, opt)
    return cfg, acc, model, opt, {k: v.to(acc.device) for k, v in data.items()}  # on a GPU machine too


def _snapshot(mod):
    return {n: p.detach().cpu().clone() for n, p in mod.named_parameters() if p.requires_grad}


def test_zero_advantages_leave_policy_unchanged_value_moves(tmp_path, small64):
    cfg, acc, ac, opt, data = _update_setup(tmp_path, small64, entropy_coef=0.0)
    pol0, val0 = _snapshot(ac.policy), _snapshot(ac.critic)
    stats = ppo.ppo_update(cfg, ac, opt, acc, data, generator=torch.Generator().manual_seed(1))
    assert stats["loss/policy"] == 0.0
    assert all(torch.equal(pol0[n], p) for n, p in _snapshot(ac.policy).items())
    val1 = _snapshot(ac.critic)
    assert all(not torch.equal(val0[n], val1[n]) for n in val0)   # every value parameter moved


def test_entropy_term_or_advantages_move_every_policy_parameter(tmp_path, small64):
    cfg, acc, ac, opt, data = _update_setup(tmp_path / "a", small64, entropy_coef=0.1)
    pol0 = _snapshot(ac.policy)
    ppo.ppo_update(cfg, ac, opt, acc, data, generator=torch.Generator().manual_seed(1))
    assert all(not torch.equal(pol0[n], p) for n, p in _snapshot(ac.policy).items())

    cfg, acc, ac, opt, data = _update_setup(tmp_path / "b", small64, entropy_coef=0.0)
    data["advantages"] = torch.randn(data["logps"].shape, generator=torch.Generator().manual_seed(2),
                                     dtype=torch.float64) * data["response_mask"]
    pol0 = _snapshot(ac.policy)
    stats = ppo.ppo_update(cfg, ac, opt, acc, data, generator=torch.Generator().manual_seed(1))
    assert all(not torch.equal(pol0[n], p) for n, p in _snapshot(ac.policy).items())
    assert stats["val/ratio_max"] >= 1.0 and 0.0 <= stats["policy/clipfrac"] <= 1.0


# ----------------------------------------------------------------------------------------- reward model
def test_reward_model_with_different_tokenizer_scores_its_own_tokens(small64):
    from pipelines.data import encode_prompt

    tok = small64[0]
    rm_args = ModelArgs(tiny=TinySpec(**{**SMALL, "vocab_size": 520}), dtype="float64")
    rm_tok = load_tokenizer(rm_args)
    rm = load_reward_model(rm_args, rm_tok, seed=5).eval()
    assert not same_tokenizer(tok, rm_tok) and same_tokenizer(tok, load_tokenizer(ModelArgs(tiny=TinySpec(**SMALL))))
    prompts = ["I stayed at the Harbour Inn last week and", "We ate at Luigi's yesterday and"]
    texts = [" the room was spotless.", " the waiter was rude and the soup was cold"]
    finished = [True, False]
    pids = [encode_prompt(tok, p) for p in prompts]
    cids = [tok(t, add_special_tokens=False)["input_ids"] + ([tok.eos_token_id] if f else [])
            for t, f in zip(texts, finished)]
    got = score_responses(rm, rm_tok, prompts, pids, cids, texts, finished, same_tokenizer=False,
                          pad_id=tok.pad_token_id)
    for i, (p, t) in enumerate(zip(prompts, texts)):
        ids = rm_tok(p, add_special_tokens=False)["input_ids"] + rm_tok(t, add_special_tokens=False)["input_ids"]
        ids = ids + [rm_tok.eos_token_id] * finished[i]     # EOS only where the policy stopped
        assert ids != pids[i] + cids[i]          # the two tokenizers really disagree
        with torch.no_grad():
            want = rm(input_ids=torch.tensor([ids])).logits[0, 0].item()
        assert got[i].item() == pytest.approx(want, abs=1e-6)
