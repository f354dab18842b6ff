"""TRL's side of benchmarks/peers/grpo_vs_trl.py, and the reward function both sides use.

Runs in the TRL venv with reins not importable (benchmarks/interop/peer.py starts it):
    python grpo_vs_trl_side.py SPEC.json
GRPOTrainer (TRL 1.16) on the spec's prompt file, with TRL's own generation path (`model.generate` on the
prompts repeated num_generations times). One trainer step = one generation batch = one optimizer step. The
trainer waits on stdin before each step ("iter"), and after it prints one line `@@BENCH {json}` with the step's
CPU seconds (this process's) and wall seconds (total; generation = `_generate`; scoring = the rest of
`_generate_and_score_completions`: rewards, advantages, padding; update = the rest: forward, backward,
optimizer; and generation's CPU seconds), the completions and generated tokens, and TRL's logged reward and loss.

`arithmetic_reward` has TRL's reward signature; reins loads it as `grpo_vs_trl_side:arithmetic_reward`.
"""

from __future__ import annotations

import json
import re
import sys
import time

PREFIX = "@@BENCH "
_PROBLEM = re.compile(r"What is (-?\d+)\+(-?\d+)\?")
_INT = re.compile(r"-?\d+")
_BARE_INT = re.compile(r"\s*-?\d+\s*")


def _text(x) -> str:
    """A standard prompt/completion's text, or a conversational one's last message."""
    return x[-1]["content"] if isinstance(x, list) else x


def arithmetic_reward(prompts, completions, **kwargs) -> list[float]:
    """1.0 when the completion's last integer is the prompt's a + b, plus 0.1 when it is a bare integer (the
    weights of recipes/grpo/smollm2-135m-arithmetic.yaml's exact-match and format rewards)."""
    out = []
    for p, c in zip(prompts, completions):
        m, text = _PROBLEM.search(_text(p)), _text(c)
        found = _INT.findall(text)
        right = m is not None and bool(found) and int(found[-1]) == int(m.group(1)) + int(m.group(2))
        out.append(float(right) + 0.1 * float(_BARE_INT.fullmatch(text) is not None))
    return out


def emit(**msg) -> None:
    sys.__stdout__.write(PREFIX + json.dumps(msg) + "\n")
    sys.__stdout__.flush()


def release_memory() -> None:
    """Hand freed heap back to the OS between timed iterations (untimed), so that the idle sides of the
    rotation do not hold an update's peak while another side runs."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)


def _timed(obj, name: str, into: dict) -> None:
    """Wrap the bound method `obj.name` so that its seconds add up in `into[name]` (its CPU seconds, this
    process's, in `into[name + "_cpu"]`)."""
    fn = getattr(obj, name)

    def wrapper(*a, **kw):
        t, c = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **kw)
        finally:
            into[name] = into.get(name, 0.0) + time.perf_counter() - t
            into[name + "_cpu"] = into.get(name + "_cpu", 0.0) + time.process_time() - c

    setattr(obj, name, wrapper)


def build(spec: dict):
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    rows = [json.loads(line) for line in open(spec["prompts"]) if line.strip()]
    n, G = len(rows), spec["num_generations"]
    args = GRPOConfig(
        output_dir=spec["trl_output_dir"], per_device_train_batch_size=n * G, gradient_accumulation_steps=1,
        steps_per_generation=1, num_generations=G, max_completion_length=spec["max_new_tokens"],
        temperature=spec["temperature"], top_p=1.0, top_k=0, learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=spec["max_grad_norm"],
        beta=0.0, epsilon=spec["epsilon"], loss_type="dapo", scale_rewards="group", num_iterations=1,
        mask_truncated_completions=False, max_steps=spec["iterations"], logging_steps=1, save_strategy="no",
        report_to="none", bf16=bool(spec.get("trl_bf16")), gradient_checkpointing=True, seed=spec["seed"], use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, log_completions=False)
    lora = LoraConfig(r=spec["lora_r"], lora_alpha=spec["lora_alpha"], lora_dropout=0.0,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(spec["model"])
    return GRPOTrainer(model=model, reward_funcs=arithmetic_reward, args=args,
                       train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in rows]),
                       processing_class=tok, peft_config=lora)


def main(spec_path: str) -> None:
    spec = json.loads(open(spec_path).read())
    import torch

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    import transformers
    import trl
    from transformers import TrainerCallback

    trainer = build(spec)
    secs: dict = {}
    _timed(trainer, "_generate", secs)
    _timed(trainer, "_generate_and_score_completions", secs)
    n = trainer.args.per_device_train_batch_size
    clock = {}

    class Protocol(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            sys.stdin.readline()   # "iter": the driver's turn for this side
            secs.clear()
            clock["t0"], clock["c0"] = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kw):
            clock["t1"], clock["c1"] = time.perf_counter(), time.process_time()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs is None or "loss" not in logs:
                return
            total, gs = clock["t1"] - clock["t0"], secs.get("_generate_and_score_completions", 0.0)
            gen = secs.get("_generate", 0.0)
            emit(event="iter", seconds=total, cpu_s=clock["c1"] - clock["c0"], generation_s=gen, scoring_s=gs - gen,
                 generation_cpu_s=secs.get("_generate_cpu", 0.0),
                 update_s=total - gs,
                 completions=n, tokens=round(logs["completions/mean_length"] * n), reward=logs["reward"],
                 loss=logs["loss"], mean_length=logs["completions/mean_length"],
                 clipped_ratio=logs.get("completions/clipped_ratio"))
            release_memory()

    trainer.add_callback(Protocol())
    emit(event="ready", versions={"trl": trl.__version__, "transformers": transformers.__version__,
                                  "torch": torch.__version__})
    trainer.train()
    emit(event="final")


if __name__ == "__main__":
    main(sys.argv[1])
