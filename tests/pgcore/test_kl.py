"""KL estimators (exact expectations), closed-form KLs, and the KL controllers (T17: Schulman et al. 2017, §4)."""

import math

import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence

from pgcore.kl import adaptive_kl_beta, categorical_kl, gaussian_kl, kl_estimate, proportional_kl_coef

D = torch.float64


def test_k1_and_k3_are_unbiased_by_exact_expectation(gen):
    # E_{a~pi}[k(a)] = sum_a pi(a) k(a), computed exactly over all 7 actions of 5 random state pairs.
    logits_pi = torch.randn(5, 7, generator=gen, dtype=D) * 2
    logits_ref = torch.randn(5, 7, generator=gen, dtype=D) * 2
    logp, ref = torch.log_softmax(logits_pi, -1), torch.log_softmax(logits_ref, -1)
    pi = logp.exp()
    kl_true = (pi * (logp - ref)).sum(-1)  # written out independently of pgcore
    torch.testing.assert_close(kl_true, kl_divergence(Categorical(logits=logits_pi), Categorical(logits=logits_ref)))
    for kind in ("k1", "k3"):
        expectation = (pi * kl_estimate(logp, ref, kind)).sum(-1)
        torch.testing.assert_close(expectation, kl_true, atol=1e-12, rtol=0)
    # k2 is biased but non-negative; its expectation is not KL in general.
    e_k2 = (pi * kl_estimate(logp, ref, "k2")).sum(-1)
    assert (e_k2 >= 0).all() and not torch.allclose(e_k2, kl_true, atol=1e-3)


def test_kl_estimator_values_and_signs(gen):
    assert kl_estimate(torch.tensor(0.3, dtype=D), torch.tensor(0.0, dtype=D), "k2").item() == pytest.approx(0.045)
    # log_ratio = ln 2: k3 = 1/2 - 1 + ln 2
    k3 = kl_estimate(torch.tensor(math.log(2.0), dtype=D), torch.tensor(0.0, dtype=D), "k3").item()
    assert k3 == pytest.approx(math.log(2.0) - 0.5, abs=1e-15)
    assert kl_estimate(torch.tensor(-0.7), torch.tensor(0.0), "k1").item() == pytest.approx(-0.7)
    lr = torch.randn(10000, generator=gen, dtype=D) * 5
    assert (kl_estimate(lr, torch.zeros_like(lr), "k3") >= 0).all()
    assert (kl_estimate(lr, torch.zeros_like(lr), "k2") >= 0).all()
    # Near pi == ref, k3 ~ log_ratio^2 / 2 with full relative precision (expm1), in float32 too.
    small = torch.tensor([1e-6], dtype=torch.float32)
    assert kl_estimate(small, torch.zeros(1), "k3").item() == pytest.approx(0.5e-12, rel=1e-3)
    with pytest.raises(ValueError):
        kl_estimate(lr, lr, "k4")


def test_categorical_kl_matches_torch_and_handles_zero_probs(gen):
    p, q = torch.randn(4, 6, generator=gen, dtype=D), torch.randn(4, 6, generator=gen, dtype=D)
    torch.testing.assert_close(categorical_kl(p, q), kl_divergence(Categorical(logits=p), Categorical(logits=q)))
    assert (categorical_kl(p, p).abs() < 1e-12).all()
    p_zero = p.clone()
    p_zero[:, :2] = float("-inf")  # p(a) = 0 on two actions
    kl = categorical_kl(p_zero, q)
    lp, lq = torch.log_softmax(p_zero[:, 2:], -1), torch.log_softmax(q, -1)[:, 2:]
    torch.testing.assert_close(kl, (lp.exp() * (lp - lq)).sum(-1))
    assert torch.isfinite(kl).all()


def test_gaussian_kl_matches_torch(gen):
    mu_p, mu_q = torch.randn(3, 4, generator=gen, dtype=D), torch.randn(3, 4, generator=gen, dtype=D)
    ls_p, ls_q = torch.randn(3, 4, generator=gen, dtype=D) * 0.5, torch.randn(3, 4, generator=gen, dtype=D) * 0.5
    ref = kl_divergence(Normal(mu_p, ls_p.exp()), Normal(mu_q, ls_q.exp())).sum(-1)
    torch.testing.assert_close(gaussian_kl(mu_p, ls_p, mu_q, ls_q), ref)
    assert (gaussian_kl(mu_p, ls_p, mu_p, ls_p).abs() < 1e-12).all()
    # Hand value, one dim: N(0, 1) || N(1, 2^2) = ln 2 + (1 + 1) / 8 - 1/2
    one = gaussian_kl(torch.zeros(1, dtype=D), torch.zeros(1, dtype=D), torch.ones(1, dtype=D),
                      torch.full((1,), math.log(2.0), dtype=D))
    assert one.item() == pytest.approx(math.log(2.0) - 0.25, abs=1e-14)


@pytest.mark.parametrize(
    "kl,expected",
    [
        (0.0, 0.5),
        (0.99, 0.5),  # < target / 1.5 = 1.0 -> halve
        (1.0, 1.0),  # boundary: unchanged (strict inequality)
        (1.2, 1.0),
        (1.5, 1.0),  # = target
        (2.0, 1.0),
        (2.25, 1.0),  # boundary 1.5 * target: unchanged
        (2.26, 2.0),  # > 1.5 * target -> double
        (100.0, 2.0),
    ],
)
def test_t17_adaptive_kl_rule_table(kl, expected):
    assert adaptive_kl_beta(1.0, kl, 1.5) == expected
    assert adaptive_kl_beta(1.0, torch.tensor(kl), 1.5) == expected  # tensor kl accepted
    assert isinstance(adaptive_kl_beta(3.0, torch.tensor(kl), 1.5), float)


@pytest.mark.parametrize(
    "kl,expected",
    [
        (6.0, 0.2),  # on target: e = 0
        (6.6, 0.2 * (1 + 0.1 * 256 / 10000)),  # e = 0.1
        (5.7, 0.2 * (1 - 0.05 * 256 / 10000)),  # e = -0.05
        (12.0, 0.2 * (1 + 0.2 * 256 / 10000)),  # e = 1 clipped to 0.2
        (0.0, 0.2 * (1 - 0.2 * 256 / 10000)),  # e = -1 clipped to -0.2
    ],
)
def test_proportional_kl_controller_hand_computed(kl, expected):
    out = proportional_kl_coef(0.2, kl, target=6.0, horizon=10000, n_steps=256)
    assert out == pytest.approx(expected, rel=1e-14)
    assert isinstance(out, float)
