"""The `enclave` command."""
