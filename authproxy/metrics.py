"""Prometheus metrics. Labels carry only fixed vocabularies: never a user name or a token."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """Every metric of one app, in its own registry (so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.decisions = Counter(
            "authproxy_decisions_total", "Decisions by scheme, outcome and reason.",
            ["scheme", "outcome", "reason"], registry=registry,
        )
        self.decision_seconds = Histogram(
            "authproxy_decision_seconds", "Time to decide, from request to response.",
            ["outcome"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.hash_seconds = Histogram(
            "authproxy_password_hash_seconds", "Time of one password hash verification.",
            ["scheme"], buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.cache = Counter(
            "authproxy_cache_lookups_total", "Credential cache lookups by cache and result.",
            ["cache", "result"], registry=registry,
        )
        self.bans_in_force = Gauge(
            "authproxy_bans_in_force", "User names and client addresses banned right now.",
            registry=registry,
        )
        self.user_reloads = Counter(
            "authproxy_user_table_reloads_total", "User table reloads by outcome.",
            ["outcome"], registry=registry,
        )
        self.parse_errors = Counter(
            "authproxy_http_parse_errors_total",
            "Requests the HTTP parser refused, answered 401.", registry=registry,
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
