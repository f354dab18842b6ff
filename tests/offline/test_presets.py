"""Offline presets are YAML files (offline/presets/<stage>/NAME.yaml) resolved by reins.config.apply_preset.

tests/offline/data/presets_eea06d7.json is the oracle: every (stage, preset) pair resolved on commit eea06d7,
when the presets were Python dicts in the stage modules, by this one-off script run there (not re-run since):

    for stage in ("bc", "cql", "iql", "td3bc"):
        mod = importlib.import_module(f"offline.{stage}")
        out[stage] = {name: to_dict(from_dict(mod.Config, {"preset": name, "dataset": "x"}))
                      for name in sorted(mod.PRESETS)}
    json.dumps(out, indent=1, sort_keys=True)

So the files are checked against values recorded before they existed, value and type (10.0 is not 10).
`CHANGED_SINCE` lists the values deliberately changed after eea06d7, each with its reason; `ADDED_SINCE` the
config keys added after it, which no preset sets: every preset must leave them at the Config's default.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from pathlib import Path

import pytest

from offline import iql
from reins.config import apply_preset, from_dict, load_config, preset_names, to_dict
from reins.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
BEFORE = json.loads((Path(__file__).parent / "data" / "presets_eea06d7.json").read_text())
# d3rlpy-discrete re-read against d3rlpy 2.8.1's DiscreteCQLConfig: it applies no observation scaler.
CHANGED_SINCE = {("cql", "d3rlpy-discrete"): {"normalize_obs": False}}
for (_stage, _name), _changes in CHANGED_SINCE.items():
    BEFORE[_stage][_name].update(_changes)


# issue 24: regularisers of the Discrete CQL Q-network
ADDED_SINCE = {"cql": ("q_dropout", "q_layer_norm", "qf_weight_decay")}


def _recorded(cfg) -> dict:
    """to_dict(cfg) without the keys ADDED_SINCE, after checking they hold the Config's defaults."""
    d = to_dict(cfg)
    for key in ADDED_SINCE.get(type(cfg).PRESET_DIR.name, ()):
        assert d.pop(key) == next(f.default for f in dataclasses.fields(cfg) if f.name == key), key
    return d


def _json(cfg) -> str:
    return json.dumps(_recorded(cfg), sort_keys=True)


@pytest.mark.parametrize("stage", sorted(BEFORE))
def test_every_preset_resolves_to_the_values_it_had_as_a_dict(stage):
    cls = importlib.import_module(f"offline.{stage}").Config
    assert preset_names(cls) == sorted(BEFORE[stage])  # none lost, none added without updating the oracle
    for name, want in BEFORE[stage].items():
        assert _json(from_dict(cls, {"preset": name, "dataset": "x"})) == json.dumps(want, sort_keys=True), name
        built = cls(preset=name, dataset="x")  # a config made in Python resolves the same way
        apply_preset(built)
        assert _json(built) == json.dumps(want, sort_keys=True), name


def test_preset_values_are_fresh_each_time():
    """A list a preset sets is the config's own: changing one run's `hidden` leaves the next run's preset alone."""
    first = from_dict(importlib.import_module("offline.cql").Config, {"preset": "corl-locomotion"})
    first.hidden.append(7)
    second = from_dict(importlib.import_module("offline.cql").Config, {"preset": "corl-locomotion"})
    assert second.hidden == [256, 256, 256]


def test_unknown_preset_is_one_line_listing_the_presets(tmp_path, capsys):
    out = tmp_path / "run"
    assert iql.main(["preset=corl-hoper-medium", "dataset=x", f"output_dir={out}", "--quiet"]) == 2
    err = capsys.readouterr().err
    names = sorted(p.stem for p in (ROOT / "offline" / "presets" / "iql").glob("*.yaml"))
    assert err == (f"reins iql: error: unknown preset 'corl-hoper-medium' (valid: {', '.join(names)})\n")
    assert not out.exists()


@dataclasses.dataclass
class _Custom(iql.Config):
    PRESET_DIR = None  # set per test to a directory of hand-written preset files


@pytest.mark.parametrize("text, msg", [
    ("tau: 0.01\ntaux: 1\n", "unknown key 'taux' for _Custom"),
    ("tau: fast\n", "tau: expected a number, got 'fast'"),
    ("preset: other\n", "a preset cannot set 'preset'"),
    ("tau: [0.01\n", "line 2, column 1: invalid YAML: expected ',' or ']'"),
])
def test_a_bad_preset_file_is_one_line_naming_file_and_key(tmp_path, monkeypatch, text, msg):
    (tmp_path / "mine.yaml").write_text(text)
    monkeypatch.setattr(_Custom, "PRESET_DIR", tmp_path)
    with pytest.raises(ConfigError) as e:
        from_dict(_Custom, {"preset": "mine"})
    assert str(e.value).startswith(f"{tmp_path / 'mine.yaml'}: ") and msg in str(e.value)
    assert "\n" not in str(e.value)


def test_a_preset_file_is_typed_and_loses_to_given_keys(tmp_path, monkeypatch):
    """An int in a float field becomes a float, `3e-4` (a string to YAML 1.1) a number; given keys still win."""
    (tmp_path / "mine.yaml").write_text("beta: 6\nactor_lr: 3e-4\nhidden: [8, 8]\ntau: 0.002\n")
    monkeypatch.setattr(_Custom, "PRESET_DIR", tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("preset: mine\ntau: 0.005\n")
    cfg = load_config(_Custom, recipe, {"hidden": [4]})
    assert (cfg.beta, type(cfg.beta), cfg.actor_lr, cfg.hidden, cfg.tau) == (6.0, float, 3e-4, [4], 0.005)


def test_help_lists_the_preset_names(capsys):
    assert iql.main(["--help"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "published hyperparameters" in ln)
    for p in (ROOT / "offline" / "presets" / "iql").glob("*.yaml"):
        assert p.stem in line


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is 3.11+")
def test_every_preset_file_ships_with_the_package():
    """pyproject's package-data globs (setuptools globs them from the package) cover every preset file, so a
    non-editable install finds them too."""
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["offline"]
    shipped = {p for g in globs for p in (ROOT / "offline").glob(g)}
    files = {p for p in (ROOT / "offline" / "presets").rglob("*") if p.is_file()}
    assert files and files <= shipped, sorted(files - shipped)


@pytest.mark.parametrize("stage", sorted(BEFORE))
def test_a_preset_file_given_as_the_recipe_runs_the_same_values(stage):
    """offline/README.md: `--config offline/presets/<stage>/NAME.yaml` resolves to the preset's values (only the
    `preset` key itself stays empty)."""
    cls = importlib.import_module(f"offline.{stage}").Config
    for name, want in BEFORE[stage].items():
        cfg = load_config(cls, ROOT / "offline" / "presets" / stage / f"{name}.yaml", {"dataset": "x"})
        assert _recorded(cfg) == {**want, "preset": ""}, name
