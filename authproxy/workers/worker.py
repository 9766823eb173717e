"""One worker process of a multi-worker service (server.workers > 1); see supervisor.py.

Started by the supervisor as ``python -c PROGRAM CONTROL_FD LISTEN_FD...``: it reads its
bootstrap from the control channel, then serves the inherited listening sockets exactly as
the single-process service does (same app, same signals, same drain on SIGTERM), with its
metrics in the shared directory and the endpoint's key set from the supervisor. From its
event loop it sends the supervisor a heartbeat (protocol.Heartbeat) until it exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Sequence

from ..cluster.ipc import MasterLink, heartbeat_interval
from ..cluster.protocol import Heartbeat
from ..errors import UserFileError
from ..http.server import event_loop, run
from ..obs.logs import setup_logging

log = logging.getLogger("authproxy.workers")

PROGRAM = "import sys; from authproxy.workers.worker import main; sys.exit(main(sys.argv[1:]))"


def main(argv: Sequence[str]) -> int:
    """Run one worker; ``argv``: the control channel's fd, then the listening sockets' fds."""
    control_fd, *listen_fds = (int(arg) for arg in argv)
    with event_loop() as runner:
        return runner.run(_serve(control_fd, listen_fds))


async def _serve(control_fd: int, listen_fds: list[int]) -> int:
    config, worker = await MasterLink.open(control_fd)
    link = worker.link
    setup_logging(config.log)
    link.start(on_lost=_supervisor_gone)
    beating = asyncio.create_task(
        _beat(link, heartbeat_interval(config.server.worker_timeout)))
    sockets = [socket.socket(fileno=fd) for fd in listen_fds]
    try:
        return await run(config, sockets, worker)
    except UserFileError as exc:  # the file broke after the supervisor checked it
        log.error("worker cannot start", extra={"event": "worker_error", "error": str(exc)})
        return 1
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        await link.close()


async def _beat(link: MasterLink, interval: float) -> None:
    # A task on the serving loop, not a thread: a loop blocked by a stuck handler must fall
    # silent exactly like a stopped process.
    while True:
        link.notify(Heartbeat())
        await asyncio.sleep(interval)


def _supervisor_gone() -> None:
    # Nobody would restart us or publish keys any more: drain and stop like on SIGTERM.
    log.warning("the supervisor went away: stopping", extra={"event": "supervisor_lost"})
    os.kill(os.getpid(), signal.SIGTERM)
