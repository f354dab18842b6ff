"""d3rlpy IQL on a Minari tier reins wrote, in a Python where reins is not importable (run by d3rlpy_iql.py).

Reads a spec JSON (dataset id, steps, hidden, batch, expectile, beta, reward_scale, eval_episodes, seed); loads
the tier with `minari.load_dataset` (MINARI_DATASETS_PATH is set by the driver), turns its episodes into a
d3rlpy MDPDataset, trains IQL, evaluates the deterministic policy in `recover_environment(eval_env=True)` and
normalises returns with `minari.get_normalized_score` (x 100). Only minari / d3rlpy / gymnasium / numpy / torch.
"""

from __future__ import annotations

import json
import sys

from peer_side import episode_returns, refuse_reins, to_mdp


def main(spec_path: str, out_path: str) -> None:
    refuse_reins()
    import d3rlpy
    import minari
    import numpy as np
    import torch
    from d3rlpy.models.encoders import VectorEncoderFactory
    from d3rlpy.preprocessing import MultiplyRewardScaler, StandardObservationScaler

    spec = json.loads(open(spec_path).read())
    torch.set_num_threads(1)
    d3rlpy.seed(spec["seed"])
    data = minari.load_dataset(spec["dataset"])
    mdp = to_mdp(data)
    enc = VectorEncoderFactory(hidden_units=list(spec["hidden"]))
    algo = d3rlpy.algos.IQLConfig(batch_size=spec["batch"], gamma=0.99, tau=0.005, n_critics=2,
                                  expectile=spec["expectile"], weight_temp=spec["beta"], max_weight=100.0,
                                  actor_learning_rate=3e-4, critic_learning_rate=3e-4, actor_encoder_factory=enc,
                                  critic_encoder_factory=enc, value_encoder_factory=enc,
                                  observation_scaler=StandardObservationScaler(),
                                  reward_scaler=MultiplyRewardScaler(spec["reward_scale"])).create(device=False)
    algo.fit(mdp, n_steps=spec["steps"], n_steps_per_epoch=spec["steps"], show_progress=False, save_interval=10**9,
             experiment_name="interop", with_timestamp=False, logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    env = data.recover_environment(eval_env=True)
    returns = episode_returns(algo, env, [spec["seed"] + 10_000 + ep for ep in range(spec["eval_episodes"])])
    score = 100.0 * float(np.mean(minari.get_normalized_score(data, np.asarray(returns))))
    json.dump({"returns": returns, "return_mean": float(np.mean(returns)), "normalized_score": score,
               "transitions": int(mdp.transition_count), "episodes": int(data.total_episodes),
               "versions": {"d3rlpy": d3rlpy.__version__, "minari": minari.__version__, "torch": torch.__version__}},
              open(out_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
