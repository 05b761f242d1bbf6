"""From documents to an adapter: QA pairs, peft training, evaluation."""
