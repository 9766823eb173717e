"""Prometheus metrics. Labels carry only fixed vocabularies: never a user name or a token.

The metrics and the text format are our own (prom.py, promtext.py). With several worker
processes (server.workers > 1) every process writes a snapshot of its values to a directory
shared with its siblings once a second (promfiles.py), and any worker's /metrics adds them all
up, as of each process's last flush. Counters and histograms are summed; gauges say in
``mode`` how live processes' values combine.
"""

from __future__ import annotations

import asyncio
import bisect
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from .prom import Counter, Gauge, Histogram, Registry
from .promtext import Family, render

if TYPE_CHECKING:
    from .promfiles import ProcessFiles

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Tally:
    """One count in a plain int (see DecisionStats)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self) -> None:
        self.value += 1


class DecisionStats:
    """Decisions by (scheme, outcome, reason) and their latency, and credential cache
    lookups by (cache, result), counted in plain ints.

    Every decision is counted, so this is the hot path: a labelled Counter's ``labels()``
    builds a child and checks its arguments, which costs more than a cached decision itself.
    Updates and collection both run on the event loop thread, so no lock is needed; the
    families are built at collection (a scrape, or a flush to the shared files).
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

    def collect(self) -> Iterator[Family]:
        yield Family("authproxy_decisions_total", "counter",
                     "Decisions by scheme, outcome and reason.",
                     ("scheme", "outcome", "reason"),
                     {key: [count] for key, count in sorted(self.counts.items())})
        yield Family("authproxy_decision_seconds", "histogram",
                     "Time to decide, from request to response.", ("outcome",),
                     {(outcome,): list(buckets)
                      for outcome, buckets in sorted(self.latency.items())},
                     buckets=LATENCY_BUCKETS)
        yield Family("authproxy_cache_lookups_total", "counter",
                     "Credential cache lookups by cache and result.", ("cache", "result"),
                     {key: [tally.value] for key, tally in sorted(self.lookups.items())})


# Reasons the metrics must not tell apart (SPEC §8.1 rule 7): one scrape would tell whether a
# guessed user-id exists. The decision log still does, for the operator.
_METRIC_REASONS = {"unknown_user": "bad_credentials", "bad_password": "bad_credentials"}


class Metrics:
    """Every metric of one app, in its own registry (so tests can build many apps).

    ``multiprocess_dir``: the shared directory of multi-worker mode (see the module
    docstring); then :meth:`flush` must run about once a second, and writes this process's
    snapshot under ``pid`` (this process's id unless a test has several in one process).
    """

    def __init__(self, multiprocess_dir: str | None = None, pid: int | None = None) -> None:
        self.registry = registry = Registry()
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
            registry=registry, mode="livemax",
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
            ["source"], registry=registry, mode="livemax",  # the oldest in use
        )
        self.jwks_keys = Gauge(
            "authproxy_jwks_keys", "Usable signing keys loaded, by source.",
            ["source"], registry=registry, mode="livemin",  # the fewest in use
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
            registry=registry, mode="livesum",
        )
        self.multiprocess_dir = multiprocess_dir
        self.pid = os.getpid() if pid is None else pid
        self._files: ProcessFiles | None = None
        if multiprocess_dir:  # (one process never loads the files' code)
            from .promfiles import ProcessFiles

            self._files = ProcessFiles(multiprocess_dir)
        # Every family's name, kind, labels and buckets, without values: merged first, they
        # order the exposition, show the families no process has values of yet, and win over
        # a process that disagrees (another version, after an upgrade). Taken now, because
        # exposition runs in a thread and must not read this process's values.
        self._shapes = [Family(f.name, f.kind, f.doc, f.labelnames, {}, f.buckets, f.mode)
                        for f in registry.collect()]

    def record_decision(self, scheme: str, outcome: str, reason: str, seconds: float) -> None:
        self.decisions.record(scheme, outcome, _METRIC_REASONS.get(reason, reason), seconds)

    def cache_lookups(self, cache: str, result: str) -> Tally:
        """The count of one cache's hits or misses, to ``inc()`` per lookup."""
        return self.decisions.lookup_tally(cache, result)

    def flush(self) -> None:
        """Multi-worker mode: write this process's values (the functions of gauges called
        now) to its file in the shared directory. A no-op with one process, where exposition
        reads them directly."""
        if self._files is not None:
            self._files.write(self.pid, self.registry.collect())

    async def flush_off_loop(self) -> None:
        """:meth:`flush` from the event loop: the values are collected here (they change on
        this thread) and the file is written in a thread. A cancellation waits for a write
        under way, so that no later flush is overtaken by it."""
        if self._files is not None:
            write = asyncio.ensure_future(
                asyncio.to_thread(self._files.write, self.pid, self.registry.collect()))
            try:
                await asyncio.shield(write)
            except asyncio.CancelledError:
                await write
                raise

    def mark_process_dead(self, pid: int) -> None:
        """Multi-worker mode: the process ``pid`` has exited; its counts stay in the totals,
        its gauges go (see promfiles.py). A no-op with one process."""
        if self._files is not None:
            self._files.mark_process_dead(pid)

    def exposition(self) -> bytes:
        """The text exposition: of this process, or in multi-worker mode of every process
        (as of their last flush; it reads files, so call it off the event loop)."""
        if self._files is not None:
            from .promfiles import merge

            return render(merge([self._shapes, *self._files.read_all()]))
        return render(self.registry.collect())
