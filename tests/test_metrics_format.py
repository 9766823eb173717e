"""Our text exposition (authproxy/obs/promtext.py) against prometheus_client, its independent oracle:
its parser reads back what we write, and its own writer writes the same lines for the same
values (but the ``_created`` series, which we do not write)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from authproxy.obs import prom
from authproxy.obs.metrics import LATENCY_BUCKETS, Metrics
from authproxy.obs.prom import Counter, Gauge, Histogram, Registry
from authproxy.obs.promtext import format_value, render

AWKWARD = ['plain', 'quote " inside', "back\\slash", "new\nline", 'all \\" \n of them', "",
           "ünïcödé ✓", "trailing \\"]
AWKWARD_HELP = 'Help with a back\\slash,\na newline, "quotes" and ünïcödé.'
NUMBERS = [0.0, 1.0, -1.0, 0.1 + 0.2, 1e-9, 123456.0, 1234567.0, 12345678.9, 1e21, -1e21,
           math.inf, -math.inf, 2.5e-7]


def both(build: Callable[[Any, Any, Any, Any], None]) -> tuple[bytes, bytes]:
    """``build(Counter, Gauge, Histogram, registry)`` run on ours and on prometheus_client's:
    (our text, theirs without its _created lines)."""
    ours = Registry()
    theirs = prometheus_client.CollectorRegistry()
    build(prom.Counter, prom.Gauge, prom.Histogram, ours)
    build(prometheus_client.Counter, prometheus_client.Gauge, prometheus_client.Histogram,
          theirs)
    text = prometheus_client.generate_latest(theirs).decode()
    kept = [line for line in text.splitlines(keepends=True) if "_created" not in line]
    return render(ours.collect()), "".join(kept).encode()


def test_counters_gauges_and_histograms_with_awkward_labels_write_what_prometheus_client_writes(
) -> None:
    def build(counter: Any, gauge: Any, histogram: Any, registry: Any) -> None:
        requests = counter("app_requests_total", AWKWARD_HELP, ["path", "code"],
                           registry=registry)
        for index, value in enumerate(AWKWARD):
            requests.labels(value, str(index)).inc(index + 0.5)
        requests.labels(path="by name", code="200").inc()
        plain = counter("app_plain", "A counter named without _total.", registry=registry)
        plain.inc(3)
        temperature = gauge("app_value", "One gauge per number.", ["number"], registry=registry)
        for index, number in enumerate(NUMBERS):
            temperature.labels(str(index)).set(number)
        gauge("app_unset", "A gauge never set.", registry=registry)
        gauge("app_from_function", "Read at collection.", registry=registry).set_function(
            lambda: 42)
        latency = histogram("app_seconds", "Latency.", ["outcome"], buckets=LATENCY_BUCKETS,
                            registry=registry)
        for index, seconds in enumerate([0.0001, 0.0005, 0.003, 0.3, 2.5, 3.0, 1e9]):
            latency.labels(AWKWARD[index]).observe(seconds)
            latency.labels("all").observe(seconds)
        histogram("app_unlabelled_seconds", "No labels.", buckets=[1, 10, 100],
                  registry=registry).observe(10)
        counter("app_labelled_unused_total", "Labels, no child yet.", ["x"], registry=registry)

    ours, theirs = both(build)
    assert ours == theirs


def test_the_exposition_parses_back_to_the_families_and_values_written() -> None:
    registry = Registry()
    counter = Counter("t_events", AWKWARD_HELP, ["kind"], registry=registry)
    for index, value in enumerate(AWKWARD):
        counter.labels(kind=value).inc(index)
    gauge = Gauge("t_level", "Level.", ["number"], registry=registry)
    for index, number in enumerate(NUMBERS):
        gauge.labels(str(index)).set(number)
    gauge.labels("nan").set(math.nan)
    histogram = Histogram("t_seconds", "Seconds.", ["kind"], buckets=[0.5, 1.0],
                          registry=registry)
    histogram.labels('q"').observe(0.5)  # on a bound: in its bucket (le)
    histogram.labels('q"').observe(0.75)
    histogram.labels('q"').observe(7.0)

    families = {f.name: f for f in text_string_to_metric_families(
        render(registry.collect()).decode())}

    assert {name: (f.type, f.documentation) for name, f in families.items()} == {
        "t_events": ("counter", AWKWARD_HELP), "t_level": ("gauge", "Level."),
        "t_seconds": ("histogram", "Seconds.")}
    assert [(s.name, s.labels, s.value) for s in families["t_events"].samples] == [
        ("t_events_total", {"kind": value}, float(index)) for index, value in enumerate(AWKWARD)]
    levels = {s.labels["number"]: s.value for s in families["t_level"].samples}
    assert math.isnan(levels.pop("nan"))
    assert levels == {str(index): number for index, number in enumerate(NUMBERS)}
    assert [(s.name, s.labels, s.value) for s in families["t_seconds"].samples] == [
        ("t_seconds_bucket", {"kind": 'q"', "le": "0.5"}, 1.0),
        ("t_seconds_bucket", {"kind": 'q"', "le": "1.0"}, 2.0),
        ("t_seconds_bucket", {"kind": 'q"', "le": "+Inf"}, 3.0),
        ("t_seconds_count", {"kind": 'q"'}, 3.0),
        ("t_seconds_sum", {"kind": 'q"'}, 8.25),
    ]


@pytest.mark.parametrize("value", [*NUMBERS, math.nan, 1e7, 9999999.0, 5e-324, 1.7976931348623157e308])
def test_numbers_are_written_as_prometheus_client_writes_them(value: float) -> None:
    go_string = prometheus_client.utils.floatToGoString(value)  # type: ignore[no-untyped-call]
    assert format_value(value) == go_string


def test_the_app_metrics_write_what_prometheus_client_would() -> None:
    """The decision families, built at scrape time from plain ints, go through the same
    writer: the lines dashboards and tests read are the ones prometheus_client wrote."""
    metrics = Metrics()
    metrics.record_decision("basic", "allow", "ok", 0.0004)
    metrics.record_decision("basic", "deny", "unknown_user", 0.003)  # bad_credentials
    metrics.record_decision("bearer", "deny", "expired", 7.0)
    metrics.cache_lookups("basic", "hit").inc()
    text = metrics.exposition().decode()
    assert 'authproxy_decisions_total{outcome="deny",reason="bad_credentials",scheme="basic"} ' \
           "1.0\n" in text
    assert 'authproxy_decision_seconds_bucket{le="0.0005",outcome="allow"} 1.0\n' in text
    assert 'authproxy_decision_seconds_bucket{le="2.5",outcome="deny"} 1.0\n' in text
    assert 'authproxy_decision_seconds_bucket{le="+Inf",outcome="deny"} 2.0\n' in text
    assert 'authproxy_decision_seconds_sum{outcome="deny"} 7.003\n' in text
    assert "# TYPE authproxy_cache_lookups_total counter\n" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["authproxy_decision_seconds"].type == "histogram"
    assert metrics.registry.get_sample_value(
        "authproxy_decision_seconds_count", {"outcome": "deny"}) == 2
    assert metrics.registry.get_sample_value(
        "authproxy_cache_lookups_total", {"cache": "basic", "result": "hit"}) == 1
    assert metrics.registry.get_sample_value("authproxy_http_parse_errors_total") == 0
    assert metrics.registry.get_sample_value(
        "authproxy_cache_lookups_total", {"cache": "basic"}) is None  # labels match exactly


def test_get_sample_value_finds_every_kind_of_sample() -> None:
    registry = Registry()
    Counter("c", "C.", ["a"], registry=registry).labels("x").inc(2)
    Gauge("g", "G.", registry=registry).set(-3)
    Histogram("h", "H.", buckets=[1.0], registry=registry).observe(0.5)
    assert registry.get_sample_value("c_total", {"a": "x"}) == 2
    assert registry.get_sample_value("c", {"a": "x"}) is None
    assert registry.get_sample_value("g") == -3
    assert registry.get_sample_value("h_bucket", {"le": "1.0"}) == 1
    assert registry.get_sample_value("h_bucket", {"le": "+Inf"}) == 1
    assert registry.get_sample_value("h_sum") == 0.5
    assert registry.get_sample_value("h_count") == 1


def test_misuse_is_refused() -> None:
    counter = Counter("c", "C.", ["a", "b"])
    with pytest.raises(ValueError, match="only goes up"):
        counter.labels("x", "y").inc(-1)
    with pytest.raises(ValueError, match="takes the labels"):
        counter.labels("x")
    with pytest.raises(ValueError, match="takes the labels"):
        counter.labels(a="x", c="y")
    with pytest.raises(ValueError, match="not both"):
        counter.labels("x", b="y")
    with pytest.raises(ValueError, match="has labels"):
        counter.inc()
    with pytest.raises(ValueError, match="has labels"):
        Gauge("g", "G.", ["a"]).set(1)
    with pytest.raises(ValueError, match="has no labels"):
        Gauge("g", "G.").labels("x")
    with pytest.raises(ValueError, match="invalid metric name"):
        Counter("bad-name", "C.")
    with pytest.raises(ValueError, match="invalid label name"):
        Counter("c", "C.", ["bad label"])
    with pytest.raises(ValueError, match="increasing"):
        Histogram("h", "H.", buckets=[2.0, 1.0])
    with pytest.raises(ValueError, match="'le'"):
        Histogram("h", "H.", ["le"], buckets=[1.0])


def test_a_gauge_set_after_set_function_holds_the_value_set() -> None:
    registry = Registry()
    gauge = Gauge("g", "G.", ["a"], registry=registry)
    gauge.labels("x").set_function(lambda: 5)
    assert registry.get_sample_value("g", {"a": "x"}) == 5
    gauge.labels("x").set(2)
    assert registry.get_sample_value("g", {"a": "x"}) == 2
