"""Enclave's knowledge base: load, chunk, embed, index and search documents."""
