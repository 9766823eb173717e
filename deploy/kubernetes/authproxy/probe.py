"""Kubernetes exec probe: GET PATH from authproxy over its unix socket; exit 0 on a 200.

    python -I /etc/authproxy/probe.py PATH SOCKET

The kubelet's httpGet probes connect to the pod's IP, where authproxy deliberately listens on
nothing, so its probes run this inside its container. Standard library only.
"""

from __future__ import annotations

import http.client
import socket
import sys

TIMEOUT = 2.0  # seconds; below the probes' timeoutSeconds


def status(path: str, socket_path: str) -> int:
    """The status of ``GET path`` sent to the unix socket ``socket_path``."""
    connection = http.client.HTTPConnection("localhost", timeout=TIMEOUT)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(socket_path)
        connection.sock = sock
        connection.request("GET", path)
        return connection.getresponse().status
    finally:
        connection.close()
        sock.close()


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(f"usage: {argv[0]} PATH SOCKET", file=sys.stderr)
        return 2
    path, socket_path = argv[1], argv[2]
    try:
        code = status(path, socket_path)
    except (OSError, http.client.HTTPException) as exc:
        print(f"authproxy {path}: {socket_path}: {exc!r}", file=sys.stderr)
        return 1
    if code != 200:
        print(f"authproxy {path}: {code}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
