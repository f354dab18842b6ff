"""People's own files as offline datasets (offline/sources.py through offline/data.py's one validator)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from offline.data import load_transitions
from reins.errors import DataError
from tests.offline.helpers import ACT, OBS, REW, SLICE, TOUT, arrays, table_rows, write_jsonl, write_npz

# The reference data made by another library, where this checkout has it (shared/ beside the repository, as CI
# lays it out, or the workplace's copy); its test is skipped elsewhere.
SHARED = next((p for p in (Path(__file__).resolve().parents[3] / "shared" / "datasets", Path("/work/shared/datasets"))
               if (p / "npz").is_dir()), Path("/nonexistent"))

def write_h5(path, **kw):
    with h5py.File(path, "w") as f:
        for k, v in arrays(**kw).items():
            f.create_dataset(k, data=v)
        f.create_group("infos").create_dataset("qpos", data=np.zeros((7, 3)))  # D4RL's extra groups are ignored
    return str(path)


def write_parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def d4rl_qlearning(d):
    """D4RL's `qlearning_dataset(terminate_on_end=False)` as its loop reads: rows 0..N-2, timed-out rows skipped,
    next observation = the next row's observation (the test's independent oracle)."""
    out = {k: [] for k in ("observations", "next_observations", "actions", "rewards", "terminals")}
    for i in range(len(d["rewards"]) - 1):
        if d["timeouts"][i]:
            continue
        out["observations"].append(d["observations"][i])
        out["next_observations"].append(d["observations"][i + 1])
        out["actions"].append(d["actions"][i])
        out["rewards"].append(d["rewards"][i])
        out["terminals"].append(float(d["terminals"][i]))
    return {k: np.asarray(v, np.float32) for k, v in out.items()}


# ------------------------------------------------------------------------------------------- D4RL-style arrays
@pytest.mark.parametrize("writer", [write_npz, write_h5])
def test_arrays_without_next_observations_follow_d4rl(tmp_path, writer):
    tr = load_transitions(writer(tmp_path / f"d.{'npz' if writer is write_npz else 'hdf5'}"))
    # A's terminal row is kept; B's timed-out last row and the cut episode's last row have no next observation
    np.testing.assert_array_equal(tr.observations[:, 0], [0, 1, 2, 3, 5])
    np.testing.assert_array_equal(tr.next_observations[:, 0], [1, 2, 3, 4, 6])
    np.testing.assert_array_equal(tr.terminals, [0, 0, 1, 0, 0])
    np.testing.assert_array_equal(tr.episode_ids, [0, 0, 0, 1, 2])
    np.testing.assert_array_equal(tr.episode_returns, [6.0, 9.0, 13.0])  # every reward, dropped rows too
    np.testing.assert_array_equal(tr.actions[:, 0], ACT[[0, 1, 2, 3, 5], 0])
    assert tr.action_bounds_inferred and tr.action_space is None and tr.eval_env_spec is None
    np.testing.assert_array_equal(tr.action_low, [-1.0])  # the data fit D4RL's [-1, 1]


def test_random_arrays_equal_d4rl_qlearning_dataset(tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    flag = rng.random(n)
    term, tout = flag < 0.03, (flag >= 0.03) & (flag < 0.06)
    tout[-1], term[-1] = True, False  # D4RL always drops the last row; d3rlpy drops a timed-out last row too
    d = {"observations": rng.normal(size=(n, 3)).astype(np.float32), "rewards": rng.normal(size=n).astype(np.float32),
         "actions": rng.uniform(-1, 1, (n, 2)).astype(np.float32), "terminals": term, "timeouts": tout}
    np.savez(tmp_path / "r.npz", **d)
    tr, ref = load_transitions(str(tmp_path / "r.npz")), d4rl_qlearning(d)
    for k, v in ref.items():
        np.testing.assert_array_equal(getattr(tr, k), v, err_msg=k)


def test_next_observations_keep_every_row(tmp_path):
    nxt = OBS + 100  # anything: given next observations are used as they are
    tr = load_transitions(write_npz(tmp_path / "n.npz", next_observations=nxt))
    assert len(tr) == 7
    np.testing.assert_array_equal(tr.next_observations, nxt)
    np.testing.assert_array_equal(tr.timeouts, TOUT.astype(np.float32))
    np.testing.assert_array_equal(tr.episode_ids, [0, 0, 0, 1, 1, 2, 2])


def test_d3rlpy_dump_reads_as_its_episodes(tmp_path):
    """d3rlpy's `ReplayBuffer.dump` layout (format 2.1), written by hand: the same episodes as the arrays."""
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("columns", data=[b"observations", b"actions", b"rewards", b"terminated"])
        f.create_dataset("num_episodes", data=3)
        for i, (a, b, done) in enumerate([(0, 3, True), (3, 5, False), (5, 7, False)]):
            f.create_dataset(f"observations_{i}", data=OBS[a:b])
            f.create_dataset(f"actions_{i}", data=ACT[a:b])
            f.create_dataset(f"rewards_{i}", data=REW[a:b].reshape(-1, 1))
            f.create_dataset(f"terminated_{i}", data=done)
        f.create_dataset("version", data="2.1")
    tr, ref = load_transitions(str(tmp_path / "d.h5")), load_transitions(write_npz(tmp_path / "ref.npz"))
    for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts", "episode_ids",
              "episode_returns"):
        np.testing.assert_array_equal(getattr(tr, k), getattr(ref, k), err_msg=k)


def test_timeouts_may_be_absent_only_with_next_observations(tmp_path):
    tr = load_transitions(write_npz(tmp_path / "n.npz", next_observations=OBS + 1, timeouts=None))
    assert len(tr) == 7 and not tr.timeouts.any()
    np.testing.assert_array_equal(tr.episode_ids, [0, 0, 0, 1, 1, 1, 1])  # only the terminal ends an episode
    with pytest.raises(DataError, match="missing 'timeouts'"):
        load_transitions(write_npz(tmp_path / "m.npz", timeouts=None))
    # a table's episode_id ends its episodes: without truncated, an unterminated end is a cut, as a timeout
    rows = [{k: v for k, v in r.items() if k != "truncated"} for r in table_rows()]
    t = load_transitions(write_jsonl(tmp_path / "t.jsonl", rows))
    ref = load_transitions(write_npz(tmp_path / "ref.npz"))
    for k in ("observations", "next_observations", "terminals", "episode_ids"):
        np.testing.assert_array_equal(getattr(t, k), getattr(ref, k), err_msg=k)


def test_reference_scores_in_the_file(tmp_path):
    p = tmp_path / "s.npz"
    np.savez(p, **arrays(), ref_min_score=np.float64(-5.0), ref_max_score=np.float64(20.0))
    tr = load_transitions(str(p))
    assert (tr.ref_min_score, tr.ref_max_score) == (-5.0, 20.0)


# ------------------------------------------------------------------------------------------- step tables
@pytest.mark.parametrize("fmt,obs_style", [("jsonl", "list"), ("jsonl", "columns"), ("parquet", "list"),
                                           ("parquet", "columns")])
def test_step_tables_equal_the_arrays(tmp_path, fmt, obs_style):
    rows = table_rows(obs_style)
    path = (write_jsonl if fmt == "jsonl" else write_parquet)(tmp_path / f"t.{fmt}", rows)
    tr, ref = load_transitions(path), load_transitions(write_npz(tmp_path / "ref.npz"))
    for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts", "episode_ids",
              "episode_returns"):
        np.testing.assert_array_equal(getattr(tr, k), getattr(ref, k), err_msg=k)


def test_scalar_columns_in_numeric_order_and_by_name(tmp_path):
    rows = [{"episode_id": "a", "action": 0.0, "reward": 1.0, "terminated": i == 2, "truncated": False,
             **{f"x{j}": float(10 * i + j) for j in range(11)}} for i in range(3)]
    p = write_jsonl(tmp_path / "t.jsonl", rows)
    tr = load_transitions(p, obs_columns=["x*"])  # x0, x1, ..., x10 (not x0, x1, x10, x2, ...)
    np.testing.assert_array_equal(tr.observations[0], np.arange(11, dtype=np.float32))
    tr = load_transitions(p, obs_columns=["x3", "x1"])
    np.testing.assert_array_equal(tr.observations[:, 0], [3, 13, 23])
    np.testing.assert_array_equal(tr.observations[:, 1], [1, 11, 21])


def test_step_column_and_next_observation_column(tmp_path):
    rows = table_rows()
    for i, r in enumerate(rows):
        r["step"] = [0, 1, 2, 0, 1, 0, 1][i]
        r["next_observation"] = [float(i) + 0.5, 0.0]
    tr = load_transitions(write_parquet(tmp_path / "t.parquet", rows))
    assert len(tr) == 7  # next observations given: every row is a transition
    np.testing.assert_array_equal(tr.next_observations[:, 0], np.arange(7) + 0.5)


# ------------------------------------------------------------------------------------------- discrete actions
def test_integer_actions_are_discrete(tmp_path):
    tr = load_transitions(write_npz(tmp_path / "d.npz", actions=np.array([0, 2, 1, 1, 0, 2, 2], np.int64)))
    assert tr.discrete and tr.n_actions == 3 and tr.act_dim == 3 and tr.actions.dtype == np.int64
    np.testing.assert_array_equal(tr.actions, [0, 2, 1, 1, 2])
    rows = table_rows()
    for r, a in zip(rows, [0, 2, 1, 1, 0, 2, 2]):
        r["action"] = a
    tj = load_transitions(write_jsonl(tmp_path / "d.jsonl", rows))
    np.testing.assert_array_equal(tj.actions, tr.actions)
    assert tj.n_actions == 3
    from offline.data import Normalization

    batch = Normalization.fit(tr).apply(tr)  # what a discrete learner's buffer gets: the indices, unscaled
    assert batch["actions"].dtype == np.int64
    np.testing.assert_array_equal(batch["actions"], [0, 2, 1, 1, 2])


def test_minari_discrete_dataset_loads(minari_root):
    import warnings

    import minari
    from minari.data_collector import EpisodeBuffer

    obs = np.arange(20, dtype=np.float32).reshape(5, 4)
    ep = EpisodeBuffer(id=0, observations=obs, actions=np.array([1, 0, 1, 1]), rewards=[1.0] * 4,
                       terminations=[False, False, False, True], truncations=[False] * 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minari.create_dataset_from_buffers("test/cart-v0", [ep], env="CartPole-v1")
    tr = load_transitions("test/cart-v0")
    assert tr.discrete and tr.n_actions == 2
    np.testing.assert_array_equal(tr.actions, [1, 0, 1, 1])
    np.testing.assert_array_equal(tr.next_observations, obs[1:])


def test_discrete_dataset_is_refused_by_iql_before_writing(tmp_path):
    from offline import iql

    p = write_npz(tmp_path / "d.npz", actions=np.array([0, 1, 1, 0, 1, 0, 1]))
    cfg = iql.Config(dataset=p, output_dir=str(tmp_path / "out"), max_steps=2, quiet=True)
    with pytest.raises(DataError, match=r"Discrete\(2\) actions; iql trains on continuous \(Box\) actions only"):
        iql.train(cfg)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- bad input
def _bad_jsonl(tmp_path, edit, raw=""):
    rows = table_rows()
    edit(rows)
    return write_jsonl(tmp_path / "bad.jsonl", rows, raw)


BAD = {
    "npz length": (lambda t: write_npz(t / "x.npz", actions=ACT[:6]),
                   r"x.npz: 'actions' has 6 rows but 'observations' has 7 \(one row per step\)$"),
    "npz missing": (lambda t: write_npz(t / "x.npz", timeouts=None), r"x.npz: missing 'timeouts'"),
    "npz nan": (lambda t: write_npz(t / "x.npz", rewards=np.where(np.arange(7) == 3, np.nan, REW)),
                r"x.npz: non-finite rewards at row 3$"),
    "h5 inf obs": (lambda t: write_h5(t / "x.h5", observations=np.where(np.arange(7)[:, None] == 4, np.inf, OBS)),
                   r"x.h5: non-finite observations at row 4$"),
    "npz flag": (lambda t: write_npz(t / "x.npz", terminals=np.array([0, 2, 0, 0, 0, 0, 0])),
                 r"x.npz: terminals at row 1 is 2, expected 0 or 1"),
    "npz corrupt": (lambda t: (t / "x.npz").write_bytes(b"not a zip") and str(t / "x.npz"),
                    r"x.npz: cannot read npz file"),
    "parquet missing column": (lambda t: write_parquet(t / "x.parquet", [{k: v for k, v in r.items() if k != "reward"}
                                                                         for r in table_rows()]),
                               r"x.parquet: missing column 'reward' \(also accepted: rewards"),
    "jsonl split episode": (lambda t: _bad_jsonl(t, lambda rows: rows[6].update(episode_id=0)),
                            r"bad.jsonl: episode_id 0 at line 7 continues an episode that began at line 1"),
    "jsonl step order": (lambda t: _bad_jsonl(t, lambda rows: [r.update(step=s) for r, s in
                                                               zip(rows, [0, 2, 1, 0, 1, 0, 1])]),
                         r"bad.jsonl: step at line 3 does not increase within its episode"),
    "jsonl early flag": (lambda t: _bad_jsonl(t, lambda rows: rows[0].update(terminated=True)),
                         r"bad.jsonl: termination/truncation at line 1 before the episode's last step"),
    "jsonl bad json": (lambda t: _bad_jsonl(t, lambda rows: None, raw="{oops\n"),
                       r"bad.jsonl: line 8: not valid JSON"),
    "jsonl missing field": (lambda t: _bad_jsonl(t, lambda rows: rows[4].pop("reward")),
                            r"bad.jsonl: line 5: missing 'reward'"),
    "jsonl ragged obs": (lambda t: _bad_jsonl(t, lambda rows: rows[1].update(observation=[1.0])),
                         r"bad.jsonl: 'observation' at line 2 has 1 values, but 2 at the first row"),
    "jsonl nan reward": (lambda t: _bad_jsonl(t, lambda rows: rows[2].update(reward=None)),
                         r"bad.jsonl: non-finite reward at line 3$"),
    "parquet null flag": (lambda t: write_parquet(t / "x.parquet", [dict(r, truncated=None if i == 3 else
                                                                       r["truncated"]) for i, r in
                                                                  enumerate(table_rows())]),
                          r"x.parquet: truncated at row 3 is nan, expected 0 or 1"),
    "parquet null episode": (lambda t: write_parquet(t / "x.parquet", [dict(r, episode_id=None if i == 5 else
                                                                          r["episode_id"]) for i, r in
                                                                     enumerate(table_rows())]),
                             r"x.parquet: episode_id at row 5 is missing"),
    "no file": (lambda t: str(t / "nope.parquet"), r"nope.parquet: no such file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_are_one_line_errors_before_writing(tmp_path, case, capsys):
    from offline import iql

    make, pattern = BAD[case]
    path = make(tmp_path)
    with pytest.raises(DataError, match=pattern):
        load_transitions(path)
    out = tmp_path / "run"
    code = iql.main([f"dataset={path}", f"output_dir={out}", "max_steps=2", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("reins iql: error: "), err
    assert not out.exists()


# ------------------------------------------------------------------------------------------- data made elsewhere
def test_sb3_slice_reads_with_its_own_next_observations():
    d = np.load(SLICE)
    tr = load_transitions(str(SLICE))
    assert len(tr) == len(d["rewards"]) == 1077  # next observations given: every row
    assert len(tr.episode_returns) == int(d["terminals"].sum()) == 26
    np.testing.assert_array_equal(tr.next_observations, d["next_observations"])
    # where the file's next observation is the next row's (inside an episode), deriving it changes nothing
    inside = np.flatnonzero(~d["terminals"][:-1])
    np.testing.assert_array_equal(d["next_observations"][inside], d["observations"][inside + 1])


@pytest.mark.skipif(not (SHARED / "npz").is_dir(), reason="the shared reference datasets are not on this machine")
def test_shared_npz_equals_shared_minari(monkeypatch):
    """The reference data in both formats, written by another library: the same transitions either way."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(SHARED / "minari"))
    a = load_transitions(str(SHARED / "npz" / "sb3-hopper-medium-replay-v0.npz"))
    b = load_transitions("sb3/hopper/medium-replay-v0")
    for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts", "episode_ids",
              "episode_returns"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k), err_msg=k)
    assert len(a) == 150_000 and len(a.episode_returns) == 888


# ------------------------------------------------------------------------------------------- training on files
TINY = dict(hidden=[16, 16], batch_size=32, max_steps=24, eval_every=6, eval_episodes=2, log_every=4,
            checkpoint_every=8, torch_threads=1, quiet=True)


def pendulum_like(path, n=300, act_scale=1.5, refs=True):
    """Random steps shaped like Pendulum-v1 (3-dim observations, 1-dim actions), 200-step episodes, no env."""
    rng = np.random.default_rng(1)
    tout = (np.arange(n) % 200) == 199
    extra = {"ref_min_score": -1200.0, "ref_max_score": -150.0} if refs else {}
    np.savez(path, observations=rng.uniform(-1, 1, (n, 3)).astype(np.float32),
             actions=rng.uniform(-act_scale, act_scale, (n, 1)).astype(np.float32),
             rewards=-rng.uniform(0, 10, n).astype(np.float32), terminals=np.zeros(n, bool), timeouts=tout, **extra)
    return str(path)


def test_data_without_env_trains_with_evaluation_off(tmp_path, capsys, one_thread):
    from offline import iql
    from reins.runio import safe_torch_load

    ds = pendulum_like(tmp_path / "p.npz", refs=False)
    m = iql.train(iql.Config(dataset=ds, output_dir=str(tmp_path / "run"), **TINY))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names no environment and eval_env is not set: evaluation off" in err[0], err
    assert not any(k.startswith("eval/") for k in m) and m["train/steps"] == 24
    assert m["data/transitions"] == 298  # two rows dropped: the last step of each 200-step time-limited episode
    assert (tmp_path / "run" / "policy.pt").is_file() and not (tmp_path / "run" / "policy_best.pt").exists()
    assert safe_torch_load(tmp_path / "run" / "policy.pt")["env_id"] == ""


def test_file_source_takes_the_eval_envs_action_box_and_reports_last_k(tmp_path, one_thread):

    from offline import iql
    from reins.runio import safe_torch_load

    ds = pendulum_like(tmp_path / "p.npz")  # actions within [-1.5, 1.5]: inferred box [-1.5, 1.5]
    m = iql.train(iql.Config(dataset=ds, output_dir=str(tmp_path / "run"), eval_env="Pendulum-v1", eval_last_k=3,
                             **TINY))
    box = safe_torch_load(tmp_path / "run" / "policy.pt")["action_space"]
    np.testing.assert_array_equal(box["low"].numpy(), [-2.0])  # the env's, not the data's
    np.testing.assert_array_equal(box["high"].numpy(), [2.0])
    rows = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    scores = [r["eval/normalized_score"] for r in rows if "eval/normalized_score" in r]
    returns = [r["eval/return_mean"] for r in rows if "eval/return_mean" in r]
    assert len(scores) == 4
    assert m["eval/normalized_score_last3"] == pytest.approx(np.mean(scores[-3:]), rel=1e-12)
    assert m["eval/return_mean_last3"] == pytest.approx(np.mean(returns[-3:]), rel=1e-12)
    assert m["eval/normalized_score"] == scores[-1]


def test_data_actions_outside_the_eval_envs_box_fail_before_writing(tmp_path):
    from offline import iql

    ds = pendulum_like(tmp_path / "p.npz", act_scale=3.0)
    with pytest.raises(DataError, match=r"outside env 'Pendulum-v1''s bounds \[-2, 2\]"):
        iql.train(iql.Config(dataset=ds, output_dir=str(tmp_path / "run"), eval_env="Pendulum-v1", **TINY))
    assert not (tmp_path / "run").exists()


def test_file_source_run_resumes_exactly(tmp_path, monkeypatch, one_thread):
    from offline import iql
    from reins.runio import safe_torch_load

    rows = [dict(r, episode_id=k // 7 * 3 + r["episode_id"]) for k, r in enumerate(table_rows() * 20)]
    ds = write_parquet(tmp_path / "t.parquet", rows)
    cfg = iql.Config(dataset=ds, output_dir=str(tmp_path / "full"), **TINY)
    full = iql.train(cfg)
    real, count = iql.IQL.update, {"n": 0}

    def dies(self, batch):
        count["n"] += 1
        if count["n"] > 19:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(iql.IQL, "update", dies)
    cfg2 = iql.Config(dataset=ds, output_dir=str(tmp_path / "resumed"), **TINY)
    with pytest.raises(KeyboardInterrupt):
        iql.train(cfg2)
    assert safe_torch_load(tmp_path / "resumed" / "checkpoints" / "checkpoint.pt")["step"] == 16
    monkeypatch.setattr(iql.IQL, "update", real)
    resumed = iql.train(cfg2)
    drop = {"time/updates_per_s"}
    assert {k: v for k, v in resumed.items() if k not in drop} == {k: v for k, v in full.items() if k not in drop}
    a = safe_torch_load(tmp_path / "full" / "policy.pt")["state_dict"]
    b = safe_torch_load(tmp_path / "resumed" / "policy.pt")["state_dict"]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
