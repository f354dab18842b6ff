"""SAC gradient updates per second: reins vs Stable-Baselines3, same env, network sizes and batch size.

    PYTHONPATH=/path/to/sb3 python benchmarks/online/sac_speed.py --env Pendulum-v1 [--env Hopper-v5] \
        [--updates 2000] [--hidden 256 256] [--batch 256] [--threads 1]

Both agents first fill their replay buffer with `--fill` uniformly random transitions (no learning), then
`--updates` SAC updates are timed (each: minibatch sampling, twin-critic step, actor step, temperature step,
Polyak target update), after `--warmup` untimed updates, in `--rounds` blocks alternating between the two
implementations (so background load affects both alike); the median block rate is reported, per wall second
and per CPU second of the process (the fairer number on a shared machine when `--threads 1`).
Stable-Baselines3 is only needed here (install it outside the project, e.g.
`pip install --no-deps --target DIR stable-baselines3`); without it only reins is measured. Results: JSON lines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from online.buffer import ReplayBuffer  # noqa: E402
from online.offpolicy import random_actions  # noqa: E402
from online.sac import SAC, SACConfig  # noqa: E402
from rl.envs import make_vector_env  # noqa: E402


def reins_setup(env_id, hidden, batch, fill, seed, compile_nets=False):
    """A reins SAC agent and a replay buffer filled with `fill` random transitions; returns update().
    `compile_nets`: torch.compile the actor's and critics' forwards (static shapes) to measure what it gives."""
    envs, spec = make_vector_env(env_id, 1)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    agent = SAC(SACConfig(hidden=list(hidden), batch_size=batch), spec, gen, total_steps=fill)
    if compile_nets:
        for net in (agent.actor, agent.critic, agent.critic_target):
            net.forward = torch.compile(net.forward, dynamic=False)
    buf = ReplayBuffer(fill, spec.obs_dim, spec.act_dim, False)
    obs, _ = envs.reset(seed=seed)
    for t in range(fill):
        a = random_actions(spec, 1, gen)
        nxt, r, term, trunc, info = envs.step(a)
        real = nxt.copy()
        if term[0] or trunc[0]:
            real[0] = info["final_obs"][0]
        buf.add(obs, real, a, r, term, trunc, t)
        obs = nxt

    def update(n):
        for _ in range(n):
            agent.update(buf.sample(batch, gen), step=0)

    return update


def sb3_setup(env_id, hidden, batch, fill, seed):
    """The same for Stable-Baselines3's SAC (None when it is not installed)."""
    try:
        from stable_baselines3 import SAC as SB3SAC
    except ImportError:
        return None
    import gymnasium as gym

    model = SB3SAC("MlpPolicy", gym.make(env_id), batch_size=batch, learning_starts=fill, buffer_size=fill,
                   policy_kwargs={"net_arch": list(hidden)}, train_freq=1, gradient_steps=1, device="cpu",
                   seed=seed, verbose=0)
    model.learn(total_timesteps=fill)  # random actions only: learning starts after `fill` steps

    def update(n):
        model.train(gradient_steps=n, batch_size=batch)

    return update


def rate(update, n) -> tuple[float, float]:
    """(updates per wall second, updates per CPU second of this process)."""
    w0, c0 = time.perf_counter(), time.process_time()
    update(n)
    return n / (time.perf_counter() - w0), n / (time.process_time() - c0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", action="append", default=None)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--fill", type=int, default=2000)
    ap.add_argument("--updates", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5, help="alternating timed blocks per side")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--compile-nets", action="store_true",
                    help="compare reins eager (as 'reins') with reins with torch.compile'd nets (as the peer)")
    ap.add_argument("--keep-denormals", action="store_true", help="do not flush subnormal floats (reins does)")
    args = ap.parse_args(argv)
    if not args.keep_denormals:
        from reins.entry import flush_denormals

        flush_denormals()
    torch.set_num_threads(args.threads)
    rows = []
    for env_id in args.env or ["Pendulum-v1"]:
        common = (env_id, args.hidden, args.batch, args.fill, args.seed)
        ours_fn = reins_setup(*common)
        theirs_fn = reins_setup(*common, compile_nets=True) if args.compile_nets else sb3_setup(*common)
        ours_fn(args.warmup)
        if theirs_fn is not None:
            theirs_fn(args.warmup)
        # Alternate short timed blocks so that load from other processes hits both sides alike; report medians.
        ours_r, theirs_r = [], []
        for _ in range(args.rounds):
            ours_r.append(rate(ours_fn, args.updates // args.rounds))
            if theirs_fn is not None:
                theirs_r.append(rate(theirs_fn, args.updates // args.rounds))
        med = statistics.median
        ours, ours_cpu = med(r[0] for r in ours_r), med(r[1] for r in ours_r)
        theirs = med(r[0] for r in theirs_r) if theirs_r else None
        theirs_cpu = med(r[1] for r in theirs_r) if theirs_r else None
        rows.append({"env": env_id, "hidden": args.hidden, "batch": args.batch, "threads": args.threads,
                     "reins_updates_per_s": round(ours, 1), "reins_updates_per_cpu_s": round(ours_cpu, 1),
                     "other": "reins, torch.compile'd nets" if args.compile_nets else "stable-baselines3",
                     "other_updates_per_s": None if theirs is None else round(theirs, 1),
                     "other_updates_per_cpu_s": None if theirs is None else round(theirs_cpu, 1),
                     "speedup_wall": None if theirs is None else round(ours / theirs, 2),
                     "speedup_cpu": None if theirs is None else round(ours_cpu / theirs_cpu, 2)})
        print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
