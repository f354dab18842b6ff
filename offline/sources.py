"""People's own offline data files, read into `offline.data.Steps` for the one validator.

    dataset=logs/hopper.hdf5     D4RL-style arrays (h5py): observations, actions, rewards, terminals, timeouts,
    dataset=logs/hopper.npz      optional next_observations; optional scalars ref_min_score / ref_max_score
                                 (an .h5 that d3rlpy's `dump` wrote is read as its episodes)
    dataset=logs/steps.parquet   a table of steps, one row per step: episode_id, the observation (one list column
    dataset=logs/steps.jsonl     or several scalar columns), action, reward, terminated, truncated; optional
                                 next_observation (like the observation) and step (must increase in an episode)

Arrays follow D4RL's `qlearning_dataset` / d3rlpy's `get_d4rl` reading (timeouts may be absent when
next_observations are given; a table's truncated column may be absent): an episode ends where terminals or
timeouts is set, and next observations are derived where the file has none (`offline.data.steps_to_transitions`
says how). A table's episodes are its runs of equal episode_id, which must be contiguous; terminated/truncated
may be set only on an episode's last row, and an episode whose last row has neither was cut off by the log.
Column names also accepted: observations/obs/state, actions, rewards, terminal(s)/termination(s),
timeout(s)/truncation(s), episode/episode_index; `obs_columns=` / `action_columns=` name them explicitly
(a list of scalar columns, one list column, or a prefix ending in `*`: `obs_*` = obs_0, obs_1, ... in numeric
order). Errors name the file, the row (parquet: 0-based row; jsonl: 1-based line) and the field.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from offline.data import STEP_FIELDS, Steps
from reins.errors import DataError, quote_error

ARRAY_SUFFIXES = (".hdf5", ".h5", ".npz")
TABLE_SUFFIXES = (".parquet", ".jsonl")
REF_KEYS = ("ref_min_score", "ref_max_score")

# canonical field -> the table column names accepted for it, in order of preference
TABLE_ALIASES = {
    "episode_id": ("episode_id", "episode", "episode_index", "episode_ids"),
    "rewards": ("reward", "rewards"),
    "terminals": ("terminated", "terminal", "terminals", "termination", "terminations"),
    "timeouts": ("truncated", "truncation", "truncations", "timeout", "timeouts"),
    "step": ("step", "step_id", "timestep", "t", "frame_index"),
}
VECTOR_ALIASES = {  # one column, else a prefix of scalar columns
    "observations": (("observation", "observations", "obs", "state"), ("observation_", "obs_", "state_")),
    "actions": (("action", "actions"), ("action_", "act_")),
    "next_observations": (("next_observation", "next_observations", "next_obs", "next_state"),
                          ("next_observation_", "next_obs_", "next_state_")),
}


def is_file_source(dataset: str) -> bool:
    return Path(str(dataset)).suffix.lower() in (*ARRAY_SUFFIXES, *TABLE_SUFFIXES)


def read_steps(path: str, *, obs_columns: list[str] | None = None,
               action_columns: list[str] | None = None) -> Steps:
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    suffix = p.suffix.lower()
    if suffix in ARRAY_SUFFIXES:
        if obs_columns or action_columns:
            raise DataError(f"{path}: obs_columns/action_columns apply to step tables (.parquet, .jsonl) only")
        return _array_steps(p)
    return _table_steps(p, list(obs_columns or []), list(action_columns or []))


# ------------------------------------------------------------------------------------------- D4RL-style arrays
def _array_steps(p: Path) -> Steps:
    keys = (*STEP_FIELDS, "next_observations", *REF_KEYS)
    try:
        if p.suffix.lower() == ".npz":
            with np.load(p, allow_pickle=False) as f:
                raw = {k: f[k] for k in keys if k in f.files}
        else:
            import h5py

            with h5py.File(p, "r") as f:
                if "num_episodes" in f and "columns" in f and "observations" not in f:
                    raw = _d3rlpy_dump(p, f)
                else:
                    raw = {k: f[k][()] for k in keys if isinstance(f.get(k), h5py.Dataset)}
                raw.update({k: f.attrs[k] for k in REF_KEYS if k in f.attrs and k not in raw})
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - zipfile/h5py/numpy raise assorted errors for unreadable files
        raise DataError(f"{p}: cannot read {p.suffix.lstrip('.')} file: {quote_error(e)}") from None
    info: dict = {"metadata": {"source": str(p), "format": p.suffix.lstrip(".").lower()}}
    if "timeouts" not in raw and "next_observations" in raw and "rewards" in raw:
        # With next observations, timeouts only mark time-limit episode ends (for returns); d3rlpy's MDPDataset
        # takes them as optional too. Without next observations they are needed, and their absence is an error.
        raw["timeouts"] = np.zeros(np.shape(raw["rewards"])[:1], bool)
        info["metadata"]["timeouts"] = "absent: all false"
    for k in REF_KEYS:
        if k in raw:
            v = np.asarray(raw.pop(k))
            if v.size != 1 or v.dtype.kind not in "iuf":
                raise DataError(f"{p}: {k} must be one number, got shape {v.shape} of {v.dtype}")
            info[k] = float(v.reshape(-1)[0])
    name = str(p)
    return Steps(name, raw, locate=lambda r: (name, f"row {r}"), info=info)


def _d3rlpy_dump(p: Path, f) -> dict:
    """A d3rlpy ReplayBuffer/MDPDataset `dump` (format 2.1: per-episode `observations_i`, `actions_i`,
    `rewards_i`, `terminated_i`) as D4RL-style arrays: each episode's last row is terminal when `terminated_i`,
    else a timeout (d3rlpy stores no final observation, so that row is dropped, as d3rlpy does)."""
    n = int(f["num_episodes"][()])
    cols = [c.decode() if isinstance(c, bytes) else str(c) for c in f["columns"][()]]
    if "observations_0" not in f or cols[:4] != ["observations", "actions", "rewards", "terminated"]:
        raise DataError(f"{p}: a d3rlpy dump with tuple observations or columns {cols} is not supported")
    obs, act, rew, term = [], [], [], []
    for i in range(n):
        o = f[f"observations_{i}"][()]
        obs.append(o)
        act.append(f[f"actions_{i}"][()])
        rew.append(np.asarray(f[f"rewards_{i}"][()]).reshape(-1))
        term.append(bool(f[f"terminated_{i}"][()]))
    ends = [np.arange(len(o)) == len(o) - 1 for o in obs]
    return {"observations": np.concatenate(obs), "actions": np.concatenate(act), "rewards": np.concatenate(rew),
            "terminals": np.concatenate([e & t for e, t in zip(ends, term)]),
            "timeouts": np.concatenate([e & (not t) for e, t in zip(ends, term)])}


# ------------------------------------------------------------------------------------------- step tables
def _read_parquet(p: Path) -> tuple[dict, list[str], object]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p)
    except Exception as e:  # noqa: BLE001 - pyarrow raises assorted errors for unreadable files
        raise DataError(f"{p}: cannot read parquet file: {quote_error(e)}") from None
    return {name: table.column(name) for name in table.column_names}, list(table.column_names), None


def _read_jsonl(p: Path) -> tuple[dict, list[str], np.ndarray]:
    """Columns of a JSON-lines file (each non-blank line one object), and each row's 1-based line number."""
    rows, lines = [], []
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{p}: cannot read: {quote_error(e)}") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}: line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(rec, dict):
            raise DataError(f"{p}: line {i}: expected one JSON object per line, got {type(rec).__name__}")
        rows.append(rec)
        lines.append(i)
    if not rows:
        raise DataError(f"{p}: no steps")
    names = list(rows[0])
    cols = {}
    for name in names:
        vals = []
        for rec, i in zip(rows, lines):
            if name not in rec:
                raise DataError(f"{p}: line {i}: missing '{name}' (the first line has it)")
            vals.append(rec[name])
        cols[name] = vals
    return cols, names, np.asarray(lines)


def _resolve(p: Path, names: list[str], key: str, spec: list[str], required: bool) -> list[str]:
    """The column(s) holding `key`: given by `spec` (names and prefixes ending in '*'), else by the aliases."""
    if spec:
        out = []
        for s in spec:
            if s.endswith("*"):
                hits = sorted((n for n in names if n.startswith(s[:-1])), key=_natural)
                if not hits:
                    raise DataError(f"{p}: no column matches '{s}' (columns: {', '.join(names)})")
                out += hits
            elif s in names:
                out.append(s)
            else:
                raise DataError(f"{p}: no column '{s}' (columns: {', '.join(names)})")
        return out
    singles, prefixes = VECTOR_ALIASES.get(key, (TABLE_ALIASES.get(key, ()), ()))
    for s in singles:
        if s in names:
            return [s]
    for pre in prefixes:
        hits = [n for n in names if n.startswith(pre) and n[len(pre):].isdigit()]
        if hits:
            return sorted(hits, key=_natural)
    if required:
        raise DataError(f"{p}: missing column '{singles[0]}' (also accepted: {', '.join(singles[1:]) or 'none'}; "
                        f"columns: {', '.join(names)})")
    return []


def _natural(name: str):
    m = re.match(r"(.*?)(\d+)$", name)
    return (m.group(1), int(m.group(2))) if m else (name, -1)


def _column(p: Path, col, name: str, where) -> np.ndarray:
    """One table column as numpy: scalars as (n,), a list column as (n, d) (every row the same length)."""
    if hasattr(col, "combine_chunks"):  # a pyarrow ChunkedArray
        import pyarrow as pa
        import pyarrow.compute as pc

        arr = col.combine_chunks()
        if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
            lengths = pc.fill_null(pc.list_value_length(arr), -1).to_numpy(zero_copy_only=False)
            _same_lengths(name, lengths, where)
            flat = arr.flatten().to_numpy(zero_copy_only=False)
            return np.asarray(flat).reshape(len(arr), int(lengths[0]))
        if arr.null_count and (pa.types.is_boolean(arr.type) or pa.types.is_integer(arr.type)):
            arr = arr.cast(pa.float64())  # a missing flag or action reads as NaN, reported with its row
        return np.asarray(arr.to_numpy(zero_copy_only=False))
    if col and isinstance(col[0], list):
        _same_lengths(name, np.array([len(v) if isinstance(v, list) else -1 for v in col]), where)
    try:
        return np.asarray([np.nan if v is None else v for v in col] if None in col else col)
    except ValueError as e:
        raise DataError(f"{p}: column '{name}' cannot be read as numbers: {quote_error(e)}") from None


def _same_lengths(name: str, lengths: np.ndarray, where) -> None:
    bad = lengths != lengths[0]
    if bad.any() or lengths[0] < 0:
        row = int(np.argmax(bad)) if bad.any() else 0
        at, pos = where(row)
        raise DataError(f"{at}: '{name}' at {pos} has {lengths[row]} values, but {lengths[0]} at the first row "
                        "(a list column needs the same length in every row)")


def _vector(p: Path, cols: dict, names: list[str], where) -> np.ndarray:
    parts = [_column(p, cols[n], n, where) for n in names]
    if len(parts) == 1:
        return parts[0]
    for n, a in zip(names, parts):
        if a.ndim != 1:
            raise DataError(f"{p}: column '{n}' holds lists; several columns must each hold one number per row")
    return np.stack(parts, axis=1)


def _episodes(p: Path, ids: np.ndarray, steps: np.ndarray | None, where) -> np.ndarray:
    """Each episode's last row. Episodes are runs of equal episode_id; an id that comes back after another one
    is a split episode, and a step column that does not increase inside an episode is out of order."""
    missing = np.array([v is None or (isinstance(v, float) and v != v) for v in ids.tolist()]) \
        if ids.dtype.kind in "fO" else np.zeros(len(ids), bool)
    if missing.any():
        at, pos = where(int(np.argmax(missing)))
        raise DataError(f"{at}: episode_id at {pos} is missing")
    change = np.asarray(ids[1:] != ids[:-1], dtype=bool)
    starts = np.flatnonzero(np.concatenate([[True], change]))
    seen: dict = {}
    for s in starts:
        key = ids[s].item() if hasattr(ids[s], "item") else ids[s]
        if key in seen:
            at, pos = where(int(s))
            _, first = where(seen[key])
            raise DataError(f"{at}: episode_id {key!r} at {pos} continues an episode that began at {first} with "
                            "other episodes in between (an episode's rows must be contiguous)")
        seen[key] = int(s)
    ends = np.concatenate([change, [True]])
    if steps is not None:
        if steps.dtype.kind not in "iuf":
            raise DataError(f"{p}: the step column must be numeric, got {steps.dtype}")
        back = (np.diff(steps) <= 0) & ~ends[:-1]
        if back.any():
            at, pos = where(int(np.argmax(back)) + 1)
            raise DataError(f"{at}: step at {pos} does not increase within its episode (rows must be in time "
                            "order)")
    return ends


def _table_steps(p: Path, obs_spec: list[str], act_spec: list[str]) -> Steps:
    cols, names, lines = _read_jsonl(p) if p.suffix.lower() == ".jsonl" else _read_parquet(p)
    name = str(p)
    unit = "line" if lines is not None else "row"

    def where(r: int) -> tuple[str, str]:
        return name, f"{unit} {int(lines[r]) if lines is not None else r}"

    pick = {k: _resolve(p, names, k, [], required=True) for k in ("episode_id", "rewards", "terminals")}
    # episode_id already ends episodes: truncated is optional (an episode that ends unterminated was cut short)
    pick["timeouts"] = _resolve(p, names, "timeouts", [], required=False)
    pick["observations"] = _resolve(p, names, "observations", obs_spec, required=True)
    pick["actions"] = _resolve(p, names, "actions", act_spec, required=True)
    nxt = [f"next_{c}" for c in obs_spec if not c.endswith("*")] if obs_spec else []
    pick["next_observations"] = nxt if nxt and all(c in names for c in nxt) else \
        _resolve(p, names, "next_observations", [], required=False)
    step_col = _resolve(p, names, "step", [], required=False)
    columns = {k: _vector(p, cols, v, where) for k, v in pick.items() if v and k != "episode_id"}
    ids = _column(p, cols[pick["episode_id"][0]], pick["episode_id"][0], where)
    columns.setdefault("timeouts", np.zeros(len(ids), bool))
    if len(ids) == 0:
        raise DataError(f"{p}: no steps")
    steps = _column(p, cols[step_col[0]], step_col[0], where) if step_col else None
    ends = _episodes(p, ids, steps, where)
    labels = {k: v[0] if len(v) == 1 else f"{v[0]}..{v[-1]}" for k, v in pick.items() if v}
    return Steps(name, columns, episode_ends=ends, locate=where, labels=labels,
                 info={"metadata": {"source": name, "format": p.suffix.lstrip(".").lower(),
                                    "columns": {k: v for k, v in pick.items() if v}}})
