"""Edge and cache memory benchmarks, run by hand (`make bench`), against a real authproxy
process on loopback, started with the systemd default descriptor limits (soft 1,024).

(a) RSS idle; RSS while 200 connections each try to hold a 1 MB unfinished header, sent in
    16 kB pieces; RSS after they close (target: back within 20 MB of idle);
(b) idle connections (connected, nothing sent) held open in steps up to past
    server.max_connections: does a request on a new connection, and one on a keep-alive
    connection opened before them, still get its answer? (target: descriptors never run out,
    so the keep-alive connection is always answered and new ones are once the idle go);
(c) RSS after 50,000 distinct valid tokens with 200 groups each (the verified-token cache
    is bounded by 64 MiB; unbounded, it took 1.6 GB).
"""

from __future__ import annotations

import argparse
import base64
import json
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import bcrypt
import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import free_ports

from authproxy.dev import devharness

KID = "bench-es256"
GROUPS = [f"group-{g:04d}-of-a-large-directory" for g in range(200)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def systemd_default_limits() -> None:
    """The child's RLIMIT_NOFILE as systemd gives a service by default: soft 1,024."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


def get(sock: socket.socket, path: str = "/auth", auth: str = "") -> int | None:
    """One request on ``sock``; its status, or None if the connection failed."""
    head = f"GET {path} HTTP/1.1\r\nHost: authproxy\r\n"
    head += f"Authorization: {auth}\r\n" if auth else ""
    try:
        sock.sendall((head + "\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return None
            data += chunk
        return int(data.split()[1])
    except OSError:
        return None


def fresh_status(port: int, auth: str) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            return get(sock, auth=auth)
    except OSError:
        return None


def open_connections(port: int) -> float:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        body = b""
        while chunk := sock.recv(65536):
            body += chunk
    for line in body.decode().splitlines():
        if line.startswith("authproxy_http_connections_open "):
            return float(line.split()[1])
    return -1


def partial_headers(port: int, pid: int, connections: int, size: int) -> tuple[float, int]:
    """``connections`` sockets each sending ``size`` bytes of a never-ending header in 16 kB
    pieces, as fast as the server reads them. Returns the highest RSS seen and how many
    connections the server closed before their ``size`` bytes were sent."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(connections)]
    sent = dict.fromkeys(range(connections), 0)
    closed = 0
    with selectors.DefaultSelector() as selector:
        for i, sock in enumerate(socks):
            sock.sendall(b"GET /auth HTTP/1.1\r\nHost: authproxy\r\nX-Filler: ")
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_WRITE, i)
        piece = b"a" * 16384
        peak = 0.0
        deadline = time.monotonic() + 120
        while selector.get_map() and time.monotonic() < deadline:
            for key, _ in selector.select(1.0):
                i = key.data
                try:
                    sent[i] += key.fileobj.send(piece)  # type: ignore[union-attr]
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    closed += 1  # closed by the server
                    selector.unregister(key.fileobj)
                    continue
                if sent[i] >= size:
                    selector.unregister(key.fileobj)
            peak = max(peak, rss_mb(pid))
    for sock in socks:
        sock.close()
    return peak, closed


def idle_steps(port: int, auth: str, cap: int) -> list[tuple[int, int | None, int | None]]:
    """(idle connections held, status on a new connection, status on an older keep-alive
    connection) in steps past ``cap``."""
    keepalive = socket.create_connection(("127.0.0.1", port), timeout=5)
    assert get(keepalive, auth=auth) == 200
    idle: list[socket.socket] = []
    rows = []
    for target in (256, cap // 2, cap - 8, cap + 64, cap + 1024):
        while len(idle) < target:
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            except OSError:
                break
        rows.append((len(idle), fresh_status(port, auth), get(keepalive, auth=auth)))
    for sock in idle:
        sock.close()
    keepalive.close()
    return rows


_KEY: list[Any] = []


def _init(pem: bytes) -> None:
    _KEY.append(serialization.load_pem_private_key(pem, password=None))


def _mint(start: int, count: int) -> list[str]:
    now = int(time.time())
    return [pyjwt.encode({"sub": f"user{i}", "aud": "bench", "exp": now + 3600, "jti": str(i),
                          "groups": GROUPS}, _KEY[0], algorithm="ES256", headers={"kid": KID})
            for i in range(start, start + count)]


def send_tokens(port: int, pem: bytes, count: int) -> int:
    """Mint ``count`` tokens in batches (on every core) and send each once; the 200s."""
    ok = 0
    batch = 2000
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ProcessPoolExecutor(2, initializer=_init, initargs=(pem,)) as pool:
        for start in range(0, count, batch):
            halves = pool.map(_mint, (start, start + batch // 2), (batch // 2, batch // 2))
            for token in (t for half in halves for t in half):
                ok += get(sock, auth=f"Bearer {token}") == 200
    sock.close()
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=50_000)
    parser.add_argument("--skip-idle", action="store_true")
    args = parser.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))  # for our own sockets
    with tempfile.TemporaryDirectory(prefix="bench-edge-") as tmpdir:
        tmp = Path(tmpdir)
        port = free_ports("authproxy")["authproxy"]
        (tmp / "users").write_text(
            "alice:" + bcrypt.hashpw(b"pw", bcrypt.gensalt(4)).decode() + "\n")
        private = ec.generate_private_key(ec.SECP256R1())
        pem = private.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        jwk = json.loads(pyjwt.algorithms.ECAlgorithm.to_jwk(private.public_key()))
        jwk.update({"kid": KID, "alg": "ES256", "use": "sig"})
        (tmp / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
        config = tmp / "authproxy.toml"
        config.write_text(
            f'[server]\nlisten = ["127.0.0.1:{port}"]\n'
            f'[basic]\nusers_file = "{tmp}/users"\n'
            f'[jwt]\njwks_file = "{tmp}/jwks.json"\njwks_require_audience = ["bench"]\n'
            f'[log]\nlevel = "error"\n'
        )
        auth = "Basic " + base64.b64encode(b"alice:pw").decode()
        cmd = [sys.executable, "-m", "authproxy", "serve", "--config", str(config)]
        with open(tmp / "log", "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=systemd_default_limits)
        try:
            devharness.wait_until(lambda: devharness.accepts(port), "authproxy", proc)
            pid = proc.pid
            assert fresh_status(port, auth) == 200
            idle = rss_mb(pid)
            peak, refused = partial_headers(port, pid, 200, 1 << 20)
            devharness.wait_until(lambda: open_connections(port) <= 1, "connections closed", deadline=30)
            after = rss_mb(pid)
            print("\n(a) 200 connections x 1 MB unfinished header, 16 kB pieces")
            print("| RSS idle | RSS peak | RSS after close | after - idle | closed by server |")
            print("|---:|---:|---:|---:|---:|")
            print(f"| {idle:.1f} MB | {peak:.1f} MB | {after:.1f} MB | {after - idle:+.1f} MB "
                  f"| {refused}/200 |")
            if not args.skip_idle:
                print("\n(b) idle connections held (max_connections = 2048)")
                print("| idle connections | new connection | older keep-alive connection |")
                print("|---:|---:|---:|")
                for held, new, old in idle_steps(port, auth, 2048):
                    print(f"| {held} | {new or 'failed'} | {old or 'failed'} |")
                devharness.wait_until(lambda: open_connections(port) <= 1, "connections closed", deadline=30)
                print(f"after they close, a new connection: {fresh_status(port, auth)}")
            before = rss_mb(pid)
            started_at = time.monotonic()
            ok = send_tokens(port, pem, args.tokens)
            print(f"\n(c) {args.tokens} tokens x 200 groups ({ok} answered 200, "
                  f"{time.monotonic() - started_at:.0f} s)")
            print("| RSS before | RSS after | growth |")
            print("|---:|---:|---:|")
            print(f"| {before:.1f} MB | {rss_mb(pid):.1f} MB | {rss_mb(pid) - before:+.1f} MB |")
        finally:
            devharness.stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
