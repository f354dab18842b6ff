"""The MLP actors and critics of every reins agent, online and offline (offline/ imports them from here).

One contract for every name:
- `mlp(in_dim, out_dim, hidden, activation="relu", ...)` builds Linear-activation stacks;
- every actor is built from a plain architecture spec by `build_actor(spec)`: `spec["kind"]` picks the class and
  the other keys are its constructor's keyword arguments (the spec is what a policy file stores as `arch`);
- `forward(obs)` returns the actor's raw outputs (below), `act`/`log_prob` exist where an algorithm needs them.

Actor kinds:
- "categorical":        logits over Discrete actions (REINFORCE, A2C, PPO, NPG, TRPO on Discrete envs).
- "gaussian":           (mean(s), state-independent log-std) of an unsquashed Gaussian in env units, clipped to the
                        Box at the env boundary (on-policy agents on Box envs; Williams 1992).
- "tanh_mean_gaussian": (tanh(f(s)), clamped state-independent log-std) in [-1, 1] units, not squashed: IQL's
                        actor (Kostrikov et al. 2021, the paper's code with tanh_squash_distribution=False).
- "tanh_gaussian":      (mean(s), log_std(s)) of a TanhGaussian in [-1, 1]^d (Haarnoja et al. 2018, App. C; SAC,
                        CQL). log_std "squash" maps the head smoothly into [min, max] (online SAC); "clamp" adds
                        `log_std_offset` and clamps (CQL's actor).
- "deterministic":      tanh(f(s)) in [-1, 1]^d (DDPG, TD3, BC).
- "q":                  Q(s, .) over Discrete actions; the policy is greedy / epsilon-greedy (DQN).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pgcore.distributions import TanhGaussian, diag_gaussian_log_prob

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def mlp(in_dim: int, out_dim: int, hidden: list[int], activation: str = "relu", *, layer_norm: bool = False,
        dropout: float = 0.0, ortho: bool = False, out_gain: float = 1.0) -> nn.Sequential:
    """Linear[-LayerNorm]-activation[-Dropout] stack; with `ortho`, `orthogonal_init_(net, out_gain)`."""
    layers: list[nn.Module] = []
    d = in_dim
    for h in hidden:
        layers.append(nn.Linear(d, h))
        if layer_norm:
            layers.append(nn.LayerNorm(h))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        d = h
    layers.append(nn.Linear(d, out_dim))
    net = nn.Sequential(*layers)
    if ortho:
        orthogonal_init_(net, out_gain)
    return net


def orthogonal_init_(net: nn.Module, out_gain: float) -> None:
    """Orthogonal weights (Saxe et al. 2014) with gain sqrt(2) on the hidden layers and `out_gain` on the output
    layer, zero biases. PPO uses out_gain 0.01 for the policy head and 1 for the value head (Engstrom et al. 2020,
    "Implementation Matters"); CQL's critics use 1e-2; IQL's code uses sqrt(2) on every layer."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for i, m in enumerate(linears):
        nn.init.orthogonal_(m.weight, gain=out_gain if i == len(linears) - 1 else math.sqrt(2.0))
        nn.init.zeros_(m.bias)


def small_last_init_(net: nn.Module, gain: float = 1e-2) -> None:
    """Xavier-uniform weights (Glorot & Bengio 2010) with a small gain and a zero bias on the output layer only."""
    last = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
    nn.init.xavier_uniform_(last.weight, gain)
    nn.init.zeros_(last.bias)


# ----------------------------------------------------------------------------------------------------- actors
class CategoricalActor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "relu",
                 ortho: bool = False):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, activation, ortho=ortho, out_gain=0.01)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


class GaussianActor(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "relu",
                 ortho: bool = False, init_log_std: float = 0.0):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, activation, ortho=ortho, out_gain=0.01)
        self.log_std = nn.Parameter(torch.full((act_dim,), float(init_log_std)))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.net(obs)
        return mean, self.log_std.expand_as(mean)


class TanhMeanGaussianActor(nn.Module):
    """N(tanh(f(s)), exp(log_std)) with a state-independent log-std in [min, max]; the action is not squashed,
    so the deterministic action is the mean (IQL's actor, Kostrikov et al. 2021).

    `log_std_param` says how the free parameter p (initialised at 0) becomes the log-std: "clamp" is
    clamp(p, min, max) (the IQL paper's code; starts at log-std 0, and the gradient is exactly 0 once p leaves
    [min, max]); "sigmoid" is min + sigmoid(p) (max - min) (d3rlpy's NormalPolicy; starts at the midpoint,
    -1.5 for [-5, 2], and always has a gradient)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "relu",
                 dropout: float = 0.0, log_std_min: float = -5.0, log_std_max: float = 2.0,
                 log_std_param: str = "clamp"):
        super().__init__()
        if log_std_param not in ("clamp", "sigmoid"):
            raise ValueError(f"log_std_param must be 'clamp' or 'sigmoid', got {log_std_param!r}")
        self.net = mlp(obs_dim, act_dim, hidden, activation, dropout=dropout)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.log_std_min, self.log_std_max, self.log_std_param = log_std_min, log_std_max, log_std_param

    def bounded_log_std(self) -> torch.Tensor:
        if self.log_std_param == "sigmoid":
            return self.log_std_min + torch.sigmoid(self.log_std) * (self.log_std_max - self.log_std_min)
        return self.log_std.clamp(self.log_std_min, self.log_std_max)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tanh(self.net(obs))
        return mean, self.bounded_log_std().expand_as(mean)

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        mean = torch.tanh(self.net(obs))
        return diag_gaussian_log_prob(act, mean, self.bounded_log_std())

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        mean = torch.tanh(self.net(obs))
        if deterministic:
            return mean
        std = self.bounded_log_std().exp()
        return (mean + std * torch.randn_like(mean)).clamp(-1.0, 1.0)


class TanhGaussianActor(nn.Module):
    """a = tanh(u), u ~ N(mu(s), sigma(s)) (pgcore.distributions.TanhGaussian); one head gives [mu, raw log-std].

    log_std="squash": log_std = min + (max - min) (tanh(raw) + 1) / 2, smooth so exp() stays finite (online SAC).
    log_std="clamp":  log_std = clamp(raw + log_std_offset, min, max) (CQL's actor, Kumar et al. 2020 code).
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "relu",
                 log_std: str = "squash", log_std_min: float = -5.0, log_std_max: float = 2.0,
                 log_std_offset: float = 0.0, ortho: bool = False):
        super().__init__()
        if log_std not in ("squash", "clamp"):
            raise ValueError(f"log_std must be 'squash' or 'clamp', got {log_std!r}")
        self.net = mlp(obs_dim, 2 * act_dim, hidden, activation, ortho=ortho, out_gain=1e-2)
        self.log_std_mode = log_std
        self.log_std_min, self.log_std_max, self.offset = float(log_std_min), float(log_std_max), log_std_offset

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, raw = self.net(obs).chunk(2, dim=-1)
        if self.log_std_mode == "squash":
            log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (torch.tanh(raw) + 1.0)
        else:
            log_std = (raw + self.offset).clamp(self.log_std_min, self.log_std_max)
        return mean, log_std

    def dist(self, obs: torch.Tensor) -> TanhGaussian:
        return TanhGaussian(*self(obs))

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return self.dist(obs).log_prob(action=act)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        d = self.dist(obs)
        return d.mode() if deterministic else d.sample()[0]


class DeterministicActor(nn.Module):
    """a = tanh(f(s)). Its "log-likelihood" for behaviour cloning is -||pi(s) - a||^2, so AWR becomes
    exp-weighted MSE (Peng et al. 2019 with a deterministic policy)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "relu",
                 dropout: float = 0.0):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, activation, dropout=dropout)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(obs))

    def log_prob(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return -(self(obs) - act).square().sum(-1)

    def act(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self(obs)


class QNetwork(nn.Module):
    """Q(s, .) for Discrete actions; optional LayerNorm after each hidden Linear and dropout after each activation
    (the regularised critics of DroQ, Hiraoka et al. 2022, and of Ball et al. 2023's layer-normed offline critics)."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "relu", *,
                 layer_norm: bool = False, dropout: float = 0.0):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, hidden, activation, layer_norm=layer_norm, dropout=dropout)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)


ACTORS = {"categorical": CategoricalActor, "gaussian": GaussianActor, "tanh_mean_gaussian": TanhMeanGaussianActor,
          "tanh_gaussian": TanhGaussianActor, "deterministic": DeterministicActor, "q": QNetwork}


def build_actor(spec: dict) -> nn.Module:
    """The actor `spec` describes: spec["kind"] names the class, the other keys are its keyword arguments."""
    if spec.get("kind") not in ACTORS:
        raise ValueError(f"unknown actor kind {spec.get('kind')!r} (known: {', '.join(ACTORS)})")
    return ACTORS[spec["kind"]](**{k: v for k, v in spec.items() if k != "kind"})


# ---------------------------------------------------------------------------------------------------- critics
class ValueNet(nn.Module):
    """State value V(s) (on-policy baselines, IQL's value)."""

    def __init__(self, obs_dim: int, hidden: list[int], activation: str = "relu", *, layer_norm: bool = False,
                 ortho: bool = False, out_gain: float = 1.0):
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, activation, layer_norm=layer_norm, ortho=ortho, out_gain=out_gain)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


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


class EnsembleQ(nn.Module):
    """`n` independent Q(s, a) MLPs (twin critics of SAC, TD3, IQL, CQL) evaluated in one batched matmul per layer;
    actions in [-1, 1] units; returns [n, ...batch]. Each member has its own weights, initialised like nn.Linear
    (or orthogonally, member by member, with `ortho`)."""

    def __init__(self, n: int, obs_dim: int, act_dim: int, hidden: list[int], activation: str = "relu", *,
                 ortho: bool = False, out_gain: float = 1e-2):
        super().__init__()
        self.n = n
        dims = [obs_dim + act_dim, *hidden, 1]
        self.layers = nn.ModuleList(EnsembleLinear(n, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.act = ACTIVATIONS[activation]()
        if ortho:
            for i, layer in enumerate(self.layers):
                last = i == len(self.layers) - 1
                for e in range(n):
                    nn.init.orthogonal_(layer.weight.data[e].T, out_gain if last else math.sqrt(2.0))
                nn.init.zeros_(layer.bias)

    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        x = torch.cat([obs, act], dim=-1)
        lead = x.shape[:-1]
        h = x.reshape(1, -1, x.shape[-1]).expand(self.n, -1, -1)
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = self.act(h)
        return h.reshape(self.n, *lead)
