"""LoRA adapters: the registry, and tuning/ (QA pairs, training, evaluation)."""
