"""Prometheus metrics, one registry per app so test apps never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "enclave_chat_requests", "Chat requests by transport", ["transport"], registry=self.registry
        )
        self.routes = Counter("enclave_route_decisions", "Route decisions", ["route"], registry=self.registry)
        self.errors = Counter("enclave_errors", "Errors by code", ["code"], registry=self.registry)
        self.active = Gauge("enclave_active_streams", "Streams in progress", registry=self.registry)
        self.ttft = Histogram(
            "enclave_time_to_first_token_seconds",
            "Time from request to first token",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32),
            registry=self.registry,
        )
        self.tokens_per_second = Histogram(
            "enclave_tokens_per_second",
            "Decode rate per answer",
            buckets=(1, 2, 5, 10, 20, 40, 80, 160, 320),
            registry=self.registry,
        )
        self.grounding_seconds = Histogram(
            "enclave_grounding_seconds",
            "Checking a document answer's sentences against its passages",
            buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
            registry=self.registry,
        )
        self.completion_tokens = Counter("enclave_completion_tokens", "Tokens generated", registry=self.registry)
        self.feedback = Counter(
            "enclave_feedback",
            "Ratings of answers (each rating given, a changed one counted again); adapter and collection '' if none",
            ["rating", "route", "collection", "adapter"],
            registry=self.registry,
        )
