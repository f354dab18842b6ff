"""Stage runs on the small tiny model: parameters move (only adapters under LoRA), exact resume, NaN stop."""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from pipelines import dpo, reward_model, sft
from pipelines.models import freeze, load_causal_lm, load_tokenizer
from pipelines.trainer import Trainer, make_accelerator
from reins.config import from_dict
from reins.errors import ConfigError, DataError, NonFiniteError
from reins.runio import RunDir
from tests.pipelines.helpers import crash_at_step, stage_config, stage_overrides


def _params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}


def test_one_dpo_step_changes_every_parameter(tmp_path):
    cfg = stage_config(dpo, tmp_path, max_steps=1, learning_rate=1e-2)
    tok = load_tokenizer(cfg)
    before = _params(load_causal_lm(cfg, tok, seed=cfg.seed))
    dpo.train(cfg)
    after = _params(load_causal_lm(from_dict(dpo.Config, {**stage_overrides(tmp_path),
                                                           "model": str(tmp_path / "run" / "model")}), tok))
    assert before.keys() == after.keys()
    unchanged = [n for n in before if torch.equal(before[n], after[n])]
    assert unchanged == []


def test_lora_step_changes_only_adapter_parameters(tmp_path):
    # Two steps: LoRA's B starts at 0, so A's gradient is 0 in the first step and A moves from the second.
    cfg = stage_config(dpo, tmp_path, max_steps=2, learning_rate=1e-2, lora={"r": 2})
    tok = load_tokenizer(cfg)
    acc = make_accelerator(cfg)
    model = load_causal_lm(cfg, tok, seed=cfg.seed)
    before = _params(model)
    loss_fn = dpo.make_loss_fn(tok.pad_token_id, cfg, dpo.Reference(adapter_host=model))
    exs, _ = dpo.tokenize_preferences(tok, dpo.normalise_preferences(dpo.builtin_pairs(16, 0, "train"), "b"),
                                      "b", 48)
    Trainer(None, cfg, acc, model, exs, loss_fn, seed=0).train()
    after = _params(model)
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    lora = {n for n in before if "lora_" in n}
    assert lora and changed == lora  # every adapter weight moved, nothing else did


def test_reward_step_trains_head_and_trunk(tmp_path):
    cfg = stage_config(reward_model, tmp_path, max_steps=1, learning_rate=1e-2, eval_fraction=0.25)
    m = reward_model.train(cfg)
    assert 0.0 <= m["eval/accuracy"] <= 1.0 and m["steps"] == 1
    assert (tmp_path / "run" / "model" / "config.json").is_file()
    cfgjson = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert cfgjson["architectures"] == ["LlamaForSequenceClassification"] and len(cfgjson["id2label"]) == 1
    assert cfgjson["pad_token_id"] != cfgjson["eos_token_id"]



@pytest.mark.parametrize("mod", [sft, dpo])
def test_resume_equals_uninterrupted(tmp_path, mod):
    kw = {"max_steps": 4, "save_every": 2, "learning_rate": 3e-3}
    full = mod.train(stage_config(mod, tmp_path / "a", **kw))
    with crash_at_step(3):
        mod.train(stage_config(mod, tmp_path / "b", **kw))
    assert not (tmp_path / "b" / "run" / "metrics.json").exists()
    resumed = mod.train(stage_config(mod, tmp_path / "b", **kw))
    assert resumed.keys() == full.keys()
    for k in full:
        assert resumed[k] == pytest.approx(full[k], rel=1e-6, abs=1e-9), k
    log_a = [json.loads(x) for x in (tmp_path / "a" / "run" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (tmp_path / "b" / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_a] == [r["step"] for r in log_b]
    assert [r.get("loss") for r in log_a] == pytest.approx([r.get("loss") for r in log_b])
    # A completed run is not retrained: its metrics are returned as they are.
    assert mod.train(stage_config(mod, tmp_path / "b", **kw)) == resumed


def test_nan_loss_stops_before_checkpointing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = dpo.dpo_loss

    def poisoned(*a, **k):
        calls["n"] += 1
        losses, c, r = real(*a, **k)
        return (losses * float("nan") if calls["n"] >= 2 else losses), c, r

    monkeypatch.setattr(dpo, "dpo_loss", poisoned)
    cfg = stage_config(dpo, tmp_path, max_steps=4, save_every=1)
    with pytest.raises(NonFiniteError, match="non-finite loss at step 2"):
        dpo.train(cfg)
    run = RunDir(cfg.output_dir, cfg)
    assert run.load_checkpoint()["step"] == 1
    assert run.completed_metrics() is None


class _Toy(torch.nn.Module):
    """A linear regression the Trainer can run: loss_fn below does no host sync of its own."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)


def _toy_trainer(tmp_path, n=40, poison_from=None, **kw):
    cfg = stage_config(dpo, tmp_path, batch_size=4, max_grad_norm=1.0, **kw)
    g = torch.Generator().manual_seed(0)
    examples = [{"x": torch.randn(3, generator=g), "y": float(i % 3)} for i in range(n)]
    calls = {"n": 0}

    def loss_fn(model, exs, denom):
        calls["n"] += 1
        dev = model.lin.weight.device  # the Trainer moves the model to CUDA where there is one
        x = torch.stack([e["x"] for e in exs]).to(dev)
        y = torch.tensor([e["y"] for e in exs], device=dev)
        err = (model.lin(x).squeeze(-1) - y).square()
        if poison_from is not None and calls["n"] >= poison_from:
            err = err * float("nan")
        return err.sum() / denom, {"loss": ("mean", err.detach().sum(), len(exs)),
                                   "max_err": ("max", err.detach().max())}

    run = RunDir(cfg.output_dir, cfg)
    torch.manual_seed(0)
    t = Trainer(run, cfg, make_accelerator(cfg), _Toy(), examples, loss_fn, seed=0)
    return t, run, calls


def test_trainer_reads_metrics_only_at_sync_points(tmp_path, monkeypatch):
    """Between log/save/hook steps the loop makes no device-to-host read: metrics and the finiteness checks
    are read at sync points only, and still come out per step exactly."""
    t, run, calls = _toy_trainer(tmp_path, max_steps=10, log_every=5, save_every=100)
    t.epoch_order(0)  # the epoch's permutation is read once up front
    reads: list[int] = []
    for name in ("item", "tolist", "__float__", "__bool__", "__int__", "__index__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            # torch.optim reads its step counter, a host tensor even for CUDA parameters: not a device sync
            if "torch/optim/" not in sys._getframe(1).f_code.co_filename.replace("\\", "/"):
                reads.append(calls["n"])
            return _real(self, *a, **k)
        monkeypatch.setattr(torch.Tensor, name, counted)
    hooked = []
    t.train(lambda step, m: hooked.append((step, m["loss"])), every=2)
    monkeypatch.undo()
    assert sorted(set(reads)) == [2, 4, 5, 6, 8, 10]  # hooks every 2nd step, logs at 5 and 10; nothing else
    assert [s for s, _ in hooked] == [2, 4, 6, 8, 10]
    log = [json.loads(x) for x in (run.path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [5, 10]
    assert all(math.isfinite(r["loss"]) and r["max_err"] * 4 >= r["loss"] for r in log)
    assert log[0]["learning_rate"] != log[1]["learning_rate"] and log[1]["epoch"] == 1.0


def test_trainer_metrics_equal_per_step_reads(tmp_path):
    """Deferred reads give the same per-step metrics as reading every step."""
    a, _, _ = _toy_trainer(tmp_path / "a", max_steps=10, log_every=10, save_every=100)
    b, _, _ = _toy_trainer(tmp_path / "b", max_steps=10, log_every=10, save_every=100)
    per_step: list[dict] = []
    a.train(lambda step, m: per_step.append(dict(m)), every=1)
    last = b.train()
    assert last == pytest.approx(per_step[-1], rel=1e-12)
    assert last["max_err"] >= last["loss"] > 0


def test_nan_between_sync_points_names_its_step_and_keeps_the_checkpoint(tmp_path):
    t, run, _ = _toy_trainer(tmp_path, max_steps=12, log_every=4, save_every=4, poison_from=6)
    with pytest.raises(NonFiniteError, match="non-finite loss at step 6"):
        t.train()
    assert run.load_checkpoint()["step"] == 4
    log = [json.loads(x) for x in (run.path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4]


def test_config_and_data_errors_before_training(tmp_path):
    with pytest.raises(ConfigError, match="beta must be > 0"):
        stage_config(dpo, tmp_path, beta=-1.0)
    with pytest.raises(ConfigError, match="multiple of num_processes"):
        dpo.train(stage_config(dpo, tmp_path / "x", batch_size=6, grad_accum=4))
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "b"}) + "\n")
    with pytest.raises(DataError, match=r"p\.jsonl: row 0: 'chosen' and 'rejected' are identical"):
        dpo.train(stage_config(dpo, tmp_path / "y", data=str(tmp_path / "p.jsonl")))
    assert not (tmp_path / "y" / "run").exists()  # nothing written for a run that never started


def test_frozen_reference_has_no_grad(tmp_path):
    cfg = stage_config(dpo, tmp_path)
    tok = load_tokenizer(cfg)
    ref = freeze(load_causal_lm(cfg, tok))
    assert not any(p.requires_grad for p in ref.parameters()) and not ref.training


def test_grad_accum_gives_the_same_curve_as_one_big_batch(tmp_path):
    kw = {"max_steps": 2, "learning_rate": 3e-3, "max_eval_samples": 2}
    a = dpo.train(stage_config(dpo, tmp_path / "a", grad_accum=1, **kw))
    b = dpo.train(stage_config(dpo, tmp_path / "b", grad_accum=4, **kw))
    for k in ("train/loss", "train/rewards/margins", "train/grad_norm", "eval/loss"):
        assert a[k] == pytest.approx(b[k], abs=1e-5), k


def test_gradient_checkpointing_does_not_change_gradients(tmp_path):
    from pipelines.data import builtin_sft_rows, normalise_sft, tokenize_sft

    cfg = stage_config(sft, tmp_path, dtype="float64")
    tok = load_tokenizer(cfg)
    exs, _ = tokenize_sft(tok, normalise_sft(builtin_sft_rows(4, 0, "train"), "b"), "b", 48)
    grads = []
    for ckpt in (False, True):
        cfg.gradient_checkpointing = ckpt
        model = load_causal_lm(cfg, tok, seed=0)
        flag = getattr(model, "is_activation_checkpointing", None)
        assert (flag if flag is not None else model.is_gradient_checkpointing) == ckpt
        model.train()
        loss, _ = sft.make_loss_fn(tok.pad_token_id)(model, exs, 50.0)
        loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=0, atol=1e-12)


def test_conversational_preferences_train_end_to_end(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": f"Review hotel {i}."}],
             "chosen": [{"role": "assistant", "content": "The room was spotless. I loved it."}],
             "rejected": [{"role": "assistant", "content": f"The room was dirty {i}."}]} for i in range(8)]
    path = tmp_path / "conv.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = dpo.train(stage_config(dpo, tmp_path, data=str(path), max_steps=1, precompute_ref_logps=True))
    assert m["steps"] == 1 and m["train/loss"] == pytest.approx(0.6931471805599453, abs=1e-6)  # policy == ref
    assert list((tmp_path / "run" / "cache").glob("ref_logps-*.pt"))


def test_sft_packing_blocks():
    exs = [{"prompt_ids": [1, 2], "completion_ids": [3, 4, 5]}, {"prompt_ids": [6], "completion_ids": [7, 8]}]
    assert sft.pack(exs, 3) == [{"prompt_ids": [], "completion_ids": [1, 2, 3]},
                                {"prompt_ids": [], "completion_ids": [4, 5, 6]}]  # the 2-token tail is dropped


def test_lora_reward_model_trains_its_head_and_saves_merged(tmp_path):
    m = reward_model.train(stage_config(reward_model, tmp_path, max_steps=1, learning_rate=1e-2, lora={"r": 2},
                                        eval_fraction=0.25))
    assert m["steps"] == 1
    out = tmp_path / "run" / "model"
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    from pipelines.models import load_reward_model

    cfg = stage_config(reward_model, tmp_path)
    tok = load_tokenizer(cfg)
    init = load_reward_model(cfg, tok, seed=cfg.seed)
    cfg.model = str(out)
    trained = load_reward_model(cfg, tok)
    assert not torch.equal(init.score.weight, trained.score.weight)  # the trained head was saved (merged)
    # The saved reward model is used by DPO's evaluation (eval/reward_model_score).
    d = dpo.train(stage_config(dpo, tmp_path / "d", max_steps=1, eval_prompts="builtin:sentiment",
                               reward_model=str(out), eval={"num_prompts": 2, "max_new_tokens": 6}))
    assert "eval/reward_model_score" in d and math.isfinite(d["eval/reward_model_score"])


def test_explicit_ref_model_is_used(tmp_path):
    from pipelines.models import save_model

    cfg = stage_config(dpo, tmp_path / "x")
    tok = load_tokenizer(cfg)
    save_model(load_causal_lm(cfg, tok, seed=cfg.seed), tok, tmp_path / "same")     # = the initial policy
    save_model(load_causal_lm(cfg, tok, seed=cfg.seed + 1), tok, tmp_path / "other")
    same = dpo.train(stage_config(dpo, tmp_path / "a", max_steps=1, ref_model=str(tmp_path / "same")))
    other = dpo.train(stage_config(dpo, tmp_path / "b", max_steps=1, ref_model=str(tmp_path / "other")))
    assert same["train/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert abs(other["train/loss"] - math.log(2)) > 1e-3


def test_torch_compile_trains_like_eager_and_saves_plain_weights(tmp_path):
    """torch_compile=true (the policy, and DPO's reference for the loss) gives the eager run's losses and
    a saved model whose parameter names and values match the eager one's (no `_orig_mod.` prefixes)."""
    runs = {}
    for compiled in (False, True):
        cfg = stage_config(dpo, tmp_path / str(compiled), max_steps=2, log_every=1, torch_compile=compiled,
                   learning_rate=1e-2)
        dpo.train(cfg)
        logs = [json.loads(line) for line in open(tmp_path / str(compiled) / "run" / "log.jsonl")]
        tok = load_tokenizer(cfg)
        saved = load_causal_lm(from_dict(dpo.Config, {**stage_overrides(tmp_path),
                                                      "model": str(tmp_path / str(compiled) / "run" / "model")}),
                               tok)
        runs[compiled] = ([e["loss"] for e in logs if "loss" in e], _params(saved))
    (eager_loss, eager_p), (comp_loss, comp_p) = runs[False], runs[True]
    assert len(eager_loss) == 2 and comp_loss == pytest.approx(eager_loss, abs=1e-5)
    assert comp_p.keys() == eager_p.keys()
    init = _params(load_causal_lm(stage_config(dpo, tmp_path), load_tokenizer(stage_config(dpo, tmp_path)),
                                  seed=stage_config(dpo, tmp_path).seed))
    for n in eager_p:
        assert torch.allclose(comp_p[n], eager_p[n], atol=1e-4), n
    assert any(not torch.equal(init[n], eager_p[n]) for n in init)  # the steps did move the weights


def test_adamw_is_fused_and_steps_like_the_reference():
    from pipelines.trainer import adamw

    torch.manual_seed(0)
    a, b = torch.nn.Linear(5, 4).double(), torch.nn.Linear(5, 4).double()
    b.load_state_dict(a.state_dict())
    fa = adamw([{"params": [a.weight], "weight_decay": 0.1}, {"params": [a.bias], "weight_decay": 0.0}], lr=1e-2)
    ref = torch.optim.AdamW([{"params": [b.weight], "weight_decay": 0.1}, {"params": [b.bias], "weight_decay": 0.0}],
                            lr=1e-2, foreach=False)
    assert fa.defaults["fused"] is True
    w0 = a.weight.detach().clone()
    x = torch.randn(8, 5, dtype=torch.float64)
    for _ in range(3):
        for m, opt in ((a, fa), (b, ref)):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    assert (a.weight - w0).abs().min() > 1e-3  # every weight moved
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-12, atol=1e-14)
    # integer / non-float parameters cannot use the fused kernel: plain AdamW then
    assert adamw([{"params": [torch.zeros(2, dtype=torch.int64)]}], lr=1e-2).defaults["fused"] is None
