"""The soak's processes and files: nginx's and authproxy's configuration, authproxy
started and stopped from a thread (:class:`Service`), and the RSS and fds of its processes."""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from soak_model import POLICIES

from authproxy.dev import devharness
from tests.jwks_server import JwksServer

AUDIENCE = "authproxy-soak"
JWKS_UPDATE_INTERVAL = 2  # seconds: short, so that the JWKS chaos meets real fetches


def nginx_conf(prefix: Path, port: int, app_port: int, tls: dict[str, Path] | None) -> str:
    """An http {} body: nginx's own tiny app on ``app_port``, and a site on ``port`` (TLS with
    ``tls``' dev certificates, as the demo serves) with one location per policy, protected by
    the repository's snippets verbatim."""
    listen = f"127.0.0.1:{port} ssl" if tls else f"127.0.0.1:{port}"
    certificates = (f"ssl_certificate {tls['cert']};\n        ssl_certificate_key {tls['key']};"
                    if tls else "")
    snippets = devharness.nginx_snippets()
    locations = []
    for path, policy in POLICIES.items():
        policy_line = f'set $authproxy_policy "{policy}";' if policy else ""
        locations.append(f"""        location {path} {{
            {policy_line}
            include {snippets}/authproxy-protect.conf;
            proxy_set_header Connection "";
            proxy_pass http://soak_app;
        }}""")
    body = "\n".join(locations)
    return f"""    include {prefix}/authproxy-upstream.conf;
    upstream soak_app {{
        server 127.0.0.1:{app_port};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{app_port};
        location / {{ return 200 "ok\\n"; }}
    }}
    server {{
        listen {listen};
        {certificates}
        proxy_http_version 1.1;
        include {snippets}/authproxy-auth.conf;
        include {snippets}/authproxy-errors.conf;
{body}
    }}
"""


def authproxy_config(work: Path, address: str, jwks: JwksServer) -> str:
    return f"""[server]
listen = ["{address}"]
workers = 2

[log]
level = "info"
format = "json"

[basic]
users_file = "{work}/users.htpasswd"
groups_file = "{work}/groups"
max_failures = 1000000000

[jwt]
jwks_endpoint = "{jwks.url}"
jwks_ssl_ca_certificate = "{jwks.ca_file}"
jwks_update_interval = {JWKS_UPDATE_INTERVAL}
jwks_require_audience = ["{AUDIENCE}"]
"""


def process_figures(pid: int) -> tuple[float, int]:
    """Resident MB and open fds of ``pid``."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (the supervisor's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # After the command's ")": state, then the parent's pid.
                state, parent = (entry / "stat").read_text().rpartition(")")[2].split()[:2]
                if int(parent) == pid and state != "Z":
                    found.append(int(entry.name))
    return sorted(found)


@dataclass(slots=True)
class Service:
    """authproxy under devharness.running, started and stopped from a thread so that the
    event loop (traffic, the JWKS server) never waits on it."""

    work: Path
    address: str
    config_text: str
    starts: int = 0
    stack: contextlib.ExitStack | None = None
    pid: int = 0

    def start(self) -> None:
        self.starts += 1
        config = self.work / "authproxy.toml"
        config.write_text(self.config_text, encoding="utf-8")
        _, port = devharness.host_port(self.address)
        devharness.wait_until(lambda: devharness.port_is_free(port), f"port {port} free")
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHPROXY_")}
        command = [sys.executable, "-m", "authproxy", "serve", "--config", str(config)]
        ready = [(lambda: devharness.http_status(self.address, "/readyz") == 200,
                  f"authproxy on {self.address} ready")]
        stack = contextlib.ExitStack()
        process = stack.enter_context(devharness.running(
            command, self.work / f"authproxy-{self.starts}.log", ready, env=env, cwd=self.work))
        self.stack, self.pid = stack, process.pid
        devharness.wait_until(lambda: len(children(self.pid)) == 2, "two workers")

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.close()  # SIGTERM, and ProcessFailed unless it exits 0
            self.stack = None

    def figures(self) -> dict[str, Any]:
        supervisor = process_figures(self.pid)
        workers = [process_figures(pid) for pid in children(self.pid)]
        return {"supervisor_pid": self.pid, "workers_pids": children(self.pid),
                "supervisor_rss_mb": round(supervisor[0], 1), "supervisor_fds": supervisor[1],
                "workers_rss_mb": [round(w[0], 1) for w in workers],
                "workers_fds": [w[1] for w in workers]}
