"""d3rlpy 2.8.1 IQL on a Minari dataset, in a Python where reins is not importable (run by iql_vs_d3rlpy.py).

`train SPEC OUT`: fit IQL with the spec's settings (those of ../shared/datasets/README.md: StandardObservationScaler,
ReturnBasedRewardScaler(multiplier=1000), actor lr cosine over the run), evaluating after every `eval_every`
updates on `eval_episodes` episodes of the dataset's eval env reset with seeds 1_000_000 + 1000 * seed + i
(reins's evaluation seeds), deterministic actions; OUT gets the per-evaluation normalised scores.
`trace SPEC OUT`: no training loop; the initial weights, `steps` preprocessed minibatches, each update's losses
and the weights after them go to OUT (torch.save), for the step-by-step comparison with reins's update.
Only minari / d3rlpy / gymnasium / numpy / torch are imported.
"""

from __future__ import annotations

import json
import sys
import time

from peer_side import episode_returns, refuse_reins, to_mdp


def make_algo(spec: dict):
    import d3rlpy
    from d3rlpy.models.encoders import VectorEncoderFactory
    from d3rlpy.optimizers import AdamFactory
    from d3rlpy.optimizers.lr_schedulers import CosineAnnealingLRFactory
    from d3rlpy.preprocessing import ReturnBasedRewardScaler, StandardObservationScaler

    enc = VectorEncoderFactory(hidden_units=list(spec["hidden"]))
    return d3rlpy.algos.IQLConfig(
        batch_size=spec["batch"], gamma=spec["gamma"], tau=spec["tau"], n_critics=2, expectile=spec["expectile"],
        weight_temp=spec["beta"], max_weight=spec["max_weight"], actor_learning_rate=spec["lr"],
        critic_learning_rate=spec["lr"],
        actor_optim_factory=AdamFactory(lr_scheduler_factory=CosineAnnealingLRFactory(T_max=spec["steps"])),
        actor_encoder_factory=enc, critic_encoder_factory=enc, value_encoder_factory=enc,
        observation_scaler=StandardObservationScaler(), reward_scaler=ReturnBasedRewardScaler(multiplier=1000.0),
    ).create(device=False)


def evaluate(algo, env, episodes: int, seed: int) -> list[float]:
    return episode_returns(algo, env, [1_000_000 + 1000 * seed + i for i in range(episodes)])


def train(spec: dict, out_path: str) -> None:
    import d3rlpy
    import minari
    import numpy as np

    data = minari.load_dataset(spec["dataset"])
    mdp = to_mdp(data)
    algo = make_algo(spec)
    env = data.recover_environment(eval_env=True)
    evals, start = [], time.perf_counter()
    fitter = algo.fitter(mdp, n_steps=spec["steps"], n_steps_per_epoch=spec["eval_every"], show_progress=False,
                         save_interval=10**9, experiment_name="iql_vs_d3rlpy", with_timestamp=False,
                         logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    for epoch, _ in fitter:
        returns = evaluate(algo, env, spec["eval_episodes"], spec["seed"])
        score = 100.0 * float(np.mean(minari.get_normalized_score(data, np.asarray(returns))))
        evals.append({"step": epoch * spec["eval_every"], "return_mean": float(np.mean(returns)),
                      "normalized_score": score})
    json.dump({"evals": evals, "seconds": time.perf_counter() - start,
               "transitions": int(mdp.transition_count),
               "versions": {"d3rlpy": d3rlpy.__version__, "minari": minari.__version__}}, open(out_path, "w"))


def trace(spec: dict, out_path: str) -> None:
    import minari
    import torch
    from d3rlpy.algos.utility import build_scalers_with_transition_picker
    from d3rlpy.torch_utility import TorchMiniBatch

    mdp = to_mdp(minari.load_dataset(spec["dataset"]))
    algo = make_algo(spec)
    build_scalers_with_transition_picker(algo, mdp)
    algo.build_with_dataset(mdp)
    mods = algo.impl.modules
    nets = ("policy", "q_funcs", "targ_q_funcs", "value_func")

    def snap() -> dict:
        return {k: {n: t.detach().clone() for n, t in getattr(mods, k).state_dict().items()} for k in nets}

    init, batches, losses = snap(), [], []
    for step in range(spec["trace_steps"]):
        c = algo.config
        b = TorchMiniBatch.from_batch(mdp.sample_transition_batch(c.batch_size), gamma=c.gamma,
                                      compute_returns_to_go=False, device="cpu:0",
                                      observation_scaler=c.observation_scaler, reward_scaler=c.reward_scaler)
        batches.append({"observations": b.observations.clone(), "actions": b.actions.clone(),
                        "rewards": b.rewards.clone(), "next_observations": b.next_observations.clone(),
                        "terminals": b.terminals.clone()})
        losses.append(algo.impl.update(b, step))
    sc = algo.config.observation_scaler
    torch.save({"init": init, "final": snap(), "batches": batches, "losses": losses,
                "obs_mean": torch.as_tensor(sc.mean), "obs_std": torch.as_tensor(sc.std),
                "return_max": algo.config.reward_scaler.return_max,
                "return_min": algo.config.reward_scaler.return_min}, out_path)


if __name__ == "__main__":
    refuse_reins()
    import torch

    torch.set_num_threads(1)
    mode, spec_path, out = sys.argv[1:4]
    spec_ = json.loads(open(spec_path).read())
    import d3rlpy

    d3rlpy.seed(spec_["seed"])
    (train if mode == "train" else trace)(spec_, out)
