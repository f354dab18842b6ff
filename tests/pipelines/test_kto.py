"""KTO, SimPO and RPO in the stages: each loss against hand computation (one unpadded sequence at a time, explicit
softmax, float64), the in-batch mismatched pairs of KTO's reference point, precomputed = live reference, exact
resume, learning on the built-in task, and TRL's unpaired data format."""

from __future__ import annotations

import copy
import dataclasses
import json
import math

import pytest
import torch
import yaml

from pipelines import dpo, kto
from pipelines.data import encode_completion, encode_prompt
from pipelines.models import freeze
from pipelines.scoring import Reference
from pipelines.unpaired import normalise_unpaired, unpair
from reins.errors import ConfigError, DataError
from tests.pipelines.helpers import (
    crash_at_step,
    hand_logp,
    logsig,
    pair_examples,
    small_model,
    small_tok,
    stage_config,
    write_jsonl,
)

FEEDBACK = [("I stayed at the Harbour Inn last week and", " the room was spotless. I loved it.", True),
            ("We ate at Luigi's and", " the pasta was bland and the waiter was rude.", False),
            ("The museum tour was", " long but wonderful, the guide knew everything.", True),
            ("Our flight home", " was delayed for six hours with no news.", False)]


@pytest.fixture(scope="module")
def tok():
    return small_tok()


def _feedback(tok):
    return [{"prompt_ids": encode_prompt(tok, p), "completion_ids": encode_completion(tok, p, c), "label": y}
            for p, c, y in FEEDBACK]


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


# ----------------------------------------------------------------------------------------- KTO loss
def _hand_kto(policy, ref, exs, beta, wd, wu):
    """Per-example losses and z0 by hand: example i's mismatched pair is (x_i, y_{i-1}), y_{-1} = the last."""
    kl = [hand_logp(policy, e["prompt_ids"], exs[i - 1]["completion_ids"])
          - hand_logp(ref, e["prompt_ids"], exs[i - 1]["completion_ids"]) for i, e in enumerate(exs)]
    z0 = max(0.0, sum(kl) / len(kl))
    losses, rewards = [], []
    for e in exs:
        r = hand_logp(policy, e["prompt_ids"], e["completion_ids"]) - hand_logp(ref, e["prompt_ids"],
                                                                                 e["completion_ids"])
        losses.append(wd * (1 - _sigmoid(beta * (r - z0))) if e["label"] else wu * (1 - _sigmoid(beta * (z0 - r))))
        rewards.append(beta * r)
    return losses, rewards, sum(kl) / len(kl)


@pytest.mark.parametrize("seeds", [(0, 1), (1, 0)], ids=["ref-seed-1", "ref-seed-0"])
def test_kto_loss_matches_hand_computation(tok, seeds):
    policy = small_model(tok, seed=seeds[0], dtype="float64")
    ref_model = freeze(small_model(tok, seed=seeds[1], dtype="float64"))
    exs = _feedback(tok)
    cfg = kto.Config(output_dir="unused", beta=0.3, desirable_weight=1.3, undesirable_weight=0.7)
    loss, stats = kto.make_loss_fn(tok.pad_token_id, cfg, Reference(ref_model))(policy, exs, 4.0)
    hand, rewards, kl_mean = _hand_kto(policy, ref_model, exs, 0.3, 1.3, 0.7)
    assert loss.item() == pytest.approx(sum(hand) / 4, rel=1e-9)
    assert stats["kl"][1].item() / 4 == pytest.approx(max(0.0, kl_mean), rel=1e-9, abs=1e-12)
    assert stats["rewards/chosen"][1].item() / stats["rewards/chosen"][2].item() == pytest.approx(
        (rewards[0] + rewards[2]) / 2, rel=1e-9)
    assert stats["rewards/rejected"][1].item() / stats["rewards/rejected"][2].item() == pytest.approx(
        (rewards[1] + rewards[3]) / 2, rel=1e-9)


def test_kto_reference_point_is_clamped_and_gets_no_gradient(tok):
    policy = small_model(tok, seed=0, dtype="float64")
    ref_model = freeze(small_model(tok, seed=1, dtype="float64"))
    exs = _feedback(tok)
    cfg = kto.Config(output_dir="unused", beta=0.3)
    # The gradient of the loss equals that of the hand losses with z0 held constant.
    loss, stats = kto.make_loss_fn(tok.pad_token_id, cfg, Reference(ref_model))(policy, exs, 4.0)
    grads = torch.autograd.grad(loss, [p for p in policy.parameters()])
    z0 = stats["kl"][1].item() / 4
    ids = [torch.tensor([e["prompt_ids"] + e["completion_ids"]]) for e in exs]
    total = 0.0
    for e, x in zip(exs, ids):
        lp = torch.log_softmax(policy(input_ids=x).logits[0], -1)
        n_p = len(e["prompt_ids"])
        seq = sum(lp[t - 1, x[0, t]] for t in range(n_p, x.shape[1]))
        r = seq - hand_logp(ref_model, e["prompt_ids"], e["completion_ids"])
        total = total + (1 - torch.sigmoid(0.3 * (r - z0)) if e["label"] else 1 - torch.sigmoid(0.3 * (z0 - r)))
    want = torch.autograd.grad(total / 4, [p for p in policy.parameters()])
    for g, w in zip(grads, want):
        assert torch.allclose(g, w, rtol=1e-8, atol=1e-12)
    # policy == reference: z0 = 0 and every example costs lambda_y / 2
    same = kto.make_loss_fn(tok.pad_token_id, cfg, Reference(freeze(copy.deepcopy(policy))))
    loss, stats = same(policy, exs, 4.0)
    assert loss.item() == pytest.approx(0.5, abs=1e-12) and stats["kl"][1].item() == 0.0


def test_kto_precomputed_reference_equals_live(tok, tmp_path):
    policy = small_model(tok, seed=0, dtype="float64")
    reference = Reference(freeze(small_model(tok, seed=1, dtype="float64")))
    exs = _feedback(tok)
    cfg = kto.Config(output_dir="unused", beta=0.3, shuffle=False, precompute_ref_logps=True)
    live = kto.make_loss_fn(tok.pad_token_id, cfg, reference)(policy, exs, 4.0)[0].item()
    pre = [dict(e) for e in exs]
    kto.assign_kl_partners(pre, 4)
    kto.attach_ref_logps(pre, reference, tok.pad_token_id, tmp_path, batch_size=2, is_main=True, wait=lambda: None)
    cached = kto.make_loss_fn(tok.pad_token_id, cfg, None)(policy, pre, 4.0)[0].item()
    assert cached == pytest.approx(live, rel=1e-10)
    with pytest.raises(ConfigError, match="other mismatched pairs"):  # a batch the cache was not scored for
        kto.make_loss_fn(tok.pad_token_id, cfg, None)(policy, [pre[1], pre[0], pre[2], pre[3]], 4.0)


# ----------------------------------------------------------------------------------------- SimPO, RPO
def test_simpo_loss_matches_hand_computation_without_reference(tok):
    policy = small_model(tok, seed=0, dtype="float64")
    exs = pair_examples(tok)
    cfg = dpo.Config(output_dir="unused", beta=2.0, loss_type="simpo", simpo_gamma=0.7)
    loss, stats = dpo.make_loss_fn(tok.pad_token_id, cfg, None)(policy, exs, 2.0)
    hand, rc = [], 0.0
    for e in exs:
        ac = hand_logp(policy, e["prompt_ids"], e["chosen_ids"]) / len(e["chosen_ids"])
        ar = hand_logp(policy, e["prompt_ids"], e["rejected_ids"]) / len(e["rejected_ids"])
        hand.append(-logsig(2.0 * (ac - ar) - 0.7))
        rc += 2.0 * ac
    assert loss.item() == pytest.approx(sum(hand) / 2, rel=1e-9)
    assert stats["rewards/chosen"][1].item() / 2 == pytest.approx(rc / 2, rel=1e-9)


@pytest.mark.parametrize("loss_type", ["sigmoid", "simpo"])
def test_rpo_alpha_adds_the_token_mean_nll_of_the_chosen(tok, loss_type):
    policy = small_model(tok, seed=0, dtype="float64")
    ref = Reference(freeze(small_model(tok, seed=1, dtype="float64"))) if loss_type == "sigmoid" else None
    exs = pair_examples(tok)
    base = dpo.Config(output_dir="unused", beta=0.3, loss_type=loss_type)
    plain, _ = dpo.make_loss_fn(tok.pad_token_id, base, ref)(policy, exs, 2.0)
    rpo = dataclasses.replace(base, rpo_alpha=0.5)
    loss, stats = dpo.make_loss_fn(tok.pad_token_id, rpo, ref)(policy, exs, 2.0)
    nll = -sum(hand_logp(policy, e["prompt_ids"], e["chosen_ids"]) for e in exs) / sum(
        len(e["chosen_ids"]) for e in exs)
    assert loss.item() - plain.item() == pytest.approx(0.5 * nll, rel=1e-9)
    assert stats["nll_loss"][1].item() / stats["nll_loss"][2] == pytest.approx(nll, rel=1e-9)


def test_simpo_run_loads_no_reference(tmp_path, monkeypatch):
    def no_reference(*a, **k):
        raise AssertionError("simpo built a reference")

    monkeypatch.setattr(dpo, "Reference", no_reference)
    monkeypatch.setattr(dpo, "build_reference", no_reference)
    m = dpo.train(stage_config(dpo, tmp_path, max_steps=2, loss_type="simpo", beta=2.0, rpo_alpha=0.1))
    assert m["steps"] == 2 and math.isfinite(m["train/loss"]) and "train/nll_loss" in m


# ----------------------------------------------------------------------------------------- the stage
def test_kto_resume_equals_uninterrupted(tmp_path):
    kw = {"max_steps": 4, "save_every": 2, "learning_rate": 3e-3}
    full = kto.train(stage_config(kto, tmp_path / "a", **kw))
    with crash_at_step(3):
        kto.train(stage_config(kto, tmp_path / "b", **kw))
    resumed = kto.train(stage_config(kto, tmp_path / "b", **kw))
    assert resumed.keys() == full.keys()
    for k in full:
        assert resumed[k] == pytest.approx(full[k], rel=1e-6, abs=1e-9), k
    assert full["train/kl"] >= 0.0 and "eval/rewards/margins" in full
    # `reins export` tells a kto run from a dpo one by its config keys
    from pipelines.export import stage_of_config

    assert stage_of_config(yaml.safe_load((tmp_path / "a" / "run" / "config.yaml").read_text()), tmp_path) == "kto"


def test_kto_learns_to_prefer_the_desirable_completions(tmp_path):
    m = kto.train(stage_config(kto, tmp_path, max_steps=12, learning_rate=3e-3, beta=0.5, builtin_size=96,
                       max_eval_samples=32))
    # held-out examples: the desirable ones' implicit reward rose above the undesirable ones'
    assert m["eval/rewards/margins"] > 0.05, m
    assert m["eval/rewards/chosen"] > m["eval/rewards/rejected"]


def test_kto_precompute_run_equals_live_run(tmp_path):
    kw = {"max_steps": 2, "shuffle": False, "learning_rate": 3e-3}
    live = kto.train(stage_config(kto, tmp_path / "live", **kw))
    pre = kto.train(stage_config(kto, tmp_path / "pre", precompute_ref_logps=True, **kw))
    assert pre["train/loss"] == pytest.approx(live["train/loss"], rel=1e-5)
    assert pre["train/kl"] == pytest.approx(live["train/kl"], rel=1e-4, abs=1e-7)
    assert pre["eval/loss"] == pytest.approx(live["eval/loss"], rel=1e-5)
    assert list((tmp_path / "pre" / "run" / "cache").glob("kto_ref_logps-*.pt"))


def test_kto_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="desirable_weight must be > 0"):
        stage_config(kto, tmp_path, desirable_weight=0.0)
    with pytest.raises(ConfigError, match="needs shuffle=false"):
        stage_config(kto, tmp_path, precompute_ref_logps=True)
    with pytest.raises(ConfigError, match="at least 2"):
        kto.train(stage_config(kto, tmp_path, batch_size=2, grad_accum=2))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="rpo_alpha must be >= 0"):
        stage_config(dpo, tmp_path, rpo_alpha=-1.0)
    with pytest.raises(ConfigError, match="ref_model has no effect with loss_type=simpo"):
        stage_config(dpo, tmp_path, loss_type="simpo", ref_model="x")


# ----------------------------------------------------------------------------------------- data
def test_unpaired_format_and_unpairing_as_trl():
    rows = [{"prompt": "p0", "chosen": " good0", "rejected": " bad0", "source": "a"},
            {"prompt": "p1", "chosen": " good1", "rejected": " bad1", "source": "b"}]
    got = normalise_unpaired(rows, "f")
    assert [(r["prompt"], r["completion"], r["label"], r["source"]) for r in got] == [
        ("p0", " good0", True, "a"), ("p1", " good1", True, "b"), ("p0", " bad0", False, "a"),
        ("p1", " bad1", False, "b")]  # TRL's batched unpair: a block's chosen rows, then its rejected rows
    assert len(unpair([{"prompt": "p", "chosen": "c", "rejected": "r"}] * 1001)) == 2002
    assert unpair([{"prompt": str(i), "chosen": "c", "rejected": "r"} for i in range(1001)])[2000]["prompt"] == "1000"
    with pytest.raises(DataError, match=r"f: row 1: field 'label' must be true or false, got 1"):
        normalise_unpaired([{"prompt": "p", "completion": "c", "label": True},
                            {"prompt": "p", "completion": "c", "label": 1}], "f")
    with pytest.raises(DataError, match="row 0: missing field 'label'"):
        normalise_unpaired([{"prompt": "p", "completion": "c"}], "f")
    with pytest.raises(DataError, match="must both be strings or both messages"):
        normalise_unpaired([{"prompt": [{"role": "user", "content": "p"}], "completion": "c", "label": True}], "f")


def test_conversational_unpaired_file_trains(tmp_path):
    rows = []
    for i in range(8):
        for p, c, y in FEEDBACK:
            rows.append({"prompt": [{"role": "user", "content": f"{p} ({i})"}],
                         "completion": [{"role": "assistant", "content": c.strip()}], "label": y})
    data = write_jsonl(tmp_path / "kto.jsonl", rows)
    m = kto.train(stage_config(kto, tmp_path, data=str(data), max_steps=2))
    assert m["steps"] == 2 and math.isfinite(m["train/loss"])
    assert (tmp_path / "run" / "model" / "chat_template.jinja").is_file()  # the template was trained
    log = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    first = next(r for r in log if "data/train_examples" in r)
    assert first["data/train_desirable"] == 16 and first["data/train_undesirable"] == 16


def test_kto_reference_point_is_averaged_over_processes_in_training_only(tok):
    policy = small_model(tok, seed=0, dtype="float64")
    ref_model = freeze(small_model(tok, seed=1, dtype="float64"))
    exs = _feedback(tok)
    cfg = kto.Config(output_dir="unused", beta=0.3)
    seen = []

    def other_process_at_plus_one(t):  # as acc.reduce(mean) with a second process whose estimate is t + 1
        seen.append(t.item())
        return t + 0.5

    loss_fn = kto.make_loss_fn(tok.pad_token_id, cfg, Reference(ref_model), reduce_mean=other_process_at_plus_one)
    _, stats = loss_fn(policy.train(), exs, 4.0)
    _, _, kl_mean = _hand_kto(policy, ref_model, exs, 0.3, 1.0, 1.0)
    assert seen == [pytest.approx(kl_mean, rel=1e-9)]  # the unclamped per-process mean goes to the reduction
    assert stats["kl"][1].item() / 4 == pytest.approx(max(0.0, kl_mean + 0.5), rel=1e-9)
    _, stats = loss_fn(policy.eval(), exs, 4.0)  # held-out evaluation runs on one process: no collective
    assert len(seen) == 1 and stats["kl"][1].item() / 4 == pytest.approx(max(0.0, kl_mean), rel=1e-9, abs=1e-12)
