"""Networks for the offline algorithms: MLPs, a stacked critic ensemble, value net and three actors.

Actors act on normalised observations and produce actions in [-1, 1] (offline/data.py maps the dataset's
action box there). Twin critics are one module with weights [E, in, out] so both Q-functions run in one
batched matmul (a stacked ensemble instead of a Python loop over critics).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pgcore.distributions import TanhGaussian, diag_gaussian_log_prob


def mlp(in_dim: int, hidden: list[int], out_dim: int, *, layer_norm: bool = False, dropout: float = 0.0,
        orthogonal: bool = False, last_gain: float = 1e-2) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(nn.ReLU())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    layers.append(nn.Linear(d, out_dim))
    net = nn.Sequential(*layers)
    if orthogonal:
        orthogonal_init_(net, last_gain)
    return net


def orthogonal_init_(net: nn.Module, last_gain: float = 1e-2) -> None:
    """Orthogonal weights with gain sqrt(2) on the hidden layers and `last_gain` on the output layer, zero biases.

    CORL's CQL critics use last_gain 1e-2; the original IQL code (`default_init`) uses sqrt(2) on every layer.
    """
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for i, m in enumerate(linears):
        nn.init.orthogonal_(m.weight, last_gain if i == len(linears) - 1 else math.sqrt(2.0))
        nn.init.zeros_(m.bias)


def small_last_init_(net: nn.Module, gain: float = 1e-2) -> None:
    """Xavier-uniform weights with a small gain and a zero bias on the output layer only (CORL's CQL actor)."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.xavier_uniform_(last.weight, gain)
    nn.init.zeros_(last.bias)


class EnsembleLinear(nn.Module):
    """E independent linear layers applied as one batched matmul: x [E, B, in] -> [E, B, out]."""

    def __init__(self, n: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default init, member by member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleCritic(nn.Module):
    """E Q-functions Q_e(s, a) sharing nothing but the batched computation; returns [E, ...batch]."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], n: int = 2, orthogonal: bool = False,
                 last_gain: float = 1e-2):
        super().__init__()
        self.n = n
        dims = [obs_dim + act_dim, *hidden, 1]
        self.layers = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        if orthogonal:
            for i, layer in enumerate(self.layers):
                last = i == len(self.layers) - 1
                for e in range(n):
                    nn.init.orthogonal_(layer.weight.data[e].T, last_gain if last else math.sqrt(2.0))
                nn.init.zeros_(layer.bias)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], dim=-1)
        lead = x.shape[:-1]
        h = x.reshape(1, -1, x.shape[-1]).expand(self.n, -1, -1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h.reshape(self.n, *lead)


class ValueNet(nn.Module):
    def __init__(self, obs_dim: int, hidden: list[int], layer_norm: bool = False, orthogonal: bool = False,
                 last_gain: float = 1e-2):
        super().__init__()
        self.net = mlp(obs_dim, hidden, 1, layer_norm=layer_norm, orthogonal=orthogonal, last_gain=last_gain)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class GaussianActor(nn.Module):
    """IQL's actor: N(tanh(f(s)), exp(log_std)) with a state-independent log-std, not squashed.

    Kostrikov et al. 2021 code (NormalTanhPolicy with tanh_squash_distribution=False, log-std in [-5, 2]);
    the mean is in (-1, 1) and the deterministic action is the mean.
    """

    kind = "gaussian"

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], dropout: float = 0.0,
                 log_std_min: float = -5.0, log_std_max: float = 2.0):
        super().__init__()
        self.net = mlp(obs_dim, hidden, act_dim, dropout=dropout)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        mean = torch.tanh(self.net(obs))
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max)
        return diag_gaussian_log_prob(act, mean, log_std)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        mean = torch.tanh(self.net(obs))
        if deterministic:
            return mean
        std = self.log_std.clamp(self.log_std_min, self.log_std_max).exp()
        return (mean + std * torch.randn_like(mean)).clamp(-1.0, 1.0)


class DeterministicActor(nn.Module):
    """a = tanh(f(s)). Its "log-likelihood" is -||pi(s) - a||^2, so AWR becomes exp-weighted MSE (CORL IQL)."""

    kind = "deterministic"

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        self.net = mlp(obs_dim, hidden, act_dim, dropout=dropout)

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return -(torch.tanh(self.net(obs)) - act).square().sum(-1)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return torch.tanh(self.net(obs))


class TanhGaussianActor(nn.Module):
    """SAC/CQL actor: a = tanh(u), u ~ N(mu(s), sigma(s)) (pgcore.distributions.TanhGaussian).

    log_std = head + log_std_offset, clamped to [log_std_min, log_std_max] (young-geng/CORL CQL use offset -1).
    """

    kind = "tanh_gaussian"

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], log_std_min: float = -20.0,
                 log_std_max: float = 2.0, log_std_offset: float = -1.0, orthogonal: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, hidden, 2 * act_dim, orthogonal=orthogonal)
        self.log_std_min, self.log_std_max, self.offset = log_std_min, log_std_max, log_std_offset

    def dist(self, obs: torch.Tensor) -> TanhGaussian:
        mean, raw = self.net(obs).chunk(2, dim=-1)
        log_std = (raw + self.offset).clamp(self.log_std_min, self.log_std_max)
        return TanhGaussian(mean, log_std)

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.dist(obs).log_prob(action=act)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        d = self.dist(obs)
        return d.mode() if deterministic else d.sample()[0]


def build_actor(kind: str, obs_dim: int, act_dim: int, hidden: list[int], **kw) -> nn.Module:
    cls = {"gaussian": GaussianActor, "deterministic": DeterministicActor,
           "tanh_gaussian": TanhGaussianActor}[kind]
    return cls(obs_dim, act_dim, hidden, **kw)
