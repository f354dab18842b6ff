"""Total variation, couplings and Pinsker (T11; Levin, Peres & Wilmer 2017, §4.1-4.2).

The oracle for the TV distance is brute force over every subset of a support of size <= 6; couplings are
checked through their marginals, and random couplings (independent, Sinkhorn-scaled, mixtures) bound the
optimum from above.
"""

import itertools

import torch

from pgcore import tabular as tb

DT = torch.float64
N_X = 6


def _random_pairs(g, batch, n=N_X, sparse=True):
    mu = torch.rand(batch, n, generator=g, dtype=DT) ** 2
    nu = torch.rand(batch, n, generator=g, dtype=DT) ** 2
    if sparse:  # zero out some entries so that supports differ (TV can reach 1)
        mu = mu * (torch.rand(batch, n, generator=g) > 0.3)
        nu = nu * (torch.rand(batch, n, generator=g) > 0.3)
        mu[:, 0] += 1e-3
        nu[:, -1] += 1e-3
    return mu / mu.sum(-1, keepdim=True), nu / nu.sum(-1, keepdim=True)


def _subsets(n=N_X):
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=DT)  # [2^n, n]


def _close(a, b, atol=1e-13):
    torch.testing.assert_close(a, b, rtol=0, atol=atol)


def test_T11_tv_equals_every_seed_characterisation():
    g = torch.Generator().manual_seed(200)
    mu, nu = _random_pairs(g, 400)
    tv = tb.tv_distance(mu, nu)
    brute = (_subsets() @ (mu - nu).T).abs().amax(0)  # max_A |mu(A) - nu(A)|  (definition)
    _close(tv, brute)  # LPW Prop. 4.2: = 1/2 ||mu - nu||_1
    _close(tv, ((mu - nu) * (mu >= nu)).sum(-1))  # Cor 30
    _close(tv, 1 - torch.minimum(mu, nu).sum(-1))  # 1 - m (LPW Prop. 4.7)
    assert tv.max() > 0.5 and tv.min() >= 0
    disjoint = tb.tv_distance(torch.tensor([0.3, 0.7, 0.0], dtype=DT), torch.tensor([0.0, 0.0, 1.0], dtype=DT))
    assert disjoint.item() == 1.0
    assert tb.tv_distance(mu, mu).abs().max() == 0


def test_T11_triangle_inequality():
    g = torch.Generator().manual_seed(201)
    mu, nu = _random_pairs(g, 2000)
    rho, _ = _random_pairs(g, 2000)
    assert (tb.tv_distance(mu, rho) <= tb.tv_distance(mu, nu) + tb.tv_distance(nu, rho) + 1e-15).all()


def test_T11_maximal_coupling_attains_tv():
    g = torch.Generator().manual_seed(202)
    mu, nu = _random_pairs(g, 400)
    J = tb.maximal_coupling(mu, nu)  # [B, X, X]
    assert (J >= 0).all()
    _close(J.sum(-1), mu)  # marginal of X
    _close(J.sum(-2), nu)  # marginal of Y
    p_differ = 1 - torch.diagonal(J, dim1=-2, dim2=-1).sum(-1)
    _close(p_differ, tb.tv_distance(mu, nu))  # P(X != Y) = TV, not m (docs/errata.md §10)
    # identical laws: X = Y always, no division by zero
    J_same = tb.maximal_coupling(mu[0], mu[0])
    _close(J_same, torch.diag(mu[0]))


def test_T11_seed_phi2_typo_breaks_the_y_marginal():
    # Y drawn from (p - q)_+ (docs/errata.md §10) does not have marginal q; Y from (q - p)_+ does.
    p = torch.tensor([0.5, 0.3, 0.2], dtype=DT)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=DT)
    tv = tb.tv_distance(p, q)
    overlap = torch.minimum(p, q)
    typo = torch.diag(overlap) + torch.outer((p - q).clamp_min(0), (p - q).clamp_min(0)) / tv
    assert (typo.sum(-2) - q).abs().max() > 0.1
    _close(tb.maximal_coupling(p, q).sum(-2), q)


def _sinkhorn(mu, nu, kernel, iters=500):
    u = torch.ones_like(mu)
    for _ in range(iters):
        v = nu / (kernel.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)
        u = mu / (kernel @ v.unsqueeze(-1)).squeeze(-1)
    return u.unsqueeze(-1) * kernel * v.unsqueeze(-2)


def _perturbed_couplings(base, g, n_draws=20):
    # base + s E with E a random zero-row/zero-column-sum matrix and s as large as positivity allows
    # (times 0.99): exact couplings scattered up to the boundary of the coupling polytope.
    n = base.shape[-1]
    centre = torch.eye(n, dtype=DT) - 1.0 / n
    out = []
    for _ in range(n_draws):
        E = centre @ torch.randn(*base.shape, generator=g, dtype=DT) @ centre
        room = torch.where(E < 0, base / -E, torch.full_like(E, float("inf"))).amin((-1, -2), keepdim=True)
        out.append(base + 0.99 * room * E)
    return out


def test_T11_every_coupling_disagrees_at_least_tv():
    g = torch.Generator().manual_seed(203)
    mu, nu = _random_pairs(g, 300, sparse=False)
    tv = tb.tv_distance(mu, nu)
    independent = mu.unsqueeze(-1) * nu.unsqueeze(-2)
    couplings = [independent]
    for scale in (0.3, 1.0):
        kernel = torch.exp(scale * torch.randn(300, N_X, N_X, generator=g, dtype=DT))
        couplings.append(_sinkhorn(mu, nu, kernel))
    optimal = tb.maximal_coupling(mu, nu)
    t = torch.rand(300, 1, 1, generator=g, dtype=DT)
    near_optimal = (1 - t**4) * optimal + t**4 * independent  # couplings form a convex set
    couplings += [near_optimal] + _perturbed_couplings(near_optimal, g)
    for J in couplings:
        assert (J >= 0).all()
        _close(J.sum(-1), mu, atol=1e-10)
        _close(J.sum(-2), nu, atol=1e-10)
        p_differ = 1 - torch.diagonal(J, dim1=-2, dim2=-1).sum(-1)
        assert (p_differ >= tv - 1e-12).all()
    # non-vacuous: the independent coupling is far from optimal, and some random couplings come close
    assert (1 - torch.diagonal(independent, dim1=-2, dim2=-1).sum(-1) - tv).min() > 1e-3
    assert (1 - torch.diagonal(near_optimal, dim1=-2, dim2=-1).sum(-1) - tv).min() < 1e-4


def test_T11_bernoulli_example():
    # two fair coins: independent coupling disagrees w.p. 1/2, Y = X never; TV = 0.
    p = torch.tensor([0.5, 0.5], dtype=DT)
    independent = torch.outer(p, p)
    _close(independent, torch.full((2, 2), 0.25, dtype=DT))
    assert 1 - independent.trace().item() == 0.5
    J = tb.maximal_coupling(p, p)
    _close(J, torch.diag(p))
    assert tb.tv_distance(p, p).item() == 0.0


def _kl(p, q):
    return (torch.special.xlogy(p, p) - torch.special.xlogy(p, q)).sum(-1)


def test_T11_pinsker():
    g = torch.Generator().manual_seed(204)
    mu, nu = _random_pairs(g, 5000, sparse=False)
    tv = tb.tv_distance(mu, nu)
    for kl in (_kl(mu, nu), _kl(nu, mu)):
        assert (tv <= torch.sqrt(kl / 2) + 1e-15).all()
        assert (tv**2 <= kl / 2 + 1e-15).all() and (kl / 2 <= kl).all()
    # tight to second order for a fair coin and a slightly biased one: sqrt(KL/2) / TV -> 1
    ratios = []
    for delta in (0.1, 0.01, 0.001):
        p = torch.tensor([0.5 + delta, 0.5 - delta], dtype=DT)
        q = torch.tensor([0.5, 0.5], dtype=DT)
        ratios.append((torch.sqrt(_kl(p, q) / 2) / tb.tv_distance(p, q)).item())
    assert ratios[0] > ratios[1] > ratios[2] >= 1.0 and ratios[2] < 1 + 1e-5
