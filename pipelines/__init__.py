"""pipelines: language-model stages (sft, reward, dpo, ppo) on transformers/datasets/accelerate, and the runner.

Stages (each `train(cfg) -> metrics` + `main`): sft.py, preferences.py, reward_model.py (the `reward`
stage), dpo.py, kto.py, fetch_model.py, ppo.py, grpo.py.
Shared pieces they are built from:
    task.py        the built-in "sentiment" task: seeded review corpus, prompts, VADER gold judge
    models.py      tokenizer/model loading: path, Hub id, `tiny`, `smollm2-135m-instruct`; LoRA, dtype, checkpointing
    data.py        TRL-format loading, validation (DataError naming file/row/field), exact prompt/completion ids
    unpaired.py    TRL's unpaired (KTO) format: validation, unpairing of preference pairs, tokenisation
    scoring.py     padded batches, sequence log-probs, reward-model scores, the reference policy
    reference.py   dpo/kto: reference-model and generation-eval config fields, building the reference, cache keys
    generation.py  seeded batched sampling truncated after EOS
    evaluation.py  eval/gold_reward, eval/kl_to_ref, eval/win_rate_vs_ref, eval/reward_model_score
    trainer.py     the accelerate training loop: global-batch normalisation, checkpoint/resume, NaN stop
    rlhf_models.py policy, reference, value and reward models of ppo/grpo (ActorCritic, build_policy)
    rollout.py     rollout tensors of ppo/grpo: batch layout, reward-model scores, KL-shaped rewards, advantages
    reward_funcs.py  grpo/ppo `reward_funcs`: builtin verifiable rewards, reward models, user callables
    common.py      run directory across processes, eval prompts, held-out evaluation, metric broadcast
"""
