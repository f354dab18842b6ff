"""Dataclass configs loaded from YAML, overridden from the command line, validated before any work starts.

One way to configure every stage:

- a stage's config is one dataclass, its keys flat; keys several stages share come from the base dataclasses it
  inherits (`RunArgs` below, offline's `OfflineConfig`, pipelines' `ModelArgs`/`TrainArgs`/...);
- a group of keys that belongs to one component is a nested dataclass, reached by dotted keys (`lora.r`,
  `generation.temperature`); a stage hosting several algorithms nests one section per algorithm (`reins online`:
  `algo: ppo` selects the `ppo.*` section);
- published hyperparameter sets are presets: YAML files `presets/<stage>/NAME.yaml` beside the stage's module,
  named by the Config's `PRESET_DIR` and applied by `apply_preset`, never tables in code;
- a command line's config part (`--config FILE`, `--quiet`, `key=value`, `--key value`) is parsed by `parse_argv`.

Each field carries its help text in `metadata={"help": ...}` (printed by `reins <stage> --help`, see
`config_help`). Loading is four named steps:

1. `load_config` reads a YAML file and applies `key=value` overrides (dotted keys reach nested dataclasses,
   values are parsed as YAML scalars);
2. `build` rejects unknown keys naming the valid ones, coerces types, constructs the dataclass and returns it
   together with the keys the user gave;
3. `apply_preset` fills the fields the named preset's file sets that the user did not give;
4. the dataclass's `validate()`, if it has one, checks the result.

`from_dict` runs steps 2-4. The resolved config round-trips through `to_dict`/`from_dict`, which is what
`config.yaml` stores.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from reins.errors import ConfigError


@dataclasses.dataclass
class RunArgs:
    """The stage contract's own keys, a base of every stage's Config (each sets its `output_dir` default)."""

    output_dir: str = dataclasses.field(default="",
                                        metadata={"help": "directory the run writes (config.yaml, log.jsonl, "
                                                          "metrics.json, checkpoints, artifacts)"})
    seed: int = dataclasses.field(default=0, metadata={"help": "seed of every random number generator of the run"})
    quiet: bool = dataclasses.field(default=False,
                                    metadata={"help": "no progress bar, step lines or final metrics on the terminal"})
    report_to: str = dataclasses.field(default="jsonl",
                                       metadata={"help": "none | jsonl | tensorboard (log.jsonl is always written)"})
    overwrite_output_dir: bool = dataclasses.field(
        default=False, metadata={"help": "write into an output_dir that holds other files or a different run's "
                                         "config (its metrics.json, log.jsonl and checkpoints/ are deleted)"})

T = TypeVar("T")

# Keys a recipe file may carry for the runner that are not part of a stage's own config.
RECIPE_KEYS = ("stage", "name")


def parse_argv(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """A command line's config part as (the `--config FILE`, {dotted_key: parsed_value}): the one argv parser.

    Takes `--config FILE` / `--config=FILE`, the flag `--quiet` (quiet=True) and overrides as `key=value`,
    `--key value` or `--key=value` (dashes in keys become underscores; values are YAML scalars). Every stage's
    `main` (reins.entry.stage_main) and `offline.multiseed` use it, `reins run` through `parse_overrides`.
    """
    config_path, out = None, {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--quiet":
            out["quiet"] = True
        elif arg.startswith("--config="):
            config_path = arg.split("=", 1)[1]
        elif arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file")
            config_path = argv[i + 1]
            i += 1
        elif arg.startswith("--") and "=" not in arg:
            if i + 1 >= len(argv):
                raise ConfigError(f"override '{arg}' has no value")
            out[_override_key(arg[2:], arg)] = _parse_scalar(argv[i + 1])
            i += 1
        elif "=" in arg:
            key, raw = arg.removeprefix("--").split("=", 1)
            out[_override_key(key, arg)] = _parse_scalar(raw)
        else:
            raise ConfigError(f"cannot parse override '{arg}': expected key=value")
        i += 1
    return config_path, out


def _override_key(key: str, arg: str) -> str:
    if not key:
        raise ConfigError(f"override '{arg}' has an empty key")
    return key.replace("-", "_")


def parse_overrides(args: list[str]) -> dict[str, Any]:
    """`parse_argv` for a command that takes no `--config` (`reins run RECIPE [overrides]`): the overrides."""
    config_path, out = parse_argv(args)
    if config_path is not None:
        raise ConfigError(f"--config is not taken here (got '{config_path}'); give key=value overrides")
    return out


def _parse_scalar(raw: str) -> Any:
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        # YAML 1.1 reads "3e-4" (no dot) as a string; a user means the number.
        try:
            return float(value) if any(c in value.lower() for c in ".e") else int(value)
        except ValueError:
            return value
    return value


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c = value` inside nested dicts, creating levels as needed."""
    parts = dotted.split(".")
    cur = data
    for p in parts[:-1]:
        nxt = cur.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            cur[p] = nxt
        cur = nxt
    cur[parts[-1]] = value


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a mapping key given twice (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges may be overridden by the keys written beside them
            key = self.construct_object(key_node, deep=True)
            first = seen.setdefault(key, key_node.start_mark)
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first given at line {first.line + 1}, column "
                                f"{first.column + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def _yaml_error(p: Path, e: yaml.YAMLError) -> ConfigError:
    """One line naming the file, the line and column (1-based) of the problem, and what is wrong."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or (str(e).splitlines()[0] if str(e) else "invalid YAML")
    if mark is None:
        return ConfigError(f"{p}: invalid YAML: {problem}")
    msg = f"{p}: line {mark.line + 1}, column {mark.column + 1}: invalid YAML: {problem}"
    ctx, cmark = getattr(e, "context", None), getattr(e, "context_mark", None)
    if ctx and cmark is not None and (cmark.line, cmark.column) != (mark.line, mark.column):
        msg += f" ({ctx} at line {cmark.line + 1}, column {cmark.column + 1})"
    return ConfigError(msg)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{p}: not UTF-8 text (byte {e.start}, line {line}: {raw[e.start:e.start + 1]!r})"
                          ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise _yaml_error(p, e) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of config keys, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                *, stage: str | None = None) -> T:
    """Read `path` (YAML), apply `overrides`, and build a validated `cls` instance."""
    data = read_yaml(path) if path is not None else {}
    where = str(path) if path is not None else "config"
    file_stage = data.pop("stage", None)
    data.pop("name", None)
    if stage is not None and file_stage is not None and file_stage != stage:
        raise ConfigError(f"{where}: recipe is for stage '{file_stage}', not '{stage}'")
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    return from_dict(cls, data, where=where)


def from_dict(cls: type[T], data: dict, *, where: str = "config") -> T:
    """Build dataclass `cls` from a plain dict (steps 2-4: build, apply the preset, validate), with clear errors."""
    cfg, given = build(cls, data, where=where)
    apply_preset(cfg, given)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def build(cls: type[T], data: dict, *, where: str = "config") -> tuple[T, frozenset[str]]:
    """Construct `cls` from `data` (nested dataclasses resolved by `from_dict`); returns it with the keys given."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        valid = ", ".join(sorted(fields))
        raise ConfigError(f"{where}: unknown key '{unknown[0]}' for {cls.__name__} (valid keys: {valid})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints.get(name, Any), f"{where}: {name}")
    try:
        obj = cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None
    return obj, frozenset(data)


def apply_preset(cfg: Any, given: frozenset[str] | None = None) -> None:
    """Fill the fields the named preset `cfg.preset` sets (its YAML file, `preset_file`) that the user did not give.

    `given` holds the keys a recipe, the command line or config.yaml wrote (what `build` returns): every one of
    them wins over the preset, also one equal to the dataclass default (a recipe's `max_steps: 100000` stays
    100000 under a preset of 1M). Without `given` (a config constructed in Python) a field still at its
    dataclass default counts as unset. The resolved values are what config.yaml stores, so a resumed run does
    not re-apply the preset. A class without `PRESET_DIR` or a config with an empty `preset` is left as it is.
    """
    name = getattr(cfg, "preset", "")
    if getattr(type(cfg), "PRESET_DIR", None) is None or not name:
        return
    values = read_preset(type(cfg), name)
    defaults = {f.name: _default(f) for f in dataclasses.fields(cfg) if f.init}
    for key, value in values.items():
        unset = key not in given if given is not None else getattr(cfg, key) == defaults[key]
        if unset:
            setattr(cfg, key, value)


def preset_names(cls: type) -> list[str]:
    """The presets of a config class: the `NAME.yaml` files in its `PRESET_DIR` (none without one)."""
    directory = getattr(cls, "PRESET_DIR", None)
    if directory is None or not Path(directory).is_dir():
        return []
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def preset_file(cls: type, name: str) -> Path:
    """The file of preset `name` of `cls`; an unknown name is a one-line error listing the presets there are."""
    names = preset_names(cls)
    if name not in names:
        raise ConfigError(f"unknown preset '{name}' (valid: {', '.join(names) or 'none'})")
    return Path(cls.PRESET_DIR) / f"{name}.yaml"


def read_preset(cls: type, name: str) -> dict[str, Any]:
    """Preset `name`'s values, typed as `cls` declares them; a key `cls` lacks is an error naming file and key."""
    path = preset_file(cls, name)
    data = read_yaml(path)
    if "preset" in data:
        raise ConfigError(f"{path}: a preset cannot set 'preset'")
    obj, keys = build(cls, data, where=str(path))  # unknown keys and wrong types refused, values coerced
    return {key: getattr(obj, key) for key in keys}


_REQUIRED = object()


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _REQUIRED


def config_help(cls: type, prefix: str = "") -> list[str]:
    """One entry per config key, nested dataclasses as dotted keys: `key: type = default` and its help line."""
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints.get(f.name, Any)
        key = prefix + f.name
        if dataclasses.is_dataclass(tp):
            lines += config_help(tp, key + ".")
            continue
        default = _default(f)
        shown = "<required>" if default is _REQUIRED else repr(default)
        lines.append(f"  {key}: {_type_name(tp)} = {shown}")
        help_text = f.metadata.get("help", "")
        if f.name == "preset" and preset_names(cls):
            help_text += f" (available: {', '.join(preset_names(cls))})"
        lines.append(f"      {help_text}")
        optional = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if optional:  # an optional section (e.g. `lora`): its keys too, for when it is given
            lines += config_help(optional[0], key + ".")
    return lines


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", str(tp))  # module paths off: LoraSpec | None


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Coerce a YAML value to the annotated type; reject what cannot be converted without guessing."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return _coerce_union(value, args, where)
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value if value is not None else {}, where=where)
    if origin in (list, tuple):
        return _coerce_sequence(value, origin, args, where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    scalar = _SCALARS.get(tp)
    return scalar(value, where) if scalar is not None else value


def _coerce_union(value: Any, args: tuple, where: str) -> Any:
    """`X | None` and other unions: None where None is allowed, else the first member type that takes the value."""
    if value is None and type(None) in args:
        return None
    errors = []
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, where)
        except ConfigError as e:
            errors.append(str(e))
    raise ConfigError(errors[0] if errors else f"{where}: cannot be {value!r}")


def _coerce_sequence(value: Any, origin: type, args: tuple, where: str) -> list | tuple:
    """A list or tuple, each item coerced; a single scalar given for a list becomes a one-item list."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        if origin is list and value is not None:
            value = [value]
        else:
            raise ConfigError(f"{where}: expected a list, got {value!r}")
    inner = args[0] if args else Any
    items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    return items if origin is list else tuple(items)


def _coerce_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: expected true/false, got {value!r}")


def _coerce_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    return int(value)


def _coerce_float(value: Any, where: str) -> float:
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return float(value)


def _coerce_str(value: Any, where: str) -> str:
    if isinstance(value, (dict, list)):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return "" if value is None else str(value)


_SCALARS = {bool: _coerce_bool, int: _coerce_int, float: _coerce_float, str: _coerce_str}


def to_dict(cfg: Any) -> dict:
    """Plain-dict form of a config dataclass (what `config.yaml` stores)."""
    return dataclasses.asdict(cfg)


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def check(cond: bool, message: str) -> None:
    """Raise a ConfigError with `message` unless `cond` holds (for `validate()` methods)."""
    if not cond:
        raise ConfigError(message)
