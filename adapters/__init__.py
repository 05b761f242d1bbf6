"""LoRA adapters: datasets, training, evaluation, registry and the local model server."""
