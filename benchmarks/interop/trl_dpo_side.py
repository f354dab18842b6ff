"""TRL's DPOTrainer on files reins wrote, in a Python where reins is not importable (run by trl_dpo.py).

Reads a spec JSON (model_dir, data, beta, lr, batch, steps, max_length, seed) and writes the per-step loss and
reward accuracy TRL logged to the output JSON. Only trl / transformers / datasets / torch are imported here.
"""

from __future__ import annotations

import json
import sys

from peer_side import refuse_reins, trl_common_args, trl_inputs, trl_log, write_trl_result


def main(spec_path: str, out_path: str) -> None:
    refuse_reins()
    import trl

    spec = json.loads(open(spec_path).read())
    tok, model, data = trl_inputs(spec)
    rows: list[dict] = []
    log = trl_log(rows, lambda logs: {"loss": float(logs["loss"]),
                                      "accuracy": float(logs.get("rewards/accuracies", float("nan"))),
                                      "margin": float(logs.get("rewards/margins", float("nan")))})
    args = trl.DPOConfig(loss_type="sigmoid", **trl_common_args(spec))
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[log])
    trainer.train()
    write_trl_result(out_path, rows, {"n_pairs": len(data)})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
