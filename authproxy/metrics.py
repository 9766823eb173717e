"""Prometheus metrics. Labels carry only fixed vocabularies: never a user name or a token."""

from __future__ import annotations

import bisect
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class DecisionStats(Collector):
    """Decisions by (scheme, outcome, reason) and their latency, counted in plain ints.

    Every decision is counted, so this is the hot path: prometheus-client's labelled
    Counter and Histogram take a lock and several calls per update, which costs more than
    a cached decision itself. Updates and scrapes both run on the event loop thread, so no
    lock is needed; the families are built at scrape time.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], float] = {}
        # per outcome: one count per bucket (+Inf last), then the sum of seconds
        self.latency: dict[str, list[float]] = {}

    def record(self, scheme: str, outcome: str, reason: str, seconds: float) -> None:
        key = (scheme, outcome, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        buckets = self.latency.get(outcome)
        if buckets is None:
            buckets = self.latency[outcome] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        buckets[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(
            "authproxy_decisions", "Decisions by scheme, outcome and reason.",
            labels=["scheme", "outcome", "reason"],
        )
        for key, count in sorted(self.counts.items()):
            counter.add_metric(list(key), count)
        yield counter
        histogram = HistogramMetricFamily(
            "authproxy_decision_seconds", "Time to decide, from request to response.",
            labels=["outcome"],
        )
        for outcome, buckets in sorted(self.latency.items()):
            cumulative, total = [], 0.0
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), buckets, strict=False):
                total += count
                cumulative.append((bound, total))
            histogram.add_metric([outcome], cumulative, sum_value=buckets[-1])
        yield histogram


class Metrics:
    """Every metric of one app, in its own registry (so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.decisions = DecisionStats()
        registry.register(self.decisions)
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
        self.jwks_fetches = Counter(
            "authproxy_jwks_fetches_total",
            "JWK Set loads by source (endpoint, file), trigger and outcome (ok or the failure).",
            ["source", "trigger", "outcome"], registry=registry,
        )
        self.jwks_age = Gauge(
            "authproxy_jwks_age_seconds",
            "Seconds since each source's key set was last loaded; +Inf before the first load.",
            ["source"], registry=registry,
        )
        self.jwks_keys = Gauge(
            "authproxy_jwks_keys", "Usable signing keys loaded, by source.",
            ["source"], registry=registry,
        )
        self.parse_errors = Counter(
            "authproxy_http_parse_errors_total",
            "Requests the HTTP parser refused, answered 401.", registry=registry,
        )

    def record_decision(self, scheme: str, outcome: str, reason: str, seconds: float) -> None:
        self.decisions.record(scheme, outcome, reason, seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
