"""Benchmarks, run by hand (`make bench`): wrk through a real nginx, and direct.

Every figure is the median of interleaved rounds, and the targets are ratios of figures taken
in the same run: this machine is small and shared, absolute numbers drift.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from authproxy.dev import devharness

HERE = Path(__file__).resolve().parent
NGINX = devharness.find_nginx() or "/usr/sbin/nginx"

SERVER = """{upstreams}
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
{locations}
    }}"""
# The auth location as nginx/authproxy-auth.conf has it, less what a benchmark does not need.
# wrk runs on loopback, which is a trusted proxy's address, and that is no client address
# (SPEC 8.1 rule 5): the owner is named 192.0.2.1, as the realip module would name a client.
OWNER = "192.0.2.1"
AUTH_LOCATION = """
        location /{name}/ {{ auth_request /_{name}; }}
        location = /_{name} {{
            internal;
            proxy_pass http://{name}/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Real-IP {owner};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}"""


# The same, for a flood of wrong passwords from an address of its own (an attacker is not the
# owner's address: a ban on the attacker's address must not be measured as the owner's).
FLOOD_LOCATION = """
        location /flood-{name}/ {{ auth_request /_flood-{name}; alias {tmp}/www/{name}/; }}
        location = /_flood-{name} {{
            internal;
            proxy_pass http://{name}/auth;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-Original-URI $request_uri;
            proxy_set_header X-Real-IP 198.51.100.66;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}"""


def nginx_conf(tmp: Path, port: int, auth_upstreams: dict[str, int], extra: str = "") -> str:
    """nginx listening on ``port``, no access log: for each name, an upstream with keepalive
    and a location /name/ serving ``tmp``/www/name/ behind auth_request to that upstream's
    /auth."""
    upstreams = "\n".join(f"    upstream {name} {{ server 127.0.0.1:{p}; keepalive 64; }}"
                          for name, p in auth_upstreams.items())
    locations = "".join(AUTH_LOCATION.format(name=name, owner=OWNER) + FLOOD_LOCATION.format(name=name, tmp=tmp)
                        for name in auth_upstreams) + extra
    for name in auth_upstreams:
        (tmp / "www" / name).mkdir(parents=True, exist_ok=True)
        (tmp / "www" / name / "index.html").write_text("ok\n")
    http_conf = SERVER.format(tmp=tmp, port=port, upstreams=upstreams, locations=locations)
    return devharness.nginx_main_conf(http_conf, tmp, error_log=tmp / "nginx-error.log",
                                      error_level="warn", worker_connections=4096)


def free_ports(*names: str) -> dict[str, int]:
    """A distinct free port on 127.0.0.1 for each name."""
    return dict(zip(names, devharness.PortPool().free_ports(len(names)), strict=True))


@dataclass
class Result:
    rps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)

    @property
    def median_rps(self) -> float:
        return statistics.median(self.rps)

    @property
    def median_p99(self) -> float:
        return statistics.median(self.p99_ms)


def record(results: dict[str, Result], name: str, rps: float, p99: float, round_no: int) -> None:
    """Add one wrk run to ``results`` and show it on stderr as it happens."""
    results.setdefault(name, Result()).rps.append(rps)
    results[name].p99_ms.append(p99)
    print(f"round {round_no + 1}: {name}: {rps:,.0f} req/s, p99 {p99:.2f} ms", file=sys.stderr)


def print_table(results: dict[str, Result], rounds: int, connections: int, seconds: int) -> None:
    """The medians of every scenario, as a Markdown table (what the README quotes)."""
    print(f"\n{rounds} interleaved rounds, wrk -t1 -c{connections} -d{seconds}s, medians; "
          f"{os.cpu_count()} cores\n")
    print("| scenario | req/s | p99 ms |\n|---|---:|---:|")
    for name, result in results.items():
        print(f"| {name} | {result.median_rps:,.0f} | {result.median_p99:.2f} |")


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, seconds: int, connections: int, auth: str = "",
        script: str = "") -> tuple[float, float]:
    """Run wrk once; return (requests/s, p99 latency in ms). Asked directly, authproxy is told
    the client's address as nginx tells it (X-Real-IP: OWNER), so that the owner's remembered
    password is one of a known address during a flood's ban."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url,
           "-H", f"X-Real-IP: {OWNER}"]
    if auth:
        cmd += ["-H", f"Authorization: {auth}"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if failed:
        raise RuntimeError(f"{url}: {failed.group(1)} responses were not 2xx:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    return rps, (_ms(*p99.groups()) if p99 else float("nan"))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@contextlib.contextmanager
def started(cmd: list[str], port: int, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``cmd`` running until the block ends, once 127.0.0.1:``port`` accepts connections."""
    with devharness.running(cmd, log, [(lambda: devharness.accepts(port), f"{cmd[0]} on {port}")],
                            cwd=Path.cwd(), expect_status=None) as process:
        yield process


@contextlib.contextmanager
def nginx_started(tmp: Path, conf: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """nginx with ``conf`` (from :func:`nginx_conf`) until the block ends."""
    path = devharness.write_nginx_conf(tmp, conf)
    with devharness.start_nginx(path, tmp, port, nginx=NGINX, error_log=tmp / "nginx-error.log",
                                expect_status=None) as process:
        yield process


def authproxy_config(tmp: Path, name: str, port: int, workers: int = 1, log_level: str = "info",
                     **basic_extra: int) -> Path:
    extra = "".join(f"{k} = {v}\n" for k, v in basic_extra.items())
    path = tmp / f"{name}.toml"
    path.write_text(
        f'[server]\nlisten = ["127.0.0.1:{port}"]\nworkers = {workers}\n'
        f'[basic]\nusers_file = "{tmp}/users"\n{extra}'
        f'[log]\nformat = "json"\nlevel = "{log_level}"\n'
    )
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run")
    parser.add_argument("--log-level", default="info",
                        help="authproxy's log level: info writes a line per decision (default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    for tool in ("wrk", "htpasswd", NGINX):
        if not shutil.which(tool):
            sys.exit(f"bench needs {tool} (make bench installs it)")

    tmp = Path(tempfile.mkdtemp(prefix="authproxy-bench-"))
    tmp.chmod(0o755)  # nginx's workers drop root privileges and must read www/ and users
    (tmp / "www" / "nginx-basic").mkdir(parents=True)
    (tmp / "www" / "nginx-basic" / "index.html").write_text("ok\n")
    subprocess.run(["htpasswd", "-cbB", "-C", "10", str(tmp / "users"), "alice", "wonderland"],
                   check=True, capture_output=True)
    # "flooded" takes the wrong-password floods with the lockout on, so that the bans they
    # leave (ban_time: 5 minutes) never weigh on the steady figures of "authproxy"
    ports = free_ports("authproxy", "flooded", "nolockout", "workers2", "bare", "nginx")
    nginx_basic_location = (f'\n        location /nginx-basic/ {{ auth_basic "bench"; '
                   f"auth_basic_user_file {tmp}/users; }}")
    conf = nginx_conf(tmp, ports["nginx"], {k: v for k, v in ports.items() if k != "nginx"},
                      nginx_basic_location)
    py = sys.executable
    good = basic("alice", "wonderland")
    base = f"http://127.0.0.1:{ports['nginx']}"
    s, c = args.seconds, args.connections

    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)  # on any exit, Ctrl-C and errors too
        stack.enter_context(started([py, str(HERE / "bare.py"), str(ports["bare"])],
                                    ports["bare"], tmp / "bare.log"))
        for name, extra in (("authproxy", {}), ("flooded", {}),
                            ("nolockout", {"max_failures": 10**9}),
                            ("workers2", {"workers": 2})):
            path = authproxy_config(tmp, name, ports[name], log_level=args.log_level, **extra)
            stack.enter_context(started([py, "-m", "authproxy", "serve", "--config", str(path)],
                                        ports[name], tmp / f"{name}.log"))
        stack.enter_context(nginx_started(tmp, conf, ports["nginx"]))
        for target in ("authproxy", "flooded", "nolockout", "workers2", "bare"):  # warm up
            wrk(f"{base}/{target}/index.html", 1, c, good)

        results: dict[str, Result] = {}
        scenarios = {
            "nginx -> bare aiohttp 200": (f"{base}/bare/index.html", good),
            "nginx -> authproxy, cached Basic": (f"{base}/authproxy/index.html", good),
            "nginx auth_basic, bcrypt cost 10": (f"{base}/nginx-basic/index.html", good),
            "direct: bare aiohttp 200": (f"http://127.0.0.1:{ports['bare']}/auth", good),
            "direct: authproxy, cached Basic": (f"http://127.0.0.1:{ports['authproxy']}/auth", good),
            "nginx -> authproxy workers=2, cached Basic": (f"{base}/workers2/index.html", good),
            "direct: authproxy workers=2, cached Basic":
                (f"http://127.0.0.1:{ports['workers2']}/auth", good),
        }
        for round_no in range(args.rounds):
            for name, (url, auth) in scenarios.items():
                record(results, name, *wrk(url, s, c, auth), round_no)
            for label, target in (("flood, lockout on", "flooded"),
                                  ("flood, lockout off", "nolockout")):
                # wrong passwords for alice from another address: with the lockout on, that
                # address and alice are banned at once, and alice's own address (known to have
                # authenticated) keeps its remembered password
                flood = subprocess.Popen(
                    ["wrk", "-t1", f"-c{c // 2}", f"-d{s + 2}s", "-s", str(HERE / "flood.lua"),
                     f"{base}/flood-{target}/index.html"], stdout=subprocess.DEVNULL)
                time.sleep(1)  # let the flood reach full speed before measuring under it
                rps, p99 = wrk(f"{base}/{target}/index.html", s, c // 2, good)
                flood.wait()
                record(results, f"cached Basic under a wrong-password {label}", rps, p99,
                       round_no)

    bare = results["nginx -> bare aiohttp 200"].median_rps
    cached = results["nginx -> authproxy, cached Basic"].median_rps
    nginx_basic = results["nginx auth_basic, bcrypt cost 10"].median_rps
    print_table(results, args.rounds, c, s)
    print(f"\n(a) cached Basic / bare aiohttp behind nginx: {cached / bare:.2f} (target >= 0.85)")
    print(f"(b) cached Basic / nginx auth_basic bcrypt-10: {cached / nginx_basic:,.0f}x "
          "(target >= 500x)")
    for label in ("lockout on", "lockout off"):
        p99 = results[f"cached Basic under a wrong-password flood, {label}"].median_p99
        print(f"(c) p99 of cached decisions under a flood, {label}: {p99:.2f} ms (target < 5 ms)")
    for via in ("nginx -> authproxy", "direct: authproxy"):
        two = results[f"{via} workers=2, cached Basic"].median_rps
        one = results[f"{via}, cached Basic"].median_rps
        print(f"(d) workers=2 / workers=1, {via.split(':')[0].split(' ')[0]}: {two / one:.2f} "
              f"(nginx and wrk share the {os.cpu_count()} cores with the workers)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
