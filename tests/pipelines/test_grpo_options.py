"""GRPO options against float64 hand oracles, so that ignoring one fails: `epsilon_high` (DAPO clip-higher), `beta`
with the k3 KL to the reference, `loss_type`, `grad_accum` (the update's gradient); `scale_rewards` (the rollout's
advantages); `ref_model` with beta > 0 (the reference the KL is measured against)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pipelines import grpo
from pipelines.generation import generate
from pipelines.models import ModelArgs, TinySpec, load_causal_lm, load_tokenizer, save_model
from pipelines.reward_funcs import resolve_reward_funcs
from pipelines.rollout import rollout_batch
from pipelines.trainer import make_accelerator
from reins.config import from_dict
from tests.pipelines.helpers import PROMPT_IDS, RESPONSES, SMALL, GradRecorder

T = 0.8


@pytest.fixture(scope="module")
def f64():
    args = ModelArgs(tiny=TinySpec(**SMALL), dtype="float64")
    tok = load_tokenizer(args)
    return tok, load_causal_lm(args, tok, seed=0), load_causal_lm(args, tok, seed=4)


def _cfg(tmp_path, **kw):
    return from_dict(grpo.Config, {"output_dir": str(tmp_path), "batch_size": 2, "num_generations": 2,
                                   "max_grad_norm": None, "epsilon": 0.2, "generation": {"temperature": T,
                                                                                         "max_new_tokens": 5}, **kw})


def _logp(model, b):
    attn = b["attention_mask"]
    pos = (attn.cumsum(-1) - 1).clamp_min(0)   # left-padded prompts: positions count real tokens only
    logits = model(input_ids=b["input_ids"], attention_mask=attn, position_ids=pos).logits
    R = b["response"].shape[1]
    lsm = torch.log_softmax(logits[:, -R - 1:-1] / T, -1)
    return lsm.gather(-1, b["response"].unsqueeze(-1)).squeeze(-1)


def _update_data(tok, policy, ref):
    """Old log-probs set so that the token ratios are 0.7, 0.85, 1.1, 1.25 and 1.35 in turn (inside and outside
    [1 - 0.2, 1 + 0.2] and [1 - 0.2, 1 + 0.28]); advantages of both signs; the reference's log-probs."""
    b = rollout_batch(PROMPT_IDS, RESPONSES, tok.pad_token_id)
    m = b["response_mask"].double()
    ratios = torch.tensor([0.7, 0.85, 1.1, 1.25, 1.35], dtype=torch.float64)
    target = ratios[torch.arange(m.numel()) % 5].view(m.shape)
    with torch.no_grad():
        logp = _logp(policy, b)
        ref_logp = _logp(ref, b) * m
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "response": b["response"],
            "response_mask": b["response_mask"], "old_logps": (logp - target.log()) * m,
            "ref_logps": ref_logp, "advantages": torch.tensor([1.0, -0.5, 2.0, 0.75], dtype=torch.float64)}


def _hand_loss(policy, d, *, eps_low, eps_high, beta, loss_type, max_len):
    m = d["response_mask"].double()
    logp = _logp(policy, d)
    ratio = torch.exp(logp - d["old_logps"])
    A = d["advantages"].unsqueeze(-1)
    per_token = -torch.minimum(ratio * A, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * A)
    x = d["ref_logps"] - logp
    per_token = per_token + beta * (torch.exp(x) - x - 1)   # k3 = pi_ref/pi - log(pi_ref/pi) - 1
    lm = per_token * m
    if loss_type == "token":
        return lm.sum() / m.sum()
    if loss_type == "sequence":
        return (lm.sum(-1) / m.sum(-1)).mean()
    return lm.sum() / (m.shape[0] * max_len)


@pytest.mark.parametrize("eps_high,beta,loss_type,grad_accum", [
    (0.28, 0.0, "token", 1), (0.28, 0.1, "token", 2), (None, 0.1, "sequence", 2), (0.28, 0.05, "dr_grpo", 2)])
def test_grpo_update_gradient_equals_the_hand_objective(tmp_path, f64, eps_high, beta, loss_type, grad_accum):
    tok, policy0, ref = f64
    policy = copy.deepcopy(policy0)
    cfg = _cfg(tmp_path, epsilon_high=eps_high, beta=beta, loss_type=loss_type, grad_accum=grad_accum)
    data = _update_data(tok, policy, ref)
    if beta == 0:
        del data["ref_logps"]
    params = [p for p in policy.parameters() if p.requires_grad]
    want = _hand_loss(policy, {**data, "ref_logps": data.get("ref_logps", 0.0)}, eps_low=0.2,
                      eps_high=0.2 if eps_high is None else eps_high, beta=beta, loss_type=loss_type, max_len=5)
    want_grads = torch.autograd.grad(want, params)
    rec = GradRecorder(params)
    # one optimizer step; the data carries old log-probs (as rollouts for several passes do), so ratios != 1
    stats = grpo.grpo_update(cfg, policy, rec, make_accelerator(cfg), data, generator=torch.Generator().manual_seed(0))
    for got, w in zip(rec.grads[0], want_grads):
        torch.testing.assert_close(got, w, rtol=1e-9, atol=1e-12)
    assert stats["loss"] == pytest.approx(want.item(), rel=1e-9)
    m = data["response_mask"].bool()
    r = torch.exp(_logp(policy, data).detach() - data["old_logps"])[m]
    hi = 1 + (0.2 if eps_high is None else eps_high)
    A = data["advantages"].unsqueeze(-1).expand_as(m)[m]
    assert stats["clip_ratio/high_mean"] == pytest.approx(((r > hi) & (A > 0)).double().mean().item())
    assert stats["clip_ratio/low_mean"] == pytest.approx(((r < 0.8) & (A < 0)).double().mean().item())
    assert ("kl" in stats) == (beta > 0)


def test_ignoring_epsilon_high_would_change_the_gradient(tmp_path, f64):
    """The control of the oracle above: the two clip ranges give different objectives on this batch."""
    tok, policy, ref = f64
    data = _update_data(tok, policy, ref)
    a = _hand_loss(policy, data, eps_low=0.2, eps_high=0.28, beta=0.0, loss_type="token", max_len=5)
    b = _hand_loss(policy, data, eps_low=0.2, eps_high=0.2, beta=0.0, loss_type="token", max_len=5)
    assert abs(a.item() - b.item()) > 1e-3


@pytest.mark.parametrize("advantage,scale", [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"),
                                             ("grpo", "auto"), ("rloo", "auto")])
def test_rollout_advantages_follow_scale_rewards(tmp_path, f64, advantage, scale):
    tok, policy, _ = f64
    cfg = _cfg(tmp_path, batch_size=3, num_generations=4, advantage=advantage, scale_rewards=scale,
               reward_funcs=["tests.pipelines.grpo_rewards:length_penalty"])
    funcs = resolve_reward_funcs(cfg.reward_funcs, cfg, tok)
    prompts = ["The hotel was", "Our dinner was", "The film"]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    data, m, _ = grpo.rollout(cfg, policy, None, funcs, tok, prompts, ids, seed=5, acc=make_accelerator(cfg))
    s = generate(policy, tok, [p for p in ids for _ in range(4)], cfg.generation, seed=5)
    r = torch.tensor([-0.01 * len(t) for t in s.texts], dtype=torch.float64)
    g = r.view(3, 4)
    assert (g.std(-1) > 0).all()   # every group carries signal
    if advantage == "rloo":
        want = g - (g.sum(-1, keepdim=True) - g) / 3
    else:
        want = g - g.mean(-1, keepdim=True)
        if scale in ("group", "auto"):
            want = want / (g.std(-1, keepdim=True) + 1e-4)
        elif scale == "batch":
            want = want / (r.std() + 1e-4)
    torch.testing.assert_close(data["advantages"].double(), want.reshape(-1).float().double(), rtol=1e-6, atol=1e-7)
    assert m["reward"] == pytest.approx(r.mean().item(), rel=1e-9)
    assert m["reward_std"] == pytest.approx(g.std(-1).mean().item(), rel=1e-9)


def test_ref_model_is_the_reference_of_the_kl_term(tmp_path):
    """beta > 0: the first iteration's KL is 0 against the initial policy (a rollout's ratio to itself), and the
    KL to `ref_model` (another model) when one is given."""
    args = ModelArgs(tiny=TinySpec(**SMALL))
    tok = load_tokenizer(args)
    for name, seed in (("policy", 0), ("other", 4)):
        save_model(load_causal_lm(args, tok, seed=seed), tok, tmp_path / name)
    base = {"model": str(tmp_path / "policy"), "quiet": True, "max_operand": 9, "batch_size": 2, "num_generations": 2,
            "max_steps": 1, "beta": 0.1, "eval_prompts": None, "generation": {"max_new_tokens": 4, "batch_size": 8},
            "reward_funcs": ["tests.pipelines.grpo_rewards:length_penalty"]}
    own = grpo.train(from_dict(grpo.Config, {**base, "output_dir": str(tmp_path / "own")}))
    other = grpo.train(from_dict(grpo.Config, {**base, "output_dir": str(tmp_path / "other-ref"),
                                               "ref_model": str(tmp_path / "other")}))
    assert own["train/kl"] == pytest.approx(0.0, abs=1e-7)
    assert other["train/kl"] > 1e-3 and math.isfinite(other["train/kl"])


@pytest.mark.parametrize("iterations,minibatches", [(1, 1), (2, 1), (1, 2)])
def test_rollout_keeps_old_log_probs_only_for_several_steps(tmp_path, f64, iterations, minibatches):
    """One pass, one minibatch: the update's own log-probs, detached, are the old ones (no extra forward);
    otherwise the rollout keeps the sampling policy's log-probs for the later steps' ratios."""
    tok, policy, _ = f64
    cfg = _cfg(tmp_path, num_iterations=iterations, num_minibatches=minibatches,
               reward_funcs=["tests.pipelines.grpo_rewards:length_penalty"])
    prompts = ["The hotel was", "Our dinner was"]
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    data, _, _ = grpo.rollout(cfg, policy, None, resolve_reward_funcs(cfg.reward_funcs, cfg, tok), tok, prompts, ids,
                              seed=5, acc=make_accelerator(cfg))
    if iterations == minibatches == 1:
        assert "old_logps" not in data
    else:
        with torch.no_grad():
            want = _logp(policy, data) * data["response_mask"]
        torch.testing.assert_close(data["old_logps"].double(), want, rtol=1e-9, atol=1e-12)


def test_reward_metrics_of_a_two_completion_batch(tmp_path, f64):
    """One prompt, a group of two: the reward column's std is the unbiased std of the two."""
    tok, policy, _ = f64
    cfg = _cfg(tmp_path, batch_size=1, reward_funcs=["tests.pipelines.grpo_rewards:length_penalty"])
    ids = [tok("The hotel was", add_special_tokens=False)["input_ids"]]
    _, m, _ = grpo.rollout(cfg, policy, None, resolve_reward_funcs(cfg.reward_funcs, cfg, tok), tok, ["The hotel was"],
                           ids, seed=3, acc=make_accelerator(cfg))
    s = generate(policy, tok, ids * 2, cfg.generation, seed=3)
    r = torch.tensor([-0.01 * len(t) for t in s.texts], dtype=torch.float64)
    assert r[0] != r[1]
    assert m["rewards/length_penalty/mean"] == pytest.approx(r.mean().item(), rel=1e-12)
    assert m["rewards/length_penalty/std"] == pytest.approx(r.std().item(), rel=1e-12)
    assert m["reward_std"] == pytest.approx(r.std().item(), rel=1e-12) and m["frac_reward_zero_std"] == 0.0
