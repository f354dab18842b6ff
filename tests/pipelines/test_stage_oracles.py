"""LM stage pieces against float64 oracles written out by hand (not through pgcore): the evaluation's KL and win
rate with a policy that differs from its reference, PPO's update loss and gradient (one and two micro-batches of
unequal-length responses), and the reward model's Bradley-Terry loss with per-pair margins."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from pipelines import ppo
from pipelines import reward_model as reward
from pipelines.data import encode_prompt
from pipelines.evaluation import EvalArgs, PolicyEvaluator
from pipelines.generation import GenerationArgs, generate
from pipelines.models import ModelArgs, TinySpec, freeze, load_causal_lm, load_reward_model, load_tokenizer
from pipelines.rlhf_models import ActorCritic
from pipelines.rollout import rollout_batch
from pipelines.scoring import Reference
from pipelines.trainer import make_accelerator
from reins.config import from_dict
from tests.pipelines.helpers import PROMPT_IDS, RESPONSES, SMALL, GradRecorder

PROMPTS = ["I stayed at the Harbour Inn last week and", "We ate at Luigi's on Friday and",
           "I watched The Silent River yesterday and", "The museum tour was"]


@pytest.fixture(scope="module")
def f64():
    """(tokenizer, float64 model args) of the small tiny-Llama."""
    args = ModelArgs(tiny=TinySpec(**SMALL), dtype="float64")
    return load_tokenizer(args), args


def _seq_logp(model, prompt: list[int], completion: list[int], T: float) -> float:
    """sum_t log softmax(logits / T)[token]: the completion's log-probability, one sequence, no padding."""
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + completion])).logits[0]
    lsm = torch.log_softmax(logits / T, -1)
    return sum(lsm[len(prompt) - 1 + j, t].item() for j, t in enumerate(completion))


# ----------------------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("temperature", [0.7, 0.0], ids=["sampled", "greedy"])
def test_eval_kl_and_win_rate_against_hand_values(f64, temperature):
    """Greedy evaluation (temperature 0) scores the log-probs of the untempered distribution (T = 1)."""
    tok, args = f64
    T = temperature or 1.0
    policy, ref_model = load_causal_lm(args, tok, seed=0), freeze(load_causal_lm(args, tok, seed=5))
    ea = EvalArgs(num_prompts=4, max_new_tokens=6, temperature=temperature, seed=11)
    ev = PolicyEvaluator(tok, PROMPTS, Reference(ref_model), ea)
    pids = [encode_prompt(tok, p) for p in PROMPTS]
    gen = GenerationArgs(max_new_tokens=6, temperature=temperature, batch_size=ea.batch_size)
    ours, theirs = generate(policy, tok, pids, gen, seed=11), generate(ref_model, tok, pids, gen, seed=11)
    if temperature > 0:
        assert ours.texts != theirs.texts
        # A stub judge: prompt 0 a win for the policy, 1 a tie, 2 a loss, 3 a win: win rate (1 + .5 + 0 + 1) / 4.
        gold = {tuple(ours.texts): [1.0, 0.5, 0.0, 0.75], tuple(theirs.texts): [0.0, 0.5, 1.0, 0.25]}
        ev.judge = lambda texts: gold[tuple(texts)]
    m, samples = ev(policy)
    if temperature > 0:
        assert m["eval/win_rate_vs_ref"] == pytest.approx(0.625, abs=1e-12)
        assert m["eval/gold_reward"] == pytest.approx(0.5625) and m["eval/ref_gold_reward"] == pytest.approx(0.4375)
        assert [s["ref_gold"] for s in samples] == gold[tuple(theirs.texts)]
    # KL(pi || ref) on the policy's samples: k1 = mean(log pi - log ref), k3 = mean(e^-x - 1 + x), sequence-level
    lp = torch.tensor([_seq_logp(policy, p, c, T) for p, c in zip(pids, ours.completion_ids)], dtype=torch.float64)
    rlp = torch.tensor([_seq_logp(ref_model, p, c, T) for p, c in zip(pids, ours.completion_ids)],
                       dtype=torch.float64)
    x = lp - rlp
    assert x.abs().min() > 1e-3  # the two models really differ on every sample
    assert m["eval/kl_to_ref"] == pytest.approx(x.mean().item(), rel=1e-9, abs=1e-12)
    assert m["eval/kl_to_ref_k3"] == pytest.approx((torch.exp(-x) - 1 + x).mean().item(), rel=1e-9, abs=1e-12)
    assert m["eval/completion_length"] == sum(map(len, ours.completion_ids)) / 4
    assert m["eval/eos_rate"] == sum(ours.finished) / 4


# ----------------------------------------------------------------------------------------- PPO update
def _ppo_data(tok, ac, T):
    """A rollout batch whose old log-probs and old values are perturbed so that some ratios and some values
    fall outside their clip ranges."""
    b = rollout_batch(PROMPT_IDS, RESPONSES, tok.pad_token_id)
    g = torch.Generator().manual_seed(3)
    m = b["response_mask"].double()
    with torch.no_grad():
        logits, values = ac(b["input_ids"], b["attention_mask"], b["response"].shape[1])
        logp = torch.log_softmax(logits / T, -1).gather(-1, b["response"].unsqueeze(-1)).squeeze(-1) * m
    noise = lambda scale: torch.randn(m.shape, generator=g, dtype=torch.float64) * scale * m  # noqa: E731
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "response": b["response"],
            "response_mask": b["response_mask"], "logps": logp + noise(0.3), "values": values * m + noise(0.3),
            "advantages": noise(1.0), "returns": noise(1.0)}


def _hand_ppo_loss(ac, d, T, eps, eps_v, vf, ent_coef):
    """Schulman et al. 2017 eq. 9 as token means over the whole batch, written out."""
    logits, v = ac(d["input_ids"], d["attention_mask"], d["response"].shape[1])
    m = d["response_mask"].double()
    n = m.sum()
    lsm = torch.log_softmax(logits / T, -1)
    logp = lsm.gather(-1, d["response"].unsqueeze(-1)).squeeze(-1)
    ratio = torch.exp(logp - d["logps"])
    A = d["advantages"]
    surrogate = -torch.minimum(ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A)
    v_clip = d["values"] + torch.clamp(v - d["values"], -eps_v, eps_v)
    vloss = 0.5 * torch.maximum((v - d["returns"]) ** 2, (v_clip - d["returns"]) ** 2)
    entropy = -(lsm.exp() * lsm).sum(-1)
    pl, vl, ent = (surrogate * m).sum() / n, (vloss * m).sum() / n, (entropy * m).sum() / n
    clipped = ((ratio - 1).abs() > eps).double()
    return pl + vf * vl - ent_coef * ent, {"pl": pl, "vl": vl, "ent": ent, "clipped": (clipped * m).sum() / n,
                                           "vpred": (v * m).sum() / n}


def _ppo_cfg(tmp_path, **kw):
    return from_dict(ppo.Config, {"output_dir": str(tmp_path), "batch_size": 4, "num_minibatches": 1,
                                  "ppo_epochs": 1, "max_grad_norm": None, "cliprange": 0.2, "cliprange_value": 0.1,
                                  "vf_coef": 0.3, "entropy_coef": 0.05, "generation": {"temperature": 0.7}, **kw})


@pytest.fixture(scope="module")
def actor_critic(f64):
    tok, args = f64
    return tok, ActorCritic(load_causal_lm(args, tok, seed=0), critic=load_reward_model(args, tok, seed=1))


@pytest.mark.parametrize("grad_accum", [1, 2, 4])
def test_ppo_update_loss_and_gradient_equal_the_hand_computed_objective(tmp_path, actor_critic, grad_accum):
    tok, ac0 = actor_critic
    ac = copy.deepcopy(ac0)
    cfg = _ppo_cfg(tmp_path, grad_accum=grad_accum)
    data = _ppo_data(tok, ac, 0.7)
    params = [p for p in ac.parameters() if p.requires_grad]
    want, parts = _hand_ppo_loss(ac, data, 0.7, 0.2, 0.1, 0.3, 0.05)
    assert 0 < parts["clipped"] < 1  # both branches of the clipped surrogate are exercised
    want_grads = torch.autograd.grad(want, params)
    rec = GradRecorder(params)
    stats = ppo.ppo_update(cfg, ac, rec, make_accelerator(cfg), data, generator=torch.Generator().manual_seed(0))
    assert len(rec.grads) == 1
    for got, w in zip(rec.grads[0], want_grads):
        torch.testing.assert_close(got, w, rtol=1e-9, atol=1e-12)
    # the logged losses are token means over the batch, as the objective's terms
    assert stats["loss/policy"] == pytest.approx(parts["pl"].item(), rel=1e-9)
    assert stats["loss/value"] == pytest.approx(parts["vl"].item(), rel=1e-9)
    assert stats["policy/entropy"] == pytest.approx(parts["ent"].item(), rel=1e-9)
    assert stats["policy/clipfrac"] == pytest.approx(parts["clipped"].item(), rel=1e-9)
    assert stats["val/vpred"] == pytest.approx(parts["vpred"].item(), rel=1e-9)
    assert stats["grad_norm"] == pytest.approx(torch.cat([g.reshape(-1) for g in want_grads]).norm().item(), rel=1e-9)


def test_ppo_update_of_a_single_one_token_rollout(tmp_path, actor_critic):
    tok, ac0 = actor_critic
    ac = copy.deepcopy(ac0)
    cfg = _ppo_cfg(tmp_path, batch_size=1)
    full = _ppo_data(tok, ac, 0.7)
    cut = full["response"].shape[1] - 1   # row 3 has a one-token response: keep its prompt and that token
    data = {k: v[3:4, :-cut] if k in ("input_ids", "attention_mask") else v[3:4, :1] if v.dim() == 2 else v[3:4]
            for k, v in full.items()}
    assert data["response_mask"].sum() == 1
    _, parts = _hand_ppo_loss(ac, data, 0.7, 0.2, 0.1, 0.3, 0.05)
    params = [p for p in ac.parameters() if p.requires_grad]
    stats = ppo.ppo_update(cfg, ac, GradRecorder(params), make_accelerator(cfg), data,
                           generator=torch.Generator().manual_seed(0))
    for key, part in (("loss/policy", "pl"), ("loss/value", "vl"), ("policy/entropy", "ent"), ("val/vpred", "vpred")):
        assert stats[key] == pytest.approx(parts[part].item(), rel=1e-9), key


def test_ppo_grad_accum_one_or_two_gives_the_same_parameters(tmp_path, actor_critic):
    """Two epochs, two AdamW steps each: micro-batches of unequal token counts are weighted by their share."""
    tok, ac0 = actor_critic
    out = []
    for ga in (1, 2):
        ac = copy.deepcopy(ac0)
        cfg = _ppo_cfg(tmp_path / str(ga), grad_accum=ga, ppo_epochs=2, learning_rate=1e-2)
        data = _ppo_data(tok, ac, 0.7)
        ppo.ppo_update(cfg, ac, ppo._optimizer(cfg, ac), make_accelerator(cfg), data,
                       generator=torch.Generator().manual_seed(0))
        out.append(torch.cat([p.detach().reshape(-1) for p in ac.parameters()]))
    start = torch.cat([p.detach().reshape(-1) for p in ac0.parameters()])
    assert (out[0] - start).abs().max() > 1e-3
    torch.testing.assert_close(out[1], out[0], rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------------------- reward model
@pytest.mark.parametrize("shared", [True, False], ids=["shared-prompt", "two-rows"])
def test_bradley_terry_with_margins_equals_the_hand_value(tmp_path, f64, shared):
    tok, args = f64
    model = load_reward_model(args, tok, seed=2)
    eos = tok.eos_token_id
    examples = [{"prompt_ids": [7, 8, 9], "chosen_ids": [20, 21, eos], "rejected_ids": [30, eos], "margin": 0.5},
                {"prompt_ids": [11, 12], "chosen_ids": [40, eos], "rejected_ids": [41, 42, 43, eos], "margin": -1.0},
                {"prompt_ids": [13], "chosen_ids": [50, 51, eos], "rejected_ids": [52, eos], "margin": 2.0}]
    cfg = from_dict(reward.Config, {"output_dir": str(tmp_path), "use_margin": True, "center_coef": 0.01,
                                    "shared_prompt": shared})
    with torch.no_grad():
        score = lambda p, c: model(input_ids=torch.tensor([p + c])).logits[0, 0].item()  # noqa: E731
        rc = torch.tensor([score(e["prompt_ids"], e["chosen_ids"]) for e in examples], dtype=torch.float64)
        rr = torch.tensor([score(e["prompt_ids"], e["rejected_ids"]) for e in examples], dtype=torch.float64)
        margin = torch.tensor([e["margin"] for e in examples], dtype=torch.float64)
        want = -F.logsigmoid(rc - rr - margin).mean() + 0.01 * ((rc + rr) ** 2).mean()
        loss, stats = reward.make_loss_fn(tok.pad_token_id, cfg)(model, examples, 7.0)
    # the micro-batch's share of a global batch of 7 pairs
    assert loss.item() == pytest.approx(want.item() * 3 / 7, rel=1e-9)
    assert stats["loss"][1].item() / 3 == pytest.approx(want.item(), rel=1e-9)
    assert stats["accuracy"][1].item() / 3 == pytest.approx((rc > rr).double().mean().item())
    assert stats["margin"][1].item() / 3 == pytest.approx((rc - rr).mean().item(), rel=1e-9)
    assert stats["min_reward"][1].item() == pytest.approx(torch.cat([rc, rr]).min().item(), rel=1e-9)
    assert stats["max_reward"][1].item() == pytest.approx(torch.cat([rc, rr]).max().item(), rel=1e-9)
    assert stats["mean_reward"][1].item() / 3 == pytest.approx(torch.cat([rc, rr]).mean().item(), rel=1e-9)
