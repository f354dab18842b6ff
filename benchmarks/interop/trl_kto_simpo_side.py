"""TRL's KTOTrainer and SimPO (CPOTrainer, loss_type="simpo") on files reins wrote, in a Python where reins is not
importable (run by trl_kto_simpo.py).

Reads a spec JSON (trainer: kto | simpo, model_dir, ref_dir (kto), data, beta, simpo_gamma, cpo_alpha,
desirable_weight, undesirable_weight, lr, batch, steps, max_length, seed) and writes every metric TRL logged at
each step to the output JSON. Only trl / transformers / datasets / torch are imported here.
"""

from __future__ import annotations

import json
import sys
import tempfile


def main(spec_path: str, out_path: str) -> None:
    for name in ("reins", "pipelines", "pgcore", "online", "offline"):
        try:
            __import__(name)
        except ModuleNotFoundError:
            continue
        raise SystemExit(f"{name} is importable: the interop check would prove nothing")
    import torch
    import transformers
    import trl
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    spec = json.loads(open(spec_path).read())
    torch.manual_seed(spec["seed"])
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    data = load_dataset("json", data_files=spec["data"], split="train")
    rows: list[dict] = []

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                rows.append({"step": state.global_step, **{k: float(v) for k, v in logs.items()
                                                           if isinstance(v, (int, float))}})

    common = dict(output_dir=tempfile.mkdtemp(prefix="trl-interop-"), beta=spec["beta"],
                  learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                  max_grad_norm=1.0, max_steps=spec["steps"], per_device_train_batch_size=spec["batch"],
                  gradient_accumulation_steps=1, max_length=spec["max_length"], logging_steps=1, save_strategy="no",
                  eval_strategy="no", report_to="none", use_cpu=True, seed=spec["seed"], dataloader_num_workers=0,
                  disable_tqdm=True, bf16=False, fp16=False, gradient_checkpointing=False)
    if spec["trainer"] == "kto":
        ref = AutoModelForCausalLM.from_pretrained(spec["ref_dir"], dtype=torch.float32)
        args = trl.KTOConfig(desirable_weight=spec["desirable_weight"], undesirable_weight=spec["undesirable_weight"],
                             **common)
        trainer = trl.KTOTrainer(model=model, ref_model=ref, args=args, train_dataset=data, processing_class=tok,
                                 callbacks=[Log()])
    else:
        from trl.experimental.cpo import CPOConfig, CPOTrainer

        args = CPOConfig(loss_type="simpo", simpo_gamma=spec["simpo_gamma"], cpo_alpha=spec["cpo_alpha"], **common)
        trainer = CPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[Log()])
    trainer.train()
    json.dump({"rows": rows, "n_rows": len(data),
               "versions": {"torch": torch.__version__, "trl": trl.__version__,
                            "transformers": transformers.__version__}}, open(out_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
