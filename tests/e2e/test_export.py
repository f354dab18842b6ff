"""`reins export`: LM runs become HF directories plain transformers/peft load (test_interop also loads them, and runs
a text-generation pipeline on a merged LoRA export, in a Python without reins), every LM artifact has a model card,
and policies become safetensors + JSON that the README's example acts with in gymnasium, without reins."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from tests.helpers import ROOT, run_cli, run_without_reins, snapshot


def test_every_lm_artifact_has_a_model_card(lm_runs):
    card = (lm_runs / "dpo" / "model" / "README.md").read_text()
    metrics = json.loads((lm_runs / "dpo" / "metrics.json").read_text())
    assert "library_name: peft" in card and "# reins dpo" in card
    assert f"Base model: {lm_runs / 'sft' / 'model'}" in card  # the absolute base path
    assert "Data: preference pairs from `builtin:sentiment`" in card
    assert f"| `train/loss` | {metrics['train/loss']:.4g} |" in card
    assert f"| `eval/rewards/accuracies` | {metrics['eval/rewards/accuracies']:.4g} |" in card
    assert f"--config {lm_runs / 'dpo'}/config.yaml" in card
    assert "Chat template: none" in card  # trained on plain text only
    sft_card = (lm_runs / "sft" / "model" / "README.md").read_text()
    assert "library_name: transformers" in sft_card and "Base model: tiny" in sft_card


def test_merged_lora_export_loads_in_plain_transformers(lm_runs, tmp_path, capfd):
    out = tmp_path / "merged"
    code, err = run_cli(["export", str(lm_runs / "dpo"), "--out", str(out), "--merge", "--quiet"], capfd)
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md"} <= names
    assert "adapter_config.json" not in names and "chat_template.jinja" not in names  # no untrained template
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["max_new_tokens"] == 32 and gen["do_sample"] is True and gen["pad_token_id"] != gen["eos_token_id"]
    assert "the run's LoRA adapter merged into its base model" in (out / "README.md").read_text()
    # The merged model computes what reins computes with the adapter applied (so the merge moved weights).
    from pipelines.models import load_causal_lm, load_tokenizer
    from tests.pipelines.helpers import small_args

    args = small_args(model=str(lm_runs / "dpo" / "model"))
    tok = load_tokenizer(args)
    ids = torch.tensor([tok("The room was clean and the staff")["input_ids"]])
    with torch.no_grad():
        ours = load_causal_lm(args, tok, trainable=False)(input_ids=ids).logits[0, -1]
        base = load_causal_lm(small_args(model=str(lm_runs / "sft" / "model")), tok)(input_ids=ids).logits[0, -1]
    assert (ours - base).abs().max() > 1e-3  # the adapter changed the model
    # plain transformers loads it to the same function (test_interop repeats this in a Python without reins)
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits[0, -1]
    torch.testing.assert_close(plain, ours, atol=1e-5, rtol=1e-5)


def test_adapter_export_without_merge_stays_an_adapter(lm_runs, tmp_path, capfd):
    out = tmp_path / "adapter"
    code, err = run_cli(["export", str(lm_runs / "dpo"), "--out", str(out), "--quiet"], capfd)
    assert code == 0, err
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str(lm_runs / "sft" / "model")
    assert "library_name: peft" in (out / "README.md").read_text()


def test_reward_and_ppo_runs_export(lm_runs, tmp_path, capfd):
    for name in ("reward", "ppo"):
        code, err = run_cli(["export", str(lm_runs / name), "--out", str(tmp_path / name), "--quiet"], capfd)
        assert code == 0, err
    gen = json.loads((tmp_path / "ppo" / "generation_config.json").read_text())
    assert gen["max_new_tokens"] == 6  # the ppo run's rollout settings (its eval default is 32)
    assert "# reins ppo" in (tmp_path / "ppo" / "README.md").read_text()
    assert "AutoModelForSequenceClassification" in (tmp_path / "reward" / "README.md").read_text()
    value_card = (lm_runs / "ppo" / "value_model" / "README.md").read_text()  # ppo's critic (value_model=auto)
    assert "# reins ppo-value" in value_card and "AutoModelForSequenceClassification" in value_card
    from transformers import AutoModelForSequenceClassification

    from pipelines.models import load_reward_model, load_tokenizer
    from tests.pipelines.helpers import small_args

    args = small_args(model=str(lm_runs / "reward" / "model"))
    tok = load_tokenizer(args)
    ids = torch.tensor([tok("The hotel was lovely<|endoftext|>")["input_ids"]])
    with torch.no_grad():
        ours = load_reward_model(args, tok, trainable=False)(input_ids=ids).logits
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward")(input_ids=ids).logits
    torch.testing.assert_close(plain, ours)


def test_export_refuses_bad_input_before_writing(lm_runs, tmp_path, capfd):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    cases = [
        (["export", str(lm_runs / "sft"), "--out", str(taken)], "already exists and is not an empty directory"),
        (["export", str(lm_runs / "sft"), "--out", str(tmp_path / "o1"), "--merge"], "is a full model, not a LoRA"),
        (["export", str(tmp_path / "nope"), "--out", str(tmp_path / "o2")], "does not exist"),
        (["export", str(taken), "--out", str(tmp_path / "o3")], "the run is not complete"),
    ]
    for argv, message in cases:
        code, err = run_cli(argv, capfd)
        assert code == 2 and len(err) == 1 and message in err[0], (argv, err)
    assert snapshot(taken) == {"keep.txt": b"mine"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no partial or temporary directories


# ----------------------------------------------------------------------------------------- policies
def _online_policy(tmp_path, env_id, kind):
    from rl.envs import make_env
    from rl.nets import build_actor
    from rl.policy_io import load_policy, save_policy

    torch.manual_seed(0)
    _, spec = make_env(env_id)
    arch = {"kind": kind, "obs_dim": spec.obs_dim, "act_dim": spec.act_dim, "hidden": [16, 16],
            "activation": "relu" if kind == "q" else "tanh"}
    norm = {"mean": torch.linspace(-1, 1, spec.obs_dim, dtype=torch.float64),
            "var": torch.linspace(0.5, 4, spec.obs_dim, dtype=torch.float64), "clip": 3.0, "eps": 1e-8}
    save_policy(tmp_path / "policy.pt", actor=build_actor(arch), arch=arch, spec=spec, algo=kind, obs_norm=norm)
    return load_policy(tmp_path / "policy.pt")


def _offline_state(kind):
    """An offline stage's policy file contents: IQL/BC/CQL's actor `kind` with the dataset's normalisation."""
    from offline.data import Normalization
    from offline.policy import policy_state
    from offline.trainer import OFFLINE_ACTORS
    from rl.nets import build_actor

    torch.manual_seed(0)
    spec = {"kind": OFFLINE_ACTORS[kind], "obs_dim": 3, "act_dim": 1, "hidden": [16, 16]}
    if kind == "tanh_gaussian":
        spec.update(log_std="clamp", log_std_min=-20.0, log_std_offset=-1.0)
    actor = build_actor(spec)
    with torch.no_grad():
        for p in actor.parameters():
            p.mul_(3.0)  # push the tanh out of its linear range
    norm = Normalization(np.array([0.1, -0.2, 0.3], np.float32), np.array([0.5, 1.5, 2.0], np.float32),
                         np.array([-2.0], np.float32), np.array([2.0], np.float32), 1.0, 1.0, 0.0)
    return policy_state(actor, spec, norm, env_id="Pendulum-v1", dataset_id="x/y-v0", algo="cql")


def _offline_policy(kind):
    from rl.policy_io import Policy

    return Policy(_offline_state(kind))


@pytest.mark.parametrize("source,kind", [("online", "categorical"), ("online", "q"), ("online", "gaussian"),
                                         ("online", "tanh_gaussian"), ("online", "deterministic"),
                                         ("offline", "gaussian"), ("offline", "deterministic"),
                                         ("offline", "tanh_gaussian")])
def test_portable_policy_acts_like_the_reins_policy(tmp_path, source, kind):
    from safetensors.numpy import load_file

    from rl.policy_io import export_portable
    from rl.portable import act_portable

    if source == "online":
        env_id = "CartPole-v1" if kind in ("categorical", "q") else "Pendulum-v1"
        policy = _online_policy(tmp_path, env_id, kind)
    else:
        policy = _offline_policy(kind)
    spec = export_portable(policy, tmp_path / "out")
    w = load_file(str(tmp_path / "out" / "policy.safetensors"))
    obs = np.random.default_rng(0).normal(size=(64, policy.actor.net[0].in_features)).astype(np.float32) * 3
    ours = policy.act(obs, deterministic=True)
    theirs = act_portable(spec, w, obs)
    if kind in ("categorical", "q"):
        np.testing.assert_array_equal(theirs, ours)
        assert len(set(ours.tolist())) > 1  # both actions occur: the comparison is not trivially equal
    else:
        np.testing.assert_allclose(theirs, ours, atol=2e-5)
        assert np.ptp(ours) > 0.5  # actions spread over the box
    assert spec["env_id"] == policy.env_id


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- policy-example -->\n```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its policy example"
    return m.group(1)


def test_readme_example_acts_in_gymnasium_without_reins(tmp_path, capfd):
    """The README's example, verbatim, on an exported offline policy: the return it prints equals reins' own
    evaluation of that policy on the same seed."""
    from offline.policy import save_policy
    from rl.policy_io import Policy
    from rl.portable import EXAMPLE

    example = _readme_example()
    assert example == EXAMPLE and len(example.strip().splitlines()) <= 15
    state = _offline_state("tanh_gaussian")
    policy = Policy(state)
    run = tmp_path / "run"
    save_policy(run / "policy.pt", state)
    (run / "metrics.json").write_text("{}")
    code, err = run_cli(["export", str(run), "--out", str(tmp_path / "policy"), "--quiet"], capfd)
    assert code == 0, err
    assert example in (tmp_path / "policy" / "README.md").read_text()
    printed = run_without_reins(example + "result = {'printed': True, 'ret': float(ret)}\n", cwd=tmp_path)
    import gymnasium as gym

    env, ret, done = gym.make("Pendulum-v1"), 0.0, False
    obs, _ = env.reset(seed=0)
    while not done:
        obs, r, term, trunc, _ = env.step(policy.act(obs[None])[0])
        ret, done = ret + r, term or trunc
    assert printed["ret"] == pytest.approx(ret, abs=1e-2)


def test_policy_of_a_discrete_observation_env_is_refused(tmp_path, capfd):
    """FrozenLake's observations arrive one-hot in reins; the portable spec has no such step, so no export."""
    from rl.envs import make_env
    from rl.nets import build_actor
    from rl.policy_io import save_policy

    _, spec = make_env("FrozenLake-v1")
    arch = {"kind": "categorical", "obs_dim": spec.obs_dim, "act_dim": spec.act_dim, "hidden": [8],
            "activation": "tanh"}
    save_policy(tmp_path / "run" / "policy.pt", actor=build_actor(arch), arch=arch, spec=spec, algo="ppo")
    (tmp_path / "run" / "metrics.json").write_text("{}")
    code, err = run_cli(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out")], capfd)
    assert code == 2 and len(err) == 1 and "1-D Box observations only" in err[0], err
    assert not (tmp_path / "out").exists()


def test_export_keeps_the_run_dtype(tmp_path, capfd):
    """A bfloat16 run exports bfloat16 weights (not a float32 copy twice the size)."""
    import yaml
    from safetensors import safe_open

    from pipelines.models import save_model
    from tests.pipelines.helpers import SMALL, small_model, small_tok

    tok = small_tok()
    save_model(small_model(tok, dtype="bfloat16"), tok, tmp_path / "run" / "model")
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump({"model": "tiny", "dtype": "bfloat16",
                                                                  "packing": False, "tiny": SMALL}))
    (tmp_path / "run" / "metrics.json").write_text('{"steps": 0}')
    code, err = run_cli(["export", str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--quiet"], capfd)
    assert code == 0, err
    with safe_open(str(tmp_path / "out" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
