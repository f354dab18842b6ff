"""Pieces every LM stage shares: the run directory across processes, eval prompts, evaluation of held-out
examples with a stage's own loss, and broadcasting the final metrics."""

from __future__ import annotations

from pathlib import Path

import torch

from pipelines.data import BUILTIN, BUILTIN_CHAT, load_records, normalise_prompts
from reins.runio import METRICS_FILE, RunDir, seed_everything


def quiet_libraries(quiet: bool) -> None:
    """Silence transformers'/datasets' own progress bars when the run is quiet or not on a terminal."""
    import sys

    if quiet or not sys.stderr.isatty():
        import datasets
        import transformers

        transformers.utils.logging.disable_progress_bar()
        datasets.disable_progress_bars()


def open_run(cfg, accelerator, *, n_train: int | None = None) -> RunDir:
    """The RunDir on every process; the main process creates (and validates) it first.

    Called once a stage's inputs are validated, so that bad input writes nothing; `n_train` (the training
    examples) is checked against the batch size here too, the last input check before the directory exists.
    """
    if n_train is not None:
        from pipelines.trainer import check_batch_size

        check_batch_size(cfg, n_train, accelerator.num_processes)
    run = RunDir(cfg.output_dir, cfg, quiet=cfg.quiet) if accelerator.is_main_process else None
    accelerator.wait_for_everyone()
    if run is None:
        run = RunDir(cfg.output_dir, cfg, quiet=True)
    return run


def log_start(run, acc, trainer, model, data: dict) -> None:
    """Step 0's row of a fresh run (a resumed one has it already): the model's parameter counts and `data`, the
    stage's data counts."""
    from pipelines.models import count_parameters

    if acc.is_main_process and trainer.resumed_from == 0:
        total, trainable = count_parameters(model)
        run.log(0, {"model/parameters": total, "model/trainable": trainable, **data})


def start_lm_stage(cfg):
    """Seed, quiet the libraries and make the accelerator; also return a finished run's metrics (else None)."""
    from pipelines.sharded import check_launch, sharding
    from pipelines.trainer import make_accelerator

    seed_everything(cfg.seed)
    quiet_libraries(cfg.quiet)
    acc = make_accelerator(cfg)
    stage = type(cfg).__module__.rsplit(".", 1)[-1]
    check_launch(sharding(acc), stage, lora=getattr(cfg, "lora", None) is not None,
                 generates=stage in ("ppo", "grpo") or getattr(cfg, "eval_prompts", None) not in (None, "", "none"))
    done = None
    if (Path(cfg.output_dir) / METRICS_FILE).is_file():
        done = open_run(cfg, acc).completed_metrics()
    return acc, done


def eval_prompts(source: str | None, n: int, split: str = "test") -> list:
    """Prompts for the shared LM evaluation: the built-in task's held-out openings, or a prompt-only file."""
    if source in (None, "", "none"):
        return []
    if source in (BUILTIN, BUILTIN_CHAT):
        from pipelines.task import as_chat, sentiment_prompts

        prompts = sentiment_prompts(n, seed=0, split="eval")
        return [as_chat(p) for p in prompts] if source == BUILTIN_CHAT else prompts
    rows, where = load_records(source, split)
    return normalise_prompts(rows, where)[:n]


def broadcast_metrics(accelerator, metrics: dict | None) -> dict:
    """The main process's final metrics on every process."""
    if accelerator.num_processes == 1:
        return metrics or {}
    from accelerate.utils import broadcast_object_list

    box = [metrics if accelerator.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


@torch.no_grad()
def evaluate_examples(model, loss_fn, examples: list, *, batch_size: int, count_fn, prefix: str = "eval/") -> dict:
    """Means of a stage's loss_fn stats over held-out examples (single process, no gradient)."""
    was = model.training
    model.eval()
    denom = float(sum(count_fn(e) for e in examples))
    sums: dict[str, list] = {}
    for s in range(0, len(examples), batch_size):
        _, st = loss_fn(model, examples[s:s + batch_size], denom)
        for k, v in st.items():
            if v[0] == "mean":
                acc = sums.setdefault(k, ["mean", 0.0, 0.0])
                acc[1] += float(v[1])
                acc[2] += float(v[2])
            else:
                acc = sums.setdefault(k, [v[0], float(v[1])])
                acc[1] = min(acc[1], float(v[1])) if v[0] == "min" else max(acc[1], float(v[1]))
    model.train(was)
    return {prefix + k: (v[1] / max(v[2], 1e-12) if v[0] == "mean" else v[1]) for k, v in sums.items()}


def lm_evaluate_fn(trainer, loss_fn, eval_examples: list, *, batch_size: int, count_fn, evaluator=None):
    """The evaluation an LM stage runs every `eval_every` steps and at the end: its own loss statistics on the
    held-out examples, plus the shared policy evaluation (gold reward, KL, win rate, samples) when given."""

    def evaluate() -> dict:
        m = {}
        if eval_examples:
            m.update(evaluate_examples(trainer.unwrapped, loss_fn, eval_examples, batch_size=batch_size,
                                       count_fn=count_fn))
        if evaluator is not None:
            gm, samples = evaluator(trainer.unwrapped)
            m.update(gm)
            m["eval/samples"] = samples  # logged, never a final metric
        return m

    return evaluate


def train_and_finish(trainer, run: RunDir, accelerator, tok, evaluate, *, eval_every: int, stage: str,
                     export=lambda model: model) -> dict:
    """Train with periodic evaluation, then save `export(model)`, evaluate once more and write metrics.json
    (and the model card, which shows the final metrics)."""
    from pipelines.model_card import write_model_card
    from pipelines.models import chat_template_trained, save_model
    from pipelines.sharded import model_state_dict, sharding

    # A sharded model's forward is a collective: every process evaluates (the same examples), the main one logs.
    every = sharding(accelerator) is not None

    def on_step(step: int, metrics: dict) -> None:
        if step < trainer.total_steps and (accelerator.is_main_process or every):
            ev = evaluate()
            if accelerator.is_main_process:
                run.log(step, ev)

    last = trainer.train(on_step, every=eval_every) if eval_every else trainer.train()
    final = None
    full = model_state_dict(accelerator, trainer.model)  # every process gathers under FSDP (None otherwise)
    if accelerator.is_main_process:
        save_model(export(trainer.unwrapped), tok, run.path / "model", state_dict=full)
    ev = evaluate() if accelerator.is_main_process or every else None
    if accelerator.is_main_process:
        run.log(trainer.step, ev)
        metrics = {**{f"train/{k}": v for k, v in last.items()},
                   **{k: v for k, v in ev.items() if k != "eval/samples"}, "steps": trainer.step}
        # The card before metrics.json: metrics.json is written last (its presence means complete), so a run
        # killed in between is finished by the rerun instead of being left without its card.
        write_model_card(run.path / "model", stage=stage, config=run.config, metrics=metrics,
                         chat_trained=chat_template_trained(tok), run_dir=run.path)
        final = run.finish(metrics)
    accelerator.wait_for_everyone()
    return broadcast_metrics(accelerator, final)
