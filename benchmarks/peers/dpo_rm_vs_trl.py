"""SFT, DPO and reward-model training samples/s: reins (pipelines/sft.py, dpo.py, reward_model.py) vs TRL 1.16
(SFTTrainer, DPOTrainer, RewardTrainer), identical work.

The driver builds one Llama model (pipelines.models, `tiny` spec or a ~15M-parameter one) and its tokenizer and
saves them with `save_pretrained`, or (size `135m`) takes SmolLM2-135M-Instruct as `reins fetch-model` wrote it,
and tokenises the built-in sentiment preference pairs once with reins' tokenizer code; both sides load that
directory and train on exactly those token ids (TRL's own tokenisation is bypassed by handing it pre-tokenised
columns: `prompt_ids/chosen_ids/rejected_ids` for DPO, prompt+completion `chosen_ids/rejected_ids` for the reward
model, which RewardTrainer accepts as processed data, and for SFT `input_ids` = prompt + chosen with a
`completion_mask` over the chosen tokens, `completion_only_loss`).
Both: fp32, AdamW lr 1e-4 with a linear schedule over the same (large) max_steps, weight decay
0, max grad norm 1.0, no gradient checkpointing, no gradient accumulation, the same per-step batch of pairs
(SFT: of prompt/chosen examples, loss the mean NLL over the batch's completion tokens),
chosen and rejected in one concatenated forward, a frozen reference copy for DPO (sigmoid loss, beta 0.1) or,
in `dpo_precomputed_ref`, reference log-probs computed once before training by each library's own
precompute option (reins `precompute_ref_logps`, TRL `precompute_ref_log_probs`; not timed), a
fresh scalar head for the reward model (Bradley-Terry loss, no margin, no centering). Full fine-tuning, or (the
`lora` rows of size 135m) a PEFT LoRA adapter on both sides: r 16, alpha 32, dropout 0, all linear layers, the
reward model's `score` head trained in full (`modules_to_save`), DPO's reference = the policy with its adapter
disabled. A step is one optimizer
step of each library's own training loop (reins: pipelines.trainer.Trainer; TRL: transformers' Trainer, logging
every `block_steps` steps, which is TRL's DPO default of 10 at the full size). Throughput: preference pairs/s
(SFT: examples/s).
Final loss: reins, the mean training loss over the last block; TRL, its last logged loss (the mean over the
last `block_steps` steps, which ends where the last block ends give or take the warm-up offset).
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.common import BlockClock, count_flops, start_worker

MODELS = {  # pipelines.models.TinySpec fields, or a local checkpoint (`reins fetch-model` writes SmolLM2 there)
    "tiny": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 384},
    "15m": {"hidden_size": 384, "num_layers": 8, "num_heads": 6, "intermediate_size": 1024},
    "smollm2": Path("~/.cache/reins/models/smollm2-135m-instruct").expanduser(),
}
LORA = {"r": 16, "alpha": 32.0, "dropout": 0.0, "target_modules": ["all-linear"]}  # recipes/dpo/smollm2-135m-lora
SIZES = {  # per model: (blocks, steps per block); "finetune": full and/or lora rows of every task
    "small": {"models": {"tiny": (3, 5)}, "tasks": ["dpo", "dpo_precomputed_ref", "rm"], "batch": 8, "pairs": 64,
              "warmup": 2},
    "full": {"models": {"tiny": (6, 10), "15m": (4, 5)}, "tasks": ["dpo", "dpo_precomputed_ref", "rm"],
             "batch": 16, "pairs": 512, "warmup": 3},
    "135m": {"models": {"smollm2": (4, 3)}, "tasks": ["sft", "rm", "dpo"], "finetune": ["lora", "full"],
             "batch": 4, "pairs": 64, "warmup": 2, "target": 1.0},  # issue 26 item 3
}
THREADS = "all"
TARGETS = {"dpo": 2.0, "dpo_precomputed_ref": 2.0, "rm": 2.0, "sft": 1.0}  # issue 8
UNITS = {"sft": "examples/s"}  # the others: preference pairs/s
PEER = "trl"
MAX_STEPS = 1_000_000  # both schedules decay over the same horizon; the driver stops the run long before


def _model(m: str, workdir: Path, seed: int):
    """(model directory, its tokenizer, parameter count): a local checkpoint as it is, or the tiny Llama of
    MODELS[m] built, seeded and saved under workdir."""
    from pipelines.models import ModelArgs, TinySpec, count_parameters, load_causal_lm, load_tokenizer

    if isinstance(MODELS[m], Path):
        tok = load_tokenizer(ModelArgs(model=str(MODELS[m])))
        n = sum(p.numel() for p in load_causal_lm(ModelArgs(model=str(MODELS[m])), tok).parameters())
        return MODELS[m], tok, n
    tok = load_tokenizer(ModelArgs())
    model_dir = workdir / f"model-{m}"
    model = load_causal_lm(ModelArgs(tiny=TinySpec(**MODELS[m])), tok, seed=seed)
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    return model_dir, tok, count_parameters(model)[0]


def _pairs(tok, n: int, seed: int, path: Path) -> str:
    """The built-in sentiment pairs tokenised by reins (its chat handling, EOS), written to `path` as JSON;
    returns a description of their lengths."""
    from pipelines.data import normalise_preferences, tokenize_preferences
    from pipelines.reward_model import builtin_pairs

    examples, _ = tokenize_preferences(tok, normalise_preferences(builtin_pairs(n, seed, "train"), "builtin"),
                                       "builtin", 128)
    path.write_text(json.dumps([{k: e[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids")}
                                for e in examples]))
    mean = lambda k: sum(len(e[k]) for e in examples) / len(examples)  # noqa: E731
    return f"prompt {mean('prompt_ids'):.0f} + chosen {mean('chosen_ids'):.0f} / rejected " \
           f"{mean('rejected_ids'):.0f} tok"


def prepare(size: str, workdir: Path, threads: int, device: str, seed: int = 0) -> list[dict]:
    cfg = SIZES[size]
    out = []
    for m, (blocks, block_steps) in cfg["models"].items():
        model_dir, tok, n_params = _model(m, workdir, seed)
        data = workdir / f"pairs-{m}.json"
        lengths = _pairs(tok, cfg["pairs"], seed, data)
        for task in cfg["tasks"]:
            for ft in cfg.get("finetune", ["full"]):
                name = f"{task}_vs_trl/{m}" + (f"/{ft}" if "finetune" in cfg else "")
                spec = {"name": name, "task": task, "model_dir": str(model_dir), "data": str(data),
                        "batch": cfg["batch"], "lr": 1e-4, "beta": 0.1, "threads": threads, "device": device,
                        "seed": seed, "warmup": cfg["warmup"], "lora": LORA if ft == "lora" else None}
                unit = UNITS.get(task, "pairs/s")
                out.append({"spec": spec, "blocks": blocks, "block_steps": block_steps,
                            "items_per_step": cfg["batch"], "unit": unit, "peer": PEER, "venv": "bench",
                            "target": cfg.get("target", TARGETS[task]),
                            "size_desc": f"{m} Llama ({n_params / 1e6:.1f}M params){', LoRA r 16' * (ft == 'lora')}"
                                         f", batch {cfg['batch']} {unit[:-2]}, {lengths}"})
    return out


def sft_examples(examples: list[dict]) -> list[dict]:
    """SFT examples from the preference pairs: the prompt and its chosen completion (the loss on the latter)."""
    return [{"prompt_ids": e["prompt_ids"], "completion_ids": e["chosen_ids"]} for e in examples]


class _Stop(Exception):
    pass


def _ours_setup(spec: dict) -> tuple:
    """(config, accelerator, model, training examples, loss function, Trainer kwargs) of the spec's task, built
    as the stage builds them (pipelines.sft / reward_model / dpo)."""
    import torch  # noqa: F401 - loaded before the stage modules, as a stage run does

    from pipelines import dpo, reward_model, sft
    from pipelines.models import LoraSpec, ModelArgs, load_causal_lm, load_reward_model, load_tokenizer
    from pipelines.reference import build_reference
    from pipelines.trainer import make_accelerator

    examples = json.loads(Path(spec["data"]).read_text())
    common = dict(model=spec["model_dir"], batch_size=spec["batch"], max_steps=MAX_STEPS, learning_rate=spec["lr"],
                  lr_scheduler="linear", weight_decay=0.0, max_grad_norm=1.0, cpu=spec["device"] == "cpu",
                  seed=spec["seed"], lora=LoraSpec(**spec["lora"]) if spec.get("lora") else None)
    tok = load_tokenizer(ModelArgs(model=spec["model_dir"]))
    if spec["task"] == "sft":
        cfg = sft.Config(**common)
        policy = load_causal_lm(cfg, tok, seed=spec["seed"])
        return (cfg, make_accelerator(cfg), policy, sft_examples(examples), sft.make_loss_fn(tok.pad_token_id),
                {"count_fn": sft.n_predicted})
    if spec["task"] == "rm":
        cfg = reward_model.Config(center_coef=0.0, use_margin=False, **common)
        policy = load_reward_model(cfg, tok, seed=spec["seed"])
        return cfg, make_accelerator(cfg), policy, examples, reward_model.make_loss_fn(tok.pad_token_id, cfg), {}
    cfg = dpo.Config(beta=spec["beta"], loss_type="sigmoid", **common)
    acc = make_accelerator(cfg)
    policy = load_causal_lm(cfg, tok, seed=spec["seed"])
    ref = build_reference(cfg, policy, tok)  # a frozen copy, or under LoRA the policy with its adapter off
    if ref.model is not None:
        ref.model.to(acc.device)
    if spec["task"] == "dpo_precomputed_ref":  # the stage's own cache path; the copy is dropped afterwards
        dpo.attach_ref_logps(examples, ref, tok.pad_token_id, Path(spec["data"]).parent / "ref-cache",
                             batch_size=spec["batch"], is_main=True, wait=lambda: None)
        ref = None
    return cfg, acc, policy, examples, dpo.make_loss_fn(tok.pad_token_id, cfg, ref), {}


def _ours(spec: dict, clock: BlockClock) -> dict:
    import torch

    from pipelines.trainer import Trainer

    cfg, acc, policy, examples, loss_fn, kw = _ours_setup(spec)
    trainer = Trainer(None, cfg, acc, policy, examples, loss_fn, seed=spec["seed"], **kw)
    batch = examples[: spec["batch"]]
    flops, _ = count_flops(lambda: loss_fn(trainer.model, batch, float(len(batch)))[0].backward())
    trainer.optimizer.zero_grad(set_to_none=True)

    def on_step(step: int, metrics: dict) -> None:
        clock.record_loss(metrics["loss"])
        if not clock.tick():
            raise _Stop

    clock.start()
    if clock.running:
        try:
            trainer.train(on_step)
        except _Stop:
            pass
    return {"flops_per_step": flops, "versions": {"torch": torch.__version__}}


def _peer(spec: dict, clock: BlockClock) -> dict:
    import tempfile

    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer, TrainerCallback

    examples = json.loads(Path(spec["data"]).read_text())
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    logged: list[tuple[int, float]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.start()
            control.should_training_stop = not clock.running

        def on_step_end(self, args, state, control, **kw):
            if not clock.tick():
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                logged.append((state.global_step, float(logs["loss"])))

    common = dict(output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=spec["batch"],
                  gradient_accumulation_steps=1, learning_rate=spec["lr"], lr_scheduler_type="linear",
                  warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, max_steps=MAX_STEPS,
                  gradient_checkpointing=False, logging_steps=spec["block_steps"], save_strategy="no",
                  eval_strategy="no",
                  report_to="none", use_cpu=spec["device"] == "cpu", seed=spec["seed"], dataloader_num_workers=0,
                  disable_tqdm=True, bf16=False, fp16=False, max_length=None)
    torch.manual_seed(spec["seed"])
    trainer = _trl_trainer(spec, common, tok, examples, [Clock()])
    flops = _trl_step_flops(trainer, spec["batch"])
    trainer.train()
    return {"flops_per_step": flops, "final_loss": logged[-1][1] if logged else None,
            "versions": {"torch": torch.__version__, "trl": trl.__version__,
                         "transformers": transformers.__version__}}


def _trl_lora(spec: dict):
    """The spec's LoRA adapter as a peft LoraConfig (the settings pipelines.models gives its own), or None."""
    if not spec.get("lora"):
        return None
    from peft import LoraConfig

    lo, rm = spec["lora"], spec["task"] == "rm"
    return LoraConfig(r=lo["r"], lora_alpha=lo["alpha"], lora_dropout=lo["dropout"],
                      target_modules=lo["target_modules"][0] if lo["target_modules"] == ["all-linear"]
                      else lo["target_modules"], task_type="SEQ_CLS" if rm else "CAUSAL_LM",
                      modules_to_save=["score"] if rm else None)


def _trl_trainer(spec: dict, common: dict, tok, examples: list[dict], callbacks: list):
    """TRL's trainer for the spec's task on the pre-tokenised examples (its own tokenisation bypassed)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    kw = dict(processing_class=tok, callbacks=callbacks, peft_config=_trl_lora(spec))
    if spec["task"] == "sft":  # processed data: input_ids, and the completion mask TRL turns into labels
        ds = Dataset.from_list([{"input_ids": e["prompt_ids"] + e["completion_ids"],
                                 "completion_mask": [0] * len(e["prompt_ids"]) + [1] * len(e["completion_ids"])}
                                for e in sft_examples(examples)])
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
        args = trl.SFTConfig(completion_only_loss=True, packing=False, **common)
        return trl.SFTTrainer(model=model, args=args, train_dataset=ds, **kw)
    if spec["task"].startswith("dpo"):
        class PretokenizedDPOTrainer(trl.DPOTrainer):
            def _prepare_dataset(self, dataset, *args, **kwargs):  # the data is tokenised already
                return dataset

        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
        args = trl.DPOConfig(beta=spec["beta"], loss_type="sigmoid",
                             precompute_ref_log_probs=spec["task"] == "dpo_precomputed_ref",
                             precompute_ref_batch_size=spec["batch"], **common)
        return PretokenizedDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), **kw)
    ds = Dataset.from_list([{"chosen_ids": e["prompt_ids"] + e["chosen_ids"],
                             "rejected_ids": e["prompt_ids"] + e["rejected_ids"]} for e in examples])
    model = AutoModelForSequenceClassification.from_pretrained(spec["model_dir"], num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    args = trl.RewardConfig(center_rewards_coefficient=None, **common)
    return trl.RewardTrainer(model=model, args=args, train_dataset=ds, **kw)


def _trl_step_flops(trainer, batch: int) -> int | None:
    """FLOPs of one TRL forward+backward on the first batch of its own dataloader (no optimizer step)."""
    try:
        inputs = next(iter(trainer.get_train_dataloader()))
        inputs = trainer._prepare_inputs(inputs)
        model = trainer.model

        def fb():
            loss = trainer.compute_loss(model, inputs)
            loss.backward()

        flops, _ = count_flops(fb)
        model.zero_grad(set_to_none=True)
        return flops
    except Exception:  # noqa: BLE001 - a FLOP count is informative only
        return None


def main(argv=None) -> int:
    side, spec, out, clock = start_worker(argv)
    extra = (_ours if side == "ours" else _peer)(spec, clock)
    clock.final(out, **extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
