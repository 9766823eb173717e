"""The soak's chaos: the actions that change the world under the load, and the named phases
that schedule them (:data:`PHASES`, :func:`chaos`)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from soak_run import Soak
from soak_service import JWKS_UPDATE_INTERVAL, children
from soak_traffic import groups_text, users_text, write_atomically

from authproxy.dev import devharness

Action = Callable[[Soak], Awaitable[None]]


async def nothing(soak: Soak) -> None:
    return None


async def rotate_begin(soak: Soak) -> None:
    fetches = soak.jwks.fetches
    soak.jwks.serve(soak.tokens.keys["k1"], soak.tokens.keys["k2"])
    await soak.jwks.wait_for_fetches(fetches + 2, timeout=6 * JWKS_UPDATE_INTERVAL)
    soak.change("sign with k2 (k1 and k2 published)",
                replace(soak.state, signing="k2", trusted=frozenset({"k1", "k2"})))


async def rotate_middle(soak: Soak) -> None:
    soak.jwks.serve(soak.tokens.keys["k2"])
    soak.change("k1 removed from the JWKS", replace(soak.state, trusted=frozenset({"k2"})),
                grace=soak.grace + JWKS_UPDATE_INTERVAL)


async def flap_begin(soak: Soak) -> None:
    await soak.jwks.stop()
    soak.log("JWKS server down")


async def flap_middle(soak: Soak) -> None:
    await soak.jwks.start()
    soak.log("JWKS server up")


async def slow_begin(soak: Soak) -> None:
    soak.jwks.hold = True
    soak.log("JWKS answers held until the phase ends")


async def slow_end(soak: Soak) -> None:
    soak.jwks.hold = False
    soak.jwks.release()


async def garbage_begin(soak: Soak) -> None:
    soak.jwks.body = b"<html>502 Bad Gateway</html>"
    soak.log("JWKS serves HTML")


async def garbage_middle(soak: Soak) -> None:
    soak.jwks.body = b'{"keys": "none"}'
    soak.log("JWKS serves JSON of the wrong shape")


async def garbage_end(soak: Soak) -> None:
    soak.jwks.body = None


async def users_begin(soak: Soak) -> None:
    passwords = dict(soak.state.passwords)
    passwords["bob"] = "bob-new-" + uuid.uuid4().hex[:8]
    passwords["gina"] = "gina-" + uuid.uuid4().hex[:8]
    del passwords["frank"]
    text = await asyncio.to_thread(users_text, passwords)
    write_atomically(soak.work / "users.htpasswd", text)
    soak.change("bob's password changed, gina added, frank removed",
                replace(soak.state, passwords=passwords))


async def sighup_begin(soak: Soak) -> None:
    os.kill(soak.service.pid, signal.SIGHUP)
    soak.log("SIGHUP, nothing changed")


async def sighup_middle(soak: Soak) -> None:
    admins = soak.state.admins | {"bob"}
    write_atomically(soak.work / "groups", groups_text(admins))
    os.kill(soak.service.pid, signal.SIGHUP)
    soak.change("bob joins admins, SIGHUP", replace(soak.state, admins=admins))


async def kill_begin(soak: Soak) -> None:
    victim = children(soak.service.pid)[0]
    os.kill(victim, signal.SIGKILL)
    killed = time.monotonic()
    soak.log(f"SIGKILL worker {victim}")

    def replaced() -> bool:
        workers = children(soak.service.pid)
        return len(workers) == 2 and victim not in workers

    await asyncio.to_thread(devharness.wait_until, replaced, "a replacement worker")
    soak.log(f"worker replaced after {time.monotonic() - killed:.2f} s")


async def restart_begin(soak: Soak) -> None:
    soak.sample("before restart")
    start = time.monotonic()
    soak.log("restart announced: authproxy stopping")
    await asyncio.to_thread(soak.service.stop)
    await asyncio.to_thread(soak.service.start)
    soak.verdicts.windows.append((start, time.monotonic() + soak.grace))
    soak.log(f"authproxy ready again after {time.monotonic() - start:.2f} s")


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    begin: Action = nothing
    middle: Action = nothing
    end: Action = nothing


PHASES = (
    Phase("steady"),
    Phase("jwks-rotate", rotate_begin, rotate_middle),
    Phase("jwks-flap", flap_begin, flap_middle),
    Phase("jwks-slow", slow_begin, end=slow_end),
    Phase("jwks-garbage", garbage_begin, garbage_middle, garbage_end),
    Phase("users-rewrite", users_begin),
    Phase("sighup", sighup_begin, sighup_middle),
    Phase("worker-kill", kill_begin),
    Phase("restart", restart_begin),
    Phase("steady-end"),
)


async def chaos(soak: Soak, phases: tuple[Phase, ...]) -> None:
    length = soak.seconds / len(phases)
    for index, phase in enumerate(phases):
        start = soak.started + index * length
        soak.phase = phase.name
        soak.log("phase begins")
        await phase.begin(soak)
        await asyncio.sleep(max(0.0, start + length / 2 - time.monotonic()))
        await phase.middle(soak)
        await asyncio.sleep(max(0.0, start + length - time.monotonic()))
        await phase.end(soak)
        soak.sample(f"end of {phase.name}")
