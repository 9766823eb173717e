"""Local servers for the demo, the tests and the benchmarks: free ports, waiting with a
deadline, processes started and stopped, nginx configured and run. Loopback only.

Nothing here is imported by the service itself: ``authproxy demo``, ``tests/servers.py`` and
``bench/`` share it, so that one rule for ports or one way of stopping a process holds in all
three. The nginx snippets come from :func:`nginx_snippets`: the checkout's ``nginx/`` when
running from one, else the copy an installed package carries (``share/authproxy/nginx``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sysconfig
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

DEADLINE = 20.0  # seconds a server gets to start or to stop
POLL_INTERVAL = 0.02
UPSTREAM_SNIPPET = "authproxy-upstream.conf"
SNIPPETS = (UPSTREAM_SNIPPET, "authproxy-auth.conf", "authproxy-protect.conf")
# Where setup.cfg's [options.data_files] puts the snippets, under an installation's data path.
INSTALLED_SNIPPETS = Path("share", "authproxy", "nginx")
_UPSTREAM_SERVER = re.compile(r"^(\s*server\s+)127\.0\.0\.1:9180;", re.MULTILINE)

Ready = tuple[Callable[[], bool], str]  # a check, and what is ready once it holds


class PortPool:
    """Free TCP ports on 127.0.0.1, none handed out twice by the same pool.

    A port handed out but not yet listened on (a server started a moment later, say) looks
    free to the kernel, which may offer it again; remembering them keeps two servers started
    from one pool off the same port.
    """

    def __init__(self) -> None:
        self._given: set[int] = set()

    def free_port(self) -> int:
        """A port that nothing listens on right now and that this pool never gave before."""
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind(("127.0.0.1", 0))
                port = int(sock.getsockname()[1])
            if port not in self._given:
                self._given.add(port)
                return port

    def free_ports(self, count: int) -> list[int]:
        return [self.free_port() for _ in range(count)]

    def take(self, port: int) -> None:
        """Never hand out ``port``: it was chosen elsewhere (a well-known port, say)."""
        self._given.add(port)


def port_is_free(port: int) -> bool:
    """Whether a server could bind 127.0.0.1:``port`` now (past TIME_WAIT, as nginx binds)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def http_status(address: str, path: str, timeout: float = 2.0) -> int | None:
    """The status of ``GET path`` over plain HTTP/1.0 to ``HOST:PORT`` or ``unix:/path``;
    None when nothing answers."""
    family, target = (
        (socket.AF_UNIX, address[len("unix:"):])
        if address.startswith("unix:")
        else (socket.AF_INET, host_port(address))
    )
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(target)
            sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
            head = sock.recv(64)
    except OSError:
        return None
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    return int(match.group(1)) if match else None


def healthy(address: str) -> bool:
    """Whether authproxy on ``address`` answers /healthz with 200."""
    return http_status(address, "/healthz") == 200


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def wait_until(
    ready: Callable[[], bool],
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    deadline: float = DEADLINE,
) -> None:
    """Poll ``ready`` until it returns True. Raises RuntimeError if ``process`` exits first,
    TimeoutError when ``deadline`` seconds pass."""
    end = time.monotonic() + deadline
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before it was ready")
        if time.monotonic() > end:
            raise TimeoutError(f"{what} not ready within {deadline} s")
        time.sleep(POLL_INTERVAL)


def stop(
    process: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM,
    deadline: float = DEADLINE,
) -> int:
    """Send ``sig`` to ``process`` (unless it exited) and reap it; SIGKILL it if it outlives
    ``deadline``. Returns its exit status (-9 when it had to be killed)."""
    if process.poll() is None:
        process.send_signal(sig)
    try:
        return process.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


class ProcessFailed(RuntimeError):
    """A process started by :func:`running` did not exit with the status it should."""


@contextmanager
def running(
    command: Sequence[str],
    log_path: Path,
    ready: Sequence[Ready],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    expect_status: int | None = 0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` (stdout and stderr to ``log_path``, in ``cwd`` or the log's
    directory) until the block ends; yields once every check of ``ready`` holds.

    At the end, or if it never gets ready, it is stopped with :func:`stop`. Raises
    ProcessFailed at the end if its exit status is not ``expect_status`` (None: any status),
    with the tail of its log.
    """
    with log_path.open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - the caller's own command, no shell
            list(command), stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
            cwd=cwd or log_path.parent,
        )
    try:
        for check, what in ready:
            wait_until(check, what, process)
        yield process
    except BaseException:
        stop(process)
        raise
    status = stop(process)
    if expect_status is not None and status != expect_status:
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        what = ready[0][1] if ready else command[0]
        raise ProcessFailed(f"{what} exited with {status}:\n{tail}")


# -- nginx -------------------------------------------------------------------------------------


def find_nginx() -> str | None:
    """The nginx program on PATH or in /usr/sbin (Debian's, not on a user's PATH)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


def nginx_snippets() -> Path:
    """The directory holding the nginx snippets (at least :data:`SNIPPETS`): the checkout's
    ``nginx/`` when this module runs from one, else the installed package's copy.
    Raises FileNotFoundError when neither has them."""
    candidates = [Path(__file__).resolve().parents[2] / "nginx"]
    for scheme in (None, f"{os.name}_user"):
        data = sysconfig.get_path("data", scheme) if scheme else sysconfig.get_path("data")
        candidates.append(Path(data) / INSTALLED_SNIPPETS)
    for candidate in candidates:
        if all((candidate / name).is_file() for name in SNIPPETS):
            return candidate
    raise FileNotFoundError(
        "nginx snippets not found in " + ", ".join(str(c) for c in candidates))


def render_upstream(snippet_text: str, address: str) -> str:
    """``authproxy-upstream.conf`` with its server line pointing at ``address`` (``HOST:PORT``
    or ``unix:/path``); everything else verbatim. Raises ValueError if the snippet no longer
    has exactly one ``server 127.0.0.1:9180;`` line."""
    rendered, count = _UPSTREAM_SERVER.subn(lambda m: f"{m.group(1)}{address};", snippet_text)
    if count != 1:
        raise ValueError(f"{UPSTREAM_SNIPPET} no longer has one 'server 127.0.0.1:9180;'")
    return rendered


def nginx_main_conf(
    http_conf: str,
    prefix: Path,
    *,
    user: str | None = None,
    access_log: str = "off",
    log_format: str = "",
    error_log: Path | None = None,
    error_level: str = "info",
    worker_connections: int = 256,
) -> str:
    """A complete nginx.conf running in the foreground with one worker, every file it writes
    under ``prefix``, ``http_conf`` inside http {}. ``access_log`` is the directive's argument
    (``off``, or a path and a format name); ``log_format`` a ``log_format`` directive that
    name needs (it must come before its use); ``user`` the workers' user when nginx runs as
    root."""
    temp = prefix / "temp"
    user_line = f"user {user};\n" if user else ""
    format_line = f"    {log_format}\n" if log_format else ""
    return f"""{user_line}daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {error_log or prefix / "error.log"} {error_level};

events {{
    worker_connections {worker_connections};
}}

http {{
{format_line}    access_log {access_log};
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;

{http_conf}
}}
"""


def write_nginx_conf(prefix: Path, main_conf: str) -> Path:
    """Write ``prefix/nginx.conf`` and make the temp directories :func:`nginx_main_conf`
    names."""
    (prefix / "temp").mkdir(parents=True, exist_ok=True)
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(main_conf, encoding="utf-8")
    return conf_path


def nginx_test_config(
    nginx: str, conf_path: Path, prefix: Path, error_log: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``nginx -t`` on ``conf_path``."""
    return subprocess.run(  # noqa: S603 - nginx, arguments of our own, no shell
        [nginx, "-t", "-p", str(prefix), "-c", str(conf_path),
         "-e", str(error_log or prefix / "error.log")],
        capture_output=True, text=True, check=False, timeout=DEADLINE,
    )


@contextmanager
def start_nginx(
    conf_path: Path,
    prefix: Path,
    port: int,
    *,
    nginx: str | None = None,
    error_log: Path | None = None,
    expect_status: int | None = 0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run nginx on ``conf_path`` until the block ends; ready once 127.0.0.1:``port``
    accepts connections, stopped with SIGTERM (fast shutdown). Raises ProcessFailed if the
    configuration fails ``nginx -t``, FileNotFoundError if nginx is not installed."""
    program = nginx or find_nginx()
    if program is None:
        raise FileNotFoundError("nginx is not installed")
    error_log = error_log or prefix / "error.log"
    checked = nginx_test_config(program, conf_path, prefix, error_log)
    if checked.returncode != 0:
        raise ProcessFailed(f"nginx -t failed:\n{checked.stderr}")
    command = [program, "-p", str(prefix), "-c", str(conf_path), "-e", str(error_log)]
    with running(command, prefix / "nginx.out", [(lambda: accepts(port), f"nginx on {port}")],
                 expect_status=expect_status) as process:
        yield process
