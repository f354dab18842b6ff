"""TRL's DPOTrainer on files reins wrote, in a Python where reins is not importable (run by trl_dpo.py).

Reads a spec JSON (model_dir, data, beta, lr, batch, steps, max_length, seed) and writes the per-step loss and
reward accuracy TRL logged to the output JSON. Only trl / transformers / datasets / torch are imported here.
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
                rows.append({"step": state.global_step, "loss": float(logs["loss"]),
                             "accuracy": float(logs.get("rewards/accuracies", float("nan"))),
                             "margin": float(logs.get("rewards/margins", float("nan")))})

    args = trl.DPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-interop-"), beta=spec["beta"],
                         loss_type="sigmoid", learning_rate=spec["lr"], lr_scheduler_type="constant",
                         warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=spec["steps"],
                         per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1,
                         max_length=spec["max_length"], logging_steps=1, save_strategy="no", eval_strategy="no",
                         report_to="none", use_cpu=True, seed=spec["seed"], dataloader_num_workers=0,
                         disable_tqdm=True, bf16=False, fp16=False, gradient_checkpointing=False)
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[Log()])
    trainer.train()
    json.dump({"rows": rows, "n_pairs": len(data),
               "versions": {"torch": torch.__version__, "trl": trl.__version__,
                            "transformers": transformers.__version__}}, open(out_path, "w"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
