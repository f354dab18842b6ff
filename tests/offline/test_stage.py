"""Stage contract of iql/cql/bc/td3bc (Box and Discrete data): resume equals an uninterrupted run, NaN stops, clear
errors, presets."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from offline import bc, cql, iql, td3bc
from offline.behaviour import PendulumSwingUp, UniformPolicy
from offline.collect import rollout
from reins.errors import ConfigError, DataError, NonFiniteError
from reins.runio import safe_torch_load
from rl.envs import evaluate
from rl.policy_io import load_policy

TINY = dict(hidden=[16, 16], batch_size=32, max_steps=24, eval_every=12, eval_episodes=2, log_every=4,
            checkpoint_every=8, torch_threads=1, quiet=True)


@pytest.fixture
def small_dataset(minari_root):
    """Four Pendulum episodes (two random, two scripted) with reference scores: written once per test."""
    import minari

    from offline.collect import _buffers

    eps = rollout(UniformPolicy([-2.0], [2.0]), "Pendulum-v1", n_episodes=2, n_envs=2, seed=0, deterministic=False)
    eps += rollout(PendulumSwingUp(0.3), "Pendulum-v1", n_episodes=2, n_envs=2, seed=10, deterministic=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("test/small-v0", _buffers(eps), env="Pendulum-v1", ref_min_score=-1200.0,
                                           ref_max_score=-150.0)
    return "test/small-v0"


def _cfg(mod, ds, out, **kw):
    cfg = mod.Config(dataset=ds, output_dir=str(out), **{**TINY, **kw})
    cfg.validate()
    return cfg


class Interrupt(Exception):
    pass


def _interrupt_after(monkeypatch, cls, n):
    real = cls.update
    count = {"n": 0}

    def update(self, batch):
        count["n"] += 1
        if count["n"] > n:
            raise Interrupt()
        return real(self, batch)

    monkeypatch.setattr(cls, update.__name__, update)
    return real


@pytest.fixture
def discrete_dataset(minari_root):
    """Six CartPole-v1 episodes with Discrete(2) actions and reference scores."""
    from tests.offline.helpers import write_cartpole_replay

    return write_cartpole_replay("test/cartpole-v0", 6)[0]


@pytest.mark.parametrize("mod,cls,extra,data", [
    (iql, iql.IQL, {}, "small_dataset"), (cql, cql.CQL, {"cql_n_actions": 2}, "small_dataset"),
    (bc, bc.BC, {"actor": "gaussian"}, "small_dataset"), (td3bc, td3bc.TD3BC, {}, "small_dataset"),
    (bc, bc.DiscreteBC, {}, "discrete_dataset"), (cql, cql.DiscreteCQL, {"target_update_every": 5}, "discrete_dataset"),
    (cql, cql.DiscreteCQL, {}, "discrete_dataset"),
    (cql, cql.DiscreteCQL, {"q_dropout": 0.2, "q_layer_norm": True}, "discrete_dataset")])
def test_resume_equals_uninterrupted(request, tmp_path, monkeypatch, one_thread, mod, cls, extra, data):
    dataset = request.getfixturevalue(data)
    full = mod.train(_cfg(mod, dataset, tmp_path / "full", **extra))
    real = _interrupt_after(monkeypatch, cls, 19)  # dies at step 20: the last checkpoint is step 16
    cfg = _cfg(mod, dataset, tmp_path / "resumed", **extra)
    with pytest.raises(Interrupt):
        mod.train(cfg)
    assert safe_torch_load(tmp_path / "resumed" / "checkpoints" / "checkpoint.pt")["step"] == 16
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.setattr(cls, "update", real)
    resumed = mod.train(cfg)
    drop = {"time/updates_per_s"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in full.items() if k not in drop}
    a = safe_torch_load(tmp_path / "full" / "policy.pt")["state_dict"]
    b = safe_torch_load(tmp_path / "resumed" / "policy.pt")["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    log_a = (tmp_path / "full" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    assert log_a == log_b
    # a finished run is not retrained
    assert mod.train(cfg) == resumed


def test_nan_stops_before_checkpoint(small_dataset, tmp_path, monkeypatch, one_thread):
    real = iql.IQL.update

    def update(self, batch):
        info = real(self, batch)
        self.n = getattr(self, "n", 0) + 1
        if self.n == 11:
            info["loss/q"] = info["loss/q"] * float("nan")
        return info

    monkeypatch.setattr(iql.IQL, "update", update)
    with pytest.raises(NonFiniteError, match="non-finite loss/q at step 11"):
        iql.train(_cfg(iql, small_dataset, tmp_path / "nan"))
    assert safe_torch_load(tmp_path / "nan" / "checkpoints" / "checkpoint.pt")["step"] == 8
    assert not (tmp_path / "nan" / "metrics.json").exists()
    # the check is read at log/eval/checkpoint steps only, and still names the exact first bad step and metric
    with pytest.raises(NonFiniteError, match="non-finite loss/q at step 11"):
        iql.train(_cfg(iql, small_dataset, tmp_path / "nan2", log_every=15, eval_every=15, checkpoint_every=15))
    assert not (tmp_path / "nan2" / "checkpoints" / "checkpoint.pt").exists()
    assert not (tmp_path / "nan2" / "log.jsonl").exists() or \
        (tmp_path / "nan2" / "log.jsonl").read_text().strip() == ""


def test_policy_artifact_and_metrics(small_dataset, tmp_path, one_thread):
    m = iql.train(_cfg(iql, small_dataset, tmp_path / "run"))
    pol = load_policy(tmp_path / "run" / "policy.pt")
    assert pol.env_id == "Pendulum-v1"
    act = pol.act(np.zeros((3, 3), np.float32))
    assert act.shape == (3, 1) and np.all(np.abs(act) <= 2.0)
    # the last evaluation is reproducible from the saved policy with the same evaluation seeds
    returns, _ = evaluate(pol.act, "Pendulum-v1", 2, seed=1_000_000)
    assert m["eval/return_mean"] == pytest.approx(returns.mean(), rel=1e-6)
    assert m["eval/normalized_score"] == pytest.approx(100 * (returns.mean() + 1200) / 1050, rel=1e-6)
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/return_mean" in r]
    assert [r["step"] for r in evals] == [12, 24]
    assert m["eval/normalized_score_best"] == max(r["eval/normalized_score"] for r in evals)
    assert (tmp_path / "run" / "policy_best.pt").is_file()
    assert m["data/transitions"] == 800 and m["data/episodes"] == 4


def test_missing_reference_scores_fail_before_writing(minari_root, tmp_path):
    from tests.offline.helpers import two_episodes, write_dataset

    write_dataset("test/noref-v0", two_episodes())
    with pytest.raises(DataError, match="no ref_min_score/ref_max_score"):
        iql.train(_cfg(iql, "test/noref-v0", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_unknown_dataset_exit_code(minari_root, tmp_path, capsys):
    code = iql.main([f"output_dir={tmp_path / 'x'}", "dataset=test/missing-v0", "--quiet"])
    assert code == 2
    assert "unknown dataset 'test/missing-v0'" in capsys.readouterr().err


def test_presets_fill_defaults_only():
    from reins.config import apply_preset

    cfg = iql.Config(preset="corl-hopper-medium", tau=0.01)
    cfg.validate()
    assert cfg.actor == "gaussian" and cfg.tau == 0.01  # validate() only checks: the preset is a step of loading
    apply_preset(cfg)
    assert cfg.actor == "deterministic" and cfg.normalize_reward is True
    assert cfg.tau == 0.01  # explicit value wins over the preset's 0.001
    c = cql.Config(preset="corl-locomotion")
    apply_preset(c)
    assert (c.cql_alpha, c.policy_lr, c.q_hidden) == (10.0, 3e-5, [256, 256, 256])
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        apply_preset(iql.Config(preset="nope"))


def test_build_returns_the_given_keys_and_leaves_no_hidden_attribute():
    """The keys a user gave come back from `build` (what `apply_preset` honours), not as an attribute."""
    from reins.config import apply_preset, build, from_dict

    cfg, given = build(iql.Config, {"preset": "corl-hopper-medium", "dataset": "x", "tau": 0.005})
    assert given == {"preset", "dataset", "tau"}
    assert cfg.actor == "gaussian"  # built, not yet resolved
    apply_preset(cfg, given)
    assert cfg.actor == "deterministic" and cfg.tau == 0.005  # 0.005 is the default, but it was given
    resolved = from_dict(iql.Config, {"preset": "corl-hopper-medium", "dataset": "x", "tau": 0.005})
    assert resolved == cfg and not hasattr(resolved, "_given_keys")


def test_preset_never_overrides_a_value_the_recipe_gives(tmp_path):
    """A recipe or command-line value equal to the dataclass default still wins over the preset (max_steps=100000,
    the default, under a preset of 1M stays 100000); keys the recipe leaves out take the preset's value."""
    from reins.config import load_config

    recipe = tmp_path / "r.yaml"
    recipe.write_text("stage: iql\npreset: corl-hopper-medium\ndataset: x\nmax_steps: 100000\n")
    cfg = load_config(iql.Config, recipe, {"tau": 0.005}, stage="iql")
    assert iql.Config().max_steps == 100_000 and iql.Config().tau == 0.005  # both equal to the defaults
    assert cfg.max_steps == 100_000 and cfg.tau == 0.005
    assert cfg.actor == "deterministic" and cfg.eval_every == 5000  # not given: the preset's
    plain = load_config(iql.Config, recipe, {}, stage="iql")
    assert plain.tau == 0.001


def test_config_validation():
    with pytest.raises(ConfigError, match="expectile must be in"):
        iql.Config(expectile=1.0).validate()
    with pytest.raises(ConfigError, match="gamma must be in"):
        cql.Config(gamma=1.5).validate()
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        bc.Config(batch_size=0).validate()


def test_recipes_load():
    from pathlib import Path

    import yaml

    from offline import collect
    from reins.config import load_config

    mods = {"iql": iql, "cql": cql, "bc": bc, "td3bc": td3bc, "collect": collect}
    # One-stage recipes only: pipeline recipes (`stages:`) are planned by tests/e2e/test_recipe_files.py.
    recipes = sorted(p for p in Path("recipes/offline").glob("*.yaml") if "stage" in yaml.safe_load(p.read_text()))
    assert len(recipes) >= 8
    for path in recipes:
        stage = yaml.safe_load(path.read_text())["stage"]
        cfg = load_config(mods[stage].Config, path, stage=stage)
        assert cfg.output_dir.startswith("runs/")


def test_multiseed_aggregates_per_seed_runs(small_dataset, tmp_path, one_thread):
    from offline.multiseed import run_seeds

    over = {**TINY, "dataset": small_dataset, "output_dir": str(tmp_path / "ms"), "max_steps": 8, "eval_every": 8}
    out = run_seeds("bc", None, over, [0, 1])
    scores = [json.loads((tmp_path / "ms" / f"seed_{s}" / "metrics.json").read_text())["eval/normalized_score"]
              for s in (0, 1)]
    assert scores[0] != scores[1]  # the seeds really differ
    assert out["eval/normalized_score/mean"] == pytest.approx(np.mean(scores))
    assert json.loads((tmp_path / "ms" / "aggregate.json").read_text())["seeds"] == [0, 1]
    with pytest.raises(ConfigError, match="unknown offline stage"):
        run_seeds("ppo", None, over, [0])


@pytest.mark.parametrize("mod", [iql, td3bc])
def test_discrete_data_refused_before_writing(discrete_dataset, tmp_path, capsys, mod):
    """IQL and TD3+BC need continuous actions: a Discrete dataset is a one-line error, exit 2, nothing written."""
    out = tmp_path / "x"
    assert mod.main([f"output_dir={out}", f"dataset={discrete_dataset}", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Discrete(2) actions" in err and "continuous (Box) actions only" in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("mod,kind", [(bc, "categorical"), (cql, "q")])
def test_discrete_policy_file_acts_by_argmax(discrete_dataset, tmp_path, one_thread, mod, kind):
    """The Discrete policy file holds the actor and the dataset's observation normalisation; act() is the argmax
    of the actor's outputs on (obs - mean) / std, as int64 indices; evaluation reproduces the run's score."""
    m = mod.train(_cfg(mod, discrete_dataset, tmp_path / "run"))
    pol = load_policy(tmp_path / "run" / "policy.pt")
    assert pol.discrete and pol.n_actions == 2 and pol.arch["kind"] == kind and pol.env_id == "CartPole-v1"
    obs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    n = pol.obs_norm
    x = torch.from_numpy((obs - n["mean"].numpy()) / n["std"].numpy())
    with torch.no_grad():
        want = pol.actor(x).argmax(-1).numpy()
    got = pol.act(obs)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    returns, _ = evaluate(pol.act, "CartPole-v1", 2, seed=1_000_000)
    assert m["eval/return_mean"] == pytest.approx(returns.mean(), rel=1e-9)


def test_discrete_data_with_a_box_env_is_refused(discrete_dataset, tmp_path):
    out = tmp_path / "x"
    with pytest.raises(DataError, match="Discrete\\(2\\) actions but env 'Pendulum-v1'"):
        cql.train(_cfg(cql, discrete_dataset, out, eval_env="Pendulum-v1"))
    assert not out.exists()
