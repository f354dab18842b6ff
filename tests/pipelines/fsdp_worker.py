"""Run under `accelerate launch` on 2 CPU processes: an sft run under FSDP2, stopped on every process right after its
first checkpoint, then the same run again (a resume); then a dpo run under FSDP2. Used by test_sharded.py (not
collected by pytest).

argv[1] is a JSON object of sft.Config keys, argv[2] one of dpo.Config keys. accelerate 1.15 turns FSDP on only for
accelerator devices: on CPU its state stays MULTI_CPU whatever the launch config says, so this worker sets the state
to FSDP (version 2, one unit per LlamaDecoderLayer) right after the stage makes its Accelerator, before anything is
prepared; the model is then sharded by accelerate's own FSDP2 `prepare`, and gathered by its own `get_state_dict`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from pipelines import dpo, sft, trainer
from pipelines.trainer import Trainer
from reins.config import from_dict
from reins.entry import shutdown_distributed


class Stop(Exception):
    pass


def fsdp_accelerator(args):
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    acc = make_accelerator(args)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True,
                                            state_dict_type="FULL_STATE_DICT",
                                            auto_wrap_policy="transformer_based_wrap",
                                            transformer_cls_names_to_wrap=["LlamaDecoderLayer"])
    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return acc


make_accelerator = trainer.make_accelerator


def main() -> None:
    cfg = from_dict(sft.Config, json.loads(sys.argv[1]))
    trainer.make_accelerator = fsdp_accelerator
    save, train = Trainer.save, Trainer.train

    def save_then_stop(self):
        save(self)
        local = {n: type(p).__name__ for n, p in self.unwrapped.named_parameters()}
        if self.acc.is_main_process:
            (Path(cfg.output_dir).parent / "param_types.json").write_text(json.dumps(local))
        raise Stop  # on every process, as a kill of the whole job would

    def train_and_dump(self, *a, **k):
        if self.acc.is_main_process:
            (Path(cfg.output_dir).parent / "resumed_from.json").write_text(json.dumps(self.resumed_from))
        out = train(self, *a, **k)
        sd = self.acc.get_state_dict(self.unwrapped)  # every process: a collective
        if self.acc.is_main_process:
            torch.save({k: v.clone() for k, v in sd.items()}, Path(cfg.output_dir).parent / "fsdp_final.pt")
        return out

    try:
        Trainer.save = save_then_stop
        try:
            sft.train(cfg)
        except Stop:
            pass
        Trainer.save, Trainer.train = save, train_and_dump
        sft.train(cfg)  # resumes from the checkpoint of step save_every
        Trainer.train = train
        dpo.train(from_dict(dpo.Config, json.loads(sys.argv[2])))
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    main()
