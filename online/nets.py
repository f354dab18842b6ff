"""Small MLP actors and critics, each rebuilt from a plain architecture spec (what `policy_io` stores).

Actor kinds (spec["kind"]):
- "categorical":   logits over Discrete actions (REINFORCE, A2C, PPO, NPG, TRPO on Discrete envs).
- "gaussian":      mean(s) and a state-independent log-std; actions in env units, clipped to the Box at the
                   env boundary (on-policy agents on Box envs; Williams 1992).
- "tanh_gaussian": mean(s), log_std(s) of a TanhGaussian in [-1, 1]^d, scaled to the Box (SAC).
- "deterministic": tanh(mu(s)) in [-1, 1]^d, scaled to the Box (DDPG, TD3).
- "q":             Q(s, .) over Discrete actions; the policy is greedy / epsilon-greedy (DQN).
"""

from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(in_dim: int, out_dim: int, hidden: list[int], activation: str, *, ortho: bool = False,
        out_gain: float = 1.0) -> nn.Sequential:
    """Linear-activation stack; with `ortho`, orthogonal init (gain sqrt 2, head `out_gain`, zero biases)."""
    layers: list[nn.Module] = []
    dims = [in_dim, *hidden]
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    layers.append(nn.Linear(dims[-1], out_dim))
    if ortho:
        # Orthogonal init with a small policy head (Engstrom et al. 2020, PPO implementation details).
        linears = [m for m in layers if isinstance(m, nn.Linear)]
        for i, lin in enumerate(linears):
            nn.init.orthogonal_(lin.weight, gain=out_gain if i == len(linears) - 1 else math.sqrt(2))
            nn.init.zeros_(lin.bias)
    return nn.Sequential(*layers)


class CategoricalActor(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.net = mlp(spec["obs_dim"], spec["act_dim"], spec["hidden"], spec["activation"],
                       ortho=spec.get("ortho", False), out_gain=0.01)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class GaussianActor(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.net = mlp(spec["obs_dim"], spec["act_dim"], spec["hidden"], spec["activation"],
                       ortho=spec.get("ortho", False), out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((spec["act_dim"],), float(spec.get("init_log_std", 0.0))))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.net(obs)
        return mean, self.log_std.expand_as(mean)


class TanhGaussianActor(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.trunk = mlp(spec["obs_dim"], 2 * spec["act_dim"], spec["hidden"], spec["activation"])
        self.log_std_min = float(spec.get("log_std_min", -5.0))
        self.log_std_max = float(spec.get("log_std_max", 2.0))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.trunk(obs).chunk(2, dim=-1)
        # Squash log-std smoothly into [min, max] (as in CleanRL/SpinningUp) so exp() stays finite.
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw) + 1.0)
        return mean, log_std


class DeterministicActor(nn.Module):
    def __init__(self, spec: dict):
        super().__init__()
        self.net = mlp(spec["obs_dim"], spec["act_dim"], spec["hidden"], spec["activation"])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))


class QNetwork(nn.Module):
    """Q(s, .) for Discrete actions."""

    def __init__(self, spec: dict):
        super().__init__()
        self.net = mlp(spec["obs_dim"], spec["act_dim"], spec["hidden"], spec["activation"])

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


ACTORS = {"categorical": CategoricalActor, "gaussian": GaussianActor, "tanh_gaussian": TanhGaussianActor,
          "deterministic": DeterministicActor, "q": QNetwork}


def build_actor(spec: dict) -> nn.Module:
    if spec.get("kind") not in ACTORS:
        raise ValueError(f"unknown actor kind {spec.get('kind')!r} (known: {', '.join(ACTORS)})")
    return ACTORS[spec["kind"]](spec)


class ValueNet(nn.Module):
    """State value V(s) (on-policy baselines / critics)."""

    def __init__(self, obs_dim: int, hidden: list[int], activation: str, ortho: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, activation, ortho=ortho, out_gain=1.0)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class ContinuousQ(nn.Module):
    """Q(s, a) for a Box action given in [-1, 1] units (SAC, TD3, DDPG critics)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "relu"):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, 1, hidden, activation)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, act], dim=-1)).squeeze(-1)


class EnsembleQ(nn.Module):
    """`n` independent Q(s, a) MLPs evaluated in one batched matmul per layer -> [n, B] (twin critics).

    Same function as `n` ContinuousQ modules (each member has its own weights, initialised like nn.Linear),
    but one kernel call per layer instead of n: the main speed-up of the SAC/TD3 critic update on CPU.
    """

    def __init__(self, n: int, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "relu"):
        super().__init__()
        dims = [obs_dim + act_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(a)
            self.weights.append(nn.Parameter(torch.empty(n, a, b).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, b).uniform_(-bound, bound)))
        self.act = ACTIVATIONS[activation]()
        self.n = n

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], dim=-1).unsqueeze(0).expand(self.n, -1, -1)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            x = torch.baddbmm(b, x, w)
            if i < last:
                x = self.act(x)
        return x.squeeze(-1)
