"""The soak's report: outcomes judged and counted, latency per phase, resources flat over
each incarnation of the service; as a dict (the --json file) and as tables."""

from __future__ import annotations

import statistics
from typing import Any

from soak_model import Basic, Bearer, Credential
from soak_run import Soak

FLAT = 0.10  # RSS and fds may move this much between samples


def kind_of(credential: Credential) -> str:
    """A credential's kind, for latency by kind: basic, bearer-<kind>-<kid>, malformed, none."""
    if isinstance(credential, Basic):
        return "basic"
    if isinstance(credential, Bearer):
        return f"bearer-{credential.kind}-{credential.kid}"
    return "malformed" if credential is not None else "none"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else 0.0


def report(soak: Soak) -> dict[str, Any]:
    counts: dict[str, int] = {}
    phases: dict[str, dict[str, Any]] = {}
    wrong_examples: list[str] = []
    statuses: dict[str, int] = {}
    for outcome in soak.outcomes:
        verdict = soak.verdicts.judge(outcome)
        counts[verdict] = counts.get(verdict, 0) + 1
        statuses[str(outcome.status)] = statuses.get(str(outcome.status), 0) + 1
        phase = phases.setdefault(outcome.phase, {"requests": 0, "latencies": [], "bad": 0,
                                                  "by_kind": {}})
        phase["requests"] += 1
        latency = (outcome.done - outcome.sent) * 1000
        phase["latencies"].append(latency)
        phase["by_kind"].setdefault(kind_of(outcome.credential), []).append(latency)
        if verdict in ("wrong", "5xx", "error"):
            phase["bad"] += 1
            if len(wrong_examples) < 20:
                wrong_examples.append(
                    f"{verdict}: {outcome.status} for {outcome.path} {outcome.credential!r}, "
                    f"expected {sorted(soak.verdicts.allowed(outcome))}, at "
                    f"{outcome.sent - soak.started:.2f} s")
    for phase in phases.values():
        latencies = phase.pop("latencies")
        phase["p50_ms"] = round(statistics.median(latencies), 1)
        phase["p99_ms"] = round(percentile(latencies, 0.99), 1)
        slowest, values = max(phase.pop("by_kind").items(),
                              key=lambda item: percentile(item[1], 0.99))
        phase["slowest_kind"] = f"{slowest} (p99 {percentile(values, 0.99):.1f} ms)"
    flat = {f"{first} -> {last}": resources_flat(soak.samples[first], soak.samples[last])
            for first, last in FLAT_SPANS if same_service(soak.samples, first, last)}
    return {
        "seconds": soak.seconds, "rate": soak.rate, "grace_s": soak.grace,
        "requests": len(soak.outcomes), "statuses": dict(sorted(statuses.items())),
        "shed_by_client": soak.shed, "missed_in_client_stalls": soak.stalled,
        "wrong": counts.get("wrong", 0), "5xx_outside_window": counts.get("5xx", 0),
        "errors_outside_window": counts.get("error", 0),
        "window_503": counts.get("window-503", 0), "window_errors": counts.get("window-error", 0),
        "phases": phases, "resources": soak.samples, "flat": flat,
        "events": soak.events, "bad_examples": wrong_examples,
    }


# Spans over which one service's processes are compared (those the run sampled, both ends
# from the same supervisor): the first incarnation from the end of the warm-up to the moment
# before the restart; the same from the end of the reloads (before server.tune_malloc, each
# thread that verified or timed an argon2id hash kept its 8 MiB: workers grew by 8 MB steps
# at reloads); the second incarnation; and a run without a restart (--phases).
FLAT_SPANS = (("end of steady", "before restart"), ("end of sighup", "before restart"),
              ("end of restart", "end of steady-end"), ("end of steady", "end of steady-end"))


def same_service(samples: dict[str, dict[str, Any]], first: str, last: str) -> bool:
    return (first in samples and last in samples
            and samples[first]["supervisor_pid"] == samples[last]["supervisor_pid"])


def resources_flat(before: dict[str, Any], after: dict[str, Any]) -> bool:
    """Whether the supervisor's RSS and fds and the workers' summed RSS grew by at most FLAT.
    The workers' fds are not compared: they follow the connections nginx keeps open (up to
    its upstream keepalive of 32) and the ones in flight."""
    pairs = [(before["supervisor_rss_mb"], after["supervisor_rss_mb"]),
             (before["supervisor_fds"], after["supervisor_fds"]),
             (sum(before["workers_rss_mb"]), sum(after["workers_rss_mb"]))]
    return all(last <= first * (1 + FLAT) for first, last in pairs)


def print_report(figures: dict[str, Any]) -> None:
    print(f"\nsoak: {figures['seconds']:.0f} s at {figures['rate']:.0f} req/s, "
          f"grace {figures['grace_s']} s\n")
    for line in figures["events"]:
        print(line)
    print("\n| phase | requests | bad | p50 ms | p99 ms | slowest kind |\n"
          "|---|---:|---:|---:|---:|---|")
    for name, phase in figures["phases"].items():
        print(f"| {name} | {phase['requests']} | {phase['bad']} | {phase['p50_ms']} | "
              f"{phase['p99_ms']} | {phase['slowest_kind']} |")
    print("\n| total requests | wrong decisions | 5xx outside window | transport errors outside "
          "window | nginx 503 in window | errors in window | shed by client |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {figures['requests']} | {figures['wrong']} | {figures['5xx_outside_window']} | "
          f"{figures['errors_outside_window']} | {figures['window_503']} | "
          f"{figures['window_errors']} | {figures['shed_by_client']} |")
    print("\nstatuses (0: no answer): " + ", ".join(
        f"{status}: {count}" for status, count in figures["statuses"].items()))
    print(f"ticks missed while the soak's own loop stalled: {figures['missed_in_client_stalls']}")
    print("\n| sample | supervisor pid | RSS MB | fds | workers pids | workers RSS MB | "
          "workers fds |\n|---|---:|---:|---:|---|---|---|")
    for name, sample in figures["resources"].items():
        print(f"| {name} | {sample['supervisor_pid']} | {sample['supervisor_rss_mb']} | "
              f"{sample['supervisor_fds']} | {sample['workers_pids']} | "
              f"{sample['workers_rss_mb']} | {sample['workers_fds']} |")
    for span, flat in figures["flat"].items():
        print(f"flat within {FLAT:.0%} (supervisor RSS and fds, workers' RSS), {span}: {flat}")
    for example in figures["bad_examples"]:
        print(example)
