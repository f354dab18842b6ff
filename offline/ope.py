"""Off-policy evaluation from logged data alone: `reins ope POLICY --dataset D` (Fitted Q Evaluation).

FQE (Le, Voloshin & Yue 2019) fits Q^pi of a fixed policy pi by repeated supervised regression on the logged
transitions: iteration k regresses Q on y = r + gamma * (1 - terminal) * Q_{k-1}(s', pi(s')), with Q_{k-1}
frozen. Here iteration k is `target_update_every` Adam steps on minibatches, after which the frozen copy is
replaced (the target-network form, as d3rlpy's FQE; `max_steps / target_update_every` iterations in all).
Truncated steps (time limits) bootstrap; terminated ones do not.

pi(s') is the evaluated policy's deterministic action: the mean (Gaussian actors), tanh of the mean (tanh-Gaussian)
or the argmax (discrete), i.e. the action `reins` evaluates in the env (rl.envs.evaluate acts deterministically),
so the estimate is of the policy that is deployed and the target needs no sampling noise (one action per s').

The estimate is the mean over the dataset's episode initial states of Q(s0, pi(s0)): the expected discounted
return (discount `gamma`) in the dataset's reward units (reward_scale is undone). `ope/return_estimate` converts
it to an H-step undiscounted return, H the dataset's mean episode length, by assuming a constant per-step reward
(V * H (1 - gamma) / (1 - gamma^H)); it is what the normalised score uses and it is exact only for that
case or gamma = 1 (offline/README.md, Off-policy evaluation, reports how far off it is).

The confidence interval is a bootstrap over episodes that refits FQE (Hao et al. 2021, "Bootstrapping Fitted
Q-Evaluation for Off-Policy Inference"): `bootstrap_fits` more Q-networks, each fitted to its own resample of
the episodes (multinomial counts over episodes, drawn once; a transition's squared error is weighted by its
episode's count, so a minibatch drawn uniformly from the data is, in expectation, one drawn from the resample)
and each reporting the count-weighted mean of Q(s0, pi(s0)) over its resampled initial states. They train beside
the main fit on its minibatches, in one batched network, from their own initial weights, so the main estimate is
the same with or without them. The interval is the main estimate +- z * the standard deviation of the refits'
estimates (the normal bootstrap interval: a few refits estimate a spread far better than the 2.5% / 97.5%
quantiles). It covers the sampling error of the data and of the fit (initial weights, optimisation), not FQE's
bias (a function class that cannot represent Q^pi, too few iterations). `bootstrap_fits=0` gives the cheaper
interval that resamples the initial states only (`bootstrap` resamples) and ignores the Q-fit's error.
"""

from __future__ import annotations

import copy
import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from offline.data import DeviceBuffer, Normalization, load_transitions, pick_device, reference_scores
from offline.evaluate import normalized_score
from reins.config import RunArgs, check
from reins.entry import stage_main
from reins.errors import DataError
from reins.runio import FiniteGuard, RunDir, get_rng_state, seed_everything, set_rng_state
from rl.agent import Agent
from rl.nets import ACTIVATIONS, EnsembleLinear, mlp
from rl.policy_io import Policy, load_policy


@dataclass
class Config(RunArgs):
    output_dir: str = field(default="runs/ope",
                            metadata={"help": "directory the run writes (config.yaml, log.jsonl, metrics.json, "
                                              "checkpoints)"})
    policy: str = field(default="", metadata={"help": "the policy to evaluate: a reins policy file (policy.pt, "
                                                      "policy_best.pt) or a run directory holding policy.pt"})
    dataset: str = field(default="",
                         metadata={"help": "the logged data: a Minari dataset id or path, or a .hdf5/.h5/.npz/"
                                           ".parquet/.jsonl file (as the offline stages read it)"})
    obs_columns: list[str] = field(default_factory=list,
                                   metadata={"help": "step tables: the observation column(s) (as in reins iql)"})
    action_columns: list[str] = field(default_factory=list,
                                      metadata={"help": "step tables: the action column(s) (as in reins iql)"})
    gamma: float = field(default=0.99, metadata={"help": "discount of the estimated value, in (0, 1]"})
    hidden: list[int] = field(default_factory=lambda: [256, 256],
                              metadata={"help": "hidden-layer widths of the Q-network ([]: linear in the inputs)"})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate of the Q-network"})
    batch_size: int = field(default=256, metadata={"help": "transitions per gradient step"})
    max_steps: int = field(default=50_000, metadata={"help": "gradient steps in all"})
    target_update_every: int = field(default=100,
                                     metadata={"help": "gradient steps per FQE iteration: the frozen target "
                                                       "Q_{k-1} is replaced by Q after this many steps"})
    normalize_obs: bool = field(default=True,
                                metadata={"help": "Q's inputs: observations standardised by the dataset's mean/std"})
    reward_scale: float = field(default=1.0,
                                metadata={"help": "Q is fitted to r * reward_scale; the estimates are divided by "
                                                  "it again (return units)"})
    bootstrap_fits: int = field(default=10,
                                metadata={"help": "FQE refits on bootstrap resamples of the episodes (trained "
                                                  "beside the main fit, one batched network) whose spread gives "
                                                  "the CI; 0: the CI resamples initial states only and misses the "
                                                  "fit's error; else >= 2"})
    bootstrap: int = field(default=2000, metadata={"help": "resamples of the episodes' initial states (the CI when "
                                                           "bootstrap_fits=0, else ope/value_ci_states_*)"})
    ci: float = field(default=0.95, metadata={"help": "confidence level of the percentile bootstrap interval"})
    normalize_score: bool = field(default=True,
                                  metadata={"help": "report ope/normalized_score where reference scores exist"})
    ref_min_score: float | None = field(default=None,
                                        metadata={"help": "override / supply the dataset's random reference return"})
    ref_max_score: float | None = field(default=None,
                                        metadata={"help": "override / supply the dataset's expert reference return"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    torch_threads: int = field(default=0, metadata={"help": ">0: torch.set_num_threads"})
    log_every: int = field(default=1000, metadata={"help": "gradient steps between log.jsonl rows (each with the "
                                                           "current estimate)"})
    checkpoint_every: int = field(default=10_000, metadata={"help": "gradient steps between checkpoints"})

    def validate(self) -> None:
        check(bool(self.policy), "policy is required: reins ope POLICY --dataset D (or policy=PATH)")
        check(bool(self.dataset), "dataset is required: --dataset <Minari id, path or file>")
        check(0.0 < self.gamma <= 1.0, f"gamma must be in (0, 1], got {self.gamma}")
        for name in ("max_steps", "batch_size", "target_update_every", "log_every", "checkpoint_every", "bootstrap"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(0.0 < self.ci < 1.0, f"ci must be in (0, 1), got {self.ci}")
        check(self.bootstrap_fits == 0 or self.bootstrap_fits >= 2,
              f"bootstrap_fits must be 0 or >= 2 (a spread needs two fits), got {self.bootstrap_fits}")
        check(self.lr > 0, f"lr must be > 0, got {self.lr}")
        check(math.isfinite(self.reward_scale) and self.reward_scale > 0,
              f"reward_scale must be finite and > 0, got {self.reward_scale}")
        check(all(h >= 1 for h in self.hidden), f"hidden widths must be >= 1: {self.hidden}")
        check(self.torch_threads >= 0, f"torch_threads must be >= 0, got {self.torch_threads}")


# ------------------------------------------------------------------------------------------- policy and data
def resolve_policy(path: str) -> Policy:
    p = Path(path)
    if p.is_dir():
        p = p / "policy.pt"
    if not p.is_file():
        raise DataError(f"{path}: no policy file (a policy.pt / policy_best.pt, or a run directory holding policy.pt)")
    return load_policy(p)


def check_policy_fits(policy: Policy, tr, name: str = "policy") -> None:
    """One-line DataError when the policy cannot act on the dataset's observations in its action space."""
    ds = tr.dataset_id
    obs_dim = policy.arch.get("obs_dim")
    if obs_dim != tr.obs_dim:
        raise DataError(f"{name} takes {obs_dim}-dim observations but {ds} has {tr.obs_dim}-dim observations")
    if policy.discrete != tr.discrete:
        kinds = {True: "discrete", False: "continuous (Box)"}
        raise DataError(f"{name} has {kinds[policy.discrete]} actions but {ds} has {kinds[tr.discrete]} actions")
    if tr.discrete:
        if policy.n_actions != tr.n_actions:
            raise DataError(f"{name} has {policy.n_actions} actions but {ds} has Discrete({tr.n_actions})")
        return
    if policy.low.shape != tr.action_low.shape:
        raise DataError(f"{name} has {policy.low.size}-dim actions but {ds} has {tr.act_dim}-dim actions")
    same = np.allclose(policy.low, tr.action_low, atol=1e-6) and np.allclose(policy.high, tr.action_high, atol=1e-6)
    if not tr.action_bounds_inferred and not same:
        raise DataError(f"{name}'s action box [{policy.low.tolist()}, {policy.high.tolist()}] differs from {ds}'s "
                        f"[{tr.action_low.tolist()}, {tr.action_high.tolist()}]")
    outside = np.any(tr.actions < policy.low - 1e-6) or np.any(tr.actions > policy.high + 1e-6)
    if tr.action_bounds_inferred and outside:
        raise DataError(f"{ds} has actions outside {name}'s action box [{policy.low.tolist()}, {policy.high.tolist()}]")


def _policy_actions(policy: Policy, obs: np.ndarray, norm: Normalization, chunk: int = 65536) -> np.ndarray:
    """pi's deterministic action at each observation, as Q takes it: an index, or the unit-box action."""
    out = [policy.act(obs[i:i + chunk], deterministic=True) for i in range(0, len(obs), chunk)]
    a = np.concatenate(out) if out else np.zeros((0,))
    return a.astype(np.int64) if policy.discrete else norm.action_to_unit(a)


@dataclass
class OPEProblem:
    """What FQE regresses on (normalised arrays with pi's next actions), and the initial states it reports on."""

    arrays: dict
    init_obs: np.ndarray  # normalised s0 of each episode
    init_actions: np.ndarray  # pi(s0)
    init_episode: np.ndarray  # the episode index (arrays["episode_index"]'s numbering) of each s0
    obs_dim: int
    act_dim: int
    n_actions: int | None
    horizon: float  # mean episode length


def build_problem(policy: Policy, tr, *, normalize_obs: bool = True, reward_scale: float = 1.0) -> OPEProblem:
    norm = Normalization.fit(tr, normalize_obs=normalize_obs, reward_scale=reward_scale)
    if not tr.discrete and tr.action_bounds_inferred:  # the data's box is a guess; the policy's is declared
        norm.action_low, norm.action_high = policy.low.astype(np.float32), policy.high.astype(np.float32)
    arrays = norm.apply(tr)
    arrays["next_actions"] = _policy_actions(policy, tr.next_observations, norm)
    _, first, arrays["episode_index"] = np.unique(tr.episode_ids, return_index=True, return_inverse=True)
    order = np.sort(first)
    s0 = tr.observations[order]
    return OPEProblem(arrays, norm.obs(s0), _policy_actions(policy, s0, norm), arrays["episode_index"][order],
                      tr.obs_dim, 0 if tr.discrete else tr.act_dim, tr.n_actions, len(tr) / max(len(first), 1))


# ---------------------------------------------------------------------------------------------------- FQE
class EnsembleMLP(nn.Module):
    """n independent MLPs (nn.Linear's init each), one batched matmul per layer: x [B, in] -> [n, B, out]."""

    def __init__(self, n: int, in_dim: int, out_dim: int, hidden: list[int], activation: str = "relu"):
        super().__init__()
        self.n, dims = n, [in_dim, *hidden, out_dim]
        self.layers = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(0).expand(self.n, -1, -1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h


class FQE(Agent):
    """Q(s, a) of a fixed policy: an MLP on [s, a] (Box actions) or with one output per action (Discrete); with
    `n_boot`, also n_boot refits on episode-resampled data (module docstring), stepped after the main fit."""

    def __init__(self, prob: OPEProblem, hidden: list[int], lr: float, gamma: float, device: torch.device,
                 n_boot: int = 0, seed: int = 0):
        super().__init__()
        self.discrete, self.gamma = prob.n_actions is not None, gamma
        inp, out = (prob.obs_dim, prob.n_actions) if self.discrete else (prob.obs_dim + prob.act_dim, 1)
        q = mlp(inp, out, list(hidden)).to(device)
        target = copy.deepcopy(q).requires_grad_(False)
        self.register(q=q, q_target=target, opt=torch.optim.Adam(q.parameters(), lr=lr))
        if n_boot:
            with torch.random.fork_rng(devices=[]):  # the main fit's random stream is the same without them
                torch.manual_seed(seed + 7919)
                boot = EnsembleMLP(n_boot, inp, out, list(hidden)).to(device)
            n_ep = len(prob.init_episode)
            counts = np.random.default_rng(seed).multinomial(n_ep, np.full(n_ep, 1.0 / n_ep), size=n_boot)
            self.register(boot=boot, boot_target=copy.deepcopy(boot).requires_grad_(False),
                          boot_opt=torch.optim.Adam(boot.parameters(), lr=lr),
                          boot_counts=torch.as_tensor(counts, dtype=torch.float32, device=device))

    def value(self, net, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """Q(s, a): [B] from the main network, [n, B] from the refits' ensemble."""
        if self.discrete:
            q = net(obs)
            return q.gather(-1, act.long().view(*([1] * (q.dim() - 2)), -1, 1).expand(*q.shape[:-1], 1)).squeeze(-1)
        return net(torch.cat([obs, act], dim=-1)).squeeze(-1)

    def update(self, b: dict) -> dict:
        info = {"loss/q": self._fit_step(self.q, self.q_target, self.opt, b, None)}
        if hasattr(self, "boot"):
            w = self.boot_counts[:, b["episode_index"]]  # [n, B]: each refit's weight of each transition
            info["loss/q_boot"] = self._fit_step(self.boot, self.boot_target, self.boot_opt, b, w)
        return info

    def _fit_step(self, net, target, opt, b: dict, w: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            nxt = self.value(target, b["next_observations"], b["next_actions"])
            y = b["rewards"] + self.gamma * (1.0 - b["terminals"]) * nxt
        q = self.value(net, b["observations"], b["actions"])
        loss = F.mse_loss(q, y) if w is None else (w * (q - y) ** 2).mean(dim=-1).sum()
        self.optimize(opt, loss)
        return loss.detach() if w is None else loss.detach() / len(w)

    def sync_target(self) -> None:
        self.q_target.load_state_dict(self.q.state_dict())
        if hasattr(self, "boot"):
            self.boot_target.load_state_dict(self.boot.state_dict())

    @torch.no_grad()
    def initial_values(self, prob: OPEProblem, device: torch.device) -> np.ndarray:
        obs = torch.as_tensor(prob.init_obs, device=device)
        act = torch.as_tensor(prob.init_actions, device=device)
        return self.value(self.q, obs, act).double().cpu().numpy()

    @torch.no_grad()
    def boot_estimates(self, prob: OPEProblem, device: torch.device) -> np.ndarray:
        """Each refit's value: the mean of its Q(s0, pi(s0)) over its resample of the episodes' initial states."""
        obs = torch.as_tensor(prob.init_obs, device=device)
        act = torch.as_tensor(prob.init_actions, device=device)
        w = self.boot_counts[:, torch.as_tensor(prob.init_episode, device=device)].double()  # [n, episodes]
        v = self.value(self.boot, obs, act).double()
        return ((w * v).sum(dim=1) / w.sum(dim=1)).cpu().numpy()


def bootstrap_ci(values: np.ndarray, n: int, level: float, seed: int) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (n resamples with replacement)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    a = (1.0 - level) / 2.0
    return float(np.quantile(means, a)), float(np.quantile(means, 1.0 - a))


def refit_ci(value: float, estimates: np.ndarray, level: float) -> tuple[float, float]:
    """Normal bootstrap interval: value +- z_{(1 + level) / 2} * the sample std of the refits' estimates."""
    half = statistics.NormalDist().inv_cdf(0.5 + level / 2.0) * float(np.std(estimates, ddof=1))
    return value - half, value + half


def return_equivalent(value: float, gamma: float, horizon: float) -> float:
    """V as an H-step undiscounted return under a constant per-step reward (exact for gamma = 1)."""
    if gamma >= 1.0:
        return value
    return value * horizon * (1.0 - gamma) / (1.0 - gamma ** horizon)


def fqe_value(policy: Policy, tr, *, gamma: float, steps: int, target_update_every: int, hidden: list[int],
              lr: float, batch_size: int, seed: int, device: torch.device) -> float:
    """A short FQE of `policy` on `tr` leaving torch's global RNG as it was (for checkpoint selection). Rewards
    are fitted divided by their root mean square (values of order 1/(1 - gamma), which a short fit with a fixed
    learning rate reaches), and the value is returned in the data's reward units."""
    scale = 1.0 / max(float(np.sqrt(np.mean(np.square(tr.rewards, dtype=np.float64)))), 1e-6)
    prob = build_problem(policy, tr, reward_scale=scale)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fqe = FQE(prob, hidden, lr, gamma, device)
        buf = DeviceBuffer(prob.arrays, device)
        gen = torch.Generator(device=device).manual_seed(seed)
        for step in range(1, steps + 1):
            loss = fqe.update(buf.sample(batch_size, gen))["loss/q"]
            if step % target_update_every == 0:
                fqe.sync_target()
    if not torch.isfinite(loss):
        raise DataError(f"FQE of the current policy diverged (loss {float(loss)}); lower ope_lr or use select_by=env")
    return float(fqe.initial_values(prob, device).mean()) / scale


# -------------------------------------------------------------------------------------------------- stage
@dataclass
class OPEInputs:
    tr: object
    policy: Policy
    prob: OPEProblem
    refs: tuple[float, float] | None
    device: torch.device


def load_inputs(cfg: Config) -> OPEInputs:
    policy = resolve_policy(cfg.policy)
    tr = load_transitions(cfg.dataset, obs_columns=cfg.obs_columns, action_columns=cfg.action_columns)
    check_policy_fits(policy, tr, name=cfg.policy)
    refs = reference_scores(tr, cfg.ref_min_score, cfg.ref_max_score, required=False) if cfg.normalize_score else None
    device = pick_device(cfg.device)
    prob = build_problem(policy, tr, normalize_obs=cfg.normalize_obs, reward_scale=cfg.reward_scale)
    return OPEInputs(tr, policy, prob, refs, device)


def train(cfg: Config) -> dict:
    inputs = load_inputs(cfg)  # every check before anything is written
    run = RunDir(cfg.output_dir, cfg, quiet=cfg.quiet)
    done = run.completed_metrics()
    if done is not None:
        return done
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    seed_everything(cfg.seed)
    dev = inputs.device
    fqe = FQE(inputs.prob, cfg.hidden, cfg.lr, cfg.gamma, dev, n_boot=cfg.bootstrap_fits, seed=cfg.seed)
    buf = DeviceBuffer(inputs.prob.arrays, dev)
    sampler = torch.Generator(device=dev).manual_seed(cfg.seed)
    step, acc, acc_n, guard = 0, torch.zeros((), device=dev), 0, FiniteGuard()
    state = run.load_checkpoint()
    if state is not None:
        fqe.load_state_dict(state["fqe"])
        sampler.set_state(state["sampler"].cpu())
        set_rng_state(state["rng"])
        step, acc, acc_n = int(state["step"]), state["acc"].to(dev), int(state["acc_n"])
        run.truncate_log(step)
    start, start_step = time.perf_counter(), step
    bar = run.progress(cfg.max_steps, initial=step, desc="ope")
    while step < cfg.max_steps:
        info = fqe.update(buf.sample(cfg.batch_size, sampler))
        step += 1
        guard.record(step, info)
        acc, acc_n = acc + info["loss/q"], acc_n + 1
        bar.update(1)
        if step % cfg.target_update_every == 0:
            fqe.sync_target()
        if step % cfg.log_every == 0 or step == cfg.max_steps:
            guard.check()
            est = float(fqe.initial_values(inputs.prob, dev).mean()) / cfg.reward_scale
            run.log(step, {"loss/q": float(acc) / acc_n, "ope/value": est})
            acc, acc_n = torch.zeros((), device=dev), 0
            bar.set_postfix({"value": round(est, 2)})
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            guard.check()
            run.save_checkpoint({"fqe": fqe.state_dict(), "sampler": sampler.get_state(), "rng": get_rng_state(),
                                 "step": step, "acc": acc, "acc_n": acc_n})
    bar.close()
    boot = fqe.boot_estimates(inputs.prob, dev) / cfg.reward_scale if cfg.bootstrap_fits else None
    metrics = summarize(cfg, inputs, fqe.initial_values(inputs.prob, dev) / cfg.reward_scale, boot)
    metrics["train/steps"] = step
    if step > start_step:
        metrics["time/updates_per_s"] = (step - start_step) / max(time.perf_counter() - start, 1e-9)
    return run.finish(metrics)


def summarize(cfg: Config, inputs: OPEInputs, values: np.ndarray, boot: np.ndarray | None = None) -> dict:
    """The estimate (mean over initial states), its bootstrap CI (from the refits' estimates `boot`, else over
    initial states), the return equivalent and normalised score."""
    tr, prob = inputs.tr, inputs.prob
    lo, hi = bootstrap_ci(values, cfg.bootstrap, cfg.ci, cfg.seed)
    extra = {"ope/bootstrap_fits": 0}
    if boot is not None:  # the initial-state interval stays beside it, for comparison
        extra = {"ope/value_ci_states_low": lo, "ope/value_ci_states_high": hi,
                 "ope/value_boot_std": float(np.std(boot, ddof=1)), "ope/value_boot_mean": float(boot.mean()),
                 "ope/bootstrap_fits": len(boot)}
        lo, hi = refit_ci(float(values.mean()), boot, cfg.ci)
    m = {"ope/value": float(values.mean()), "ope/value_ci_low": lo, "ope/value_ci_high": hi, **extra,
         "ope/ci_level": cfg.ci, "ope/gamma": cfg.gamma, "ope/initial_states": len(values),
         "data/transitions": len(tr), "data/episodes": len(tr.episode_returns),
         "data/return_mean": float(tr.episode_returns.mean()), "data/episode_length_mean": prob.horizon}
    for key, v in (("", m["ope/value"]), ("_ci_low", lo), ("_ci_high", hi)):
        m[f"ope/return_estimate{key}"] = return_equivalent(v, cfg.gamma, prob.horizon)
        if inputs.refs is not None:
            m[f"ope/normalized_score{key}"] = float(normalized_score(np.array([m[f"ope/return_estimate{key}"]]),
                                                                     *inputs.refs)[0])
    return m


def main(argv=None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-") and "=" not in argv[0]:  # `reins ope POLICY ...`: the positional
        argv = [f"policy={argv[0]}", *argv[1:]]
    if "-h" in argv or "--help" in argv:
        print("reins ope POLICY --dataset D [key=value ...]: the expected discounted return of POLICY (a policy file "
              "or run directory) estimated from dataset D alone by fitted Q evaluation, with a bootstrap CI over "
              "episodes (offline/README.md, Off-policy evaluation)\n")
    return stage_main(Config, train, argv, prog="reins ope", stage="ope")


if __name__ == "__main__":
    raise SystemExit(main())
