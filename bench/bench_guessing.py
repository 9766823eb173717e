"""Distributed guessing, run by hand (`make bench`): what brute force costs authproxy.

A real ``authproxy serve`` (max_failures 10) is asked directly, as nginx would ask it: each
request from a trusted peer, naming its client in X-Real-IP.

- Many addresses: wrong passwords for one user, each from an address of its own, concurrently.
- One address: the same, from one address.
- Meanwhile, a remembered user keeps asking from its own address: its p99, measured by wrk
  in a process of its own (the guessers' Python client would otherwise be what is measured).
- Timing (SPEC §8.1 rule 7): the median answer to an unknown user and to a wrong password for
  a user of each hash scheme, from a second instance without bans.

Hashes are counted by authproxy's own /metrics (authproxy_password_hash_seconds_count).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from argon2 import PasswordHasher
from passlib.hash import apr_md5_crypt

from authproxy.dev import devharness

HERE = Path(__file__).resolve().parent
MAX_FAILURES = 10
OWNER_CONNECTIONS = 8  # wrk's, for the remembered user asking throughout


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def sha1_entry(password: str) -> str:
    import hashlib

    return "{SHA}" + base64.b64encode(hashlib.sha1(password.encode()).digest()).decode()


def write_users(path: Path) -> None:
    """alice (bcrypt 10, the target), owners (bcrypt 10), and one user per other scheme."""
    import bcrypt

    def bcrypt_entry(password: str) -> str:
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt(10)).decode()

    lines = [f"alice:{bcrypt_entry('wonderland')}", f"bob:{bcrypt_entry('builder')}",
             f"owner:{bcrypt_entry('owner-password')}"]
    lines += [f"apr:{apr_md5_crypt.hash('apr-password')}", f"sha:{sha1_entry('sha-password')}",
              f"argon:{PasswordHasher().hash('argon-password')}"]
    path.write_text("\n".join(lines) + "\n")


@contextlib.contextmanager
def authproxy(tmp: Path, name: str, port: int, max_failures: int) -> Iterator[str]:
    config = tmp / f"{name}.toml"
    config.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\n'
        f'[basic]\nusers_file = "{tmp}/users"\nmax_failures = {max_failures}\n'
        'failure_window = 600\nban_time = 600\n[log]\nlevel = "warning"\n')
    address = f"127.0.0.1:{port}"
    with devharness.running([sys.executable, "-m", "authproxy", "serve", "--config", str(config)],
                            tmp / f"{name}.log",
                            [(lambda: devharness.healthy(address), f"authproxy {name}")],
                            cwd=Path.cwd(), expect_status=None):
        yield f"http://{address}"


async def hashes(session: aiohttp.ClientSession, base: str) -> float:
    async with session.get(f"{base}/metrics") as response:
        text = await response.text()
    found = re.search(r"^authproxy_password_hash_seconds_count (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def ask(session: aiohttp.ClientSession, base: str, user: str, password: str,
              client: str) -> int:
    headers = {"Authorization": basic(user, password), "X-Real-IP": client}
    async with session.get(f"{base}/auth", headers=headers) as response:
        return response.status


def owner_asking(base: str, seconds: int) -> subprocess.Popen[str]:
    """wrk: the remembered user, from its own address, for ``seconds``."""
    return subprocess.Popen(
        ["wrk", "-t1", f"-c{OWNER_CONNECTIONS}", f"-d{seconds}s", "--latency",
         "-H", f"Authorization: {basic('owner', 'owner-password')}",
         "-H", "X-Real-IP: 192.0.2.1", f"{base}/auth"],
        stdout=subprocess.PIPE, text=True)


def wrk_figures(process: subprocess.Popen[str]) -> tuple[float, float]:
    """(requests/s, p99 ms) of a finished wrk; raise if any answer was not 200."""
    out, _ = process.communicate()
    if re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        raise RuntimeError(f"the remembered user was refused:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return rps, float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


async def guessing(session: aiohttp.ClientSession, base: str, user: str, seconds: float,
                   concurrency: int, rate: float, addresses: Iterator[str]) -> tuple[int, float]:
    """Wrong passwords for ``user`` for ``seconds``, ``concurrency`` at a time, ``rate`` a
    second at most (0: as fast as they go), each from the next of ``addresses``. Returns
    (guesses sent, hashes computed)."""
    before = await hashes(session, base)
    counter = itertools.count()
    started = time.monotonic()
    deadline = started + seconds

    async def guesser() -> None:
        while time.monotonic() < deadline:
            i = next(counter)
            if rate:
                await asyncio.sleep(started + i / rate - time.monotonic())
            if await ask(session, base, user, f"guess-{i}", next(addresses)) != 401:
                raise RuntimeError("a wrong password passed")
    await asyncio.gather(*(guesser() for _ in range(concurrency)))
    return next(counter), await hashes(session, base) - before


async def timing(session: aiohttp.ClientSession, base: str, rounds: int) -> dict[str, float]:
    """Median ms of a refused password per kind of user, interleaved round by round."""
    kinds = {"unknown user": "nobody", "bcrypt-10 user": "alice", "apr1 user": "apr",
             "{SHA} user": "sha", "argon2id user": "argon"}
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    for round_no in range(rounds):
        for kind, user in kinds.items():
            started = time.perf_counter()
            await ask(session, base, user, f"wrong-{round_no}", "203.0.113.1")
            samples[kind].append((time.perf_counter() - started) * 1000)
    return {kind: statistics.median(values) for kind, values in samples.items()}


async def run(tmp: Path, seconds: int, concurrency: int, rate: float, rounds: int) -> None:
    ports = devharness.PortPool().free_ports(2)
    connector = aiohttp.TCPConnector(limit=concurrency + 4)
    with (authproxy(tmp, "guarded", ports[0], MAX_FAILURES) as guarded,
          authproxy(tmp, "unguarded", ports[1], 10**9) as unguarded):
        async with aiohttp.ClientSession(connector=connector) as session:
            # remembered, and its address known, from now on
            assert await ask(session, guarded, "owner", "owner-password", "192.0.2.1") == 200
            rows = []
            for label, user, addresses in (
                ("many addresses", "alice", (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
                                             for i in itertools.count(1))),
                ("one address", "bob", itertools.repeat("198.51.100.7")),
            ):
                owner = owner_asking(guarded, seconds)
                sent, computed = await guessing(session, guarded, user, seconds, concurrency,
                                                rate, addresses)
                rps, tail = await asyncio.to_thread(wrk_figures, owner)
                rows.append((label, sent, computed, rps, tail))
            medians = await timing(session, unguarded, rounds)

    pace = f"at most {rate:,.0f}/s" if rate else "as fast as they go"
    print(f"\nwrong passwords for one user (alice, then bob) for {seconds} s each, "
          f"{concurrency} at a time, {pace}, max_failures {MAX_FAILURES}; meanwhile a "
          "remembered user "
          f"(wrk -c{OWNER_CONNECTIONS}, its own address)\n")
    print("| guesses from | guesses | hashes computed | per 1,000 guesses | "
          "remembered user req/s | its p99 ms |\n|---|---:|---:|---:|---:|---:|")
    for label, sent, computed, rps, tail in rows:
        print(f"| {label} | {sent:,} | {computed:.0f} | {computed * 1000 / sent:.2f} | "
              f"{rps:,.0f} | {tail:.2f} |")
    unknown = medians["unknown user"]
    print(f"\nrefused-password medians over {rounds} interleaved rounds (SPEC §8.1 rule 7: "
          "within 10% of the unknown user's)\n")
    print("| user | median ms | / unknown user |\n|---|---:|---:|")
    for kind, median in medians.items():
        print(f"| {kind} | {median:.1f} | {median / unknown:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=5, help="of guessing, per scenario")
    parser.add_argument("--rate", type=float, default=2000,
                        help="guesses a second (0: as fast as one Python client sends them, "
                             "which takes a core of the two)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30, help="of the timing comparison")
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="authproxy-bench-guessing-"))
    try:
        write_users(tmp / "users")
        asyncio.run(run(tmp, args.seconds, args.concurrency, args.rate, args.rounds))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
