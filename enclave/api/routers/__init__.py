"""Transports parse, authenticate and encode; they never know which backend answered."""
