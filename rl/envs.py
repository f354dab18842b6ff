"""Environment creation, space checks and running normalisation for the online agents.

- `make_vector_env` builds a `gymnasium.vector.SyncVectorEnv` in SAME_STEP autoreset mode, so the true final
  observation of an episode arrives in `info["final_obs"]` on the step that ends it (replay buffers store it as
  `next_observation`; on-policy agents bootstrap from its value on truncation).
- `EnvSpec` summarises the spaces the agents support: a Box observation (flattened to a vector; Discrete,
  Tuple and Dict observations are flattened by `flat_observations`, one-hot for Discrete parts) and a Box
  (1-D) or Discrete action. Anything else raises `DataError` before training starts; an unknown env id too.
- `RunningMeanStd` is the parallel-variance running estimate (Chan et al. 1979) used for observation
  normalisation and for reward scaling by the std of the discounted return (the PPO
  implementation details of Engstrom et al. 2020 / OpenAI baselines `VecNormalize`).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from reins.errors import ConfigError, DataError


@dataclass
class EnvSpec:
    """What an agent needs to know about an env's spaces."""

    env_id: str
    obs_dim: int
    obs_low: np.ndarray
    obs_high: np.ndarray
    discrete: bool
    act_dim: int          # number of actions for Discrete, vector size for Box
    act_low: np.ndarray | None = None
    act_high: np.ndarray | None = None

    def action_space_dict(self) -> dict:
        if self.discrete:
            return {"type": "discrete", "n": int(self.act_dim)}
        return {"type": "box", "low": torch.as_tensor(self.act_low, dtype=torch.float64),
                "high": torch.as_tensor(self.act_high, dtype=torch.float64)}

    def observation_space_dict(self) -> dict:
        return {"type": "box", "low": torch.as_tensor(self.obs_low, dtype=torch.float64),
                "high": torch.as_tensor(self.obs_high, dtype=torch.float64)}


def gym_make(env, what: str = "env", **kwargs) -> gym.Env:
    """`gymnasium.make(env)` for an env id or a gymnasium EnvSpec (an offline dataset's recorded eval env), every
    failure (unknown id, missing package, bad kwargs) as one DataError naming `what` and the env."""
    try:
        # gymnasium prints "Did you mean" hints to stderr on top of raising; keep only our one-line error.
        with contextlib.redirect_stderr(io.StringIO()):
            return gym.make(env, **kwargs)
    except Exception as e:  # noqa: BLE001 - unknown ids / missing extras raise many types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(f"cannot make {what} '{getattr(env, 'id', env)}': {first[:200]}") from None


def _fixed_size(space: gym.Space) -> bool:
    """A space whose every part has a fixed size once flattened (no Text, Sequence or Graph)."""
    if isinstance(space, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        return True
    if isinstance(space, (gym.spaces.Tuple, gym.spaces.Dict)):
        return all(_fixed_size(s) for s in (space.spaces.values() if isinstance(space, gym.spaces.Dict)
                                            else space.spaces))
    return False


def flat_observations(env: gym.Env, env_id: str) -> gym.Env:
    """`env` itself when it observes a Box; otherwise wrapped in gymnasium's `FlattenObservation`, so a
    Discrete observation arrives one-hot and a Tuple/Dict of Box/Discrete parts as one concatenated vector
    (FrozenLake, Taxi, Blackjack). Spaces without a fixed flat size (Text, Graph, Sequence) are refused."""
    space = env.observation_space
    if isinstance(space, gym.spaces.Box):
        return env
    if not _fixed_size(space):
        env.close()
        raise DataError(f"env '{env_id}': unsupported observation space {space} (online agents need a Box, "
                        "or a Discrete/Tuple/Dict observation that flattens to one)")
    return gym.wrappers.FlattenObservation(env)


def spec_from_spaces(env_id: str, obs_space: gym.Space, act_space: gym.Space) -> EnvSpec:
    """Check the spaces are supported and summarise them; raise DataError naming the space otherwise."""
    if not isinstance(obs_space, gym.spaces.Box):
        raise DataError(f"env '{env_id}': unsupported observation space {obs_space} "
                        "(online agents need a Box observation)")
    obs_dim = int(np.prod(obs_space.shape))
    if isinstance(act_space, gym.spaces.Discrete):
        if int(act_space.start) != 0:
            raise DataError(f"env '{env_id}': unsupported action space {act_space} (Discrete must start at 0)")
        return EnvSpec(env_id, obs_dim, obs_space.low.reshape(-1), obs_space.high.reshape(-1), True,
                       int(act_space.n))
    if isinstance(act_space, gym.spaces.Box) and len(act_space.shape) == 1:
        low, high = act_space.low.astype(np.float64), act_space.high.astype(np.float64)
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise DataError(f"env '{env_id}': unsupported action space {act_space} (Box bounds must be finite)")
        return EnvSpec(env_id, obs_dim, obs_space.low.reshape(-1), obs_space.high.reshape(-1), False,
                       int(act_space.shape[0]), low, high)
    raise DataError(f"env '{env_id}': unsupported action space {act_space} "
                    "(online agents support Discrete or a 1-D Box)")


def make_env(env_id: str, **kwargs) -> tuple[gym.Env, EnvSpec]:
    """One env (observations flattened) plus its checked spec."""
    env = flat_observations(gym_make(env_id, **kwargs), env_id)
    try:
        spec = spec_from_spaces(env_id, env.observation_space, env.action_space)
    except DataError:
        env.close()
        raise
    return env, spec


def make_vector_env(env_id: str, num_envs: int, **kwargs) -> tuple[gym.vector.VectorEnv, EnvSpec]:
    """`num_envs` copies in one process, autoreset in SAME_STEP mode (final obs in `info["final_obs"]`)."""
    if num_envs < 1:
        raise ConfigError(f"num_envs must be >= 1, got {num_envs}")
    _, spec = make_env(env_id, **kwargs)  # validates the id and spaces with a clear error first
    envs = gym.vector.SyncVectorEnv([lambda: flat_observations(gym.make(env_id, **kwargs), env_id)
                                     for _ in range(num_envs)],
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    return envs, spec


def evaluate(act, env, episodes: int, seed: int, max_steps: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Undiscounted returns and lengths of one episode on each of `episodes` fresh envs (an id or a gymnasium
    EnvSpec; observations flattened) reset with seeds seed, seed+1, ...; `act(obs [N, obs_dim]) -> actions [N, ...]`
    is called once per step with the envs still running, in order. `max_steps` caps every episode's length."""
    envs = [flat_observations(gym_make(env, "evaluation env"), getattr(env, "id", env)) for _ in range(episodes)]
    try:
        obs = [e.reset(seed=seed + k)[0] for k, e in enumerate(envs)]
        returns, lengths = np.zeros(episodes), np.zeros(episodes, dtype=np.int64)
        active = np.ones(episodes, dtype=bool)
        while active.any():
            idx = np.flatnonzero(active)
            actions = act(np.stack([np.asarray(obs[i]).reshape(-1) for i in idx]))
            for j, i in enumerate(idx):
                obs[i], r, term, trunc, _ = envs[i].step(actions[j])
                returns[i] += float(r)
                lengths[i] += 1
                if term or trunc or (max_steps is not None and lengths[i] >= max_steps):
                    active[i] = False
        return returns, lengths
    finally:
        for e in envs:
            e.close()


def check_algo_spaces(algo: str, spec: EnvSpec, *, needs: str) -> None:
    """`needs` in {"discrete", "box", "any"}: raise ConfigError when the algorithm cannot act in this env."""
    if needs == "discrete" and not spec.discrete:
        raise ConfigError(f"algo '{algo}' needs a Discrete action space; env '{spec.env_id}' has a Box")
    if needs == "box" and spec.discrete:
        raise ConfigError(f"algo '{algo}' needs a Box action space; env '{spec.env_id}' has a Discrete one")


def final_observations(next_obs: np.ndarray, info: dict, ended: np.ndarray) -> np.ndarray:
    """The true next observation of each env: `info["final_obs"]` where the episode ended, else `next_obs`."""
    real = np.array(next_obs, copy=True)
    if ended.any():
        final = info["final_obs"]
        for i in np.flatnonzero(ended):
            real[i] = np.asarray(final[i]).reshape(real[i].shape)
    return real


# ------------------------------------------------------------------------------------- running statistics
class RunningMeanStd:
    """Running mean/variance over batches (parallel algorithm of Chan et al.), float64."""

    def __init__(self, shape: tuple[int, ...] = (), epsilon: float = 1e-4):
        self.mean = np.zeros(shape, dtype=np.float64)
        self.var = np.ones(shape, dtype=np.float64)
        self.count = float(epsilon)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, dtype=np.float64)
        b_mean, b_var, b_count = x.mean(axis=0), x.var(axis=0), x.shape[0]
        delta = b_mean - self.mean
        total = self.count + b_count
        self.mean = np.asarray(self.mean + delta * b_count / total, dtype=np.float64)
        m2 = self.var * self.count + b_var * b_count + delta**2 * self.count * b_count / total
        self.var = np.asarray(m2 / total, dtype=np.float64)
        self.count = total

    def state_dict(self) -> dict:
        return {"mean": torch.from_numpy(np.array(self.mean, dtype=np.float64)),
                "var": torch.from_numpy(np.array(self.var, dtype=np.float64)), "count": float(self.count)}

    def load_state_dict(self, state: dict) -> None:
        self.mean = state["mean"].numpy().astype(np.float64)
        self.var = state["var"].numpy().astype(np.float64)
        self.count = float(state["count"])


class ObsNormalizer:
    """`clip((obs - mean) / sqrt(var + eps), -clip, clip)` with running statistics; identity when disabled."""

    def __init__(self, obs_dim: int, enabled: bool, clip: float = 10.0, eps: float = 1e-8):
        self.enabled, self.clip, self.eps = enabled, float(clip), float(eps)
        self.rms = RunningMeanStd((obs_dim,))

    def update(self, obs: np.ndarray) -> None:
        if self.enabled:
            self.rms.update(obs)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float64)
        if not self.enabled:
            return obs.astype(np.float32)
        out = np.clip((obs - self.rms.mean) / np.sqrt(self.rms.var + self.eps), -self.clip, self.clip)
        return out.astype(np.float32)

    def export(self) -> dict | None:
        """The statistics `policy_io` stores so a saved policy normalises exactly as in training."""
        if not self.enabled:
            return None
        return {"mean": torch.from_numpy(self.rms.mean.copy()), "var": torch.from_numpy(self.rms.var.copy()),
                "clip": self.clip, "eps": self.eps}

    def state_dict(self) -> dict:
        return self.rms.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.rms.load_state_dict(state)


class RewardScaler:
    """Divide rewards by the running std of the discounted return (no mean shift), then clip.

    Engstrom et al. 2020, "Implementation Matters in Deep Policy Gradients" (reward scaling). The per-env return
    accumulator restarts at the end of each episode.
    """

    def __init__(self, num_envs: int, gamma: float, enabled: bool, clip: float = 10.0, eps: float = 1e-8):
        self.enabled, self.gamma, self.clip, self.eps = enabled, gamma, clip, eps
        self.rms = RunningMeanStd(())
        self.ret = np.zeros(num_envs, dtype=np.float64)

    def __call__(self, rewards: np.ndarray, ended: np.ndarray) -> np.ndarray:
        rewards = np.asarray(rewards, dtype=np.float64)
        if not self.enabled:
            return rewards
        self.ret = self.ret * self.gamma + rewards
        self.rms.update(self.ret)
        self.ret[ended] = 0.0
        return np.clip(rewards / np.sqrt(self.rms.var + self.eps), -self.clip, self.clip)

    def reset(self) -> None:
        self.ret[:] = 0.0

    def state_dict(self) -> dict:
        return {"rms": self.rms.state_dict(), "ret": torch.from_numpy(self.ret.copy())}

    def load_state_dict(self, state: dict) -> None:
        self.rms.load_state_dict(state["rms"])
        self.ret = state["ret"].numpy().astype(np.float64)
