"""Prometheus metrics of one server (``GET /metrics``), through the official client library.

Each app gets its own :class:`~prometheus_client.CollectorRegistry`, so two servers in one
process (tests) never share counters, and the text format is the library's own.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    """Requests by endpoint and status, tokens and latency by model, requests pending."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "specialize_requests", "HTTP requests answered", ["endpoint", "status"], registry=r
        )
        self.prompt_tokens = Counter(
            "specialize_prompt_tokens", "Prompt tokens read", ["model"], registry=r
        )
        self.completion_tokens = Counter(
            "specialize_completion_tokens", "Tokens generated", ["model"], registry=r
        )
        self.latency = Histogram(
            "specialize_request_seconds",
            "Time from accepting a generation request to its last token",
            ["model", "endpoint"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.pending = Gauge(
            "specialize_pending_requests", "Generation requests accepted, not yet answered",
            registry=r,
        )  # fmt: skip
        self.rejected = Counter(
            "specialize_rejected", "Requests refused before generation", ["reason"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
