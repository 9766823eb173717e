"""The sidecar's footprint, run by hand (`make bench`): seconds from start to a 200 on
/healthz, and resident memory once idle, for a Basic-only and two Bearer-only configs: keys
from a file, and keys from an endpoint (fetched at start, before the first 200) (targets on
this project's machine: 0.3 s and 40 MB). Medians of several starts, of the package as pip
installs it: with its bytecode compiled (this checkout's, compiled first)."""

from __future__ import annotations

import argparse
import compileall
import functools
import http.server
import json
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import bcrypt
import trustme
from jwcrypto import jwk

import authproxy
from authproxy.dev.devharness import PortPool, healthy

IDLE = 1.0  # seconds after the first 200 before RSS is read


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def start_once(tmp: Path, body: str, port: int) -> tuple[float, float]:
    config = tmp / f"{port}.toml"
    config.write_text(f'[server]\nlisten = ["127.0.0.1:{port}"]\n{body}')
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, "-m", "authproxy", "serve", "--config",
                                str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        while not healthy(f"127.0.0.1:{port}"):
            if process.poll() is not None or time.monotonic() - started > 30:
                raise RuntimeError(f"authproxy did not start for:\n{body}")
            time.sleep(0.005)
        seconds = time.monotonic() - started
        time.sleep(IDLE)
        return seconds, rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(15)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_directory(directory: Path, port: int) -> str:
    """An HTTPS server of ``directory`` on loopback, in a thread of this process, with a
    certificate of a CA written to ``directory/ca.pem``; its base URL."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", port), functools.partial(QuietHandler, directory=str(directory)))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"https://127.0.0.1:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=7)
    args = parser.parse_args(argv)
    compileall.compile_dir(str(Path(authproxy.__file__).parent), quiet=1)
    tmp = Path(tempfile.mkdtemp(prefix="authproxy-bench-footprint-"))
    try:
        hashed = bcrypt.hashpw(b"wonderland", bcrypt.gensalt(10)).decode()
        (tmp / "users").write_text(f"alice:{hashed}\n")
        key = jwk.JWK.generate(kty="RSA", size=2048, kid="k1")
        (tmp / "jwks.json").write_text(json.dumps({"keys": [json.loads(key.export_public())]}))
        ports = PortPool()
        endpoint = serve_directory(tmp, ports.free_port())
        configs = {
            "Basic only (bcrypt-10 users file)": f'[basic]\nusers_file = "{tmp}/users"\n',
            "Bearer only (a JWKS file)": (f'[jwt]\njwks_file = "{tmp}/jwks.json"\n'
                                          'jwks_require_audience = ["api"]\n'),
            "Bearer only (a JWKS endpoint)": (
                f'[jwt]\njwks_endpoint = "{endpoint}/jwks.json"\n'
                f'jwks_ssl_ca_certificate = "{tmp}/ca.pem"\njwks_require_audience = ["api"]\n'),
        }
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in configs}
        for _ in range(args.starts):  # interleaved, so that drift hits all alike
            for name, body in configs.items():
                results[name].append(start_once(tmp, body, ports.free_port()))
        print(f"\nmedians of {args.starts} interleaved starts\n")
        print("| config | start to a healthy /healthz | idle RSS |\n|---|---:|---:|")
        for name, runs in results.items():
            print(f"| {name} | {statistics.median(r[0] for r in runs):.2f} s | "
                  f"{statistics.median(r[1] for r in runs):.1f} MB |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
