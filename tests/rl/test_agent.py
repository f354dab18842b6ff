"""rl.agent.Agent: one optimiser step (zero, backward, clip, step, scheduler) and the registered state."""

import math

import pytest
import torch

from rl.agent import Agent


class Tiny(Agent):
    def __init__(self, scheduled: bool = True):
        super().__init__()
        net = torch.nn.Linear(3, 1, bias=False)
        with torch.no_grad():
            net.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
        log_alpha = torch.tensor(0.0, requires_grad=True)
        opt = torch.optim.SGD(net.parameters(), lr=1.0)
        self.register(net=net, log_alpha=log_alpha, opt=opt, steps=0, beta=0.25)
        self.register_scheduler("sched", opt, torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5) if scheduled
                                else None)


def test_optimize_clips_the_global_norm_then_steps_the_scheduler():
    a = Tiny()
    x = torch.tensor([3.0, 0.0, 4.0])
    w0 = a.net.weight.detach().clone()
    a.net.weight.grad = torch.full_like(w0, 7.0)  # a stale gradient must not leak into the step
    a.optimize(a.opt, (a.net.weight @ x).sum(), clip_grad_norm=1.0)
    # d loss / d w = x, |x| = 5, clipped to x / 5; SGD with lr 1
    expected = torch.tensor([[1.0 - 0.6, -2.0, 0.5 - 0.8]], dtype=torch.float64)
    torch.testing.assert_close(a.net.weight.detach().double(), expected, rtol=0, atol=1e-6)
    assert a.opt.param_groups[0]["lr"] == 0.5  # the scheduler stepped once
    a.optimize(a.opt, (a.net.weight @ x).sum())  # unclipped: the full gradient x at lr 0.5
    expected -= 0.5 * x.double()
    torch.testing.assert_close(a.net.weight.detach().double(), expected, rtol=0, atol=1e-6)


def test_state_round_trip_restores_every_registered_part():
    torch.manual_seed(0)
    a = Tiny()
    x = torch.tensor([1.0, 2.0, 3.0])
    for _ in range(3):
        a.optimize(a.opt, (a.net.weight @ x).sum() ** 2)
    with torch.no_grad():
        a.log_alpha.fill_(math.log(0.3))
    a.steps, a.beta = 3, 0.125
    state = a.state_dict()
    assert set(state) == {"net", "log_alpha", "opt", "steps", "beta", "sched"}
    b = Tiny()
    b.load_state_dict(state)
    assert torch.equal(b.net.weight, a.net.weight) and b.log_alpha.item() == pytest.approx(math.log(0.3))
    assert b.log_alpha.requires_grad and b.steps == 3 and isinstance(b.steps, int) and b.beta == 0.125
    assert b.opt.param_groups[0]["lr"] == a.opt.param_groups[0]["lr"] == 0.125
    assert b.sched.state_dict()["last_epoch"] == 3
    state["log_alpha"].fill_(5.0)  # the saved tensor is a copy, not the live parameter
    assert a.log_alpha.item() == pytest.approx(math.log(0.3))


def test_an_absent_scheduler_is_neither_saved_nor_expected():
    a = Tiny(scheduled=False)
    a.optimize(a.opt, a.net.weight.sum())
    assert a.opt.param_groups[0]["lr"] == 1.0
    state = a.state_dict()
    assert "sched" not in state
    Tiny(scheduled=False).load_state_dict(state)
