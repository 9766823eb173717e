"""``authproxy demo``: authproxy behind a real nginx over TLS, on loopback, in one command.

Starts a demo app, a local token issuer, authproxy (the real CLI, as a subprocess) and nginx
(with the nginx snippets, of the checkout or of the installed package, the upstream one
pointed at the demo's port), then prints curl lines to try.
Ctrl-C stops everything. ``--check`` runs those lines itself and exits 0 only if each gives
the status it promises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from ..htpasswd.userfile import add_user
from . import devharness
from .devcerts import dev_cert_paths, write_dev_certs, write_private
from .devissuer import (
    DEFAULT_AUDIENCE,
    create_issuer_app,
    load_or_create_key,
    mint,
    record_issuer,
)

PREFERRED_HTTPS_PORT = 8443


@dataclass(frozen=True)
class Probe:
    """One curl line printed for the user, and the status it should give."""

    what: str
    path: str
    status: int
    user: str = ""  # "name:password" for Basic
    header_file: Path | None = None  # an "Authorization: Bearer ..." line, for curl -H @file

    def curl(self, base: str, ca: Path) -> str:
        parts = ["curl", "-i", "--cacert", _shown(ca)]
        if self.user:
            parts += ["-u", self.user]
        if self.header_file:
            parts += ["-H", f"@{_shown(self.header_file)}"]
        return shlex.join([*parts, base + self.path])


def _shown(path: Path) -> str:
    """A path as the user would type it: relative when under the current directory."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def find_snippets() -> Path:
    """The nginx snippets: the checkout's nginx/, or the installed package's copy."""
    try:
        return devharness.nginx_snippets()
    except FileNotFoundError as exc:
        raise SystemExit(f"authproxy demo: {exc}") from None


def find_nginx() -> str:
    found = devharness.find_nginx()
    if not found:
        raise SystemExit("authproxy demo: nginx is not installed (`make demo` installs it)")
    return found


# Not nginx's combined format: it logs $remote_user (any Basic user-id sent) and queries.
SAFE_LOG_FORMAT = ("log_format authproxy_safe "
                   "'$remote_addr [$time_local] \"$request_method $uri $server_protocol\" ' "
                   "'$status $body_bytes_sent';")


def nginx_conf(
    work: Path, snippets: Path, https_port: int, app_port: int, certs: dict[str, Path]
) -> str:
    location = """
        location {path} {{
            {policy}include {snippets}/authproxy-protect.conf;
            proxy_set_header Host $host;
            proxy_set_header Connection "";
            proxy_pass http://demo_app;
        }}"""
    locations = "".join(
        location.format(path=path, snippets=snippets,
                        policy=f'set $authproxy_policy "{policy}";\n            ' if policy else "")
        for path, policy in (("/", ""), ("/admin/", "group=admins"),
                             ("/reports/", "scheme=bearer&scope=reports:read"))
    )
    http_conf = f"""    include {work}/{devharness.UPSTREAM_SNIPPET};
    upstream demo_app {{ server 127.0.0.1:{app_port}; keepalive 8; }}
    server {{
        listen 127.0.0.1:{https_port} ssl;
        server_name localhost;
        ssl_certificate {certs["cert"]};
        ssl_certificate_key {certs["key"]};
        proxy_http_version 1.1;
        include {snippets}/authproxy-auth.conf;{locations}
    }}"""
    return devharness.nginx_main_conf(
        http_conf, work, user="nobody nogroup" if os.geteuid() == 0 else None,
        access_log=f"{work}/nginx-access.log authproxy_safe", log_format=SAFE_LOG_FORMAT,
        error_log=work / "nginx-error.log", error_level="warn")


async def echo_app(request: web.Request) -> web.Response:
    """The protected app: says who nginx told it the caller is."""
    names = ("X-Auth-User", "X-Auth-Method", "X-Auth-Groups", "X-Auth-Scopes")
    seen = {name: request.headers.get(name, "") for name in names}
    return web.json_response({"path": request.path, **seen})


@contextlib.asynccontextmanager
async def serving(app: web.Application, port: int) -> AsyncIterator[None]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def started(
    server: contextlib.AbstractContextManager[object], log: Path, name: str
) -> AsyncIterator[None]:
    """``server`` (a devharness context manager) entered and, at the end, left on a thread:
    waiting for it must not stop the event loop that serves the app and the issuer."""
    stack = contextlib.ExitStack()
    try:
        await asyncio.to_thread(stack.enter_context, server)
    except (RuntimeError, TimeoutError) as exc:
        raise SystemExit(f"authproxy demo: {name} did not start ({exc}); see {log}") from None
    try:
        yield
    finally:
        await asyncio.to_thread(stack.close)


def prepare_users(work: Path) -> dict[str, str]:
    """Demo users with generated passwords, kept across runs in ``credentials.json``."""
    creds_file = work / "credentials.json"
    if creds_file.exists():
        return dict(json.loads(creds_file.read_text()))
    creds = {"demo": secrets.token_urlsafe(12), "guest": secrets.token_urlsafe(12)}
    users_file = work / "users.htpasswd"
    users_file.unlink(missing_ok=True)
    for user, password in creds.items():
        add_user(users_file, user, password.encode())
    (work / "groups").write_text("admins: demo\n")
    write_private(creds_file, json.dumps(creds).encode())
    return creds


async def run(work: Path, check: bool) -> int:
    nginx, snippets = find_nginx(), find_snippets()
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # nginx's workers drop root privileges
    certs = dev_cert_paths(work / "certs")  # made once, kept across runs
    if not certs["ca"].exists():
        write_dev_certs(work / "certs")
    creds = prepare_users(work)
    ports = devharness.PortPool()
    https_port = PREFERRED_HTTPS_PORT
    if devharness.port_is_free(https_port):
        ports.take(https_port)
    else:
        https_port = ports.free_port()
        print(f"port {PREFERRED_HTTPS_PORT} is busy; using {https_port} instead")
    app_port, issuer_port, authproxy_port = ports.free_ports(3)
    issuer = f"http://127.0.0.1:{issuer_port}"
    key = load_or_create_key(work / "issuer")
    record_issuer(work / "issuer", issuer)

    (work / "authproxy.toml").write_text(f"""[server]
listen = ["127.0.0.1:{authproxy_port}"]
realm = "authproxy demo"
[log]
format = "text"
[basic]
users_file = "{work}/users.htpasswd"
groups_file = "{work}/groups"
[jwt]
issuer = "{issuer}"
jwks_endpoint = "{issuer}/.well-known/jwks.json"
jwks_require_audience = ["{DEFAULT_AUDIENCE}"]
[admin]
users = ["basic:demo"]
""")
    upstream = devharness.render_upstream(
        (snippets / devharness.UPSTREAM_SNIPPET).read_text(), f"127.0.0.1:{authproxy_port}")
    (work / devharness.UPSTREAM_SNIPPET).write_text(upstream)
    nginx_conf_path = devharness.write_nginx_conf(
        work, nginx_conf(work, snippets, https_port, app_port, certs))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo_app)
    base = f"https://localhost:{https_port}"
    reader, plain = work / "bearer-alice.header", work / "bearer-bob.header"
    write_private(reader, b"Authorization: Bearer " + mint(
        key, issuer=issuer, subject="alice", scopes=["reports:read"], ttl=3600).encode())
    write_private(plain, b"Authorization: Bearer " + mint(
        key, issuer=issuer, subject="bob", ttl=3600).encode())
    probes = [
        Probe("no credentials: 401 with a challenge", "/", 401),
        Probe("Basic, the demo user: 200", "/", 200, user=f"demo:{creds['demo']}"),
        Probe("Basic, wrong password: 401", "/", 401, user="demo:wrong"),
        Probe("Bearer, a token from the dev issuer: 200", "/reports/", 200, header_file=reader),
        Probe("Bearer without the reports:read scope: 403", "/reports/", 403, header_file=plain),
        Probe("Basic user outside group admins: 403", "/admin/", 403,
              user=f"guest:{creds['guest']}"),
        Probe("Basic user in group admins: 200", "/admin/", 200, user=f"demo:{creds['demo']}"),
    ]
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(serving(app, app_port))
        await stack.enter_async_context(serving(create_issuer_app(key, issuer), issuer_port))
        # Processes are stopped in the order opposite to their start, as the servers are.
        # Their exit status is not checked: a terminal's Ctrl-C reaches them too.
        authproxy_address = f"127.0.0.1:{authproxy_port}"
        await stack.enter_async_context(started(devharness.running(
            [sys.executable, "-m", "authproxy", "serve", "--config", str(work / "authproxy.toml")],
            work / "authproxy.log",
            [(lambda: devharness.healthy(authproxy_address), f"authproxy on {authproxy_address}")],
            cwd=Path.cwd(), expect_status=None), work / "authproxy.log", "authproxy"))
        await stack.enter_async_context(started(devharness.start_nginx(
            nginx_conf_path, work, https_port, nginx=nginx, error_log=work / "nginx-error.log",
            expect_status=None), work / "nginx-error.log", "nginx"))
        print(f"\nauthproxy demo: nginx on {base} -> authproxy on 127.0.0.1:{authproxy_port}"
              f" -> app on 127.0.0.1:{app_port}; token issuer on {issuer}")
        print(f"logs in {work}/ (authproxy.log, nginx-error.log)\n")
        for probe in probes:
            print(f"# {probe.what}\n{probe.curl(base, certs['ca'])}\n")
        print("# mint your own token, then: curl ... -H \"Authorization: Bearer $TOKEN\"\n"
              + "TOKEN=$(" + shlex.join([
                  sys.executable, "-m", "authproxy", "dev-issuer", "token", "--dir",
                  _shown(work / "issuer"), "--sub", "carol", "--scope", "reports:read",
                  "--ttl", "1h"]) + ")")
        if check:
            return await run_checks(probes, base, certs["ca"])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print("\nCtrl-C stops everything.", flush=True)
        await stop.wait()
        print("\nstopping")
    return 0


async def run_checks(probes: list[Probe], base: str, ca: Path) -> int:
    """Run each printed curl line (quietly, printing only the status); 0 if all are right."""
    failures = 0
    for probe in probes:
        argv = shlex.split(probe.curl(base, ca))
        argv[1:2] = ["-s", "-o", "/dev/null", "-w", "%{http_code}"]  # in place of -i
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE)
        out, _ = await proc.communicate()
        ok = out.decode().strip() == str(probe.status)
        failures += not ok
        print(f"check: {'ok  ' if ok else 'FAIL'} {probe.what} (got {out.decode().strip()})")
    return 1 if failures else 0


def main(work: str, check: bool) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # for `| tee`
    return asyncio.run(run(Path(work).resolve(), check))
