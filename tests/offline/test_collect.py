"""`reins collect`: tiers, reference scores, metadata, atomicity, replay cutting and online run sources."""

from __future__ import annotations

import json

import minari
import numpy as np
import pytest
import torch

from offline import collect
from offline.behaviour import OnlineRunSource, PendulumSwingUp, replay_episodes
from offline.collect import Config, train
from offline.data import load_dataset, load_transitions
from reins.errors import ConfigError, DataError


def _cfg(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "collect"), behaviour="scripted", steps_per_tier=600, ref_episodes=4,
                n_envs=4, tiers=["random", "medium", "expert", "medium-replay", "medium-expert"],
                dataset_prefix="test/pend")
    base.update(kw)
    cfg = Config(**base)
    cfg.validate()
    return cfg


def test_scripted_tiers(minari_root, tmp_path):
    m = train(_cfg(tmp_path))
    ids = [f"test/pend/{t}-v0" for t in collect.TIERS]
    assert m["datasets"] == ", ".join(ids)
    lo, hi = m["ref/min_score"], m["ref/max_score"]
    assert hi > lo + 500  # the swing-up controller is far better than uniform torques
    for t in collect.TIERS:
        ds = load_dataset(f"test/pend/{t}-v0")
        meta = ds.storage.metadata
        assert (meta["ref_min_score"], meta["ref_max_score"]) == (lo, hi)
        rets = np.array([ep.rewards.sum() for ep in ds.iterate_episodes()])
        # the stored behaviour return and minari's own normalised score agree with the episodes
        assert meta["reins/behaviour_return_mean"] == pytest.approx(rets.mean())
        assert float(minari.get_normalized_score(ds, rets.mean())) * 100 == pytest.approx(m[f"{t}/normalized_score"])
        assert meta["reins/tier"] == t and len(meta["reins/episode_seeds"]) == ds.total_episodes
    # whole 200-step Pendulum episodes, at least steps_per_tier transitions
    assert m["random/steps"] >= 600 and m["random/steps"] % 200 == 0
    assert m["medium-expert/episodes"] == m["medium/episodes"] + m["expert/episodes"]
    assert m["random/normalized_score"] < m["medium/normalized_score"] < m["expert/normalized_score"]
    # medium is the first "snapshot" (falling epsilon) to reach a third of the way from random to expert
    assert m["medium/eval_return"] >= lo + (hi - lo) / 3
    assert m["medium-replay/episodes"] == 100
    # the transition view of a collected tier: Pendulum only truncates
    tr = load_transitions("test/pend/medium-v0")
    assert tr.terminals.sum() == 0 and tr.timeouts.sum() == m["medium/episodes"]


def test_arrow_tiers_match_hdf5(minari_root, tmp_path):
    """data_format=arrow writes the same tiers as hdf5: transitions, reference scores and metadata round-trip
    through the project's loader and through minari.load_dataset."""
    tiers = ["random", "medium", "expert", "medium-expert"]  # scripted medium-replay is 100 episodes: left out
    kw = dict(tiers=tiers, steps_per_tier=400)
    m_h5 = train(_cfg(tmp_path, output_dir=str(tmp_path / "h5"), dataset_prefix="test/h5", **kw))
    m_ar = train(_cfg(tmp_path, output_dir=str(tmp_path / "ar"), dataset_prefix="test/arrow", data_format="arrow",
                      **kw))
    assert {k: v for k, v in m_ar.items() if k != "datasets"} == {k: v for k, v in m_h5.items() if k != "datasets"}
    for t in tiers:
        h5_id, ar_id = f"test/h5/{t}-v0", f"test/arrow/{t}-v0"
        assert (minari_root / ar_id / "data" / "0").is_dir()  # arrow's one folder per episode, no main_data.hdf5
        assert not (minari_root / ar_id / "data" / "main_data.hdf5").exists()
        # the project's loader (what iql/cql/bc read): the same transition table
        a, b = load_transitions(h5_id), load_transitions(ar_id)
        for k in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts",
                  "episode_ids", "episode_returns"):
            x, y = getattr(a, k), getattr(b, k)
            assert x.dtype == y.dtype and np.array_equal(x, y), k
        assert (b.ref_min_score, b.ref_max_score) == (m_h5["ref/min_score"], m_h5["ref/max_score"])
        assert b.env_id == "Pendulum-v1"
        # minari's own loader: episode by episode, exactly equal
        dh, da = minari.load_dataset(h5_id), minari.load_dataset(ar_id)
        assert da.storage.metadata["data_format"] == "arrow" and dh.storage.metadata["data_format"] == "hdf5"
        assert da.total_episodes == dh.total_episodes == m_h5[f"{t}/episodes"]
        assert da.total_steps == dh.total_steps == m_h5[f"{t}/steps"]
        for eh, ea in zip(dh.iterate_episodes(), da.iterate_episodes(), strict=True):
            assert eh.id == ea.id
            for k in ("observations", "actions", "rewards", "terminations", "truncations"):
                x, y = np.asarray(getattr(eh, k)), np.asarray(getattr(ea, k))
                assert x.dtype == y.dtype and np.array_equal(x, y), (t, eh.id, k)
        rets = np.array([ep.rewards.sum() for ep in da.iterate_episodes()])
        score = float(minari.get_normalized_score(da, rets.mean()))
        assert score == float(minari.get_normalized_score(dh, rets.mean()))
        assert score * 100 == pytest.approx(m_ar[f"{t}/normalized_score"])
        # metadata: everything but the format, id and size is the same, reins/* keys included
        mh, ma = dh.storage.metadata, da.storage.metadata
        differ = {k for k in mh.keys() | ma.keys() if mh.get(k) != ma.get(k)}
        assert differ == {"data_format", "dataset_id", "dataset_size"}
        assert ma["reins/tier"] == t and ma["num_episodes_average_score"] == 4
        # per-episode seeds: stored by minari per episode and in reins/episode_seeds, the same in both formats
        n = da.total_episodes
        seeds_ar = [e.get("seed") for e in da.storage.get_episode_metadata(range(n))]
        seeds_h5 = [e.get("seed") for e in dh.storage.get_episode_metadata(range(n))]
        assert seeds_ar == seeds_h5 == ma["reins/episode_seeds"]
        assert all(isinstance(x, int) for x in seeds_ar) and len(set(seeds_ar)) == n


def test_collect_is_deterministic(minari_root, tmp_path):
    a = train(_cfg(tmp_path, output_dir=str(tmp_path / "a"), tiers=["random", "expert"], dataset_prefix="test/a"))
    b = train(_cfg(tmp_path, output_dir=str(tmp_path / "b"), tiers=["random", "expert"], dataset_prefix="test/b"))
    assert a["expert/return_mean"] == b["expert/return_mean"] and a["ref/min_score"] == b["ref/min_score"]


def test_failed_collection_leaves_nothing(minari_root, tmp_path, monkeypatch):
    real = collect.write_tier
    calls = []

    def failing(staging, ds_id, *args, **kw):
        calls.append(ds_id)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(staging, ds_id, *args, **kw)

    monkeypatch.setattr(collect, "write_tier", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        train(_cfg(tmp_path))
    assert len(calls) == 3
    assert [p.name for p in minari_root.iterdir()] == []  # no dataset, no staging directory
    assert not (tmp_path / "collect" / "metrics.json").exists()


def test_failure_while_publishing_leaves_the_root_as_it_was(minari_root, tmp_path, monkeypatch):
    """The staged tiers are renamed into the root one by one; if a rename fails, the tiers already moved, the
    namespace folders and Minari's namespace metadata files that were added are all removed again."""
    import os

    real, calls = os.replace, []

    def failing(src, dst):
        if os.path.basename(dst) == "identity.json":  # the run dir's own record (reins.runio), not a tier
            return real(src, dst)
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("rename failed")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="rename failed"):
        train(_cfg(tmp_path))
    monkeypatch.undo()
    assert len(calls) == 2
    assert list(minari_root.iterdir()) == []


def test_relative_datasets_root(tmp_path, monkeypatch):
    """MINARI_DATASETS_PATH relative to the working directory (README's `MINARI_DATASETS_PATH=runs/minari`): the
    tier is written and readable there (minari once looked for the staged file under the relative root twice)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MINARI_DATASETS_PATH", "rel/minari")
    train(_cfg(tmp_path, tiers=["random"], output_dir="collect"))
    assert (tmp_path / "rel/minari/test/pend/random-v0/data/main_data.hdf5").is_file()
    assert len(load_transitions("test/pend/random-v0")) > 0


def test_existing_dataset_is_not_overwritten(minari_root, tmp_path):
    train(_cfg(tmp_path, tiers=["random"]))
    before = (minari_root / "test/pend/random-v0/data/metadata.json").read_text()
    with pytest.raises(DataError, match="test/pend/random-v0 already exists"):
        train(_cfg(tmp_path, output_dir=str(tmp_path / "other"), tiers=["random"], ref_episodes=3))
    assert (minari_root / "test/pend/random-v0/data/metadata.json").read_text() == before


def test_bad_config():
    with pytest.raises(ConfigError, match="unknown tier 'full'"):
        Config(tiers=["full"], behaviour="scripted").validate()
    with pytest.raises(ConfigError, match="behaviour_run"):
        Config(behaviour="online").validate()


def test_invalid_dataset_prefix(minari_root, tmp_path):
    with pytest.raises(ConfigError, match="not a valid Minari id"):
        train(_cfg(tmp_path, dataset_prefix="x"))


def _replay_dump():
    """Two envs interleaved: env 0 runs a 2-step terminated episode then 1 unfinished step; env 1 runs 3 steps
    truncated. Observations encode (env, episode, t)."""
    rows = []
    def o(env, ep, t):
        return [env, ep, t]
    # vector steps at global steps 0, 2, 4 (2 envs)
    rows.append((o(0, 0, 0), o(0, 0, 1), 0, 0, 0, 0))
    rows.append((o(1, 0, 0), o(1, 0, 1), 0, 0, 1, 0))
    rows.append((o(0, 0, 1), o(0, 0, 2), 1, 0, 0, 2))  # terminated
    rows.append((o(1, 0, 1), o(1, 0, 2), 0, 0, 1, 2))
    rows.append((o(0, 1, 0), o(0, 1, 1), 0, 0, 0, 4))  # unfinished
    rows.append((o(1, 0, 2), o(1, 0, 3), 0, 1, 1, 4))  # truncated
    obs, nxt, term, trunc, env, step = map(np.array, zip(*rows))
    n = len(rows)
    return {"observations": torch.tensor(obs, dtype=torch.float32),
            "next_observations": torch.tensor(nxt, dtype=torch.float32),
            "actions": torch.arange(n, dtype=torch.float32).unsqueeze(-1), "rewards": torch.arange(n).float(),
            "terminated": torch.tensor(term, dtype=torch.bool), "truncated": torch.tensor(trunc, dtype=torch.bool),
            "env_index": torch.tensor(env), "global_step": torch.tensor(step)}


def test_replay_episodes_cut_per_env():
    eps = replay_episodes(_replay_dump())
    assert [len(e) for e in eps] == [2, 1, 3]
    e0, e1, e2 = eps
    np.testing.assert_array_equal(e0.observations[:, 2], [0, 1, 2])
    np.testing.assert_array_equal(e0.terminations, [False, True])
    np.testing.assert_array_equal(e1.truncations, [True])  # unfinished tail kept, marked truncated
    np.testing.assert_array_equal(e2.observations[:, 0], [1, 1, 1, 1])
    np.testing.assert_array_equal(e2.truncations, [False, False, True])
    np.testing.assert_array_equal(e2.rewards, [1, 3, 5])
    assert [(e.env_index, e.start_step) for e in eps] == [(0, 0), (0, 4), (1, 0)]  # env and first env step
    # only transitions collected before the medium snapshot's step
    early = replay_episodes(_replay_dump(), up_to_step=4)
    assert [len(e) for e in early] == [2, 2]
    assert early[1].truncations[-1]


def test_replay_continuity_break_splits():
    d = _replay_dump()
    d["observations"][3, 2] = 99.0  # env 1's second transition does not continue its first
    eps = replay_episodes(d)
    assert [len(e) for e in eps] == [2, 1, 1, 2]


def test_online_run_source(tmp_path):
    from rl.envs import EnvSpec
    from rl.nets import build_actor
    from rl.policy_io import save_policy

    spec = EnvSpec("Pendulum-v1", 3, -np.ones(3) * 8, np.ones(3) * 8, False, 1, np.array([-2.0]), np.array([2.0]))
    run = tmp_path / "online"
    (run / "snapshots").mkdir(parents=True)
    index = [{"step": 1000, "eval_return": -1200.0}, {"step": 2000, "eval_return": -700.0},
             {"step": 3000, "eval_return": -300.0}, {"step": 4000, "eval_return": -150.0},
             {"step": 5000, "eval_return": -180.0}]
    arch = _deterministic_arch()
    for row in index:
        torch.manual_seed(row["step"])
        actor = build_actor(arch)
        save_policy(run / "snapshots" / f"step_{row['step']}.pt", actor=actor, arch=arch, spec=spec, algo="td3",
                    meta={"marker": row["step"]})
    (run / "snapshots" / "index.json").write_text(json.dumps(index))
    torch.save(_replay_dump(), run / "replay.pt")
    src = OnlineRunSource(run)
    assert src.expert().meta["marker"] == 4000  # best eval return
    pol, info = src.medium(-800.0)
    assert info["medium/snapshot_step"] == 2000 and pol.meta["marker"] == 2000
    assert pol.act(np.zeros((2, 3), np.float32)).shape == (2, 1)
    assert [len(e) for e in src.replay()] == [2, 1, 3]  # everything before step 2000
    # a run directory without config.yaml does not say how its envs were seeded: no seed is invented
    eps, meta = collect.online_replay(src, 2000)
    assert [e.seed for e in eps] == [None] * 3
    assert meta == {"reins/behaviour_seed": None, "reins/replay_env_seeds": None}
    with pytest.raises(DataError, match="no snapshot reaches the medium threshold"):
        src.medium(0.0)


def test_online_replay_seeds(minari_root, tmp_path, one_thread):
    """A real (tiny, untrained) TD3 run: 3 envs, a checkpoint due at 700 env steps. online/common.py resets env
    i with segment_seeds(seed, segment, 3)[i] at step 0 and at the first vector step past the checkpoint (702);
    the episodes auto-reset in between (at 600: Pendulum's 200-step limit x 3 envs) have no seed."""
    import gymnasium as gym

    from online import stage as online_stage
    from online.common import segment_seeds
    from reins.config import from_dict

    run = tmp_path / "online"
    ocfg = from_dict(online_stage.Config, {
        "output_dir": str(run), "algo": "td3", "env_id": "Pendulum-v1", "seed": 3, "total_steps": 1500,
        "checkpoint_every": 700, "eval_every": 0, "eval_episodes": 1, "save_snapshots": True,
        "snapshot_every": 750, "save_replay": True, "quiet": True,
        "td3": {"num_envs": 3, "learning_starts": 10_000, "hidden": [8]}})  # random actions, no updates
    online_stage.train(ocfg)
    # untrained snapshots: rewrite their recorded returns so that step 750 is both medium and expert
    (run / "snapshots" / "index.json").write_text(json.dumps([{"step": 750, "eval_return": 0.0},
                                                              {"step": 1500, "eval_return": -1e9}]))
    m = train(_cfg(tmp_path, behaviour="online", behaviour_run=str(run), tiers=["medium-replay"], ref_episodes=2,
                   n_envs=2, dataset_prefix="test/online"))
    assert m["medium/snapshot_step"] == 750
    ds = load_dataset("test/online/medium-replay-v0")
    meta = ds.storage.metadata
    seeds0, seeds1 = segment_seeds(3, 0, 3), segment_seeds(3, 1, 3)
    assert meta["reins/behaviour_seed"] == 3
    assert meta["reins/replay_env_seeds"]["segment_start_steps"] == [0, 702]  # 1401 is past the medium cut
    assert meta["reins/replay_env_seeds"]["seeds"] == [seeds0, seeds1]
    # per env: [0, 600) seeded, [600, 702) auto-reset then cut by the checkpoint, [702, 750) seeded, cut there
    eps = list(ds.iterate_episodes())
    assert [len(e.rewards) for e in eps] == [200, 34, 16] * 3
    want = [s for i in range(3) for s in (seeds0[i], None, seeds1[i])]
    assert meta["reins/episode_seeds"] == want
    assert [e.get("seed") for e in ds.storage.get_episode_metadata(range(len(eps)))] == want
    # the stored seeds are true: a fresh env reset with one starts exactly where the replay's episode does
    env = gym.make("Pendulum-v1")
    for ep, seed in zip(eps, want):
        if seed is not None:
            np.testing.assert_array_equal(env.reset(seed=seed)[0], ep.observations[0])
    env.close()
    # a behaviour run of another env is refused before anything is collected
    with pytest.raises(ConfigError, match="trains on Pendulum-v1, but env_id is MountainCarContinuous-v0"):
        train(_cfg(tmp_path, env_id="MountainCarContinuous-v0", behaviour="online", behaviour_run=str(run),
                   tiers=["medium-replay"], ref_episodes=2, n_envs=2, dataset_prefix="test/mc",
                   output_dir=str(tmp_path / "mc")))
    assert not (tmp_path / "mc").exists()
    with pytest.raises(ConfigError, match="behaviour_recipe recipes/online/sac-hopper.yaml trains on Hopper-v5, "
                                          "but env_id is Pendulum-v1"):
        train(_cfg(tmp_path, behaviour="online", behaviour_run=str(tmp_path / "sac"), tiers=["medium-replay"],
                   behaviour_recipe="recipes/online/sac-hopper.yaml", output_dir=str(tmp_path / "h")))
    assert not (tmp_path / "h").exists() and not (tmp_path / "sac").exists()


def test_segment_start_steps():
    # vector steps are multiples of num_envs; a checkpoint is taken at the first one at or past it
    assert collect.segment_start_steps(1500, 700, 3) == [0, 702, 1401]
    assert collect.segment_start_steps(20, 3, 8) == [0, 8, 16]  # checkpoints due faster than vector steps
    assert collect.segment_start_steps(1000, 0, 4) == [0]  # checkpoint_every=0: one reset at the start
    assert collect.segment_start_steps(1400, 700, 2) == [0, 700]  # the boundary at the end starts nothing


def _deterministic_arch():
    return {"kind": "deterministic", "obs_dim": 3, "act_dim": 1, "hidden": [8], "activation": "relu"}


def test_pendulum_controller_swings_up():
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    total = 0.0
    for _ in range(200):
        obs, r, *_ = env.step(PendulumSwingUp().act(obs[None])[0])
        total += r
    assert total > -400  # uniform random torques average about -1200


def test_finished_collection_is_reused(minari_root, tmp_path):
    cfg = _cfg(tmp_path, tiers=["random"])
    first = train(cfg)
    assert train(cfg) == first  # same run dir, datasets present: cached, no "already exists" error


def test_discrete_tiers_from_a_dqn_run(minari_root, tmp_path, one_thread):
    """CartPole-v1 tiers from a (tiny, untrained) DQN run: every tier has a Discrete(2) action space and int64
    actions; random is uniform over both actions; medium-replay holds exactly the replay's actions before the
    medium snapshot; the tiers load as Discrete transitions."""
    import gymnasium as gym

    from online import stage as online_stage
    from reins.config import from_dict
    from reins.runio import safe_torch_load

    run = tmp_path / "dqn"
    online_stage.train(from_dict(online_stage.Config, {
        "output_dir": str(run), "algo": "dqn", "env_id": "CartPole-v1", "seed": 1, "total_steps": 600,
        "eval_every": 0, "eval_episodes": 1, "save_snapshots": True, "snapshot_every": 300, "save_replay": True,
        "quiet": True, "dqn": {"learning_starts": 10_000, "hidden": [8]}}))  # random actions, no updates
    (run / "snapshots" / "index.json").write_text(json.dumps([{"step": 300, "eval_return": 1e9},
                                                              {"step": 600, "eval_return": 0.0}]))
    m = train(_cfg(tmp_path, env_id="CartPole-v1", behaviour="online", behaviour_run=str(run), ref_episodes=2,
                   n_envs=2, steps_per_tier=300, tiers=["random", "medium", "medium-replay"],
                   dataset_prefix="test/cartpole"))
    assert m["medium/snapshot_step"] == 300
    for tier in ("random", "medium", "medium-replay"):
        ds = load_dataset(f"test/cartpole/{tier}-v0")
        assert isinstance(ds.action_space, gym.spaces.Discrete) and ds.action_space.n == 2
        tr = load_transitions(f"test/cartpole/{tier}-v0")
        assert tr.discrete and tr.n_actions == 2 and tr.actions.dtype == np.int64
        assert set(np.unique(tr.actions)) <= {0, 1}
    random = load_transitions("test/cartpole/random-v0").actions
    assert 0.35 < random.mean() < 0.65  # both actions, about equally often
    replay = safe_torch_load(run / "replay.pt")
    early = replay["global_step"].numpy() < 300
    want = np.sort(replay["actions"].numpy()[early])
    got = np.sort(np.concatenate([ep.actions for ep in load_dataset("test/cartpole/medium-replay-v0")
                                  .iterate_episodes()]))
    assert np.array_equal(got, want)
