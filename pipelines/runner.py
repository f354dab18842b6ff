"""`reins run RECIPE.yaml [key=value ...]`: run a staged recipe in order, cached and resumable.

A recipe:

    name: quickstart
    output_dir: runs/quickstart
    stages:
      - name: sft                     # unique name; default output_dir is <output_dir>/<name>
        stage: sft                    # a stage from `reins --help` (or plugin:<your.module>)
        steps: 200                    # the stage's own config keys
      - name: dpo
        stage: dpo
        model: ${sft.output_dir}/model   # references to earlier stages' resolved config keys

Overrides: `output_dir=...` for the recipe, `<stage name>.<key>=value` for a stage.
A stage whose `config.yaml` matches its resolved config, whose `metrics.json` exists and whose inputs are unchanged
is skipped (cached); otherwise it runs, and a stage killed earlier resumes from its own last checkpoint. Inputs
are the local files its config names, fingerprinted by content (`identity.json` in its run dir,
reins.fingerprint), and an earlier stage's output it reads: a stage whose data file was edited, or whose upstream
stage runs again, is rerun from scratch (its old run dir is cleared), and so is everything that depends on it.
`--dry-run` prints the plan, `--only NAME` runs one stage, `--from NAME` starts at a stage (earlier ones must be
complete).
At the end `report.md` is written into the recipe's output_dir from the stages' metrics.json/log.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from reins import runio
from reins.config import from_dict, parse_overrides, read_yaml, set_dotted, to_dict
from reins.entry import STAGES, flush_denormals, run_command, sigterm_raises
from reins.errors import ConfigError
from reins.runio import (
    CONFIG_FILE,
    METRICS_FILE,
    check_run_dir,
    config_changes,
    input_changes,
    recorded_inputs,
    reset_progress,
    run_inputs,
)

_REF = re.compile(r"\$\{([A-Za-z0-9_\-]+)\.([A-Za-z0-9_.]+)\}")
RECIPE_KEYS = ("name", "output_dir", "stages", "report", "quiet")
COMMANDS = ("run", "export")  # entries of `reins --help` that are not stages a recipe runs


@dataclasses.dataclass
class PlannedStage:
    name: str
    stage: str
    module: Any
    config: Any
    cached: bool
    stale: str = ""  # why a run of this config in output_dir is out of date (cleared, then run again)


# A stage of a recipe is one of reins' own (`reins --help`), or, explicitly, `plugin:<dotted.module>`: a
# module of the user's exposing `Config` and `train` (like reward functions' `module:function`, this runs the
# user's code; it is imported only when the recipe runs, never by --dry-run).
PLUGIN = "plugin:"
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]*")


def _check_stage(stage: Any, where: str) -> None:
    """Refuse a stage that is neither a known stage nor an explicit plugin, without importing anything."""
    if not isinstance(stage, str) or not stage:
        raise ConfigError(f"{where}: missing 'stage:'")
    if stage.startswith(PLUGIN):
        if not _MODULE.fullmatch(stage[len(PLUGIN):]):
            raise ConfigError(f"{where}: '{stage}': a plugin stage is plugin:<dotted.module.path>")
        return
    if stage not in STAGES or stage in COMMANDS:
        known = ", ".join(s for s in STAGES if s not in COMMANDS)
        raise ConfigError(f"{where}: unknown stage '{stage}' (known: {known}; a module of your own: "
                          f"plugin:<module>)")


def _stage_module(stage: str, where: str):
    _check_stage(stage, where)
    module_name = stage[len(PLUGIN):] if stage.startswith(PLUGIN) else STAGES[stage][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"{where}: stage '{stage}' is not available in this checkout ({e})") from None
    if not (hasattr(module, "Config") and hasattr(module, "train")):
        raise ConfigError(f"{where}: '{stage}' is a command, not a stage a recipe can run")
    return module


def _resolve(value: Any, scope: dict[str, dict], where: str) -> Any:
    """Substitute ${name.key} references to earlier stages' resolved configs (recursively in lists/dicts)."""
    if isinstance(value, str):
        def lookup(m: re.Match) -> Any:
            name, key = m.group(1), m.group(2)
            if name not in scope:
                raise ConfigError(f"{where}: reference ${{{name}.{key}}} names no earlier stage "
                                  f"(earlier: {', '.join(scope) or 'none'})")
            cur: Any = scope[name]
            for part in key.split("."):
                if not isinstance(cur, dict) or part not in cur:
                    raise ConfigError(f"{where}: reference ${{{name}.{key}}}: '{name}' has no key '{key}'")
                cur = cur[part]
            return cur

        whole = _REF.fullmatch(value)
        if whole:
            return lookup(whole)
        return _REF.sub(lambda m: str(lookup(m)), value)
    if isinstance(value, list):
        return [_resolve(v, scope, where) for v in value]
    if isinstance(value, dict):
        return {k: _resolve(v, scope, where) for k, v in value.items()}
    return value


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> dict:
    data = read_yaml(path)
    if "stages" not in data:
        raise ConfigError(f"{path}: a pipeline recipe needs a 'stages:' list (for one stage use `reins <stage>`)")
    unknown = [k for k in data if k not in RECIPE_KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (valid keys: {', '.join(RECIPE_KEYS)})")
    stages = data["stages"]
    if not isinstance(stages, list) or not stages or not all(isinstance(s, dict) for s in stages):
        raise ConfigError(f"{path}: 'stages' must be a non-empty list of mappings")
    names = [s.get("name") or s.get("stage") for s in stages]
    for i, n in enumerate(names):  # a name is a directory under output_dir and part of report file names
        if not isinstance(n, str) or not _NAME.fullmatch(n):
            raise ConfigError(f"{path}: stage {i + 1}: name {n!r} must be letters, digits, '_' and '-' (it names "
                              "the stage's directory under output_dir; give a plugin stage a name)")
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ConfigError(f"{path}: duplicate stage name '{sorted(dup)[0]}'")
    for s, n in zip(stages, names):
        s["name"] = n
    by_name = {s["name"]: s for s in stages}
    for key, value in (overrides or {}).items():
        head, _, rest = key.partition(".")
        if head in RECIPE_KEYS and not rest:
            data[head] = value
        elif head in by_name and rest:
            set_dotted(by_name[head], rest, value)
        else:
            raise ConfigError(f"override '{key}': expected a recipe key ({', '.join(RECIPE_KEYS[:2])}) or "
                              f"<stage>.<key> with stage in: {', '.join(by_name)}")
    data.setdefault("name", Path(path).stem)
    data.setdefault("output_dir", f"runs/{data['name']}")
    return data


def plan(recipe: dict, *, where: str = "recipe", dry_run: bool = False) -> list[PlannedStage]:
    """Resolve every stage's config in order (references, defaults) and decide which are cached.

    Every stage name is checked before any stage module is imported; with `dry_run` a plugin stage is not
    imported at all (its config stays the recipe's mapping, with `output_dir` filled in)."""
    for spec in recipe["stages"]:
        _check_stage(spec.get("stage"), f"{where}: stage '{spec['name']}'")
    scope: dict[str, dict] = {"run": {"output_dir": recipe["output_dir"], "name": recipe["name"]}}
    planned = []
    for spec in recipe["stages"]:
        spec = dict(spec)
        name = spec.pop("name")
        stage = spec.pop("stage")
        at = f"{where}: stage '{name}'"
        spec.setdefault("output_dir", f"{recipe['output_dir']}/{name}")
        if recipe.get("quiet"):
            spec.setdefault("quiet", True)
        if dry_run and stage.startswith(PLUGIN) and stage[len(PLUGIN):] not in sys.modules:
            scope[name] = _resolve(spec, scope, at)
            planned.append(PlannedStage(name, stage, None, scope[name], False))
            continue
        module = _stage_module(stage, at)
        spec = _resolve(spec, scope, at)
        cfg = from_dict(module.Config, spec, where=at)
        resolved = to_dict(cfg)
        scope[name] = resolved
        upstream = [p.name for p in planned if not p.cached and _reads_output_of(resolved, p)]
        cached, stale = _cache_state(cfg, upstream)
        planned.append(PlannedStage(name, stage, module, cfg, cached, stale))
    return planned


def _reads_output_of(resolved: dict, earlier: PlannedStage) -> bool:
    """Whether a stage's resolved config names a path inside an earlier stage's output_dir."""
    root = Path(to_dict(earlier.config)["output_dir"]).resolve()

    def names(x: Any) -> bool:
        if isinstance(x, dict):
            return any(names(v) for v in x.values())
        if isinstance(x, list):
            return any(names(v) for v in x)
        if isinstance(x, str) and x and "\n" not in x:
            p = Path(x).expanduser().resolve()
            return p == root or root in p.parents
        return False

    return names({k: v for k, v in resolved.items() if k != "output_dir"})


def _cache_state(config: Any, upstream: list[str]) -> tuple[bool, str]:
    """(cached, stale): cached when output_dir holds a completed run of this config on unchanged inputs; stale
    (the reason) when it holds a run of this config, complete or not, that an input change has made out of date."""
    out = Path(config.output_dir)
    cfg_file, metrics_file = out / CONFIG_FILE, out / METRICS_FILE
    if not cfg_file.is_file():
        return False, ""
    try:
        old = yaml.safe_load(cfg_file.read_text()) or {}
    except yaml.YAMLError:
        return False, ""
    if not isinstance(old, dict) or config_changes(old, config):
        return False, ""  # another run's directory: check_run_dir refuses it, as before
    if upstream:
        return False, f"{', '.join(upstream)} runs again"
    recorded = recorded_inputs(out)
    changed = input_changes(recorded, run_inputs(config)) if recorded is not None else []
    if changed:
        return False, f"changed {', '.join(c.removeprefix('input ') for c in changed[:3])}"
    try:
        json.loads(metrics_file.read_text())
    except (OSError, json.JSONDecodeError):
        return False, ""
    return True, ""


_running: dict[str, str | None] = {"stage": None}  # the stage `run_recipe` is in, for the interrupt line


def run_recipe(path: str | Path, overrides: dict[str, Any] | None = None, *, dry_run: bool = False,
               only: str | None = None, start: str | None = None, report: bool | None = None) -> dict:
    recipe = load_recipe(path, overrides)
    stages = plan(recipe, where=str(path), dry_run=dry_run)
    names = [s.name for s in stages]
    for flag, value in (("--only", only), ("--from", start)):
        if value is not None and value not in names:
            raise ConfigError(f"{flag} {value}: no such stage (stages: {', '.join(names)})")
    selected = [s for s in stages if (only is None or s.name == only)]
    if start is not None:
        selected = stages[names.index(start):]
    if dry_run:
        _print_plan(stages, selected)
        return {}
    for s in selected:  # every stage's output dir is usable, before the first stage starts any work
        if not s.cached and not s.stale:
            check_run_dir(to_dict(s.config)["output_dir"], s.config)
    root = Path(recipe["output_dir"])
    root.mkdir(parents=True, exist_ok=True)
    # One `reins run` of a recipe at a time (report.md), held until this returns; each stage locks its own dir.
    _root_lock = runio.lock_run_dir(root)
    results: dict[str, dict] = {}
    first = stages.index(selected[0])
    for i, s in enumerate(stages):
        out = Path(to_dict(s.config)["output_dir"])
        if s.cached or s not in selected:
            if (out / METRICS_FILE).is_file():
                results[s.name] = json.loads((out / METRICS_FILE).read_text())
            elif i < first:
                raise ConfigError(f"stage '{s.name}' is needed before the selected stages but is not complete;"
                                  " run it first (drop --only/--from)")
            else:
                continue
            if not recipe.get("quiet"):
                print(f"[reins run] {s.name}: cached", file=sys.stderr)
            continue
        if s.stale:
            if not recipe.get("quiet"):
                print(f"[reins run] {s.name}: out of date ({s.stale}); clearing {out}", file=sys.stderr)
            shutil.rmtree(out)  # a run of this very stage config (config.yaml matched), now out of date
        if not recipe.get("quiet"):
            print(f"[reins run] {s.name}: running stage '{s.stage}' -> {out}", file=sys.stderr)
        t0 = time.time()
        reset_progress()  # an interrupt names this stage's step, not the previous stage's last one
        _running["stage"] = s.name
        metrics = s.module.train(s.config)
        metrics = dict(metrics)
        results[s.name] = metrics
        if not recipe.get("quiet"):
            print(f"[reins run] {s.name}: done in {time.time() - t0:.1f}s", file=sys.stderr)
    _running["stage"] = None
    if report if report is not None else recipe.get("report", True):
        from pipelines.report import write_report

        write_report(recipe, stages, results)
    return results


def _print_plan(stages: list, selected: list) -> None:
    """`--dry-run`: one line per stage, what a run would do with it."""
    for s in stages:
        state = "cached" if s.cached else ("skip (not selected)" if s not in selected else
                                           f"rerun ({s.stale})" if s.stale else "run")
        state = "plugin, not imported" if s.module is None else state
        out = s.config["output_dir"] if isinstance(s.config, dict) else to_dict(s.config)["output_dir"]
        print(f"{s.name:<16} {s.stage:<12} {state:<20} {out}")


@dataclasses.dataclass
class Config:
    """Only for `reins run --help`: the recipe file carries the real config."""

    recipe: str = dataclasses.field(default="",
                                    metadata={"help": "the staged recipe file to run (stages in order, cached, "
                                                      "resumable)"})
    output_dir: str = dataclasses.field(default="",
                                        metadata={"help": "root of the stages' run dirs and report.md (default: the "
                                                          "recipe's)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of every random number generator of the run"})
    quiet: bool = dataclasses.field(default=False,
                                    metadata={"help": "no progress bar, step lines or final metrics on the terminal"})


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="reins run", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="pipeline recipe YAML")
    parser.add_argument("overrides", nargs="*", help="key=value or <stage>.<key>=value")
    parser.add_argument("--dry-run", action="store_true", help="print the plan (what runs, what is cached)")
    parser.add_argument("--only", help="run only this stage (earlier stages must be complete)")
    parser.add_argument("--from", dest="start", help="start at this stage (earlier stages must be complete)")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args(argv)
    flush_denormals()
    _running["stage"] = None

    def body() -> None:
        with sigterm_raises(), runio.held_run_locks():
            overrides = parse_overrides(args.overrides)
            if args.quiet:
                overrides["quiet"] = True
            run_recipe(args.recipe, overrides, dry_run=args.dry_run, only=args.only, start=args.start,
                       report=False if args.no_report else None)

    return run_command("reins run", body,
                       lambda: f" of stage '{_running['stage']}'" if _running["stage"] else "")


if __name__ == "__main__":
    raise SystemExit(main())
