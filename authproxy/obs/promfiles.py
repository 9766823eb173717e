"""Multiprocess mode: the metrics of several processes, added up through one directory.

Each process writes a snapshot of all its values to ``<dir>/<pid>.json`` at each flush: a
temporary file in the same directory, then ``os.replace``, so a reader sees the old snapshot
or the new one, never half of one. Exposition reads every file: counters and histograms are
summed over all processes, live and dead; gauges are combined over the live ones by each
gauge's mode (the most, the fewest or the sum).

When a process has exited, :meth:`ProcessFiles.mark_process_dead` folds its counters and
histograms into one archive file and removes its snapshot, so that its counts still count
(a counter that goes down reads as a restart to Prometheus) and its gauges vanish, and the
directory holds one file per live process plus the archive. The fold holds an exclusive
``flock`` on ``<dir>/.lock`` and readers a shared one: a scrape never sees the dead counts in
both files, or in neither.

A file that cannot be read or parsed is skipped (and logged once): /metrics still answers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, get_args

from .promtext import Family, GaugeMode, Kind

log = logging.getLogger("authproxy.metrics")

ARCHIVE = "archive.json"
_SNAPSHOT = re.compile(r"([0-9]+)\.json")
_CANNOT_WRITE = "a metrics file cannot be written"
_COMBINE: dict[GaugeMode, Callable[[list[float]], float]] = {
    "livemax": max, "livemin": min, "livesum": math.fsum,
}


class ProcessFiles:
    """The shared directory ``path`` of one service's processes."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self._reported: set[tuple[str, str]] = set()  # (file, problem) already logged

    def write(self, pid: int, families: Iterable[Family]) -> None:
        """Replace process ``pid``'s snapshot with ``families``. A failure (a full disk) is
        logged, once until a write succeeds again: the last snapshot stays."""
        name = f"{pid}.json"
        try:
            temporary = self.path / f".{pid}.tmp"
            temporary.write_text(_dumps(families))
            os.replace(temporary, self.path / name)
        except OSError as exc:
            self._report(name, _CANNOT_WRITE, exc)
        else:
            self._reported.discard((name, _CANNOT_WRITE))

    def read_all(self) -> list[list[Family]]:
        """The families of every snapshot and of the archive (see :func:`merge`)."""
        with self._locked(fcntl.LOCK_SH):
            names = sorted(os.listdir(self.path))
            snapshots = [self._read(name) for name in names if _SNAPSHOT.fullmatch(name)]
            archive = self._read(ARCHIVE) if ARCHIVE in names else []
        return [*snapshots, archive]

    def mark_process_dead(self, pid: int) -> None:
        """Fold the snapshot of ``pid``, which has exited, into the archive; a no-op for a
        process that wrote none. A failure is logged: the snapshot then stays as it is."""
        name = f"{pid}.json"
        with self._locked(fcntl.LOCK_EX):
            if not (self.path / name).exists():
                return
            try:
                dead = self._read(name)
                if dead:
                    archived = self._read(ARCHIVE) if (self.path / ARCHIVE).exists() else []
                    temporary = self.path / ".archive.tmp"
                    temporary.write_text(_dumps(merge([archived, dead], gauges=False)))
                    os.replace(temporary, self.path / ARCHIVE)
                (self.path / name).unlink()
                (self.path / f".{pid}.tmp").unlink(missing_ok=True)  # killed while writing
            except OSError as exc:
                self._report(name, "a dead process's metrics cannot be folded", exc)

    @contextlib.contextmanager
    def _locked(self, operation: int) -> Iterator[None]:
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, operation)
            yield
        finally:
            os.close(fd)  # and with it the lock

    def _read(self, name: str) -> list[Family]:
        try:
            return _loads((self.path / name).read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError, TypeError, KeyError, RecursionError) as exc:
            self._report(name, "a metrics file cannot be read: skipped", exc)
            return []

    def _report(self, name: str, problem: str, exc: BaseException) -> None:
        if (name, problem) not in self._reported:
            self._reported.add((name, problem))
            log.error(problem, extra={
                "event": "metrics", "file": str(self.path / name), "error": repr(exc),
            })


def merge(processes: Iterable[list[Family]], *, gauges: bool = True) -> list[Family]:
    """The families of several processes as one: counters and histograms summed, gauges
    combined by their mode (or left out, ``gauges=False``). A family that does not match the
    first one of its name (another kind, labels or buckets) is left out."""
    merged: dict[str, Family] = {}
    gauge_values: dict[str, dict[tuple[str, ...], list[float]]] = {}
    for families in processes:
        for family in families:
            if family.kind == "gauge" and not gauges:
                continue
            into = merged.get(family.name)
            if into is None:
                into = merged[family.name] = Family(family.name, family.kind, family.doc,
                                                    family.labelnames, {}, family.buckets,
                                                    family.mode)
            elif (into.kind, into.labelnames, into.buckets, into.mode) != (
                    family.kind, family.labelnames, family.buckets, family.mode):
                continue
            if family.kind == "gauge":
                values = gauge_values.setdefault(family.name, {})
                for key, sample in family.samples.items():
                    values.setdefault(key, []).append(sample[0])
                continue
            for key, sample in family.samples.items():
                total = into.samples.get(key)
                if total is None:
                    into.samples[key] = list(sample)
                else:
                    for index, value in enumerate(sample):
                        total[index] += value
    for name, values in gauge_values.items():
        combine = _COMBINE[merged[name].mode]
        merged[name].samples = {key: [combine(found)] for key, found in values.items()}
    for family in merged.values():
        family.samples = dict(sorted(family.samples.items()))
    return list(merged.values())


def _dumps(families: Iterable[Family]) -> str:
    return json.dumps([
        {"name": f.name, "kind": f.kind, "doc": f.doc, "labelnames": f.labelnames,
         "buckets": f.buckets, "mode": f.mode, "samples": list(f.samples.items())}
        for f in families
    ])


def _loads(text: bytes) -> list[Family]:
    """The families of one snapshot; ValueError (or TypeError, KeyError, RecursionError) for
    anything else."""
    document = json.loads(text)
    if not isinstance(document, list):
        raise ValueError("not a list of families")
    return [_family(item) for item in document]


def _family(item: dict[str, Any]) -> Family:
    kind, mode = item["kind"], item["mode"]
    if kind not in get_args(Kind) or mode not in get_args(GaugeMode):
        raise ValueError(f"unknown kind or mode: {kind!r}, {mode!r}")
    labelnames = _strings(item["labelnames"])
    buckets = tuple(_number(b) for b in item["buckets"])
    width = len(buckets) + 2 if kind == "histogram" else 1
    samples: dict[tuple[str, ...], list[float]] = {}
    for key, values in item["samples"]:
        key = _strings(key)
        if len(key) != len(labelnames) or len(values) != width:
            raise ValueError(f"a sample of {item['name']!r} has the wrong shape")
        samples[key] = [_number(v) for v in values]
    if not isinstance(item["name"], str) or not isinstance(item["doc"], str):
        raise ValueError("name and doc must be strings")
    return Family(item["name"], kind, item["doc"], labelnames, samples, buckets, mode)


def _strings(items: list[Any]) -> tuple[str, ...]:
    if not all(isinstance(item, str) for item in items):
        raise ValueError("labels must be strings")
    return tuple(items)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not a number: {value!r}")
    return float(value)
