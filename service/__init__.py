"""Enclave: the on-prem streaming chat service."""
