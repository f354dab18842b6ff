"""Safe loading (issue 7): a pickle that runs code, fed where reins loads checkpoints and policies, is refused
with a clear error and never executes; custom model code (`trust_remote_code`) is off unless turned on.

The malicious file calls `os.system("touch MARKER")` when unpickled; the marker file not existing afterwards is
the proof that nothing ran. Both the raw-pickle form and torch's zip container are tried.
"""

from __future__ import annotations

import dataclasses
import importlib
import re

import pytest

from tests.helpers import (
    ROOT,
    TINY_MODEL,
    TINY_TRAIN,
    resolved_config_yaml,
    run_cli,
    snapshot,
    write_malicious_pickle,
    write_remote_code_model,
)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _minari_ok(d):
    from tests.offline.helpers import two_episodes, write_dataset

    write_dataset("test/ok-v0", two_episodes(), ref_min=-10.0, ref_max=10.0)
    return "test/ok-v0"


# A stage's own checkpoint is replaced by the malicious file; the re-run (a resume) must refuse it.
STAGE_ARGS = {
    "sft": lambda d: [*TINY_TRAIN, "eval_prompts=none"],
    "preferences": lambda d: [*TINY_MODEL, "num_train_prompts=2", "num_test_prompts=1", "num_samples=2",
                              "generation.max_new_tokens=4"],
    "iql": lambda d: [f"dataset={_minari_ok(d)}", "max_steps=2", "batch_size=4", "hidden=[8]", "eval_episodes=1",
                      "torch_threads=1"],
    "online": lambda d: ["algo=ppo", "total_steps=64", "ppo.num_envs=1", "ppo.num_steps=32", "eval_episodes=1"],
}


def _params():
    out = []
    for stage in STAGE_ARGS:
        for torch_zip in (False, True):
            marks = []
            out.append(pytest.param(stage, torch_zip, id=f"{stage}-{'torch-zip' if torch_zip else 'raw-pickle'}",
                                    marks=marks))
    return out


@pytest.mark.parametrize("stage,torch_zip", _params())
def test_malicious_checkpoint_is_refused_without_running(workdir, capfd, stage, torch_zip):
    out, marker = workdir / "out", workdir / "PWNED"
    argv = [f"output_dir={out}", *STAGE_ARGS[stage](workdir), "--quiet"]
    out.mkdir()
    (out / "config.yaml").write_text(resolved_config_yaml(stage, argv))  # the same run: a resume
    write_malicious_pickle(out / "checkpoints" / "checkpoint.pt", marker, torch_zip=torch_zip)
    before = snapshot(out)
    code, err = run_cli([stage, *argv], capfd)
    assert not marker.exists()  # the payload never ran ...
    assert code == 2, err       # ... and the run stopped with a user error, not a traceback
    assert snapshot(out)["checkpoints/checkpoint.pt"] == before["checkpoints/checkpoint.pt"]
    assert not (out / "metrics.json").exists()
    assert len(err) == 1 and "refused to load" in err[0] and "checkpoint.pt" in err[0], err


@pytest.mark.parametrize("torch_zip", [pytest.param(False, id="raw-pickle"),
                                       pytest.param(True, id="torch-zip")])
def test_malicious_policy_given_to_collect_is_refused(workdir, capfd, torch_zip):
    """`reins collect behaviour=online behaviour_run=DIR` loads DIR/policy.pt (a file the user passes in)."""
    run, marker = workdir / "online-run", workdir / "PWNED"
    write_malicious_pickle(run / "policy.pt", marker, torch_zip=torch_zip)
    code, err = run_cli(["collect", f"output_dir={workdir / 'out'}", "behaviour=online", f"behaviour_run={run}",
                         "tiers=[expert]", "ref_episodes=1", "steps_per_tier=10", "dataset_prefix=test/evil",
                         "--quiet"], capfd)
    assert not marker.exists()
    assert code == 2, err
    assert not (workdir / "minari").exists() or not list((workdir / "minari").rglob("metadata.json"))
    assert len(err) == 1 and "policy.pt" in err[0] and "refused to load" in err[0], err


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("torch_zip", [False, True], ids=["raw-pickle", "torch-zip"])
def test_policy_loaders_refuse_pickles(tmp_path, torch_zip):
    from reins.errors import DataError
    from rl.policy_io import load_policy

    marker = tmp_path / "PWNED"
    path = write_malicious_pickle(tmp_path / "policy.pt", marker, torch_zip=torch_zip)
    with pytest.raises(DataError, match=r"policy\.pt: refused to load"):
        load_policy(path)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------- remote code
LM_STAGES = ["sft", "reward", "dpo", "ppo", "grpo", "preferences", "fetch-model"]


def test_trust_remote_code_is_off_by_default():
    """No LM config turns custom model code on by default, and no loader passes trust_remote_code=True."""
    from reins.entry import STAGES

    for name in LM_STAGES:
        cfg_cls = importlib.import_module(STAGES[name][0]).Config
        fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
        if name != "fetch-model":  # every model-loading stage exposes the switch, off by default
            assert fields["trust_remote_code"].default is False, name
    for path in sorted((ROOT / "pipelines").glob("*.py")):
        text = path.read_text()
        # Loaders pass the literal False or the config's own switch (a recipe opt-in); never True.
        for m in re.finditer(r"trust_remote_code\s*=\s*([\w.]+)", text):
            assert m.group(1) in ("False", "args.trust_remote_code", "cfg.trust_remote_code"), (path.name, m[0])
    for path in sorted((ROOT / "recipes").rglob("*.yaml")):
        assert "trust_remote_code: true" not in path.read_text().lower(), path.name


def _remote_code_dir(workdir, where: str):
    """A model dir whose tokenizer (where='tokenizer') or model config (where='model') names custom code."""
    marker = workdir / "PWNED"
    path = write_remote_code_model(workdir / "evil-model", marker)
    if where == "model":
        from pipelines.models import build_tiny_tokenizer

        (path / "tokenizer_config.json").unlink()
        build_tiny_tokenizer(400).save_pretrained(path)  # a plain tokenizer: the model config is what is tried
        text = (path / "config.json").read_text().replace('"llama"', '"evil_arch"')
        (path / "config.json").write_text(text)
    return path, marker


@pytest.mark.parametrize("where", ["tokenizer", "model"])
def test_custom_model_code_never_runs(workdir, capfd, where):
    path, marker = _remote_code_dir(workdir, where)
    code, _ = run_cli(["sft", f"output_dir={workdir / 'out'}", f"model={path}", *TINY_TRAIN, "--quiet"], capfd)
    assert not marker.exists() and code != 0


@pytest.mark.parametrize("where", ["tokenizer", "model"])
def test_custom_model_code_is_a_one_line_error(workdir, capfd, where):
    path, marker = _remote_code_dir(workdir, where)
    code, err = run_cli(["sft", f"output_dir={workdir / 'out'}", f"model={path}", *TINY_TRAIN, "--quiet"], capfd)
    assert not marker.exists()
    assert code == 2 and len(err) == 1 and "evil-model" in err[0], err
