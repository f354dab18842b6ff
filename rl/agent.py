"""The base every learning agent (online and offline) builds on: state registered once, one optimiser step.

An agent registers what its checkpoint holds (`register(actor=..., critic_opt=..., n_updates=0)`): networks,
optimisers, schedulers, learnable scalars (tensors such as SAC's log alpha) and plain counters. `state_dict()`
and `load_state_dict()` then save and restore exactly those, each under its attribute name, so an algorithm
module holds only its networks and its losses. `optimize(opt, loss)` is the one gradient step (zero the grads,
backpropagate, optionally clip the global norm of the optimiser's parameters, step, then step the scheduler
attached to that optimiser with `register_scheduler`).

A new algorithm (say TD3+BC) is a subclass whose `__init__` builds and registers its parts and whose
`update(batch)` computes each loss and hands it to `optimize`.
"""

from __future__ import annotations

import torch


class Agent:
    """Modules, optimisers, schedulers, tensors and counters registered by name; one `optimize` step."""

    def __init__(self) -> None:
        self._state_names: list[str] = []
        self._schedulers: dict[int, torch.optim.lr_scheduler.LRScheduler] = {}

    def register(self, **parts) -> None:
        """Set each part as an attribute and save it in the checkpoint under that name. A part that is None
        (an optional scheduler that is off) is neither saved nor expected on load."""
        for name, part in parts.items():
            setattr(self, name, part)
            if name not in self._state_names:
                self._state_names.append(name)

    def register_scheduler(self, name: str, optimizer: torch.optim.Optimizer, scheduler) -> None:
        """A learning-rate scheduler stepped after every `optimize` of `optimizer` (None: no schedule)."""
        self.register(**{name: scheduler})
        if scheduler is not None:
            self._schedulers[id(optimizer)] = scheduler

    def optimize(self, optimizer: torch.optim.Optimizer, loss: torch.Tensor, *,
                 clip_grad_norm: float | None = None) -> None:
        """One gradient step on `loss` with `optimizer` (its grads set to None first)."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_grad_norm is not None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip_grad_norm)
        optimizer.step()
        scheduler = self._schedulers.get(id(optimizer))
        if scheduler is not None:
            scheduler.step()

    def state_dict(self) -> dict:
        out = {}
        for name in self._state_names:
            part = getattr(self, name)
            if part is None:
                continue
            if isinstance(part, torch.Tensor):
                out[name] = part.detach().clone()
            elif hasattr(part, "state_dict"):
                out[name] = part.state_dict()
            else:
                out[name] = part
        return out

    def load_state_dict(self, state: dict) -> None:
        for name in self._state_names:
            part = getattr(self, name)
            if part is None:
                continue
            if isinstance(part, torch.Tensor):
                with torch.no_grad():
                    part.copy_(state[name])
            elif hasattr(part, "load_state_dict"):
                part.load_state_dict(state[name])
            else:
                setattr(self, name, type(part)(state[name]))
