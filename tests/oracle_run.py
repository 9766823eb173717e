"""The oracle's run: generated requests (tests/oracle_traffic.py) sent through a real nginx
to authproxy, each answer compared with :mod:`tests.oracle`'s prediction; the site, the
service, and ``make oracle`` (:func:`main`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from .conftest import toml_text
from .oracle import Expected
from .oracle_traffic import Request, generate
from .oracle_world import CHUNK, POLICIES, World, make_world
from .servers import (
    NGINX_DIR,
    free_port,
    render_upstream,
    start_authproxy,
    start_echo_upstream,
    start_nginx,
)


@dataclass(frozen=True, slots=True)
class Disagreement:
    request: Request
    policy: str
    expected: Expected
    observed: Expected

    def describe(self) -> str:
        r = self.request
        return (f"#{r.index} {r.label} at /p{r.location}/ (policy {self.policy!r}): "
                f"oracle {self.expected.status} {dict(self.expected.headers)} "
                f"{self.expected.challenge}, authproxy via nginx {self.observed.status} "
                f"{dict(self.observed.headers)} {self.observed.challenge}")


@dataclass(slots=True)
class Report:
    seed: int
    requests: int = 0
    seconds: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    disagreements: list[Disagreement] = field(default_factory=list)

    def summary(self) -> str:
        rate = self.requests / self.seconds if self.seconds else 0.0
        return (f"oracle seed={self.seed}: {self.requests} requests in {self.seconds:.1f} s "
                f"({rate:.0f}/s through nginx), answers {dict(sorted(self.statuses.items()))}, "
                f"{len(self.disagreements)} disagreements")


_CHALLENGE = re.compile(r"(?:^|,)\s*([A-Za-z]+) realm=")
_FORGED = (("X-Auth-User", "admin"), ("X-Auth-Groups", "admins"), ("X-Auth-Method", "basic"))


def _sent_headers(expected: Expected) -> dict[str, str]:
    """What the app sees: nginx leaves out an identity header whose value is empty."""
    return {k: v for k, v in expected.headers.items() if v}


async def _observe(session: aiohttp.ClientSession, base_url: str, request: Request) -> Expected:
    headers = list(_FORGED) if request.forged_headers else []
    if request.authorization is not None:
        headers.append(("Authorization", request.authorization))
    url = f"{base_url}/p{request.location}/r{request.index}"
    async with session.get(url, headers=headers, allow_redirects=False) as response:
        body = await response.read()
        if response.status == 401:
            challenge = ",".join(response.headers.getall("WWW-Authenticate", []))
            return Expected(401, challenge=tuple(s.lower() for s in _CHALLENGE.findall(challenge)))
        if response.status != 200:
            return Expected(response.status)
    echoed = json.loads(body)
    seen: dict[str, str] = {}
    for name, value in echoed["headers"]:
        if name.lower().startswith("x-auth-"):
            # the echo reads header bytes as latin-1; authproxy sends UTF-8
            text = value.encode("latin-1").decode("utf-8")
            seen[name] = f"{seen[name]} | {text}" if name in seen else text
    return Expected(200, seen)


def agrees(expected: Expected, observed: Expected) -> bool:
    if expected.status != observed.status:
        return False
    if expected.status == 401:
        return expected.challenge == observed.challenge
    if expected.status != 200:
        return True
    want, got = _sent_headers(expected), dict(observed.headers)
    for name, separator in (("X-Auth-Groups", ","), ("X-Auth-Scopes", " ")):
        if name in want and name in got:  # a set: the contract does not order them
            want[name] = ",".join(sorted(want[name].split(separator)))
            got[name] = ",".join(sorted(got[name].split(separator)))
    return want == got


def predict_all(world: World, requests: list[Request], now: float) -> list[Expected]:
    return [world.oracle.predict(POLICIES[r.location], r.authorization, now) for r in requests]


async def run_traffic(world: World, base_url: str, count: int, seed: int,
                      concurrency: int = 8) -> Report:
    """Send ``count`` generated requests through nginx at ``base_url``, ``concurrency`` at
    a time; the oracle's predictions are made (in a thread: htpasswd runs) before each
    chunk is sent, with the time the chunk's tokens were minted at."""
    rng = random.Random(seed)
    report = Report(seed)
    history: list[str] = []
    started = time.perf_counter()
    limit = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        for start in range(0, count, CHUNK):
            requests = generate(rng, world, start, min(CHUNK, count - start), history)
            expected = await asyncio.to_thread(predict_all, world, requests, time.time())

            async def one(request: Request) -> Expected:
                async with limit:
                    return await _observe(session, base_url, request)

            observed = await asyncio.gather(*(one(r) for r in requests))
            for request, want, got in zip(requests, expected, observed, strict=True):
                report.statuses[got.status] += 1
                if not agrees(want, got):
                    report.disagreements.append(
                        Disagreement(request, POLICIES[request.location], want, got))
            report.requests += len(requests)
    report.seconds = time.perf_counter() - started
    return report


# -- the site ------------------------------------------------------------------------------


def site_conf(port: int, upstream_conf: Path, app_address: str) -> str:
    """An http {} body: one location ``/p<i>/`` per policy of POLICIES, with the
    repository's snippets, proxying to the echo app."""
    locations = "".join(f"""
        location /p{i}/ {{
            set $authproxy_policy "{policy}";
            include {NGINX_DIR}/authproxy-protect.conf;
            proxy_pass http://oracle_app;
        }}
""" for i, policy in enumerate(POLICIES))
    return f"""    include {upstream_conf};
    upstream oracle_app {{
        server {app_address};
    }}
    server {{
        listen 127.0.0.1:{port};
        large_client_header_buffers 4 64k;
        include {NGINX_DIR}/authproxy-auth.conf;
{locations}
    }}
"""


@contextmanager
def oracle_site(authproxy_address: str, prefix: Path) -> Iterator[str]:
    """nginx asking ``authproxy_address`` in front of an echo app; yields its base URL."""
    prefix.mkdir(parents=True, exist_ok=True)
    upstream_conf = prefix / "authproxy-upstream.conf"
    upstream_conf.write_text(render_upstream(authproxy_address), encoding="utf-8")
    with start_echo_upstream() as echo:
        port = free_port()
        with start_nginx(site_conf(port, upstream_conf, echo.address), prefix, port,
                         access_log=False) as nginx:
            yield f"http://127.0.0.1:{port}"
        nginx.assert_error_log_clean()


@contextmanager
def oracle_service(world: World) -> Iterator[str]:
    """``authproxy serve`` (a process) with the world's config, behind the oracle's nginx."""
    with (start_authproxy(toml_text(world.sections), [f"127.0.0.1:{free_port()}"],
                          world.directory / "authproxy") as proxy,
          oracle_site(proxy.tcp_address, world.directory / "nginx") as base_url):
        yield base_url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.oracle", description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    print(f"oracle seed={seed} (repeat with --seed {seed})", flush=True)
    with tempfile.TemporaryDirectory(prefix="authproxy-oracle-") as directory:
        world = make_world(Path(directory), seed)
        with oracle_service(world) as base_url:
            report = asyncio.run(run_traffic(world, base_url, args.requests, seed,
                                             args.concurrency))
    for disagreement in report.disagreements[:50]:
        print(disagreement.describe(), file=sys.stderr)
    print(report.summary())
    return 1 if report.disagreements else 0
