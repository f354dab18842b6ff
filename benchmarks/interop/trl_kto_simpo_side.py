"""TRL's KTOTrainer and SimPO (CPOTrainer, loss_type="simpo") on files reins wrote, in a Python where reins is not
importable (run by trl_kto_simpo.py).

Reads a spec JSON (trainer: kto | simpo, model_dir, ref_dir (kto), data, beta, simpo_gamma, cpo_alpha,
desirable_weight, undesirable_weight, lr, batch, steps, max_length, seed) and writes every metric TRL logged at
each step to the output JSON. Only trl / transformers / datasets / torch are imported here.
"""

from __future__ import annotations

import json
import sys

from peer_side import refuse_reins, trl_common_args, trl_inputs, trl_log, write_trl_result


def main(spec_path: str, out_path: str) -> None:
    refuse_reins()
    import torch
    import trl
    from transformers import AutoModelForCausalLM

    spec = json.loads(open(spec_path).read())
    tok, model, data = trl_inputs(spec)
    rows: list[dict] = []
    log = trl_log(rows, lambda logs: {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})
    common = trl_common_args(spec)
    if spec["trainer"] == "kto":
        ref = AutoModelForCausalLM.from_pretrained(spec["ref_dir"], dtype=torch.float32)
        args = trl.KTOConfig(desirable_weight=spec["desirable_weight"], undesirable_weight=spec["undesirable_weight"],
                             **common)
        trainer = trl.KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok,
                                 callbacks=[log])
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(loss_type="simpo", simpo_gamma=spec["simpo_gamma"], cpo_alpha=spec["cpo_alpha"], **common)
        trainer = CPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[log])
    trainer.train()
    write_trl_result(out_path, rows, {"n_rows": len(data)})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
