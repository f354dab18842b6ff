"""PPO-RLHF throughput of reins (pipelines/ppo.py) alone: TRL removed its PPO trainer (PR
trl#7020), so there is no maintained peer. Reported: generated tokens/s of the rollout phase (KV-cached sampling plus
policy/reference/value/reward scoring), optimizer steps/s of the update phase, and the fraction of the
machine's measured matmul ceiling each phase reaches (FLOPs counted by torch on one iteration).

A step is one PPO iteration of the stage's own functions: `rollout(...)` on `batch_size` built-in sentiment
prompts, then `ppo_update(...)` (`ppo_epochs` x `num_minibatches` optimizer steps), with the tiny Llama as
policy, frozen reference copy, and an (untrained) reward model of the same architecture that also initialises
the value model (`value_model: reward`). Final loss: the mean PPO value loss over the last block (the
clipped-surrogate loss is ~0 by construction with whitened advantages, so it shows nothing).
"""

from __future__ import annotations

import time
from pathlib import Path

from benchmarks.common import BlockClock, count_flops, fmt, start_worker

SIZES = {
    "small": {"batch": 8, "new_tokens": 16, "ppo_epochs": 1, "minibatches": 1, "warmup": 1, "blocks": 2,
              "block_steps": 2},
    "full": {"batch": 32, "new_tokens": 32, "ppo_epochs": 4, "minibatches": 1, "warmup": 1, "blocks": 4,
             "block_steps": 3},
}
THREADS = "all"
MODEL = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 384}  # pipelines `tiny`


def prepare(size: str, workdir: Path, threads: int, device: str, seed: int = 0) -> list[dict]:
    from pipelines.models import ModelArgs, TinySpec, load_causal_lm, load_reward_model, load_tokenizer

    cfg = SIZES[size]
    tok = load_tokenizer(ModelArgs())
    policy_dir, rm_dir = workdir / "ppo-policy", workdir / "ppo-reward"
    args = ModelArgs(tiny=TinySpec(**MODEL))
    load_causal_lm(args, tok, seed=seed).save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    load_reward_model(args, tok, seed=seed + 1).save_pretrained(rm_dir)
    tok.save_pretrained(rm_dir)
    spec = {"name": "ppo_rlhf/tiny", "policy_dir": str(policy_dir), "reward_dir": str(rm_dir), "batch": cfg["batch"],
            "new_tokens": cfg["new_tokens"], "ppo_epochs": cfg["ppo_epochs"], "minibatches": cfg["minibatches"],
            "threads": threads, "device": device, "seed": seed, "warmup": cfg["warmup"]}
    return [{"spec": spec, "blocks": cfg["blocks"], "block_steps": cfg["block_steps"], "items_per_step": 1,
             "unit": "iterations/s", "target": None, "peer": None, "venv": None,
             "size_desc": f"tiny Llama, {cfg['batch']} prompts x {cfg['new_tokens']} new tokens, "
                          f"{cfg['ppo_epochs']} epochs x {cfg['minibatches']} minibatch(es)"}]


def make_rows(cmp: dict, finals: list[dict], ceiling: float) -> list[dict]:
    """Two rows (rollout tokens/s, update optimizer steps/s) from the worker's phase timings."""
    f = finals[0]
    ph = f["phases"]
    rows = []
    for key, unit, items in (("rollout", "generated tokens/s", ph["tokens"]),
                             ("update", "optimizer steps/s", ph["optimizer_steps"])):
        sec = ph[f"{key}_s"]
        fl = f.get(f"{key}_flops_per_iter")
        rows.append({"benchmark": f"{cmp['spec']['name']}/{key}", "size": cmp["size_desc"], "unit": unit,
                     "ours": items / sec if sec else None, "peer": None, "ratio": None,
                     "target": "no maintained peer", "loss_ours": f.get("final_loss") if key == "update" else None,
                     "rss_ours_mb": f.get("peak_rss_mb"),
                     "gflop_per_step": (fl / ph["per_iter_" + ("optimizer_steps" if key == "update" else "iters")])
                     / 1e9 if fl else None,
                     "ceiling_frac_ours": 100.0 * fl * ph["iters"] / sec / (ceiling * 1e9) if fl and sec else None})
    return rows


def _build_ours(spec: dict):
    """reins' PPO pieces as `pipelines.ppo` builds them: config, accelerator, prepared model and optimiser, the
    models bundle and the prompts."""
    from pipelines import ppo
    from pipelines.generation import GenerationArgs
    from pipelines.models import load_tokenizer
    from pipelines.rlhf_models import build_models, load_reward
    from pipelines.sampling import load_stage_prompts
    from pipelines.trainer import make_accelerator

    cfg = ppo.Config(model=spec["policy_dir"], reward_model=spec["reward_dir"], value_model="reward",
                     batch_size=spec["batch"], ppo_epochs=spec["ppo_epochs"], num_minibatches=spec["minibatches"],
                     generation=GenerationArgs(max_new_tokens=spec["new_tokens"], temperature=1.0,
                                               batch_size=spec["batch"]),
                     learning_rate=3e-6, cpu=spec["device"] == "cpu", seed=spec["seed"])
    acc = make_accelerator(cfg)
    tok = load_tokenizer(cfg)
    prompts, prompt_ids, *_ = load_stage_prompts(cfg, tok)
    rm, rm_tok, same = load_reward(cfg, tok)
    ac, reference = build_models(cfg, tok, same_tok=same, reward_path=spec["reward_dir"])
    ac.to(acc.device)
    rm.to(acc.device)
    if reference.model is not None:
        reference.model.to(acc.device)
    optimizer = ppo._optimizer(cfg, ac)
    model, optimizer = acc.prepare(ac, optimizer)
    models = ppo.Models(tok, acc.unwrap_model(model), model, reference, rm, rm_tok, same)
    return cfg, acc, model, optimizer, models, prompts, prompt_ids


def _ours(spec: dict, clock: BlockClock) -> dict:
    import torch

    from pipelines import ppo
    from pipelines.prompts import iteration_prompts

    cfg, acc, model, optimizer, models, prompts, prompt_ids = _build_ours(spec)
    timings: list[tuple[int, float, float, float]] = []  # (tokens, rollout s, update s, policy loss)
    it = [0]

    def iteration():
        step = it[0]
        idx = iteration_prompts(len(prompts), cfg.batch_size, step, cfg.seed)
        t0 = time.perf_counter()
        data, m, _ = ppo.rollout(cfg, models, [prompts[i] for i in idx], [prompt_ids[i] for i in idx],
                                 kl_coef=cfg.kl_coef, seed=step, reduce=lambda t: t)
        t1 = time.perf_counter()
        g = torch.Generator().manual_seed(step + 1)
        u = ppo.ppo_update(cfg, model, optimizer, acc, data, generator=g)
        t2 = time.perf_counter()
        it[0] += 1
        return m["rollout/tokens"], t1 - t0, t2 - t1, u["loss/value"]

    # FLOPs of each phase, counted on one untimed iteration
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc_roll:
        idx = iteration_prompts(len(prompts), cfg.batch_size, 0, cfg.seed)
        data, _, _ = ppo.rollout(cfg, models, [prompts[i] for i in idx], [prompt_ids[i] for i in idx],
                                 kl_coef=cfg.kl_coef, seed=0, reduce=lambda t: t)
    upd_flops, _ = count_flops(ppo.ppo_update, cfg, model, optimizer, acc, data,
                               generator=torch.Generator().manual_seed(1))

    clock.start()
    while clock.running:
        tokens, tr, tu, loss = iteration()
        timings.append((tokens, tr, tu, loss))
        clock.record_loss(loss)
        clock.tick()
    timed = timings[spec["warmup"]:]
    opt_steps = cfg.ppo_epochs * cfg.num_minibatches
    phases = {"iters": len(timed), "tokens": sum(t[0] for t in timed), "rollout_s": sum(t[1] for t in timed),
              "update_s": sum(t[2] for t in timed), "optimizer_steps": opt_steps * len(timed),
              "per_iter_optimizer_steps": opt_steps, "per_iter_iters": 1}
    print(f"[ppo] {fmt(phases['tokens'] / max(phases['rollout_s'], 1e-9))} generated tokens/s", flush=True)
    return {"phases": phases, "rollout_flops_per_iter": int(fc_roll.get_total_flops()),
            "update_flops_per_iter": upd_flops, "flops_per_step": int(fc_roll.get_total_flops()) + upd_flops,
            "versions": {"torch": torch.__version__}}


def main(argv=None) -> int:
    side, spec, out, clock = start_worker(argv)
    extra = _ours(spec, clock)
    clock.final(out, **extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
