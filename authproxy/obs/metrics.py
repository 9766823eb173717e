"""Prometheus metrics. Labels carry only fixed vocabularies: never a user name or a token.

With several worker processes (server.workers > 1) every process writes its values to files
in a directory shared with its siblings (prometheus-client's multiprocess mode, chosen by
PROMETHEUS_MULTIPROC_DIR when prometheus_client is first imported: the supervisor sets it before
any process imports it), and any worker's /metrics adds them all up. Counters and histograms
are summed; gauges say in ``multiprocess_mode`` how live processes' values combine.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# (name, documentation, labels) of the metrics counted per decision: exposed by
# DecisionStats in one process, kept in the shared files by SharedDecisions with several.
class _Family(NamedTuple):
    name: str
    doc: str
    labels: tuple[str, ...]


DECISIONS = _Family("authproxy_decisions", "Decisions by scheme, outcome and reason.",
                    ("scheme", "outcome", "reason"))
DECISION_SECONDS = _Family("authproxy_decision_seconds",
                           "Time to decide, from request to response.", ("outcome",))
CACHE_LOOKUPS = _Family("authproxy_cache_lookups",
                        "Credential cache lookups by cache and result.", ("cache", "result"))


class Tally:
    """One count in a plain int (see DecisionStats)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class DecisionStats(Collector):
    """Decisions by (scheme, outcome, reason) and their latency, and credential cache
    lookups by (cache, result), counted in plain ints.

    Every decision is counted, so this is the hot path: prometheus-client's labelled
    Counter and Histogram take a lock and several calls per update, which costs more than
    a cached decision itself. Updates and scrapes both run on the event loop thread, so no
    lock is needed; the families are built at scrape time.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], float] = {}
        # per outcome: one count per bucket (+Inf last), then the sum of seconds
        self.latency: dict[str, list[float]] = {}
        self.lookups: dict[tuple[str, str], Tally] = {}

    def lookup_tally(self, cache: str, result: str) -> Tally:
        return self.lookups.setdefault((cache, result), Tally())

    def record(self, scheme: str, outcome: str, reason: str, seconds: float) -> None:
        key = (scheme, outcome, reason)
        self.counts[key] = self.counts.get(key, 0) + 1
        buckets = self.latency.get(outcome)
        if buckets is None:
            buckets = self.latency[outcome] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        buckets[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily(DECISIONS.name, DECISIONS.doc, labels=DECISIONS.labels)
        for key, count in sorted(self.counts.items()):
            counter.add_metric(list(key), count)
        yield counter
        histogram = HistogramMetricFamily(DECISION_SECONDS.name, DECISION_SECONDS.doc,
                                          labels=DECISION_SECONDS.labels)
        for outcome, buckets in sorted(self.latency.items()):
            cumulative, total = [], 0.0
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), buckets, strict=False):
                total += count
                cumulative.append((bound, total))
            histogram.add_metric([outcome], cumulative, sum_value=buckets[-1])
        yield histogram
        lookups = CounterMetricFamily(CACHE_LOOKUPS.name, CACHE_LOOKUPS.doc,
                                      labels=CACHE_LOOKUPS.labels)
        for lookup, tally in sorted(self.lookups.items()):
            lookups.add_metric(list(lookup), tally.value)
        yield lookups


class SharedDecisions:
    """Multi-worker mode: DecisionStats' counts, added to shared-file metrics by :meth:`flush`.

    Decisions are still counted in DecisionStats' dicts; once a second the increments since
    the last flush go to a multiprocess Counter and Histogram, so a decision costs no more
    than with one process.
    """

    def __init__(self, stats: DecisionStats) -> None:
        self._stats = stats
        # Not registered anywhere: in multiprocess mode, values live in the shared files.
        self._total = Counter(*DECISIONS, registry=None)
        self._seconds = Histogram(*DECISION_SECONDS, buckets=LATENCY_BUCKETS, registry=None)
        self._lookups = Counter(*CACHE_LOOKUPS, registry=None)
        self._sent_counts: dict[tuple[str, str, str], float] = {}
        self._sent_latency: dict[str, list[float]] = {}
        self._sent_lookups: dict[tuple[str, str], int] = {}

    def flush(self) -> None:
        for key, count in list(self._stats.counts.items()):
            delta = count - self._sent_counts.get(key, 0)
            if delta:
                self._total.labels(*key).inc(delta)
                self._sent_counts[key] = count
        for outcome, buckets in list(self._stats.latency.items()):
            sent = self._sent_latency.setdefault(outcome, [0.0] * len(buckets))
            deltas = [now - before for now, before in zip(buckets, sent, strict=True)]
            if any(deltas):
                _add_observations(self._seconds.labels(outcome), deltas[:-1], deltas[-1])
                sent[:] = buckets
        for lookup, tally in list(self._stats.lookups.items()):
            delta = tally.value - self._sent_lookups.get(lookup, 0)
            if delta:
                self._lookups.labels(*lookup).inc(delta)
                self._sent_lookups[lookup] = tally.value


def _add_observations(histogram: Histogram, bucket_counts: list[float], total: float) -> None:
    """Add ``bucket_counts[i]`` observations to bucket i (non-cumulative, +Inf last) and
    ``total`` seconds to the sum. prometheus-client has no public call for this, and calling
    observe() once per decision is the cost SharedDecisions exists to avoid; ``_buckets`` and
    ``_sum`` have had this shape since 0.4, and tests/test_workers.py reads the result."""
    histogram._sum.inc(total)
    for value, count in zip(histogram._buckets, bucket_counts, strict=True):
        if count:
            value.inc(count)


def _sample(gauge: Gauge) -> None:
    """Write the values of a gauge's functions (set_function) into its shared-file values:
    in multiprocess mode, prometheus-client never calls the functions itself."""
    for family in gauge.collect():
        for sample in family.samples:
            (gauge.labels(**sample.labels) if sample.labels else gauge).set(sample.value)


# Reasons the metrics must not tell apart (SPEC §8.1 rule 7): one scrape would tell whether a
# guessed user-id exists. The decision log still does, for the operator.
_METRIC_REASONS = {"unknown_user": "bad_credentials", "bad_password": "bad_credentials"}


class Metrics:
    """Every metric of one app, in its own registry (so tests can build many apps).

    ``multiprocess_dir``: the shared directory of multi-worker mode (see the module
    docstring); then :meth:`flush` must run about once a second.
    """

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self.registry = registry = CollectorRegistry()
        self.decisions = DecisionStats()
        registry.register(self.decisions)
        self.hash_seconds = Histogram(
            "authproxy_password_hash_seconds", "Time of one password hash verification.",
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.bans_in_force = Gauge(
            "authproxy_bans_in_force",
            "User names and client addresses banned right now (with several workers, which "
            "share their bans: the most that any one worker holds).",
            registry=registry, multiprocess_mode="livemax",
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
            ["source"], registry=registry, multiprocess_mode="livemax",  # the oldest in use
        )
        self.jwks_keys = Gauge(
            "authproxy_jwks_keys", "Usable signing keys loaded, by source.",
            ["source"], registry=registry, multiprocess_mode="livemin",  # the fewest in use
        )
        self.parse_errors = Counter(
            "authproxy_http_parse_errors_total",
            "Requests the HTTP parser refused, answered 401.", registry=registry,
        )
        self.invalid_policies = Counter(
            "authproxy_invalid_policy_total",
            "Requests refused (403) because the location's policy is invalid, by problem "
            "(unknown_key, empty_value, empty_item, repeated_key, unknown_scheme, not_utf8, "
            "too_long). The policy itself is logged once, never a label.",
            ["problem"], registry=registry,
        )
        self.worker_restarts = Counter(
            "authproxy_worker_restarts_total",
            "Worker processes restarted by the supervisor, by reason: exited (died on its "
            "own) or hung (sent no heartbeat for server.worker_timeout, killed).",
            ["reason"], registry=registry,
        )
        self.edge_closes = Counter(
            "authproxy_http_edge_closes_total",
            "Connections closed by an edge bound (SPEC 8.4), by reason: max_connections, "
            "header_timeout, head_too_large, head_budget.",
            ["reason"], registry=registry,
        )
        self.connections_open = Gauge(
            "authproxy_http_connections_open", "Client connections open right now.",
            registry=registry, multiprocess_mode="livesum",
        )
        self.multiprocess_dir = multiprocess_dir
        self._shared: SharedDecisions | None = None
        self._exposed = registry
        if multiprocess_dir:
            self._shared = SharedDecisions(self.decisions)
            self._exposed = CollectorRegistry()
            MultiProcessCollector(self._exposed, path=multiprocess_dir)  # type: ignore[no-untyped-call]

    def record_decision(self, scheme: str, outcome: str, reason: str, seconds: float) -> None:
        self.decisions.record(scheme, outcome, _METRIC_REASONS.get(reason, reason), seconds)

    def cache_lookups(self, cache: str, result: str) -> Tally:
        """The count of one cache's hits or misses, to ``inc()`` per lookup."""
        return self.decisions.lookup_tally(cache, result)

    def flush(self) -> None:
        """Multi-worker mode: write this process's decisions and function-backed gauges to
        the shared files. A no-op with one process, where exposition reads them directly."""
        if self._shared is None:
            return
        self._shared.flush()
        for gauge in (self.bans_in_force, self.jwks_age, self.jwks_keys,
                      self.connections_open):
            _sample(gauge)

    def exposition(self) -> bytes:
        """The text exposition: of this process, or in multi-worker mode of every process
        (as of their last flush)."""
        return generate_latest(self._exposed)
