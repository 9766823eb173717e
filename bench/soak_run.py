"""The soak's run: its state, what it announced and what it saw (:class:`Soak`), and the
load at a fixed rate that records every outcome. bench/soak.py's ``run`` builds one and runs
it under soak_chaos's phases."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from soak_model import Change, Outcome, State, Verdicts
from soak_service import Service
from soak_traffic import Tokens, draw, headers_for

from tests.jwks_server import JwksServer

MAX_INFLIGHT = 64  # the client's bound: a slot-less tick is counted as shed, never queued
REQUEST_TIMEOUT = 10.0
STALL = 0.25  # seconds late a tick of the load may be before the report says so


@dataclass(slots=True)
class Soak:
    work: Path
    seconds: float
    rate: float
    grace: float
    rng: random.Random
    jwks: JwksServer
    service: Service
    tokens: Tokens
    state: State
    first: State
    phase: str = "starting"
    outcomes: list[Outcome] = field(default_factory=list)
    verdicts: Verdicts = field(default_factory=Verdicts)
    shed: int = 0
    stalled: int = 0  # ticks the soak's own loop missed (it was busy), not sent
    samples: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)
    started: float = 0.0

    def change(self, name: str, state: State, grace: float | None = None) -> None:
        self.verdicts.changes.append(Change(name, time.monotonic(),
                                            self.grace if grace is None else grace,
                                            self.state, state))
        self.state = state
        self.log(f"state change: {name}")

    def log(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:7.1f} s  [{self.phase}] {what}")

    async def traffic(self, url: str, until: float, tls: dict[str, Path] | None) -> None:
        inflight: set[asyncio.Task[None]] = set()
        context = ssl.create_default_context(cafile=str(tls["ca"])) if tls else None
        connector = aiohttp.TCPConnector(limit=MAX_INFLIGHT, ssl=context or False)
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            tick = time.monotonic()
            while tick < until:
                await asyncio.sleep(max(0.0, tick - time.monotonic()))
                late = time.monotonic() - tick
                if late > STALL:  # no burst to catch up: the rate stays what it says
                    self.log(f"the soak's own event loop stalled {late:.2f} s")
                    self.stalled += int(late * self.rate)
                    tick = time.monotonic()
                tick += 1 / self.rate
                if len(inflight) >= MAX_INFLIGHT:
                    self.shed += 1
                    continue
                task = asyncio.create_task(self.one(session, url))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            if inflight:
                await asyncio.wait(inflight)

    async def one(self, session: aiohttp.ClientSession, url: str) -> None:
        path, credential = draw(self.state, self.first, self.rng)
        state, phase = self.state, self.phase
        headers = headers_for(credential, self.tokens, self.rng)
        sent = time.monotonic()
        try:
            async with session.get(url + path, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            status = 0
        self.outcomes.append(Outcome(phase, path, credential, state, sent, time.monotonic(),
                                     status))

    def sample(self, name: str) -> None:
        self.samples[name] = self.service.figures()
