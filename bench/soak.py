"""A soak with chaos (issue 12), run by hand: `make soak MINUTES=N` (10 is the reference run).

Mixed traffic at a fixed rate goes through a real nginx on loopback to authproxy
(``workers = 2``, Basic against a users file of six hash kinds, Bearer against a real HTTPS
JWKS server, tests/jwks_server.py), while named phases, spread evenly over the run, rotate the
signing keys, take the JWKS server down, slow it, make it serve garbage, rewrite the users and
groups files, send SIGHUP, SIGKILL a worker and restart authproxy.

Every request is built from credentials whose right answer follows from the state in force
(who has which password, who is in "admins", which kid tokens are signed with and which kids
authproxy trusts): :func:`soak_model.expected`. A decision is **wrong** when its status is
not that answer. Two allowances, both announced by the soak itself, never inferred from the
answers:

- **Grace** (``--grace``, default 3 s; the key-removal change gets jwks_update_interval
  more): a request whose flight overlaps the first seconds after a state change may get the
  answer for the state before or the state after it, nothing else. A file watcher and a JWKS
  refresh take that long to see the change; a worker must see it after that.
- **The restart window**: from the moment the soak stops authproxy until its /readyz answers
  200 again, plus the grace. nginx's 503 (authproxy-errors.conf) is allowed there and nowhere
  else; any other 5xx, anywhere, is counted.

The report (a table, or ``--json FILE``) gives total requests, wrong decisions (target 0),
5xx outside the window (target 0), transport errors, p50/p99 latency per phase (as the client
sees it, through nginx), and RSS and open fds of the supervisor and its workers at the end of
each phase and just before the restart (target: flat within 10% over each incarnation of the
service, soak_report.FLAT_SPANS). Exit status 0 only when there is no wrong decision and no
5xx outside the window. Loopback only (plain HTTP to nginx, or TLS with ``--tls``); the run
stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import trustme

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # tests.jwks_server: the suite's own controllable JWKS server

# The soak's modules, beside this file (bench/ is sys.path[0] when run as a script).
from soak_chaos import PHASES, Phase, chaos  # noqa: E402
from soak_model import State  # noqa: E402
from soak_report import print_report, report  # noqa: E402
from soak_run import Soak  # noqa: E402
from soak_service import Service, authproxy_config, nginx_conf  # noqa: E402
from soak_traffic import HASH_KINDS, Tokens, groups_text, users_text  # noqa: E402

from authproxy.dev import devharness  # noqa: E402
from authproxy.dev.devcerts import write_dev_certs  # noqa: E402
from tests.jwks_server import JwksServer, signing_key  # noqa: E402


async def run(work: Path, seconds: float, rate: float, grace: float, seed: int,
              use_tls: bool, phases: tuple[Phase, ...] = PHASES) -> Soak:
    ca = trustme.CA()
    ca_file = work / "jwks-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    jwks = JwksServer(ca, ca_file)
    keys = {kid: signing_key("RS256", kid, name=f"soak-{kid}") for kid in ("k1", "k2")}
    jwks.serve(keys["k1"])
    await jwks.start()
    passwords = {user: f"{user}-{uuid.uuid4().hex[:10]}" for user in HASH_KINDS if user != "gina"}
    state = State(passwords, frozenset({"alice"}), "k1", frozenset({"k1"}))
    (work / "users.htpasswd").write_text(users_text(passwords))
    (work / "groups").write_text(groups_text(state.admins))
    ports = devharness.PortPool()
    port, app_port, authproxy_port = ports.free_ports(3)
    address = f"127.0.0.1:{authproxy_port}"
    service = Service(work, address, authproxy_config(work, address, jwks))
    tokens = Tokens(keys, signing_key("RS256", "k1", name="soak-forger"), int(seconds) + 3600)
    soak = Soak(work, seconds, rate, grace, random.Random(seed), jwks, service, tokens, state,
                state)
    prefix = work / "nginx"
    prefix.mkdir()
    upstream = (devharness.nginx_snippets() / devharness.UPSTREAM_SNIPPET).read_text()
    (prefix / devharness.UPSTREAM_SNIPPET).write_text(devharness.render_upstream(upstream, address))
    tls = write_dev_certs(work / "tls", ("localhost", "127.0.0.1")) if use_tls else None
    user = "root" if os.geteuid() == 0 else None
    conf = devharness.write_nginx_conf(prefix, devharness.nginx_main_conf(
        nginx_conf(prefix, port, app_port, tls), prefix, user=user, worker_connections=1024))
    try:
        await asyncio.to_thread(service.start)
        with devharness.start_nginx(conf, prefix, port):
            soak.started = time.monotonic()
            url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
            await asyncio.gather(soak.traffic(url, soak.started + seconds, tls),
                                 chaos(soak, phases))
    finally:
        await asyncio.to_thread(service.stop)
        await jwks.close()
    return soak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, help="overrides --minutes (the smoke test)")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--grace", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--phases", default=",".join(p.name for p in PHASES),
                        help="a comma-separated subset of the phases, in the order given")
    parser.add_argument("--tls", action="store_true", help="TLS to nginx (dev certificates)")
    parser.add_argument("--json", type=Path, help="also write the report here, as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    by_name = {phase.name: phase for phase in PHASES}
    unknown = [name for name in args.phases.split(",") if name not in by_name]
    if unknown:
        parser.error(f"unknown phases {unknown}; known: {', '.join(by_name)}")
    phases = tuple(by_name[name] for name in args.phases.split(","))
    work = Path(tempfile.mkdtemp(prefix="authproxy-soak-"))
    # SIGTERM as Ctrl-C: the run unwinds and stops its nginx, authproxy and JWKS server,
    # which the default action (exit at once) would leave running.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        soak = asyncio.run(run(work, seconds, args.rate, args.grace, args.seed, args.tls,
                               phases))
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
    figures = report(soak)
    print_report(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if figures["wrong"] == 0 and figures["5xx_outside_window"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
