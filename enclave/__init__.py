"""Enclave: on-prem streaming chat — RAG, LoRA adapters, routing and moderation inside your VPC."""
