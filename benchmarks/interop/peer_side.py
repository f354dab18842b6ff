"""What the peer-side scripts (*_side.py) share. Like them it runs in the peer's Python with reins not importable
(peer.py puts this directory on sys.path) and imports only the peer libraries: the check that reins is out of
reach, Minari episodes as a d3rlpy dataset, evaluation episodes of a d3rlpy policy, and a TRL trainer's inputs,
common arguments, log capture and result file."""

from __future__ import annotations

import json
import tempfile

OURS = ("reins", "pipelines", "pgcore", "online", "offline", "rl")


def refuse_reins() -> None:
    """Exit when any of reins' packages is importable here: the comparison would then prove nothing."""
    for name in OURS:
        try:
            __import__(name)
        except ModuleNotFoundError:
            continue
        raise SystemExit(f"{name} is importable: the comparison would prove nothing")


# ----------------------------------------------------------------------------------------- d3rlpy
def to_mdp(dataset):
    """Minari episodes (T+1 observations each) as d3rlpy's MDPDataset (T transitions, terminal / timeout flags)."""
    import d3rlpy
    import numpy as np

    obs, act, rew, term, trunc = [], [], [], [], []
    for ep in dataset.iterate_episodes():
        obs.append(ep.observations[:-1])
        act.append(ep.actions)
        rew.append(ep.rewards)
        term.append(ep.terminations)
        t = np.asarray(ep.truncations).copy()
        t[-1] = t[-1] or not ep.terminations[-1]  # every episode ends in one of the two
        trunc.append(t)
    cat = np.concatenate
    return d3rlpy.dataset.MDPDataset(cat(obs).astype(np.float32), cat(act).astype(np.float32),
                                     cat(rew).astype(np.float32), cat(term).astype(np.float32),
                                     cat(trunc).astype(np.float32), action_space=d3rlpy.ActionSpace.CONTINUOUS)


def episode_returns(algo, env, reset_seeds: list[int]) -> list[float]:
    """The return of one episode of `algo`'s deterministic policy per reset seed."""
    import numpy as np

    returns = []
    for seed in reset_seeds:
        o, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            a = algo.predict(np.asarray(o, dtype=np.float32)[None])[0]
            o, r, term, trunc, _ = env.step(a)
            total += float(r)
            done = term or trunc
        returns.append(total)
    return returns


# ----------------------------------------------------------------------------------------- TRL
def trl_inputs(spec: dict):
    """(tokenizer, policy, training data) from the spec's model_dir and data, float32, after seeding torch."""
    import torch
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(spec["seed"])
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    return tok, model, load_dataset("json", data_files=spec["data"], split="train")


def trl_common_args(spec: dict) -> dict:
    """The training arguments both sides are run with: constant LR without warm-up or weight decay, max grad norm
    1, the spec's batch and steps, one process on the CPU in float32, a log line every step, nothing saved."""
    return dict(output_dir=tempfile.mkdtemp(prefix="trl-interop-"), beta=spec["beta"],
                learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
                max_grad_norm=1.0, max_steps=spec["steps"], per_device_train_batch_size=spec["batch"],
                gradient_accumulation_steps=1, max_length=spec["max_length"], logging_steps=1, save_strategy="no",
                eval_strategy="no", report_to="none", use_cpu=True, seed=spec["seed"], dataloader_num_workers=0,
                disable_tqdm=True, bf16=False, fp16=False, gradient_checkpointing=False)


def trl_log(rows: list[dict], row):
    """A TrainerCallback that appends {"step": ..., **row(logs)} to `rows` for every training log line."""
    from transformers import TrainerCallback

    class Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                rows.append({"step": state.global_step, **row(logs)})

    return Log()


def write_trl_result(out_path: str, rows: list[dict], counts: dict) -> None:
    """The logged rows, `counts` (of the data) and the library versions as the side's JSON result."""
    import torch
    import transformers
    import trl

    with open(out_path, "w") as f:
        json.dump({"rows": rows, **counts, "versions": {"torch": torch.__version__, "trl": trl.__version__,
                                                         "transformers": transformers.__version__}}, f)
