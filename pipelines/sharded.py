"""Checkpoints and final models when each process holds only a shard of the parameters (FSDP).

Under FSDP a parameter of the prepared model is a shard (a DTensor): reading it on one process reads that
process's piece, and gathering it is a collective that every process must enter, or the main process waits for
the others forever. So, as the HF Trainer does, every process calls the gathering functions (`state_for_save`,
`optimizer_for_save`, `model_state_dict`) and only the main process writes what they return. A resume loads the
full parameters into the model before `accelerator.prepare` shards it (as today), and the full optimizer state
after it (`load_optimizer`), where torch shards it the same way.

Without sharding (one process, DDP, ZeRO-1/2) every function returns exactly what the stages saved before,
so those runs and their checkpoints are unchanged.

Not verified (refused at launch by `check_launch`, one line): DeepSpeed ZeRO-3 in any stage (its optimizer
state lives in DeepSpeed's own partitioned files, not in reins' single checkpoint), and FSDP with generation (ppo,
grpo, preferences, and the generation evaluation of sft/dpo), where the processes would have to stay in lock-step
through every sampled token, and FSDP with LoRA (merging, and saving a base beside the adapter, run on the main
process alone).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from reins.errors import ConfigError

DDP_HINT = "use DDP (recipes/accelerate/multi-gpu-ddp.yaml) or ZeRO-2 (recipes/accelerate/deepspeed-zero2.yaml)"


def sharding(acc) -> str | None:
    """"fsdp" or "zero3" when the prepared model's parameters are sharded across processes, else None."""
    from accelerate.utils import DistributedType

    if acc.distributed_type == DistributedType.FSDP:
        return "fsdp"
    if acc.distributed_type == DistributedType.DEEPSPEED and acc.state.deepspeed_plugin.zero_stage == 3:
        return "zero3"
    return None


def launched_sharded() -> str | None:
    """The sharding `accelerate launch` asked for, read from the environment it sets (for stages that make no
    Accelerator of their own)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        return "fsdp"
    if (os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
            and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "") == "3"):
        return "zero3"
    return None


def check_launch(kind: str | None, stage: str, *, generates: bool, lora: bool = False) -> None:
    """Refuse, in one line, a sharded launch that has not been verified (see the module docstring)."""
    if kind == "zero3":
        raise ConfigError(f"{stage} under DeepSpeed ZeRO-3 is not verified; reins' checkpoint cannot hold ZeRO-3's "
                          f"partitioned optimizer state yet: {DDP_HINT}, or FSDP")
    if kind == "fsdp" and generates:
        raise ConfigError(f"{stage} with generation under FSDP is not verified; every process would have to "
                          f"generate in lock-step: {DDP_HINT}" + ("" if stage in ("ppo", "grpo", "preferences")
                                                                  else ", or set eval_prompts=none"))
    if kind == "fsdp" and lora:
        raise ConfigError(f"{stage} with LoRA under FSDP is not verified (merging, or saving a base beside the "
                          f"adapter, would run on one process): {DDP_HINT}, or full fine-tuning")


def _gather_target(acc, model):
    # FSDP gathers from the sharded module itself (no torch.compile wrapper, whose names gain `_orig_mod.`).
    return acc.unwrap_model(model, keep_torch_compile=False)


def model_state_dict(acc, model) -> dict[str, torch.Tensor] | None:
    """Under sharding, the full state dict of a prepared model on the main process (None elsewhere); every
    process must call it. None without sharding: the model's own parameters are whole."""
    if sharding(acc) is None:
        return None
    sd = acc.get_state_dict(_gather_target(acc, model))
    return sd if acc.is_main_process else None


def submodule_state(full: dict[str, torch.Tensor] | None, prefix: str) -> dict[str, torch.Tensor] | None:
    """The entries of a gathered state dict under `prefix` ("policy." of an actor-critic), renamed without it."""
    if full is None:
        return None
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


def state_for_save(acc, model, trainable_state) -> dict[str, torch.Tensor] | None:
    """The trainable parameters by name, on the main process (None elsewhere); every process must call it.
    `trainable_state(unwrapped)` is the stage's own function, used as before when nothing is sharded."""
    unwrapped = acc.unwrap_model(model, keep_torch_compile=False)
    if sharding(acc) is None:
        return trainable_state(unwrapped) if acc.is_main_process else None
    names = {n for n, p in unwrapped.named_parameters() if p.requires_grad}
    sd = model_state_dict(acc, model)
    return {n: v.detach().clone() for n, v in sd.items() if n in names} if sd is not None else None


def optimizer_for_save(acc, model, optimizer) -> dict[str, Any] | None:
    """The optimizer's full state on the main process (None elsewhere); every process must call it. Under FSDP
    it is keyed by parameter name (torch.distributed.checkpoint's full state dict); else `state_dict()`."""
    if sharding(acc) is None:
        return optimizer.state_dict() if acc.is_main_process else None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    sd = get_optimizer_state_dict(_gather_target(acc, model), getattr(optimizer, "optimizer", optimizer),
                                  options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return sd if acc.is_main_process else None


def load_optimizer(acc, model, optimizer, state: dict) -> None:
    """Load a full optimizer state saved by `optimizer_for_save` into a prepared (sharded) optimizer; every
    process holds the whole checkpoint and keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(_gather_target(acc, model), getattr(optimizer, "optimizer", optimizer), state,
                             options=StateDictOptions(full_state_dict=True))
