"""Counters, gauges and histograms with fixed label names, and the registry of one app.

Our own, on the standard library only: prometheus_client's package imports http.server,
urllib, wsgiref, email and more, about 2 MB of every process's memory, for what this module and
the text writer (promtext.py) do in a few lines.

Every metric collects to :class:`~authproxy.obs.promtext.Family` objects. Updates and
collection run on one thread (the event loop's), so no lock is taken: multiprocess exposition,
which runs in a thread of its own, reads files, never these objects.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from .promtext import Family, GaugeMode, Kind, LabelValues, samples

_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class Collector(Protocol):
    def collect(self) -> Iterable[Family]: ...


class Registry:
    """The collectors of one app, collected in the order they were registered."""

    def __init__(self) -> None:
        self._collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        self._collectors.append(collector)

    def collect(self) -> list[Family]:
        return [family for collector in self._collectors for family in collector.collect()]

    def get_sample_value(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of the sample ``name`` (as exposed: ``x_total``, ``x_bucket``...) with
        exactly ``labels``; None if there is none."""
        wanted = sorted((labels or {}).items())
        for family in self.collect():
            for sample, pairs, value in samples(family):
                if sample == name and pairs == wanted:
                    return value
        return None


class _Metric:
    """A family with fixed label names; ``labels(...)`` gives the child of one label set,
    and a metric without label names is its own (only) child."""

    kind: Kind

    def __init__(self, name: str, doc: str, labelnames: Sequence[str],
                 registry: Registry | None) -> None:
        if not _NAME.fullmatch(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"invalid label name {label!r}")
        self.name, self.doc, self.labelnames = name, doc, tuple(labelnames)
        self._children: dict[LabelValues, list[float]] = {}
        if not self.labelnames:
            self._children[()] = self._new_values()
        if registry is not None:
            registry.register(self)

    def _new_values(self) -> list[float]:
        return [0.0]

    def _values(self, args: tuple[object, ...], kwargs: dict[str, object]) -> LabelValues:
        if not self.labelnames:
            raise ValueError(f"{self.name} has no labels")
        if args and kwargs:
            raise ValueError("label values by position or by name, not both")
        if kwargs:
            if set(kwargs) != set(self.labelnames):
                raise ValueError(f"{self.name} takes the labels {self.labelnames}")
            args = tuple(kwargs[label] for label in self.labelnames)
        if len(args) != len(self.labelnames):
            raise ValueError(f"{self.name} takes the labels {self.labelnames}")
        return tuple(str(value) for value in args)

    def _child(self, args: tuple[object, ...], kwargs: dict[str, object]
               ) -> tuple[LabelValues, list[float]]:
        key = self._values(args, kwargs)
        values = self._children.get(key)
        if values is None:
            values = self._children[key] = self._new_values()
        return key, values

    def _own_values(self) -> list[float]:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels: call labels() first")
        return self._children[()]

    def collect(self) -> Iterator[Family]:
        yield Family(self.name, self.kind, self.doc, self.labelnames,
                     {key: list(values) for key, values in self._children.items()})


class Counter(_Metric):
    """A count that only goes up; exposed as ``<name>_total`` (given with or without it)."""

    kind = "counter"

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = (), *,
                 registry: Registry | None = None) -> None:
        super().__init__(name if name.endswith("_total") else f"{name}_total", doc, labelnames,
                         registry)

    def labels(self, *args: object, **kwargs: object) -> CounterChild:
        return CounterChild(self._child(args, kwargs)[1])

    def inc(self, amount: float = 1.0) -> None:
        CounterChild(self._own_values()).inc(amount)


class CounterChild:
    __slots__ = ("_values",)

    def __init__(self, values: list[float]) -> None:
        self._values = values

    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount``; ValueError if it is negative (a counter that goes down reads as a
        restart of the process to Prometheus)."""
        if amount < 0:
            raise ValueError("a counter only goes up")
        self._values[0] += amount


class Gauge(_Metric):
    """A value that goes up and down, set directly or read from a function at collection.
    ``mode``: how the values of live processes combine in multiprocess mode."""

    kind = "gauge"

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = (), *,
                 registry: Registry | None = None, mode: GaugeMode = "livesum") -> None:
        self.mode = mode
        self._functions: dict[LabelValues, Callable[[], float]] = {}
        super().__init__(name, doc, labelnames, registry)

    def labels(self, *args: object, **kwargs: object) -> GaugeChild:
        key, _ = self._child(args, kwargs)
        return GaugeChild(self, key)

    def set(self, value: float) -> None:
        self._own_values()
        self._set((), value)

    def set_function(self, function: Callable[[], float]) -> None:
        self._own_values()
        self._set_function((), function)

    def _set(self, key: LabelValues, value: float) -> None:
        self._functions.pop(key, None)
        self._children[key][0] = float(value)

    def _set_function(self, key: LabelValues, function: Callable[[], float]) -> None:
        self._functions[key] = function

    def collect(self) -> Iterator[Family]:
        for family in super().collect():
            for key, function in self._functions.items():
                family.samples[key] = [float(function())]
            family.mode = self.mode
            yield family


class GaugeChild:
    __slots__ = ("_gauge", "_key")

    def __init__(self, gauge: Gauge, key: LabelValues) -> None:
        self._gauge, self._key = gauge, key

    def set(self, value: float) -> None:
        self._gauge._set(self._key, value)

    def set_function(self, function: Callable[[], float]) -> None:
        """Read the value from ``function()`` at each collection from now on."""
        self._gauge._set_function(self._key, function)


class Histogram(_Metric):
    """Observations counted in buckets by upper bound (``le``), with their sum."""

    kind = "histogram"

    def __init__(self, name: str, doc: str, labelnames: Sequence[str] = (), *,
                 buckets: Sequence[float], registry: Registry | None = None) -> None:
        bounds = tuple(float(b) for b in buckets if b != math.inf)
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError("buckets must be increasing")
        if "le" in labelnames:
            raise ValueError("'le' is the label of the buckets")
        self.buckets = bounds
        super().__init__(name, doc, labelnames, registry)

    def _new_values(self) -> list[float]:
        return [0.0] * (len(self.buckets) + 2)  # the buckets, +Inf, the sum

    def labels(self, *args: object, **kwargs: object) -> HistogramChild:
        return HistogramChild(self.buckets, self._child(args, kwargs)[1])

    def observe(self, value: float) -> None:
        HistogramChild(self.buckets, self._own_values()).observe(value)

    def collect(self) -> Iterator[Family]:
        for family in super().collect():
            family.buckets = self.buckets
            yield family


class HistogramChild:
    __slots__ = ("_buckets", "_values")

    def __init__(self, buckets: tuple[float, ...], values: list[float]) -> None:
        self._buckets, self._values = buckets, values

    def observe(self, value: float) -> None:
        self._values[bisect.bisect_left(self._buckets, value)] += 1
        self._values[-1] += value
