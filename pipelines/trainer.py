"""The training loop shared by the sft, reward and dpo stages: accelerate, exact batching, resumable checkpoints.

Batching: `batch_size` is the GLOBAL batch of one optimizer step (examples across all processes and
accumulation micro-steps). Each epoch draws a seeded permutation; step k takes the k-th slice of it and splits
it into world_size x grad_accum micro-batches. A stage's `loss_fn(model, examples, denominator)` returns the SUM
of per-item losses over its micro-batch divided by `denominator`, the item count (pairs, or tokens) of the whole
global batch; the loop multiplies by world_size x grad_accum to undo DDP's and accelerate's averaging, so the
gradient is exactly that of the global-batch mean however the batch is split (gradient-accumulation
normalisation bugs: transformers PR #34191, trl#2175).

Checkpoint (gathered by every process, written by the main one; atomic, weights-only; pipelines.sharded):
trainable parameters, optimizer, scheduler, RNG, step; the
data position follows from the step. Metrics stay on the device between sync points (log, save and hook steps);
there the loss and gradient norm of every step since the last one are checked, and a non-finite one raises
NonFiniteError naming its step before anything after it is logged, evaluated or checkpointed, so the last good
checkpoint is kept.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from pipelines.models import load_trainable_state, trainable_state
from pipelines.sharded import load_optimizer, optimizer_for_save, sharding, state_for_save
from reins.config import check
from reins.errors import ConfigError
from reins.runio import FiniteGuard, RunDir, get_rng_state, set_rng_state

GROUP_MEGABATCHES = 50  # group_by_length sorts within this many batches at a time (as HF's LengthGroupedSampler)


def example_length(example: dict) -> int:
    """Tokens an example puts through the model: the sum of its `*_ids` lists (prompt + completion(s))."""
    return sum(len(v) for k, v in example.items() if k.endswith("_ids") and isinstance(v, (list, tuple)))


def epoch_order(lengths: list[int], batch_size: int, *, seed: int, epoch: int, group_by_length: bool,
                shuffle: bool = True) -> list[int]:
    """The example indices of one epoch in step order (a pure function of seed and epoch, so resume is exact).

    Without `shuffle`, the examples in file order every epoch (to reproduce another tool's run batch for batch).
    Otherwise a seeded permutation of range(len(lengths)); its tail that does not fill a whole batch is left out this
    epoch. With `group_by_length` (HF's name for it) the permutation is cut into mega-batches of
    GROUP_MEGABATCHES batches, each sorted by length (longest first) and cut into batches, and the batches are
    shuffled, so a batch holds examples of similar length and pads less while the epoch still visits the same
    examples. The longest batch goes first, so a batch size that runs out of memory fails at once.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    B = batch_size
    if not shuffle:
        return list(range(len(lengths) // B * B))
    perm = torch.randperm(len(lengths), generator=g)[:len(lengths) // B * B].tolist()
    if not group_by_length:
        return perm
    batches = []
    for m in range(0, len(perm), GROUP_MEGABATCHES * B):
        block = sorted(perm[m:m + GROUP_MEGABATCHES * B], key=lambda i: -lengths[i])
        batches += [block[b:b + B] for b in range(0, len(block), B)]
    batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    first = max(range(len(batches)), key=lambda i: lengths[batches[i][0]])
    batches.insert(0, batches.pop(first))
    return [i for b in batches for i in b]


@dataclass
class OptimArgs:
    """Optimisation options every LM stage has (a mixin of their Config dataclasses): the optimizer, its schedule,
    the step budget, logging and checkpoints, accelerate's device and precision. PPO and GRPO take these; their
    batches are their own rollouts, so the Trainer's batching options (`TrainArgs`) are not theirs."""

    learning_rate: float = 1e-4
    batch_size: int = field(default=16, metadata={"help": "global batch per optimizer step"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per process per step"})
    num_epochs: float = field(default=1.0, metadata={"help": "passes over the training data (max_steps overrides it)"})
    max_steps: int | None = field(default=None, metadata={"help": "overrides num_epochs"})
    warmup_steps: int = field(default=0, metadata={"help": "optimizer steps of linear learning-rate warm-up from 0"})
    lr_scheduler: Literal["constant", "linear", "cosine"] = field(
        default="linear", metadata={"help": "learning-rate schedule after warm-up: constant, linear or cosine to 0"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay"})
    max_grad_norm: float | None = field(default=1.0,
                                        metadata={"help": "clip the global gradient norm to this (None: no clipping)"})
    log_every: int = field(default=10, metadata={"help": "optimizer steps between log.jsonl rows"})
    save_every: int = field(default=50, metadata={"help": "optimizer steps between checkpoints"})
    eval_every: int | None = field(default=None, metadata={"help": "None: evaluate at the end only"})
    mixed_precision: Literal["no", "bf16", "fp16"] = field(
        default="no", metadata={"help": "accelerate's autocast precision: no, bf16 or fp16"})
    cpu: bool = field(default=False, metadata={"help": "force CPU even where CUDA is available"})

    def validate_optim(self):
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.grad_accum >= 1, f"grad_accum must be >= 1, got {self.grad_accum}")
        check(self.num_epochs > 0, f"num_epochs must be > 0, got {self.num_epochs}")
        check(self.max_steps is None or self.max_steps >= 1, "max_steps must be >= 1")
        check(self.warmup_steps >= 0, "warmup_steps must be >= 0")
        check(self.save_every >= 1 and self.log_every >= 1, "save_every and log_every must be >= 1")


@dataclass
class TrainArgs(OptimArgs):
    """The options of the `Trainer` that sft, reward and dpo share: how a data set becomes batches, and compiling."""

    group_by_length: bool = field(default=False,
                                  metadata={"help": "batches of similar length (less padding; see "
                                                    "Trainer.epoch_order)"})
    shuffle: bool = field(default=True,
                          metadata={"help": "false: every epoch in file order (as another tool's unshuffled run)"})
    torch_compile: bool = field(default=False,
                                metadata={"help": "torch.compile(dynamic=True) the trained model (and DPO's "
                                                  "reference)"})

    def validate_train(self):
        self.validate_optim()
        check(self.shuffle or not self.group_by_length,
              "group_by_length=true shuffles its length-sorted batches; it cannot be combined with shuffle=false")


# TrainArgs' keys, which ppo and grpo configs had (unused) while they inherited TrainArgs: dropped from a saved
# config.yaml before it is compared (reins.runio's run_config_view hook), so such a run still resumes.
TRAINER_ONLY_KEYS = ("group_by_length", "shuffle", "torch_compile")


def drop_trainer_only_keys(d: dict) -> dict:
    """`d` without TrainArgs' own keys (for the run_config_view of a config that has only OptimArgs)."""
    return {k: v for k, v in d.items() if k not in TRAINER_ONLY_KEYS}


def check_batch_size(args: OptimArgs, n_examples: int, world: int) -> None:
    """The global batch splits evenly over processes x accumulation, and one epoch holds at least one batch."""
    if args.batch_size % (world * args.grad_accum):
        raise ConfigError(f"batch_size={args.batch_size} must be a multiple of num_processes ({world}) x "
                          f"grad_accum ({args.grad_accum})")
    if n_examples < args.batch_size:
        raise ConfigError(f"batch_size={args.batch_size} is larger than the {n_examples} training examples")


def make_accelerator(args: OptimArgs):
    """An Accelerator for this process. On a machine without CUDA it is forced onto CPU (gloo): accelerate's
    launcher does not pass `use_cpu` on (recipes/accelerate/README.md), which would otherwise give independent
    rank-0 runs."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # In-process (tests, notebooks) a previous stage's singleton state would leak its settings.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    cpu = args.cpu or not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "") in ("1", "true")
    return Accelerator(cpu=cpu, gradient_accumulation_steps=args.grad_accum, mixed_precision=args.mixed_precision)


def lr_lambda(args: OptimArgs, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < args.warmup_steps:
            return (step + 1) / (args.warmup_steps + 1)
        if args.lr_scheduler == "constant":
            return 1.0
        frac = (step - args.warmup_steps) / max(1, total - args.warmup_steps)
        if args.lr_scheduler == "linear":
            return max(0.0, 1.0 - frac)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))
    return f


def adamw(groups: list[dict], **kw) -> torch.optim.AdamW:
    """AdamW with the fused kernel where every parameter allows it (floats on CPU or CUDA). It is HF Trainer's
    default since torch 2.8, and several times faster than the per-tensor loop torch picks on CPU
    (benchmarks/pipelines/adamw_speed.py)."""
    ok = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, fused=True if ok else None, **kw)


class Trainer:
    """Runs `loss_fn` over `examples` with the stage contract's checkpoint/resume/NaN rules.

    loss_fn(model, examples, denominator) -> (loss, stats) where stats maps a metric name to
    ("mean", sum, count) | ("min", value) | ("max", value); means are reduced exactly across processes.
    count_fn(example) -> the example's share of the denominator (1 for pairs, its completion tokens for SFT).
    tokens_fn(example) -> the example's input tokens, when given: logged as `num_tokens`, the running total of
    tokens trained on so far (TRL's metric of that name; host integers, no device read).
    The checkpoint holds the metrics of its step, so a run resumed from its last checkpoint (killed during the
    final evaluation) still returns them.
    """

    def __init__(self, run: RunDir | None, args: TrainArgs, accelerator, model, examples: list, loss_fn,
                 *, seed: int, count_fn=None, extra_state: Callable[[], dict] | None = None,
                 load_extra: Callable[[dict], None] | None = None, tokens_fn: Callable[[dict], int] | None = None):
        self.run, self.args, self.acc, self.examples = run, args, accelerator, examples
        self.loss_fn, self.seed = loss_fn, seed
        self.count_fn = count_fn or (lambda ex: 1)
        self.tokens_fn = tokens_fn
        self.extra_state, self.load_extra = extra_state, load_extra
        world = accelerator.num_processes
        check_batch_size(args, len(examples), world)
        self.micro = args.batch_size // (world * args.grad_accum)
        self.steps_per_epoch = len(examples) // args.batch_size
        self.total_steps = args.max_steps or max(1, math.ceil(args.num_epochs * self.steps_per_epoch))
        params = [p for p in model.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        opt = adamw([{"params": decay, "weight_decay": args.weight_decay},
                     {"params": no_decay, "weight_decay": 0.0}], lr=args.learning_rate)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(args, self.total_steps))
        self.step = 0
        self._last: dict = {}  # the metrics of the last step read (checkpointed with it)
        state = run.load_checkpoint() if run is not None else None
        sharded = sharding(accelerator) is not None
        if state is not None:
            load_trainable_state(model, state["model"])  # whole parameters: prepare shards them
            if not sharded:
                opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            self.step = int(state["step"])
            self._last = dict(state.get("metrics", {}))
            if self.load_extra is not None:
                self.load_extra(state.get("extra", {}))
            self._rng = state["rng"]
        else:
            self._rng = None
        # The scheduler is NOT prepared: accelerate's wrapper steps it num_processes times per call, while our
        # schedule is defined per global optimizer step.
        self.model, self.optimizer = accelerator.prepare(model, opt)
        if state is not None and sharded:  # a full optimizer state, sharded like the parameters
            load_optimizer(accelerator, self.model, self.optimizer, state["optimizer"])
        if args.torch_compile:  # after prepare, so a DDP wrapper is compiled with its hooks (torch's advice)
            self.model = torch.compile(self.model, dynamic=True)
        self.scheduler = sched
        self.resumed_from = self.step
        self._order: tuple[int, list[int]] | None = None
        self._lengths: list[int] | None = None
        self._names: list[str] | None = None  # metric names and kinds, fixed by the first step's stats
        self._kinds: list[str] = []
        self.guard = FiniteGuard()  # loss and gradient norm, recorded and checked at sync points (`_read`)
        # A pure function of the step (the batches are), so a resume recounts instead of checkpointing it.
        self.tokens_seen = sum(self._batch_tokens(s) for s in range(self.step)) if tokens_fn is not None else 0

    @property
    def unwrapped(self):
        return self.acc.unwrap_model(self.model, keep_torch_compile=False)

    def global_batch(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        B = self.args.batch_size
        return self.epoch_order(epoch)[k * B:(k + 1) * B]

    def _batch_tokens(self, step: int) -> int:
        return sum(self.tokens_fn(self.examples[i]) for i in self.global_batch(step))

    def epoch_order(self, epoch: int) -> list[int]:
        if self._order is None or self._order[0] != epoch:
            if self._lengths is None:
                self._lengths = [example_length(e) for e in self.examples]
            self._order = (epoch, epoch_order(self._lengths, self.args.batch_size, seed=self.seed, epoch=epoch,
                                              group_by_length=self.args.group_by_length, shuffle=self.args.shuffle))
        return self._order[1]

    def _pack(self, stats: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        """One step's micro-batch stats as device tensors, without a host sync: [M, 2] (sum, count) of the
        "mean" metrics and [K] of the "min"/"max" ones (this process's extreme over its micro-batches)."""
        dev = self.acc.device
        if self._names is None:
            self._names = list(stats[0])
            self._kinds = [stats[0][n][0] for n in self._names]
        f64 = torch.float64

        def t(x):  # detached (the graph is not kept across steps); host numbers copied without a stream sync
            if isinstance(x, torch.Tensor):
                return x.detach().to(dev, f64).reshape(())
            return torch.tensor(float(x), dtype=f64).to(dev, non_blocking=True)

        means = [n for n, k in zip(self._names, self._kinds) if k == "mean"]
        mean = torch.stack([torch.stack([sum(t(s[n][1]) for s in stats), sum(t(s[n][2]) for s in stats)])
                            for n in means]) if means else torch.zeros(0, 2, dtype=f64, device=dev)
        ext = []
        for n, k in zip(self._names, self._kinds):
            if k != "mean":
                v = torch.stack([t(s[n][1]) for s in stats])
                ext.append(v.min() if k == "min" else v.max())
        return mean, (torch.stack(ext) if ext else torch.zeros(0, dtype=f64, device=dev))

    def _read(self, pending: list[dict], first: int) -> list[dict]:
        """Reduce the pending steps' stats (steps `first`, `first` + 1, ...) across processes and bring them to the
        host: two collectives and one device-to-host copy for the whole interval, instead of a collective and a
        sync per metric per step. A non-finite loss or gradient norm raises first, naming its step; the check
        runs on the reduced values, so every process reaches the same verdict."""
        means = torch.stack([p["mean"] for p in pending])                  # [S, M, 2]
        ext = torch.stack([p["ext"] for p in pending])                     # [S, K]
        norms = torch.stack([torch.as_tensor(p["grad_norm"]).to(means.device, torch.float64).reshape(())
                             for p in pending])
        means = self.acc.reduce(means, reduction="sum")
        if ext.numel():
            g = self.acc.gather(ext.unsqueeze(0)).reshape(-1, *ext.shape)  # [world, S, K]
            kinds = [k for k in self._kinds if k != "mean"]
            lo, hi = g.min(dim=0).values, g.max(dim=0).values
            ext = torch.stack([lo[:, j] if k == "min" else hi[:, j] for j, k in enumerate(kinds)], dim=1)
        vals = torch.cat([(means[..., 0] / means[..., 1].clamp_min(1e-12)).reshape(len(pending), -1),
                          ext.reshape(len(pending), -1), norms.reshape(-1, 1)], dim=1)
        mean_names = [n for n, k in zip(self._names, self._kinds) if k == "mean"]
        ext_names = [n for n, k in zip(self._names, self._kinds) if k != "mean"]
        j = (mean_names + ext_names).index("loss")
        for k in range(len(pending)):
            self.guard.record(first + k, {"loss": vals[k, j], "grad_norm": vals[k, -1]})
        self.guard.check()
        host = vals.cpu().tolist()
        out = []
        for p, row in zip(pending, host):
            m = dict(zip(mean_names + ext_names, row[:-1]))
            m = {n: m[n] for n in self._names}  # the stage's own order
            m["grad_norm"] = row[-1]
            m.update(p["host"])
            out.append(m)
        return out

    def train(self, on_step: Callable[[int, dict], None] | None = None, every: int = 1) -> dict:
        """Run to `total_steps`; `on_step(step, metrics)` after every `every`-th step (eval hooks). Returns the last
        step's metrics.

        Metrics stay on the device and are read, with the finiteness checks of loss and gradient norm, only at
        sync points: every `log_every` and `save_every` step, every `every`-th step and the last one. A non-finite
        loss or gradient norm stops the run at the next sync point with an error naming the first bad step, before
        anything is logged, evaluated or checkpointed after it, so the last good checkpoint is kept (the steps
        between the bad one and the sync point are computed and thrown away).
        """
        if self._rng is not None:
            set_rng_state(self._rng)
        if self.run is not None and self.acc.is_main_process:
            self.run.truncate_log(self.step)
        args, acc = self.args, self.acc
        bar = self.run.progress(self.total_steps, self.step, desc="train") if (
            self.run is not None and acc.is_main_process) else None
        last: dict = self._last  # a run resumed at its last step trains no step: its checkpoint's metrics
        pending: list[dict] = []
        self.model.train()
        while self.step < self.total_steps:
            pending.append(self._optimizer_step())
            if bar is not None:
                bar.update(1)
            logs = self.step % args.log_every == 0 or self.step == self.total_steps
            saves = self.step % args.save_every == 0 or self.step == self.total_steps
            hook = on_step is not None and self.step % every == 0
            if not (logs or saves or hook):
                continue
            first = self.step - len(pending) + 1
            rows = self._read(pending, first)
            pending = []
            metrics = last = self._last = rows[-1]
            if bar is not None:
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
            if hook:
                on_step(self.step, metrics)
            if self.run is not None and acc.is_main_process and logs:
                self.run.log(self.step, metrics, tb_prefix="train/")
            if saves:
                self.save()
        if bar is not None:
            bar.close()
        return last

    def _optimizer_step(self) -> dict:
        """One optimiser step on this step's global batch (split across processes and accumulation); returns its
        stats, still on the device, for `_read`."""
        args, acc, world = self.args, self.acc, self.acc.num_processes
        idx = self.global_batch(self.step)
        denom = float(sum(self.count_fn(self.examples[i]) for i in idx))
        chunks = [idx[c * self.micro:(c + 1) * self.micro] for c in range(world * args.grad_accum)]
        mine = chunks[acc.process_index * args.grad_accum:(acc.process_index + 1) * args.grad_accum]
        stats = []
        for chunk in mine:
            with acc.accumulate(self.model):
                loss, st = self.loss_fn(self.model, [self.examples[i] for i in chunk], denom)
                acc.backward(loss * (world * args.grad_accum))
                stats.append(st)
        mean, ext = self._pack(stats)
        max_norm = args.max_grad_norm if args.max_grad_norm is not None else float("inf")
        grad_norm = acc.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], max_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        host = {"learning_rate": self.scheduler.get_last_lr()[0], "epoch": (self.step + 1) / self.steps_per_epoch}
        if self.tokens_fn is not None:
            self.tokens_seen += sum(self.tokens_fn(self.examples[i]) for i in idx)
            host["num_tokens"] = self.tokens_seen
        self.step += 1
        return {"mean": mean, "ext": ext, "grad_norm": grad_norm, "host": host}

    def save(self) -> None:
        if self.run is None:
            return
        # Every process gathers (a collective under FSDP); the main process writes.
        params = state_for_save(self.acc, self.model, trainable_state)
        optim = optimizer_for_save(self.acc, self.model, self.optimizer)
        if self.acc.is_main_process:
            state: dict[str, Any] = {"step": self.step, "model": params, "optimizer": optim,
                                     "scheduler": self.scheduler.state_dict(), "rng": get_rng_state(),
                                     "metrics": dict(self._last)}
            if self.extra_state is not None:
                state["extra"] = self.extra_state()
            self.run.save_checkpoint(state)
        self.acc.wait_for_everyone()
