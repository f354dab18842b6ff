"""On-policy rollouts: the bootstrap plumbing that GAE relies on (truncation vs termination, rollout end)."""

import torch

from online.common import OnlineLoop
from online.onpolicy import collect_rollout
from online.ppo import PPO
from online.stage import Config
from reins.config import from_dict


def _setup(tmp_path, env_id, num_steps):
    cfg = from_dict(Config, {"output_dir": str(tmp_path / "r"), "quiet": True, "env_id": env_id,
                             "ppo": {"num_envs": 2, "num_steps": num_steps, "hidden": [8]}})
    torch.manual_seed(0)
    h = OnlineLoop(cfg, "ppo", 2, 0.99)
    agent = PPO(cfg.ppo, h.spec, h.gen, total_steps=cfg.total_steps)
    return h, agent


def test_truncation_bootstraps_from_the_final_observation(tmp_path):
    h, agent = _setup(tmp_path, "Pendulum-v1", 210)  # Pendulum: time limit at 200 steps, never terminates
    obs, _ = h.start(agent)
    b, _ = collect_rollout(h, agent, obs, 210)
    assert b["obs"].shape == (2, 210, 3) and b["rewards"].shape == (2, 210)
    assert b["terminated"].sum() == 0
    # time limit at t = 199 and the rollout's end at t = 209 are truncations
    assert b["truncated"].nonzero().tolist() == [[0, 199], [0, 209], [1, 199], [1, 209]]
    with torch.no_grad():
        v_next_obs = agent.critic(b["obs"][:, 1:])
    inside = torch.ones(209, dtype=torch.bool)
    inside[199] = False
    # within an episode V(s'_t) is the value of the next observation acted on
    torch.testing.assert_close(b["next_values"][:, :-1][:, inside], v_next_obs[:, inside])
    # at the time limit it is V(final obs), not V(reset obs of the next episode)
    assert not torch.allclose(b["next_values"][:, 199], v_next_obs[:, 199])
    assert (b["obs"][:, 200, 0] ** 2 + b["obs"][:, 200, 1] ** 2 - 1).abs().max() < 1e-5
    h.envs.close()


def test_termination_is_flagged_and_not_truncation(tmp_path):
    h, agent = _setup(tmp_path, "CartPole-v1", 100)  # a random policy ends CartPole episodes in ~20 steps
    obs, _ = h.start(agent)
    b, _ = collect_rollout(h, agent, obs, 100)
    term, trunc = b["terminated"], b["truncated"]
    assert term.sum() >= 4
    assert (term * trunc).sum() == 0  # the last step is a truncation only if it did not terminate
    assert torch.all((trunc[:, -1] + term[:, -1]) == 1)
    assert trunc[:, :-1].sum() == 0
    h.envs.close()
