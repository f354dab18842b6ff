r"""`reins convert SRC --out DIR-or-id`: write any offline data source as a Minari dataset.

    reins convert logs/hopper.npz --out local/hopper/logged-v0           # an id under $MINARI_DATASETS_PATH
    reins convert logs/steps.parquet --out ./datasets/steps-v0 --env-id Hopper-v5 --ref-min-score 18.6 \
        --ref-max-score 3234.3 --obs-columns '[obs_*]'

SRC is anything `dataset=` takes (a D4RL-style .hdf5/.h5/.npz, a .parquet/.jsonl step table, or a Minari dataset),
read through the same validator as training (offline.data), so a file that would not train is not converted.
`--out` is a directory when it starts with '/', '.', or '~' (its last part names the dataset and must end in
-vN; `MINARI_DATASETS_PATH=<its parent>` then finds it by that name), else a Minari id. Each episode of the
transition view becomes one Minari episode: observations are the episode's observations plus its last
next_observation, terminations = terminals, truncations = timeouts, and an episode that ends without
terminating is marked truncated. Where the source has no next observations, the view has dropped the last step
of every episode that did not terminate (its next observation is unknown), so those Minari episodes are one step
shorter; inside an episode, next_observations must equal the next row's observations (Minari stores one
observation sequence per episode). Spaces: a Minari source's own; with `--env-id` the env's (the data must fit
it; the env is made from the gymnasium registry to check that); a Minari source's recorded env spec is copied as
data, never made; else observations Box(-inf, inf), actions Discrete(n) for integer actions or the inferred action box
(offline/README.md). The dataset is written into a hidden staging folder and renamed into place, so a failure
leaves nothing behind; an existing dataset is replaced only with `--overwrite true`.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from offline.data import Transitions, datasets_root, load_transitions
from reins.config import check
from reins.entry import stage_main
from reins.errors import DataError

ID_RE = re.compile(r"^[\w.-]+(/[\w.-]+)*-v\d+$")


@dataclass
class Config:
    source: str = field(default="", metadata={"help": "the data to convert (the first argument): a .hdf5/.h5/.npz, "
                                                      ".parquet/.jsonl file or a Minari dataset id/path"})
    out: str = field(default="", metadata={"help": "a Minari dataset id (namespace/name-vN) under "
                                                   "$MINARI_DATASETS_PATH, or a directory path starting with /, . "
                                                   "or ~ whose last part is name-vN"})
    obs_columns: list[str] = field(default_factory=list,
                                   metadata={"help": "step tables: the observation column(s) (as in reins iql)"})
    action_columns: list[str] = field(default_factory=list,
                                      metadata={"help": "step tables: the action column(s) (as in reins iql)"})
    env_id: str = field(default="", metadata={"help": "gymnasium id the data was recorded in: stored as the "
                                                      "dataset's env and eval env, its spaces used"})
    ref_min_score: float | None = field(default=None,
                                        metadata={"help": "random-policy reference return (with ref_max_score)"})
    ref_max_score: float | None = field(default=None,
                                        metadata={"help": "expert reference return (with ref_min_score)"})
    data_format: Literal["hdf5", "arrow"] = field(default="hdf5", metadata={"help": "Minari storage format"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing dataset of that id/path"})
    quiet: bool = field(default=False, metadata={"help": "print nothing on success"})

    def validate(self) -> None:
        check(bool(self.source), "no source given: reins convert SRC --out DIR-or-id")
        check(bool(self.out), "no --out given: a Minari dataset id (name-vN) or a directory path")
        check((self.ref_min_score is None) == (self.ref_max_score is None),
              "give both ref_min_score and ref_max_score, or neither")


def destination(out: str) -> tuple[Path, str]:
    """(datasets root, dataset id) that `out` names."""
    if out.startswith(("/", ".", "~")):
        p = Path(out).expanduser().resolve()
        if not ID_RE.match(p.name):
            raise DataError(f"--out {out}: the folder's name '{p.name}' must be a Minari dataset name ending in "
                            "-vN, e.g. my-data-v0")
        return p.parent, p.name
    if not ID_RE.match(out):
        raise DataError(f"--out {out}: not a Minari dataset id ((namespace/)name-vN) and not a path (start a path "
                        "with /, ./ or ~)")
    return datasets_root(), out


def episodes_of(tr: Transitions, source: str) -> list[dict]:
    """The transition view cut back into Minari episodes (N + 1 observations each)."""
    bounds = np.flatnonzero(np.diff(tr.episode_ids)) + 1
    out = []
    for a, b in zip([0, *bounds], [*bounds, len(tr)]):
        gap = np.flatnonzero(np.any(tr.next_observations[a:b - 1] != tr.observations[a + 1:b], axis=1))
        if gap.size:
            raise DataError(f"{source}: episode {tr.episode_ids[a]}, step {int(gap[0])}: next observation differs "
                            "from the next step's observation; Minari stores one observation sequence per episode "
                            "(mark the episode boundary with terminals/timeouts)")
        term = tr.terminals[a:b] > 0
        trunc = tr.timeouts[a:b] > 0
        trunc[-1] = trunc[-1] or not term[-1]  # an episode that ended without terminating was cut short
        out.append({"observations": np.concatenate([tr.observations[a:b], tr.next_observations[b - 1:b]]),
                    "actions": tr.actions[a:b] if not tr.discrete else tr.actions[a:b] + _start(tr),
                    "rewards": tr.rewards[a:b], "terminations": term, "truncations": trunc})
    return out


def _start(tr: Transitions) -> int:
    return int(getattr(tr.action_space, "start", 0))


def _spaces(tr: Transitions, env_id: str):
    import gymnasium as gym

    obs = tr.observation_space or gym.spaces.Box(-np.inf, np.inf, (tr.obs_dim,), np.float32)
    if tr.discrete:
        return obs, tr.action_space
    if tr.action_space is not None:
        return obs, tr.action_space
    return obs, gym.spaces.Box(tr.action_low, tr.action_high, (tr.act_dim,), np.float32)


def _load(cfg: Config) -> tuple[Transitions, object, object, object]:
    """The validated source, its spaces and the env spec to store; every check before anything is written."""
    from offline.evaluate import adopt_env_action_box, check_env_fits

    tr = load_transitions(cfg.source, obs_columns=cfg.obs_columns, action_columns=cfg.action_columns)
    spec = None
    if cfg.env_id:
        import gymnasium as gym

        try:
            spec = gym.spec(cfg.env_id)
        except gym.error.Error as e:
            raise DataError(f"--env-id {cfg.env_id}: {str(e).splitlines()[0][:200]}") from None
        if not tr.discrete:
            check_env_fits(cfg.env_id, tr)
            adopt_env_action_box(cfg.env_id, tr)
    obs_space, act_space = _spaces(tr, cfg.env_id)
    return tr, obs_space, act_space, spec or tr.eval_env_spec


def _buffers(eps: list[dict]):
    from minari.data_collector import EpisodeBuffer

    return [EpisodeBuffer(id=k, observations=e["observations"], actions=e["actions"], rewards=list(e["rewards"]),
                          terminations=list(map(bool, e["terminations"])),
                          truncations=list(map(bool, e["truncations"]))) for k, e in enumerate(eps)]


def write(root: Path, ds_id: str, eps: list[dict], cfg: Config, tr: Transitions, spaces, spec) -> None:
    """Create the dataset in a staging folder under `root`, then rename it into place (offline.collect's
    publish: an existing one is kept unless overwrite)."""
    import minari

    from offline.collect import _remove_stale_staging, publish

    refs = (cfg.ref_min_score, cfg.ref_max_score) if cfg.ref_max_score is not None else \
        (tr.ref_min_score, tr.ref_max_score) if tr.ref_max_score is not None and tr.ref_min_score is not None \
        else (None, None)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(root)
    staging = Path(tempfile.mkdtemp(prefix=f".reins-staging-{os.getpid()}-", dir=root))
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(staging)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = minari.create_dataset_from_buffers(
                ds_id, _buffers(eps), observation_space=spaces[0], action_space=spaces[1],
                algorithm_name="reins convert",
                author="reins convert", code_permalink="reins: offline/convert.py",
                description=f"converted by reins convert from {cfg.source}", data_format=cfg.data_format)
        # Reference scores go straight into the metadata: Minari stores given ones only with an eval env (and
        # then makes it), and env-less data has reference scores too.
        extra = {"ref_min_score": refs[0], "ref_max_score": refs[1]} if refs[1] is not None else {}
        # The env spec is stored as data only: Minari's `env=` would gym.make it, and a spec a source dataset
        # recorded may name any entry point (data is not code); an --env-id was already made, from the registry.
        if spec is not None:
            extra.update(env_spec=spec.to_json(), eval_env_spec=spec.to_json())
        ds.storage.update_metadata({"reins/source": str(cfg.source), **extra})
        publish(staging, root, [ds_id], cfg.overwrite)
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old
        shutil.rmtree(staging, ignore_errors=True)


def train(cfg: Config) -> dict:
    root, ds_id = destination(cfg.out)
    if (root / ds_id).exists() and not cfg.overwrite:
        raise DataError(f"{root / ds_id} already exists (set --overwrite true)")
    tr, obs_space, act_space, spec = _load(cfg)
    eps = episodes_of(tr, cfg.source)
    write(root, ds_id, eps, cfg, tr, (obs_space, act_space), spec)
    return {"dataset_id": ds_id, "path": str(root / ds_id), "episodes": len(eps),
            "steps": int(sum(len(e["rewards"]) for e in eps))}


def main(argv=None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        print(__doc__)
    if argv and not argv[0].startswith("-") and "=" not in argv[0]:
        argv = [f"source={argv[0]}", *argv[1:]]  # `reins convert SRC ...`: the source is the first argument
    return stage_main(Config, train, argv, prog="reins convert", stage="convert")


if __name__ == "__main__":
    raise SystemExit(main())
