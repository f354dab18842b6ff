"""Token log-probs, entropies, Gaussian and tanh-squashed Gaussian densities against independent oracles."""

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, Normal, TransformedDistribution
from torch.distributions.transforms import TanhTransform

from pgcore.distributions import (
    TanhGaussian,
    diag_gaussian_log_prob,
    entropy_from_logits,
    scale_action,
    token_logprobs,
    unscale_action,
)

D = torch.float64


@pytest.mark.parametrize("temperature", [1.0, 0.7, 2.5])
def test_token_logprobs_equals_log_softmax_gather(gen, temperature):
    logits = torch.randn(3, 5, 11, generator=gen, dtype=D) * 3
    labels = torch.randint(0, 11, (3, 5), generator=gen)
    ref = torch.log_softmax(logits / temperature, -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(token_logprobs(logits, labels, temperature=temperature), ref, atol=1e-12, rtol=0)
    # Right-padded rows with ignore-index labels (-100): masked positions are 0, the rest unchanged.
    mask = torch.ones(3, 5, dtype=torch.bool)
    mask[0, 3:] = False
    mask[2, 1:] = False
    out = token_logprobs(logits, labels.masked_fill(~mask, -100), temperature=temperature, mask=mask)
    assert (out[~mask] == 0).all()
    torch.testing.assert_close(out[mask], ref[mask], atol=1e-12, rtol=0)


def test_token_logprobs_gradient_and_half_precision(gen):
    logits = torch.randn(2, 4, 7, generator=gen, dtype=D, requires_grad=True)
    labels = torch.randint(0, 7, (2, 4), generator=gen)
    token_logprobs(logits, labels).sum().backward()
    # d log softmax(z)_y / dz = onehot(y) - softmax(z)
    expected = torch.nn.functional.one_hot(labels, 7).to(D) - torch.softmax(logits.detach(), -1)
    torch.testing.assert_close(logits.grad, expected, atol=1e-12, rtol=0)
    bf = logits.detach().to(torch.bfloat16)
    out = token_logprobs(bf, labels)
    assert out.dtype == torch.bfloat16
    ref = torch.log_softmax(bf.double(), -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(out.double(), ref, atol=0.05, rtol=0.01)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_entropy_from_logits_matches_categorical(gen, temperature):
    logits = torch.randn(4, 3, 9, generator=gen, dtype=D)
    ref = Categorical(logits=logits / temperature).entropy()
    torch.testing.assert_close(entropy_from_logits(logits, temperature=temperature), ref, atol=1e-12, rtol=0)
    masked = logits.clone()
    masked[..., 4:] = float("-inf")  # zero-probability actions contribute 0, not NaN
    torch.testing.assert_close(entropy_from_logits(masked), Categorical(logits=logits[..., :4]).entropy())
    assert entropy_from_logits(torch.zeros(6, dtype=D)).item() == pytest.approx(math.log(6))


def test_diag_gaussian_log_prob_matches_torch(gen):
    x, mu = torch.randn(5, 3, generator=gen, dtype=D), torch.randn(5, 3, generator=gen, dtype=D)
    ls = torch.randn(5, 3, generator=gen, dtype=D) * 0.3
    ref = Independent(Normal(mu, ls.exp()), 1).log_prob(x)
    torch.testing.assert_close(diag_gaussian_log_prob(x, mu, ls), ref, atol=1e-12, rtol=0)


def _tanh_gaussian_oracle(u, mu, ls):
    """log N(u) - log|d tanh(u)/du| with the derivative taken by autograd (independent of the formula)."""
    u = u.detach().clone().requires_grad_()
    (dtanh,) = torch.autograd.grad(torch.tanh(u).sum(), u)  # diagonal Jacobian
    base = (-0.5 * ((u - mu) / ls.exp()) ** 2 - ls - 0.5 * math.log(2 * math.pi)).sum(-1)
    return (base - torch.log(dtanh).sum(-1)).detach()


def test_tanh_gaussian_log_prob_change_of_variables(gen):
    mu = torch.randn(6, 2, generator=gen, dtype=D)
    ls = torch.randn(6, 2, generator=gen, dtype=D) * 0.3
    dist = TanhGaussian(mu, ls)
    u = torch.randn(6, 2, generator=gen, dtype=D) * 2
    lp = dist.log_prob(pre_tanh=u)
    torch.testing.assert_close(lp, _tanh_gaussian_oracle(u, mu, ls), atol=1e-10, rtol=0)
    ref = TransformedDistribution(Independent(Normal(mu, ls.exp()), 1), [TanhTransform()])
    torch.testing.assert_close(lp, ref.log_prob(torch.tanh(u)), atol=1e-8, rtol=0)
    # From the action alone (atanh) the density is the same for moderate |u|.
    torch.testing.assert_close(dist.log_prob(torch.tanh(u)), lp, atol=1e-8, rtol=0)


def test_tanh_gaussian_density_integrates_to_one():
    # 1-D density on (-1, 1): integral of exp(log pi(a)) da by the trapezoid rule in u-space
    # (da = (1 - tanh^2 u) du), an independent check of the normalisation.
    mu, ls = torch.tensor([0.4], dtype=D), torch.tensor([math.log(0.7)], dtype=D)
    dist = TanhGaussian(mu, ls)
    a = torch.linspace(-1 + 1e-12, 1 - 1e-12, 400001, dtype=D)
    dens = dist.log_prob(pre_tanh=torch.atanh(a)[:, None]).exp()
    assert torch.trapezoid(dens, a).item() == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_gaussian_stable_at_large_pre_tanh(dtype):
    u = torch.tensor([[20.0], [-20.0], [50.0]], dtype=dtype)
    dist = TanhGaussian(torch.zeros(3, 1, dtype=dtype), torch.zeros(3, 1, dtype=dtype))
    lp = dist.log_prob(pre_tanh=u)
    assert torch.isfinite(lp).all() and lp.dtype == dtype
    # log(1 - tanh(u)^2) -> 2 log 2 - 2|u| for large |u| (the naive formula gives log 0 = -inf in float32).
    jac = TanhGaussian.log_abs_det_jacobian(u)
    expected = 2 * math.log(2) - 2 * u.abs().squeeze(-1).double()
    torch.testing.assert_close(jac.double(), expected, atol=1e-5, rtol=1e-6)
    naive = torch.log(1 - torch.tanh(u.float()) ** 2)
    assert torch.isinf(naive).any()
    # Saturated actions (tanh rounded to +-1) still give finite log-probs and gradients.
    a = torch.tensor([[1.0], [-1.0]], dtype=dtype)
    mu = torch.zeros(2, 1, dtype=dtype, requires_grad=True)
    lp_a = TanhGaussian(mu, torch.zeros(2, 1, dtype=dtype)).log_prob(a)
    lp_a.sum().backward()
    assert torch.isfinite(lp_a).all() and torch.isfinite(mu.grad).all()


def test_tanh_gaussian_rsample_and_gradcheck(gen):
    mu = torch.randn(4, 3, generator=gen, dtype=D, requires_grad=True)
    ls = (torch.randn(4, 3, generator=gen, dtype=D) * 0.2).requires_grad_()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a, lp = TanhGaussian(mu, ls).rsample(g1)
    assert a.abs().max() < 1 and lp.shape == (4,)
    (a.sum() + lp.sum()).backward()
    assert mu.grad is not None and torch.isfinite(mu.grad).all() and torch.isfinite(ls.grad).all()
    # Reparameterisation: a = tanh(mu + std * eps) with the same eps as a fresh N(0, 1) draw.
    eps = torch.randn(4, 3, generator=g2, dtype=D)
    torch.testing.assert_close(a, torch.tanh(mu + ls.exp() * eps).detach(), atol=1e-14, rtol=0)
    u = (mu + ls.exp() * eps).detach()
    torch.testing.assert_close(lp.detach(), _tanh_gaussian_oracle(u, mu.detach(), ls.detach()), atol=1e-10, rtol=0)
    s, slp = TanhGaussian(mu, ls).sample(torch.Generator().manual_seed(7))
    assert not s.requires_grad and torch.equal(s, a.detach())

    u0 = (torch.randn(4, 3, generator=gen, dtype=D) * 3).requires_grad_()

    def f(m, s, u):
        return TanhGaussian(m, s).log_prob(pre_tanh=u)

    assert torch.autograd.gradcheck(f, (mu.detach().requires_grad_(), ls.detach().requires_grad_(), u0))
    a0 = (torch.rand(4, 3, generator=gen, dtype=D) * 1.8 - 0.9).requires_grad_()
    assert torch.autograd.gradcheck(lambda m, act: TanhGaussian(m, ls.detach()).log_prob(act),
                                    (mu.detach().requires_grad_(), a0))


def test_tanh_gaussian_mode_entropy_and_action_scaling(gen):
    mu, ls = torch.randn(3, 2, generator=gen, dtype=D), torch.randn(3, 2, generator=gen, dtype=D)
    dist = TanhGaussian(mu, ls)
    torch.testing.assert_close(dist.mode(), torch.tanh(mu))
    torch.testing.assert_close(dist.entropy(), Normal(mu, ls.exp()).entropy().sum(-1), atol=1e-12, rtol=0)
    low, high = torch.tensor([-2.0, 0.0], dtype=D), torch.tensor([2.0, 10.0], dtype=D)
    ends = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]], dtype=D)
    torch.testing.assert_close(scale_action(ends, low, high), torch.tensor([[-2.0, 0.0], [2.0, 10.0], [0.0, 5.0]],
                                                                           dtype=D))
    x = torch.rand(5, 2, generator=gen, dtype=D) * 2 - 1
    torch.testing.assert_close(unscale_action(scale_action(x, low, high), low, high), x, atol=1e-14, rtol=0)
    assert scale_action(x, -3.0, 3.0).sub(3 * x).abs().max() < 1e-14  # float bounds
