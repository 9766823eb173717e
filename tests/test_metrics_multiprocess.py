"""Multiprocess metrics (authproxy/obs/promfiles.py): every process's snapshot in one directory,
added up at each scrape; a dead process's counts stay, its gauges go, the directory stays
bounded, a scrape racing a fold never sees a counter go down, and a bad file is skipped.

Several processes are several Metrics objects with made-up pids in one directory; the last
tests run the real multi-worker service.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from authproxy.obs.metrics import Metrics
from authproxy.obs.promfiles import ARCHIVE, ProcessFiles

from .conftest import write_users
from .jwks_server import basic
from .servers import free_port, start_authproxy
from .test_workers import (
    PASSWORD,
    children,
    config_text,
    get,
    scrape,
    serving_workers,
    until,
)

PID_A, PID_B = 4_000_001, 4_000_002  # made up: no process writes these


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``metrics``' exposition, parsed by prometheus_client's parser."""
    text = metrics.exposition().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def reading(value: float) -> Callable[[], float]:
    """A gauge's function that reads ``value``."""
    return lambda: value


@contextmanager
def scraping(metrics: Metrics, name: str, **labels: str) -> Iterator[list[float]]:
    """The values of ``name`` that another thread scrapes in a loop while the block runs."""
    seen: list[float] = []
    done = threading.Event()

    def scrape_in_a_loop() -> None:
        while not done.is_set():
            seen.append(value(metrics, name, **labels) or 0)

    thread = threading.Thread(target=scrape_in_a_loop)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()


def never_down(seen: list[float]) -> bool:
    """Whether a counter's scrapes never went down (Prometheus would read a restart)."""
    return all(before <= after for before, after in itertools.pairwise(seen))


def two_processes(directory: Path) -> tuple[Metrics, Metrics]:
    """Two processes' metrics in ``directory``, flushed: decisions, a labelled counter, the
    hash histogram and one gauge of each mode, with different values in each."""
    a, b = Metrics(str(directory), pid=PID_A), Metrics(str(directory), pid=PID_B)
    for metrics, decisions, bans, keys, connections in ((a, 3, 5, 1, 4), (b, 2, 2, 3, 6)):
        for _ in range(decisions):
            metrics.record_decision("basic", "allow", "ok", 0.002)
        metrics.cache_lookups("basic", "hit").inc()
        metrics.user_reloads.labels("ok").inc()
        metrics.hash_seconds.observe(0.03)
        metrics.bans_in_force.set_function(reading(bans))  # livemax
        metrics.jwks_keys.labels("file").set_function(reading(keys))  # livemin
        metrics.connections_open.set_function(reading(connections))  # livesum
        metrics.flush()
    return a, b


def test_counters_and_histograms_are_summed_and_gauges_combined_by_their_mode(
        tmp_path: Path) -> None:
    a, b = two_processes(tmp_path)
    assert sorted(os.listdir(tmp_path)) == [f"{PID_A}.json", f"{PID_B}.json"]
    for metrics in (a, b):  # any process's /metrics tells the whole service
        assert value(metrics, "authproxy_decisions_total",
                     scheme="basic", outcome="allow", reason="ok") == 5
        assert value(metrics, "authproxy_decision_seconds_bucket",
                     outcome="allow", le="0.0025") == 5
        assert value(metrics, "authproxy_decision_seconds_bucket",
                     outcome="allow", le="0.001") == 0
        assert value(metrics, "authproxy_decision_seconds_sum", outcome="allow") == \
            pytest.approx(0.01)
        assert value(metrics, "authproxy_cache_lookups_total", cache="basic", result="hit") == 2
        assert value(metrics, "authproxy_user_table_reloads_total", outcome="ok") == 2
        assert value(metrics, "authproxy_password_hash_seconds_count") == 2
        assert value(metrics, "authproxy_bans_in_force") == 5
        assert value(metrics, "authproxy_jwks_keys", source="file") == 1
        assert value(metrics, "authproxy_http_connections_open") == 10
    # the registry is the process's own
    assert a.registry.get_sample_value("authproxy_user_table_reloads_total",
                                       {"outcome": "ok"}) == 1


def test_a_scrape_tells_the_values_of_the_last_flush(tmp_path: Path) -> None:
    a, _ = two_processes(tmp_path)
    a.user_reloads.labels("ok").inc()
    assert value(a, "authproxy_user_table_reloads_total", outcome="ok") == 2
    a.flush()
    assert value(a, "authproxy_user_table_reloads_total", outcome="ok") == 3


async def test_the_flush_from_the_loop_writes_in_a_thread_and_a_cancel_waits_for_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics(str(tmp_path), pid=PID_A)
    metrics.record_decision("basic", "allow", "ok", 0.002)
    started, release = threading.Event(), threading.Event()
    writers: list[threading.Thread] = []
    write = ProcessFiles.write

    def held_write(files: object, pid: int, families: object) -> None:
        writers.append(threading.current_thread())
        started.set()
        release.wait(10)
        write(files, pid, families)  # type: ignore[arg-type]

    monkeypatch.setattr(ProcessFiles, "write", held_write)
    flushing = asyncio.create_task(metrics.flush_off_loop())
    assert await asyncio.to_thread(started.wait, 10)
    assert writers != [threading.main_thread()]  # not on the event loop's thread
    metrics.record_decision("basic", "allow", "ok", 0.002)  # after the values were taken
    flushing.cancel()
    await asyncio.sleep(0.05)
    assert not flushing.done()  # the cancelled flush waits for its write
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert value(metrics, "authproxy_decisions_total",
                 scheme="basic", outcome="allow", reason="ok") == 1


def test_a_dead_process_counts_keep_counting_and_its_gauges_vanish(tmp_path: Path) -> None:
    _, b = two_processes(tmp_path)
    b.mark_process_dead(PID_A)  # the supervisor does this, once the process has exited

    assert not (tmp_path / f"{PID_A}.json").exists()
    assert value(b, "authproxy_decisions_total", scheme="basic", outcome="allow",
                 reason="ok") == 5
    assert value(b, "authproxy_password_hash_seconds_bucket", le="0.05") == 2
    assert value(b, "authproxy_user_table_reloads_total", outcome="ok") == 2
    assert value(b, "authproxy_bans_in_force") == 2  # b's own: a's 5 is gone
    assert value(b, "authproxy_jwks_keys", source="file") == 3
    assert value(b, "authproxy_http_connections_open") == 6

    b.user_reloads.labels("ok").inc()
    b.flush()
    assert value(b, "authproxy_user_table_reloads_total", outcome="ok") == 3
    b.mark_process_dead(PID_B)
    left = samples(b)
    assert left[("authproxy_user_table_reloads_total", (("outcome", "ok"),))] == 3
    assert not [name for name, _ in left if name in (
        "authproxy_bans_in_force", "authproxy_jwks_keys", "authproxy_http_connections_open")]


def test_folding_the_dead_keeps_the_directory_bounded(tmp_path: Path) -> None:
    survivor = Metrics(str(tmp_path), pid=PID_A)
    survivor.flush()
    for pid in range(5_000_000, 5_000_050):
        dead = Metrics(str(tmp_path), pid=pid)
        dead.worker_restarts.labels("exited").inc()
        dead.flush()
        (tmp_path / f".{pid}.tmp").write_text("{")  # as if killed while writing
        survivor.mark_process_dead(pid)
    assert sorted(os.listdir(tmp_path)) == [".lock", f"{PID_A}.json", ARCHIVE]
    assert value(survivor, "authproxy_worker_restarts_total", reason="exited") == 50
    survivor.mark_process_dead(5_000_000)  # twice, or a process that never flushed: no-op
    assert value(survivor, "authproxy_worker_restarts_total", reason="exited") == 50


def test_a_counter_never_goes_down_while_a_scrape_races_the_folds(tmp_path: Path) -> None:
    """Each round a process counts one restart, flushes and is folded into the archive, while
    another thread scrapes in a loop: every scrape sees each count once, never in both the
    dead file and the archive, never in neither."""
    scraper = Metrics(str(tmp_path), pid=PID_A)
    rounds = 300
    with scraping(scraper, "authproxy_worker_restarts_total", reason="exited") as seen:
        for pid in range(5_000_000, 5_000_000 + rounds):
            process = Metrics(str(tmp_path), pid=pid)
            process.worker_restarts.labels("exited").inc()
            process.flush()
            scraper.mark_process_dead(pid)
    assert len(set(seen)) > 10, "the scrapes did not overlap the folds"
    assert never_down(seen)
    assert value(scraper, "authproxy_worker_restarts_total", reason="exited") == rounds


def test_a_scrape_never_reads_half_a_snapshot(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A process flushes in a loop while another thread scrapes in a loop: each scrape
    reads a whole snapshot, the old or the new, so the count never drops or goes missing."""
    scraper = Metrics(str(tmp_path), pid=PID_A)
    writer = Metrics(str(tmp_path), pid=PID_B)
    for source in range(30):  # a snapshot of some size, as a busy worker's
        writer.jwks_fetches.labels(f"source-{source}", "refresh", "ok").inc()
    writer.flush()
    with scraping(scraper, "authproxy_user_table_reloads_total", outcome="ok") as seen:
        for _ in range(1000):
            writer.user_reloads.labels("ok").inc()
            writer.flush()
    assert len(set(seen)) > 10, "the scrapes did not overlap the writes"
    assert never_down(seen)
    assert not [r for r in caplog.records if r.name == "authproxy.metrics"]


@pytest.mark.parametrize("content", [
    b"not json", b"\xff\xfe", b"[", b"{}", b'[{"kind": "counter"}]', b"[" * 100_000,
    b'[{"name": "x_total", "kind": "counter", "doc": "", "labelnames": ["a"], "buckets": [],'
    b' "mode": "livesum", "samples": [[["a", "b"], [1]]]}]',
    b'[{"name": "x_total", "kind": "counter", "doc": "", "labelnames": [], "buckets": [],'
    b' "mode": "livesum", "samples": [[[], ["1"]]]}]',
    b'[{"name": "x", "kind": "summary", "doc": "", "labelnames": [], "buckets": [],'
    b' "mode": "livesum", "samples": []}]',
])
def test_a_file_that_cannot_be_parsed_is_skipped_and_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes) -> None:
    a, _ = two_processes(tmp_path)
    (tmp_path / "4000003.json").write_bytes(content)
    for _ in range(3):
        assert value(a, "authproxy_user_table_reloads_total", outcome="ok") == 2
    logged = [r for r in caplog.records if r.name == "authproxy.metrics"]
    assert [r.getMessage() for r in logged] == ["a metrics file cannot be read: skipped"]
    assert logged[0].__dict__["file"] == str(tmp_path / "4000003.json")


def test_a_file_that_cannot_be_read_or_removed_stops_neither_a_scrape_nor_a_fold(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, _ = two_processes(tmp_path)
    (tmp_path / "4000003.json").mkdir()
    assert value(a, "authproxy_user_table_reloads_total", outcome="ok") == 2
    a.mark_process_dead(4_000_003)  # logged, not raised: the supervisor's loop goes on
    a.mark_process_dead(PID_B)
    assert value(a, "authproxy_user_table_reloads_total", outcome="ok") == 2
    assert [r.getMessage() for r in caplog.records if r.name == "authproxy.metrics"] == [
        "a metrics file cannot be read: skipped", "a dead process's metrics cannot be folded"]


def test_a_snapshot_that_cannot_be_written_keeps_the_last_one_and_is_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    a, _ = two_processes(tmp_path)
    (tmp_path / f".{PID_A}.tmp").mkdir()  # where the next snapshot would be written
    a.user_reloads.labels("ok").inc()
    a.flush()
    a.flush()
    assert value(a, "authproxy_user_table_reloads_total", outcome="ok") == 2
    assert [r.getMessage() for r in caplog.records if r.name == "authproxy.metrics"] == [
        "a metrics file cannot be written"]
    (tmp_path / f".{PID_A}.tmp").rmdir()
    a.flush()
    assert value(a, "authproxy_user_table_reloads_total", outcome="ok") == 3


def test_families_that_disagree_between_processes_are_not_mixed(tmp_path: Path) -> None:
    """A process of another version with another shape of a family (here a gauge where this
    one has a counter): the scraping process's shape decides, the other's values are left
    out."""
    a, _ = two_processes(tmp_path)
    (tmp_path / "1.json").write_text(
        '[{"name": "authproxy_user_table_reloads_total", "kind": "gauge", "doc": "",'
        ' "labelnames": ["outcome"], "buckets": [], "mode": "livesum",'
        ' "samples": [[["ok"], [100]]]}]')
    assert value(a, "authproxy_user_table_reloads_total", outcome="ok") == 2


# -- the real service --------------------------------------------------------------------------


def metrics_directory(tmp: Path) -> Path:
    """The supervisor's shared metrics directory, under the TMPDIR it was given."""
    found = list(tmp.glob("authproxy-*/metrics"))
    assert len(found) == 1, found
    return found[0]


def test_a_killed_workers_counts_stay_in_the_total_and_its_file_is_folded(
        tmp_path: Path) -> None:
    users = write_users(tmp_path / "users", alice=PASSWORD)
    (tmp_path / "tmp").mkdir()
    with start_authproxy(config_text(users, 2), [f"127.0.0.1:{free_port()}"], tmp_path,
                         env={"TMPDIR": str(tmp_path / "tmp")}) as proxy:
        first = serving_workers(proxy, 2)
        address = proxy.tcp_address
        for _ in range(20):  # new connections: both workers get some
            assert get(address, "/auth", basic("alice", PASSWORD))[0] == 200
        until(lambda: scrape(proxy, "authproxy_decisions_total") == 20, "20 decisions counted")
        directory = metrics_directory(tmp_path / "tmp")
        victim = min(first)
        os.kill(victim, signal.SIGKILL)
        until(lambda: len(serving_workers(proxy, 2) - first) == 1, "a replacement worker")
        live = {proxy.process.pid, *children(proxy.process.pid)}

        def folded() -> bool:
            names = {n for n in os.listdir(directory) if not n.endswith(".tmp")}
            return names == {".lock", ARCHIVE, *(f"{pid}.json" for pid in live)}

        until(folded, "the dead worker's file folded, the new one's written")
        assert {scrape(proxy, "authproxy_decisions_total") for _ in range(6)} == {20}
        assert scrape(proxy, "authproxy_worker_restarts_total") == 1


def test_metrics_answers_with_a_bad_file_in_the_directory(tmp_path: Path) -> None:
    users = write_users(tmp_path / "users", alice=PASSWORD)
    (tmp_path / "tmp").mkdir()
    with start_authproxy(config_text(users, 2), [f"127.0.0.1:{free_port()}"], tmp_path,
                         env={"TMPDIR": str(tmp_path / "tmp")}) as proxy:
        serving_workers(proxy, 2)
        assert get(proxy.tcp_address, "/auth", basic("alice", PASSWORD))[0] == 200
        until(lambda: scrape(proxy, "authproxy_decisions_total") == 1, "the decision counted")
        directory = metrics_directory(tmp_path / "tmp")
        (directory / "1.json").write_bytes(b"\x00garbage")
        (directory / "2.json").mkdir()
        for _ in range(6):
            assert scrape(proxy, "authproxy_decisions_total") == 1  # scrape asserts the 200
