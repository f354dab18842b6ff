"""Returns, GAE and whitening: identities T15 (a)-(e) (Schulman et al. 2016, §3) plus end-of-episode and mask cases.

Every oracle here is an independent brute-force sum written in the test (float64, tolerance 1e-10), or a
value computed by hand and written as a literal.
"""

import math

import pytest
import torch

from pgcore._util import masked_mean, masked_sum, masked_var
from pgcore.advantages import discounted_returns, gae, n_step_returns, reward_to_go, whiten

D = torch.float64
TOL = dict(atol=1e-10, rtol=0)


def _rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=D)


# ------------------------------------------------------------------------- brute-force oracles (test-only)


def _delta(r, V, gamma, t):
    """delta_t = r_t + gamma V_{t+1} - V_t with V of length T + 1 (V[T] = bootstrap)."""
    return r[t] + gamma * V[t + 1] - V[t]


def _k_step_adv(r, V, gamma, t, k):
    """A^(k)_t = sum_{l<k} gamma^l r_{t+l} + gamma^k V_{t+k} - V_t (Schulman et al. 2016, §3)."""
    return sum(gamma**l * r[t + l] for l in range(k)) + gamma**k * V[t + k] - V[t]


def _gae_sum(r, V, gamma, lam, t):
    """Truncated GAE as the explicit sum sum_{l=0}^{T-t-1} (gamma lam)^l delta_{t+l} (Schulman et al. 2017, eq. 11)."""
    T = len(r)
    return sum((gamma * lam) ** l * _delta(r, V, gamma, t + l) for l in range(T - t))


def _row_oracle(fn, r, V):
    """Apply a per-(row, t) oracle to [B, T] rewards and [B, T + 1] values."""
    B, T = r.shape
    return torch.tensor([[fn(r[b].tolist(), V[b].tolist(), t) for t in range(T)] for b in range(B)], dtype=D)


@pytest.fixture
def traj(gen):
    B, T = 4, 7
    return _rand(gen, B, T), _rand(gen, B, T + 1)


# ------------------------------------------------------------------------------------- T15 (a)-(e)


@pytest.mark.parametrize("gamma", [0.9, 0.99, 0.5])
def test_t15a_lambda0_is_td_residual(traj, gamma):
    r, V = traj
    adv, ret = gae(r, V[:, :-1], gamma=gamma, lam=0.0, next_values=V[:, 1:])
    expected = _row_oracle(lambda rr, vv, t: _delta(rr, vv, gamma, t), r, V)
    torch.testing.assert_close(adv, expected, **TOL)
    torch.testing.assert_close(ret, expected + V[:, :-1], **TOL)


@pytest.mark.parametrize("gamma", [0.9, 1.0])
def test_t15b_lambda1_is_mc_return_minus_baseline(traj, gamma):
    r, V = traj
    T = r.shape[1]
    adv, ret = gae(r, V[:, :-1], gamma=gamma, lam=1.0, next_values=V[:, 1:])

    def mc(rr, vv, t):
        return sum(gamma**l * rr[t + l] for l in range(T - t)) + gamma ** (T - t) * vv[T] - vv[t]

    torch.testing.assert_close(adv, _row_oracle(mc, r, V), **TOL)
    # With V_T = 0 the value target is exactly the Monte Carlo return G_t.
    V0 = V.clone()
    V0[:, -1] = 0.0
    _, ret0 = gae(r, V0[:, :-1], gamma=gamma, lam=1.0)  # default next_values: 0 after the last step
    G = _row_oracle(lambda rr, vv, t: sum(gamma**l * rr[t + l] for l in range(T - t)), r, V0)
    torch.testing.assert_close(ret0, G, **TOL)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_t15c_k_step_advantage_two_forms_and_n_step_returns(traj, k):
    r, V = traj
    gamma = 0.93
    T = r.shape[1]
    R = n_step_returns(r, V[:, :-1], gamma, k, bootstrap=V[:, -1])
    for b in range(r.shape[0]):
        rr, vv = r[b].tolist(), V[b].tolist()
        for t in range(T - k + 1):
            by_deltas = sum(gamma**l * _delta(rr, vv, gamma, t + l) for l in range(k))
            by_rewards = _k_step_adv(rr, vv, gamma, t, k)
            assert abs(by_deltas - by_rewards) < 1e-10
            assert abs((R[b, t].item() - vv[t]) - by_rewards) < 1e-10
        for t in range(T - k + 1, T):  # horizon shrinks to the remaining steps, bootstrap from V_T
            assert abs((R[b, t].item() - vv[t]) - _k_step_adv(rr, vv, gamma, t, T - t)) < 1e-10


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.95, 1.0])
def test_t15d_gae_is_lambda_mixture_of_k_step_advantages(traj, lam):
    r, V = traj
    gamma = 0.97
    T = r.shape[1]
    adv, _ = gae(r, V[:, :-1], gamma=gamma, lam=lam, next_values=V[:, 1:])

    def mixture(rr, vv, t):
        n = T - t
        head = (1 - lam) * sum(lam ** (k - 1) * _k_step_adv(rr, vv, gamma, t, k) for k in range(1, n))
        return head + lam ** (n - 1) * _k_step_adv(rr, vv, gamma, t, n)

    torch.testing.assert_close(adv, _row_oracle(mixture, r, V), **TOL)


@pytest.mark.parametrize("gamma,lam", [(0.99, 0.95), (0.5, 0.7), (1.0, 1.0), (0.0, 0.9), (1.0, 0.0)])
def test_t15e_backward_recursion_equals_sum_form(traj, gamma, lam):
    r, V = traj
    adv, _ = gae(r, V[:, :-1], gamma=gamma, lam=lam, next_values=V[:, 1:])
    torch.testing.assert_close(adv, _row_oracle(lambda rr, vv, t: _gae_sum(rr, vv, gamma, lam, t), r, V), **TOL)


# ------------------------------------------------------------------------ termination vs truncation


def test_gae_termination_vs_truncation_hand_computed():
    # Two episodes in one row: episode 1 terminates at t=1; episode 2 (t=2,3) is cut by a time limit at t=3
    # with V(final obs) = 10. next_values[1] = 99 must be ignored (terminal). gamma = lam = 0.5.
    r = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D)
    v = torch.tensor([0.5, 0.6, 0.7, 0.8], dtype=D)
    nv = torch.tensor([0.6, 99.0, 0.8, 10.0], dtype=D)
    term = torch.tensor([0, 1, 0, 0])
    trunc = torch.tensor([0, 0, 0, 1])
    adv, ret = gae(r, v, gamma=0.5, lam=0.5, next_values=nv, terminated=term, truncated=trunc)
    # deltas: 0.8, 1.4, 2.7, 8.2; A_3 = 8.2, A_2 = 2.7 + .25 * 8.2, A_1 = 1.4 (episode end), A_0 = .8 + .25 * 1.4
    torch.testing.assert_close(adv, torch.tensor([1.15, 1.4, 4.75, 8.2], dtype=D), **TOL)
    torch.testing.assert_close(ret, torch.tensor([1.65, 2.0, 5.45, 9.0], dtype=D), **TOL)
    # The same last step treated as a termination: no bootstrap (delta_3 = 4 - 0.8).
    adv_t, _ = gae(r, v, gamma=0.5, lam=0.5, next_values=nv, terminated=torch.tensor([0, 1, 0, 1]))
    torch.testing.assert_close(adv_t, torch.tensor([1.15, 1.4, 3.5, 3.2], dtype=D), **TOL)
    # A truncation in the middle (V(final obs) = 5 at t=1) bootstraps there but does not propagate A_2.
    nv2 = torch.tensor([0.6, 5.0, 0.8, 0.0], dtype=D)
    adv_m, _ = gae(r, v, gamma=0.5, lam=0.5, next_values=nv2, truncated=torch.tensor([0, 1, 0, 0]))
    # deltas: 0.8, 3.9, 2.7, 3.2 -> A_3 = 3.2, A_2 = 3.5, A_1 = 3.9, A_0 = 0.8 + 0.25 * 3.9
    torch.testing.assert_close(adv_m, torch.tensor([1.775, 3.9, 3.5, 3.2], dtype=D), **TOL)


def test_discounted_returns_dones_and_bootstrap_hand_computed():
    r = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]], dtype=D)
    dones = torch.tensor([[0, 1, 0], [0, 0, 0]])
    G = discounted_returns(r, 0.5, dones=dones, bootstrap=torch.tensor([4.0, 0.0], dtype=D))
    # row 0: G_2 = 3 + .5 * 4 = 5, G_1 = 2 (done), G_0 = 1 + .5 * 2 = 2; row 1: 1.75, 1.5, 1
    torch.testing.assert_close(G, torch.tensor([[2.0, 2.0, 5.0], [1.75, 1.5, 1.0]], dtype=D), **TOL)


def test_discounted_returns_and_reward_to_go_against_sums(gen):
    r = _rand(gen, 3, 9)
    gamma = 0.9
    G = discounted_returns(r, gamma)
    expected = torch.tensor(
        [[sum(gamma ** (k - t) * r[b, k].item() for k in range(t, 9)) for t in range(9)] for b in range(3)], dtype=D
    )
    torch.testing.assert_close(G, expected, **TOL)
    torch.testing.assert_close(reward_to_go(r, gamma), expected, **TOL)
    # gamma = 1 (undiscounted reward-to-go, Williams 1992): is a reversed cumulative sum.
    torch.testing.assert_close(reward_to_go(r), r.flip(-1).cumsum(-1).flip(-1), **TOL)
    # G_t = r_t + gamma G_{t+1}
    torch.testing.assert_close(G[:, :-1], r[:, :-1] + gamma * G[:, 1:], **TOL)


def test_n_step_returns_with_dones_brute_force(gen):
    B, T, n, gamma = 3, 8, 3, 0.8
    r, v, boot = _rand(gen, B, T), _rand(gen, B, T), _rand(gen, B)
    dones = torch.zeros(B, T)
    dones[0, 2] = 1
    dones[1, 6] = 1
    dones[2, 0] = 1
    dones[2, 4] = 1
    R = n_step_returns(r, v, gamma, n, dones=dones, bootstrap=boot)
    for b in range(B):
        vext = v[b].tolist() + [boot[b].item()]
        for t in range(T):
            total, disc, alive = 0.0, 1.0, True
            for k in range(min(n, T - t)):
                total += disc * r[b, t + k].item()
                disc *= gamma
                if dones[b, t + k]:
                    alive = False
                    break
            if alive:
                total += disc * vext[min(t + n, T)]
            assert abs(R[b, t].item() - total) < 1e-10, (b, t)
    # n = 1 is the one-step TD target r_t + gamma V_{t+1}.
    R1 = n_step_returns(r, v, gamma, 1, bootstrap=boot)
    torch.testing.assert_close(R1, r + gamma * torch.cat([v[:, 1:], boot[:, None]], 1), **TOL)
    with pytest.raises(ValueError):
        n_step_returns(r, v, gamma, 0)


# ------------------------------------------------------------------------------- masks and padding


def test_gae_right_padded_rows_equal_unpadded_rows(gen):
    B, T = 4, 6
    lengths = [6, 4, 1, 3]
    r, v = _rand(gen, B, T), _rand(gen, B, T)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b, L in enumerate(lengths):
        mask[b, :L] = True
    r_pad, v_pad = r.masked_fill(~mask, float("nan")), v.masked_fill(~mask, float("nan"))
    adv, ret = gae(r_pad, v_pad, gamma=0.9, lam=0.8, mask=mask)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert (adv[~mask] == 0).all() and (ret[~mask] == 0).all()
    for b, L in enumerate(lengths):
        a1, r1 = gae(r[b, :L], v[b, :L], gamma=0.9, lam=0.8)  # unbatched [T] call, 0 after the last token
        torch.testing.assert_close(adv[b, :L], a1, **TOL)
        torch.testing.assert_close(ret[b, :L], r1, **TOL)
        VV = v[b, :L].tolist() + [0.0]
        for t in range(L):
            assert abs(a1[t].item() - _gae_sum(r[b, :L].tolist(), VV, 0.9, 0.8, t)) < 1e-10


def test_gae_masked_hole_acts_as_row_end(gen):
    r, v = _rand(gen, 7), _rand(gen, 7)
    mask = torch.tensor([1, 1, 1, 0, 1, 1, 1], dtype=torch.float64)
    adv, _ = gae(r, v, gamma=0.95, lam=0.9, mask=mask)
    left, _ = gae(r[:3], v[:3], gamma=0.95, lam=0.9)
    right, _ = gae(r[4:], v[4:], gamma=0.95, lam=0.9)
    torch.testing.assert_close(adv, torch.cat([left, torch.zeros(1, dtype=D), right]), **TOL)


def test_gae_all_masked_rows_and_gradients_finite(gen):
    r, v = _rand(gen, 3, 5).requires_grad_(), _rand(gen, 3, 5).requires_grad_()
    mask = torch.ones(3, 5)
    mask[1] = 0
    adv, ret = gae(r, v, gamma=0.99, lam=0.95, mask=mask)
    assert (adv[1] == 0).all() and (ret[1] == 0).all()
    (adv.sum() + ret.sum() + whiten(adv, mask).sum()).backward()
    assert torch.isfinite(r.grad).all() and torch.isfinite(v.grad).all()
    assert (r.grad[1] == 0).all() and (v.grad[1] == 0).all()
    fully, _ = gae(r.detach(), v.detach(), gamma=0.9, lam=0.9, mask=torch.zeros(3, 5))
    assert (fully == 0).all()


def test_gae_length_one_and_edge_discounts(gen):
    r, v = _rand(gen, 5, 1), _rand(gen, 5, 1)
    adv, ret = gae(r, v, gamma=0.99, lam=0.95)
    torch.testing.assert_close(adv, r - v, **TOL)  # terminal after one step: A = r - V
    torch.testing.assert_close(ret, r, **TOL)
    nv = _rand(gen, 5, 1)
    adv_b, _ = gae(r, v, gamma=0.99, lam=0.95, next_values=nv, truncated=torch.ones(5, 1))
    torch.testing.assert_close(adv_b, r + 0.99 * nv - v, **TOL)
    # gamma = 0: advantages are r_t - V_t whatever lambda is.
    r7, v7 = _rand(gen, 2, 7), _rand(gen, 2, 7)
    torch.testing.assert_close(gae(r7, v7, gamma=0.0, lam=0.7)[0], r7 - v7, **TOL)
    # gamma = lam = 1: undiscounted reward-to-go minus baseline.
    torch.testing.assert_close(gae(r7, v7, gamma=1.0, lam=1.0)[0], reward_to_go(r7) - v7, **TOL)


def test_gae_unbatched_matches_batched_and_keeps_dtype(gen):
    r, v = _rand(gen, 3, 6), _rand(gen, 3, 6)
    term = torch.zeros(3, 6, dtype=torch.bool)
    term[1, 2] = True
    adv, _ = gae(r, v, gamma=0.9, lam=0.9, terminated=term)
    for b in range(3):
        torch.testing.assert_close(gae(r[b], v[b], gamma=0.9, lam=0.9, terminated=term[b])[0], adv[b], **TOL)
    a32, r32 = gae(r.float(), v.float(), gamma=0.9, lam=0.9, terminated=term)
    assert a32.dtype == torch.float32 and r32.dtype == torch.float32
    torch.testing.assert_close(a32.double(), adv, atol=1e-5, rtol=1e-5)


def test_gae_gradcheck_with_mask_and_dones(gen):
    r, v = _rand(gen, 2, 5).requires_grad_(), _rand(gen, 2, 5).requires_grad_()
    nv = _rand(gen, 2, 5).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 1, 1]])
    term = torch.tensor([[0, 1, 0, 0, 0], [0, 0, 0, 0, 1]])
    trunc = torch.tensor([[0, 0, 0, 1, 0], [0, 0, 0, 0, 0]])

    def f(r, v, nv):
        a, y = gae(r, v, gamma=0.9, lam=0.8, next_values=nv, terminated=term, truncated=trunc, mask=mask)
        return a, y

    assert torch.autograd.gradcheck(f, (r, v, nv))
    assert torch.autograd.gradcheck(lambda r, v: gae(r, v, gamma=0.97, lam=0.9, mask=mask), (r, v))


# ----------------------------------------------------------------------------- whitening, _util


def test_whiten_masked_moments_and_padding(gen):
    x = _rand(gen, 4, 6) * 3.0 + 2.0
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 1:] = False
    x_pad = x.masked_fill(~mask, float("nan"))
    w = whiten(x_pad, mask, eps=0.0)
    valid = w[mask]
    assert abs(valid.mean().item()) < 1e-12
    assert abs(valid.std(unbiased=True).item() - 1.0) < 1e-12
    assert (w[~mask] == 0).all()
    # Brute force: standardise the valid entries directly.
    xv = x[mask]
    torch.testing.assert_close(valid, (xv - xv.mean()) / xv.std(unbiased=True), **TOL)
    # shift_mean=False keeps the mean and rescales the spread (RLHF reward whitening).
    w2 = whiten(x, mask, shift_mean=False, eps=0.0)
    torch.testing.assert_close(w2[mask], (xv - xv.mean()) / xv.std() + xv.mean(), **TOL)
    # Without a mask: all entries.
    w3 = whiten(x)
    torch.testing.assert_close(w3, (x - x.mean()) / torch.sqrt(x.var() + 1e-8), **TOL)


def test_masked_reductions():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 5.0, 6.0]], dtype=D)
    m = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert masked_sum(x, m).item() == 3.0
    assert masked_mean(x, m).item() == 1.5
    torch.testing.assert_close(masked_mean(x, m, dim=-1), torch.tensor([1.5, 0.0], dtype=D))
    torch.testing.assert_close(masked_sum(x, m, dim=1, keepdim=True), torch.tensor([[3.0], [0.0]], dtype=D))
    assert masked_var(x, m).item() == 0.5  # sample variance of {1, 2}
    assert masked_var(x, m, unbiased=False).item() == 0.25
    assert masked_var(x, torch.tensor([[1, 0, 0], [0, 0, 0]])).item() == 0.0  # one entry: 0, not NaN
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0
    # A float mask acts as weights; broadcasting of a [T] mask over [B, T] data.
    w = torch.tensor([0.5, 1.5, 0.0], dtype=D)
    assert masked_mean(x, w).item() == pytest.approx((0.5 * 1 + 1.5 * 2 + 0.5 * 4 + 1.5 * 5) / 4.0)
    assert math.isnan(x.mean().item())  # sanity: the NaN really is in the data
