"""Every bound IQL/CQL check on their own options: the value at the bound is accepted, the one just past it is
refused with a ConfigError that names the option."""

from __future__ import annotations

import pytest

from offline import cql, iql
from reins.config import from_dict
from reins.errors import ConfigError

# (stage, option, accepted values, refused values)
BOUNDS = [
    (iql, "expectile", [0.01, 0.3, 0.99], [0.0, 1.0]),
    (iql, "beta", [0.0], [-0.1]),
    (iql, "max_weight", [0.01], [0.0]),
    (iql, "tau", [1.0, 0.001], [0.0, 1.01]),
    (iql, "n_critics", [1], [0]),
    (iql, "actor_lr", [1e-6], [0.0]),
    (iql, "critic_lr", [1e-6], [0.0]),
    (iql, "value_lr", [1e-6], [0.0]),
    (cql, "tau", [1.0, 0.001], [0.0, 1.01]),
    (cql, "cql_alpha", [0.0], [-0.1]),
    (cql, "cql_n_actions", [1], [0]),
    (cql, "cql_temp", [0.01], [0.0]),
    (cql, "alpha", [0.01], [0.0]),
    (cql, "bc_steps", [0], [-1]),
    (cql, "actor_last_gain", [None, 0.01], [0.0]),
    (cql, "policy_lr", [1e-6], [0.0]),
    (cql, "qf_lr", [1e-6], [0.0]),
    (cql, "cql_alpha_prime_lr", [1e-6], [0.0]),
    (cql, "alpha_lr", [0.0], [-1e-6]),
]


@pytest.mark.parametrize("mod,key,good,bad", BOUNDS, ids=[f"{m.__name__.split('.')[-1]}-{k}" for m, k, _, _ in BOUNDS])
def test_option_bounds(mod, key, good, bad):
    for value in good:
        assert getattr(from_dict(mod.Config, {key: value}), key) == value
    for value in bad:
        with pytest.raises(ConfigError, match=key):
            from_dict(mod.Config, {key: value})
