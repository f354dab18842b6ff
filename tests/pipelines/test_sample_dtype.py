"""generation.sample_dtype: float32 samples with the training model itself; bfloat16 with a bf16 copy refreshed
from the trained weights before each sampling call (oracle: a fresh cast of the current policy gives the same
tokens under the same seed); auto picks bfloat16 only where the capability check says so; GRPO's old log-probs
come from the training-dtype model; resume is exact; bad values are one-line config errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from pipelines import generation, grpo
from pipelines.common import start_lm_stage
from pipelines.data import encode_prompt
from pipelines.generation import GenerationArgs, SamplingPolicy, cast_copy, generate
from pipelines.models import LoraSpec
from pipelines.sampling import rollout_seed
from reins.config import from_dict
from reins.errors import ConfigError
from tests.helpers import launch_two_cpu_ranks
from tests.pipelines.helpers import crash_at_step, grpo_toy_cfg, grpo_train_rows, log_rows, small_model, small_tok

PROMPTS = ["I stayed at the Harbour Inn last week and", "We ate at Luigi's on Friday and"]
ARGS = GenerationArgs(max_new_tokens=8, temperature=1.0, batch_size=16)
BF16 = torch.bfloat16


@pytest.fixture(scope="module")
def tok():
    return small_tok()


def _ids(tok) -> list[list[int]]:
    return [encode_prompt(tok, p) for p in PROMPTS for _ in range(4)]


def _sample(model, tok, seed: int = 3) -> list[list[int]]:
    return generate(model, tok, _ids(tok), ARGS, seed=seed).completion_ids


def _step(model, tok, lr: float = 0.05) -> torch.optim.Optimizer:
    """One AdamW step on a language-modelling loss over the prompts (every trainable parameter moves)."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    ids = torch.tensor([_ids(tok)[0]])
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return opt


def test_float32_and_a_policy_already_in_the_sampling_dtype_sample_with_the_policy_itself(tok):
    m = small_model(tok)
    sp = SamplingPolicy(m, "float32")
    assert sp.copy is None and sp.model() is m and sp.log_row()["generation/sample_dtype"] == "float32"
    mb = small_model(tok).to(BF16)
    assert SamplingPolicy(mb, "bfloat16").model() is mb


def test_bf16_copy_is_bf16_gets_no_gradients_and_tracks_an_optimizer_step(tok):
    m = small_model(tok)
    sp = SamplingPolicy(m, "bfloat16")
    c = sp.copy
    assert all(p.dtype == BF16 and not p.requires_grad for p in c.parameters())
    assert {n: b.dtype for n, b in c.named_buffers()} == {n: b.dtype for n, b in m.named_buffers()}
    assert (c.lm_head.weight is c.model.embed_tokens.weight) == (m.lm_head.weight is m.model.embed_tokens.weight)
    before = _sample(sp.model(), tok)
    opt = _step(m, tok)
    assert all(p.grad is None for p in c.parameters())
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert not in_opt & {id(p) for p in c.parameters()}
    after = _sample(sp.model(), tok)
    assert after == _sample(cast_copy(m, BF16), tok) and after != before
    own = dict(c.named_parameters())
    assert all(torch.equal(own[n], p.detach().to(BF16)) for n, p in m.named_parameters())


def test_lora_copy_is_the_merged_model_and_tracks_the_adapters(tok):
    """A LoRA policy samples from W + B A cast to bf16 (no adapter branches); oracle: PEFT's own merge of a copy
    of the current policy, in float32, then cast."""
    import copy

    m = small_model(tok, lora=LoraSpec(r=4))
    sp = SamplingPolicy(m, "bfloat16")
    assert not any("lora" in n for n, _ in sp.copy.named_parameters()) and sp._merged and not sp._pairs
    with torch.no_grad():   # LoRA's B starts at zero: give the adapters a visible effect first
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    _step(m, tok)
    oracle = cast_copy(copy.deepcopy(m).merge_and_unload(), BF16)
    got = sp.model()
    own = dict(got.named_parameters())
    assert all(torch.equal(own[n], p) for n, p in oracle.named_parameters())
    assert _sample(got, tok) == _sample(oracle, tok)


def test_auto_follows_the_capability_check(tok, monkeypatch):
    m = small_model(tok)
    monkeypatch.setattr(generation, "cpu_bf16_flags", lambda: [])
    sp = SamplingPolicy(m, "auto")
    assert sp.dtype == torch.float32 and sp.model() is m and "auto: float32" in sp.note
    monkeypatch.setattr(generation, "cpu_bf16_flags", lambda: ["amx_bf16"])
    sp = SamplingPolicy(m, "auto")
    assert sp.dtype == BF16 and sp.model().dtype == BF16 and "amx_bf16" in sp.note
    for ok in (False, True):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda ok=ok: ok)
        assert generation.resolve_sample_dtype("auto", torch.device("cuda"))[0] == (BF16 if ok else torch.float32)


def _rollout_data(cfg: dict):
    c = from_dict(grpo.Config, cfg)
    acc, _ = start_lm_stage(c)
    s = grpo.setup(c, acc)
    rows = list(range(c.batch_size))   # one iteration's prompts
    data, _, _ = grpo.rollout(c, s.policy, s.reference, s.funcs, s.tok, [s.prompts[i] for i in rows],
                              [s.prompt_ids[i] for i in rows], seed=rollout_seed(c.seed, 0, 0), acc=acc,
                              columns=[s.columns[i] for i in rows], sampler=s.sampler)
    return c, s, data


def test_grpo_old_logps_come_from_the_training_model(tmp_path):
    kw = {"beta": 0.0, "eval_prompts": "none", "max_steps": 1}
    _, s32, d32 = _rollout_data(grpo_toy_cfg(tmp_path / "a", **kw))
    assert s32.sampler.copy is None   # the default samples with the policy: same data as without a sampler
    c, s, data = _rollout_data(grpo_toy_cfg(tmp_path / "b", generation={"max_new_tokens": 4, "batch_size": 16,
                                                                         "sample_dtype": "bfloat16"}, **kw))
    assert s.sampler.copy is not None and next(s.policy.parameters()).dtype == torch.float32
    batch = {k: data[k].cpu() for k in ("input_ids", "attention_mask", "response", "response_mask")}
    T, dev = c.generation.temperature, data["input_ids"].device
    fp32 = grpo._logps(s.policy, batch, T, 64, dev)
    bf16 = grpo._logps(s.sampler.model(), batch, T, 64, dev).float()
    assert torch.equal(data["old_logps"], fp32)
    assert (data["old_logps"] - bf16).abs().max() > 1e-4   # the check can tell the two models apart


def test_bf16_grpo_with_lora_resumes_exactly(tmp_path):
    kw = {"beta": 0.0, "lora": {"r": 4}, "learning_rate": 1e-2, "eval_prompts": "none",
          "generation": {"max_new_tokens": 4, "batch_size": 16, "sample_dtype": "bfloat16"}}
    full = grpo.train(from_dict(grpo.Config, grpo_toy_cfg(tmp_path / "full", **kw)))
    assert log_rows(tmp_path / "full")[0]["generation/sample_dtype"] == "bfloat16"
    out = tmp_path / "cut"
    with crash_at_step(2):
        grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out, **kw)))
    assert grpo.train(from_dict(grpo.Config, grpo_toy_cfg(out, **kw))) == full
    assert [r["step"] for r in grpo_train_rows(out)] == [1, 2, 3]


def test_bad_sample_dtype_is_a_one_line_error_before_anything_is_written(tmp_path, capsys):
    with pytest.raises(ConfigError, match="sample_dtype"):
        from_dict(grpo.Config, grpo_toy_cfg(tmp_path / "x", generation={"sample_dtype": "float16"}))
    with pytest.raises(ConfigError, match="sample_dtype"):
        GenerationArgs(sample_dtype="bf16").validate()
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(yaml.safe_dump(grpo_toy_cfg(tmp_path / "y", generation={"sample_dtype": "half"})))
    assert grpo.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "generation: sample_dtype" in err and not (tmp_path / "y").exists()


def test_ppo_samples_from_a_bf16_copy_of_its_policy(tmp_path):
    from pipelines import ppo
    from tests.pipelines.helpers import ppo_toy_cfg

    c = from_dict(ppo.Config, ppo_toy_cfg(tmp_path / "run", generation={"max_new_tokens": 6, "batch_size": 8,
                                                                         "sample_dtype": "bfloat16"}))
    acc, _ = start_lm_stage(c)
    s = ppo.setup(c, acc)
    sp = s.models.sampler
    assert sp.policy is s.models.ac.policy and sp.copy.dtype == BF16
    ppo.iteration(s)   # one rollout and update: the copy follows the updated policy at the next sampling call
    own = dict(sp.model().named_parameters())
    assert all(torch.equal(own[n], p.detach().to(BF16)) for n, p in s.models.ac.policy.named_parameters())
    assert log_rows(tmp_path / "run")[0]["generation/sample_dtype"] == "bfloat16"


def test_preferences_with_bf16_sampling_logs_it_and_resumes_exactly(tmp_path, monkeypatch):
    from pipelines import preferences
    from tests.pipelines.helpers import SMALL

    def cfg(out, dtype):
        return from_dict(preferences.Config, {
            "output_dir": str(out), "quiet": True, "tiny": dict(SMALL), "num_train_prompts": 6, "num_test_prompts": 2,
            "num_samples": 3, "chunk_size": 3, "min_margin": 0.0,
            "generation": {"max_new_tokens": 10, "sample_dtype": dtype}})

    used = []   # the dtype of every model the stage samples with

    def spy(model, *a, **kw):
        used.append(next(model.parameters()).dtype)
        return generate(model, *a, **kw)

    monkeypatch.setattr(preferences, "generate", spy)
    full = preferences.train(cfg(tmp_path / "a", "bfloat16"))
    assert used == [BF16] * 3
    assert log_rows(tmp_path / "a")[0] == {"step": 0, "generation/sample_dtype": "bfloat16",
                                           "generation/sample_dtype_reason": "sample_dtype bfloat16"}
    with crash_at_step(2):
        preferences.train(cfg(tmp_path / "b", "bfloat16"))
    assert preferences.train(cfg(tmp_path / "b", "bfloat16")) == full
    used.clear()
    preferences.train(cfg(tmp_path / "c", "float32"))
    assert used == [torch.float32] * 3


@pytest.mark.slow
def test_two_process_bf16_sampling_keeps_ranks_in_sync(tmp_path):
    """Under accelerate (DDP, two CPU processes) each rank's copy is cast from the unwrapped policy and refreshed
    after every synchronised step; the ranks stay identical."""
    out = tmp_path / "run"
    cfg = tmp_path / "grpo.yaml"
    cfg.write_text(yaml.safe_dump({"stage": "grpo", **grpo_toy_cfg(
        out, max_steps=2, scale_rewards="batch", eval_prompts="none",
        generation={"max_new_tokens": 4, "batch_size": 16, "sample_dtype": "bfloat16"})}))
    proc = launch_two_cpu_ranks("-m", "pipelines.grpo", "--config", str(cfg), timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["dist/world_size"] == 2 and m["dist/param_sync_gap"] == 0.0
    assert log_rows(out)[0]["generation/sample_dtype"] == "bfloat16"
