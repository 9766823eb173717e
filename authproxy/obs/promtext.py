"""The Prometheus text format 0.0.4: what a scrape of /metrics reads.

What :func:`render` writes is what prometheus_client's ``generate_latest`` writes for the same
values (tests/test_metrics_format.py compares the two, and parses ours with prometheus_client's
parser), with one difference: no ``_created`` series (the creation time of each counter and
histogram), which nothing here reads and which prometheus_client's multiprocess mode, our mode
with several workers, never wrote either.

Every family is handed over as a :class:`Family`: the form the metrics of prom.py collect to,
and the shared files of multiprocess mode (promfiles.py) hold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Kind = Literal["counter", "gauge", "histogram"]
# How the live processes' values of a gauge combine in multiprocess mode (promfiles.py).
GaugeMode = Literal["livemax", "livemin", "livesum"]
LabelValues = tuple[str, ...]


@dataclass(slots=True)
class Family:
    """One metric family's values.

    ``name`` is the exposed name (a counter's ends in ``_total``). ``samples`` maps label
    values (in the order of ``labelnames``) to one value for a counter or a gauge, or for a
    histogram to one count per bucket (not cumulative: ``buckets`` are the upper bounds
    without +Inf, whose count comes last) followed by the sum of the observations.
    """

    name: str
    kind: Kind
    doc: str
    labelnames: LabelValues = ()
    samples: dict[LabelValues, list[float]] = field(default_factory=dict)
    buckets: tuple[float, ...] = ()
    mode: GaugeMode = "livesum"



def format_value(value: float) -> str:
    """A number as prometheus_client writes it: ``1.0``, ``+Inf``, ``-Inf``, ``NaN``, the repr
    of a float, and an exponent from 10^7 up as Go writes it (``1.2e+07``)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")


def _escape_label(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def samples(family: Family) -> Iterator[tuple[str, list[tuple[str, str]], float]]:
    """(sample name, label pairs sorted by name, value) of every sample of ``family``."""
    for key, values in family.samples.items():
        pairs = list(zip(family.labelnames, key, strict=True))
        if family.kind != "histogram":
            yield family.name, sorted(pairs), values[0]
            continue
        cumulative = 0.0
        for bound, count in zip((*family.buckets, math.inf), values, strict=False):
            cumulative += count
            yield (f"{family.name}_bucket", sorted([*pairs, ("le", format_value(bound))]),
                   cumulative)
        yield f"{family.name}_count", sorted(pairs), cumulative
        yield f"{family.name}_sum", sorted(pairs), values[-1]


def render(families: Iterable[Family]) -> bytes:
    """The text exposition of ``families``, in their order (see CONTENT_TYPE)."""
    lines = []
    for family in families:
        lines.append(f"# HELP {family.name} {_escape_help(family.doc)}\n"
                     f"# TYPE {family.name} {family.kind}\n")
        for name, pairs, value in samples(family):
            if pairs:
                labels = ",".join(f'{label}="{_escape_label(text)}"' for label, text in pairs)
                lines.append(f"{name}{{{labels}}} {format_value(value)}\n")
            else:
                lines.append(f"{name} {format_value(value)}\n")
    return "".join(lines).encode()
