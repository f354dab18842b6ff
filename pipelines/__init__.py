"""pipelines: language-model stages (sft, reward, dpo, ppo) on transformers/datasets/accelerate, and the runner."""
