"""Bearer benchmarks, run by hand (`make bench`): wrk through a real nginx, medians of
interleaved rounds, targets as ratios measured in the same run.

(a) cached-token decisions/s against a bare aiohttp 200 handler behind the same nginx;
(b) uncached RS256 decisions/s (every token new) against a naive handler that calls
    ``jwcrypto.jwt.JWT(jwt=..., key=JWKSet)`` per request;
(c) authproxy's resident memory after 1,000,000 distinct invalid tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import (
    Result,
    free_ports,
    nginx_conf,
    nginx_started,
    print_table,
    record,
    started,
    wrk,
)

HERE = Path(__file__).resolve().parent
KID = "bench-rs256"


_SIGNER: list[Any] = []  # a minting process's signing key, parsed once (PyJWT re-parses PEM)


def _init_signer(pem: bytes) -> None:
    _SIGNER.append(serialization.load_pem_private_key(pem, password=None))


def _mint_range(start: int, count: int) -> list[str]:
    now = int(time.time())
    return [
        pyjwt.encode({"sub": f"user{i}", "aud": "bench", "iat": now, "exp": now + 3600, "jti": str(i)},
                     _SIGNER[0], algorithm="RS256", headers={"kid": KID})
        for i in range(start, start + count)
    ]


def mint_tokens(pem: bytes, count: int) -> list[str]:
    """``count`` distinct RS256 tokens, minted on every core."""
    workers = os.cpu_count() or 2
    chunk = count // workers + 1
    with ProcessPoolExecutor(workers, initializer=_init_signer, initargs=(pem,)) as pool:
        parts = pool.map(_mint_range, range(0, count, chunk), [chunk] * workers)
        return [t for part in parts for t in part][:count]


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, in KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--invalid", type=int, default=1_000_000, help="tokens for (c)")
    parser.add_argument("--tokens-per-second", type=int, default=20_000,
                        help="fresh tokens minted per second of an uncached run")
    args = parser.parse_args(argv)
    s, c = args.seconds, args.connections

    tmp = Path(tempfile.mkdtemp(prefix="authproxy-bench-bearer-"))
    tmp.chmod(0o755)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    public = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    (tmp / "jwks.json").write_text(json.dumps({"keys": [{**public, "kid": KID, "alg": "RS256",
                                                         "use": "sig"}]}))
    per_round = s * args.tokens_per_second
    print(f"minting {per_round * (args.rounds + 1):,} RS256 tokens...", file=sys.stderr)
    tokens = mint_tokens(pem, per_round * (args.rounds + 1))
    files = []
    for r in range(args.rounds + 1):  # one fresh slice per authproxy round; the last for naive
        path = tmp / f"tokens-{r}.txt"
        path.write_text("\n".join(tokens[r * per_round:(r + 1) * per_round]) + "\n")
        files.append(path)
    ports = free_ports("authproxy", "naive", "bare", "nginx")
    conf = nginx_conf(tmp, ports["nginx"], {k: v for k, v in ports.items() if k != "nginx"})
    (tmp / "authproxy.toml").write_text(
        f'[server]\nlisten = ["127.0.0.1:{ports["authproxy"]}"]\n'
        f'[jwt]\njwks_file = "{tmp}/jwks.json"\nalgorithms = ["RS256"]\n'
        'jwks_require_audience = ["bench"]\n')
    py = sys.executable
    cached = "Bearer " + tokens[-1]
    base = f"http://127.0.0.1:{ports['nginx']}"
    results: dict[str, Result] = {}

    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, tmp, True)  # on any exit, Ctrl-C and errors too
        stack.enter_context(started([py, str(HERE / "bare.py"), str(ports["bare"])],
                                    ports["bare"], tmp / "bare.log"))
        stack.enter_context(started([py, str(HERE / "naive_jwt.py"), str(ports["naive"]),
                                     str(tmp / "jwks.json")], ports["naive"], tmp / "naive.log"))
        authproxy = stack.enter_context(started(
            [py, "-m", "authproxy", "serve", "--config", str(tmp / "authproxy.toml")],
            ports["authproxy"], tmp / "authproxy.log"))
        stack.enter_context(nginx_started(tmp, conf, ports["nginx"]))
        for target in ("authproxy", "bare"):
            wrk(f"{base}/{target}/index.html", 1, c, cached)
        for r in range(args.rounds):
            record(results, "nginx -> bare aiohttp 200",
                   *wrk(f"{base}/bare/index.html", s, c, cached), r)
            record(results, "nginx -> authproxy, cached token",
                   *wrk(f"{base}/authproxy/index.html", s, c, cached), r)
            os.environ["TOKENS"] = str(files[r])
            record(results, "nginx -> authproxy, every token new (RS256)",
                   *wrk(f"{base}/authproxy/index.html", s, c, script=str(HERE / "tokens.lua")), r)
            os.environ["TOKENS"] = str(files[-1])
            record(results, "nginx -> naive jwcrypto JWT(jwt=, key=JWKSet)",
                   *wrk(f"{base}/naive/index.html", s, c, script=str(HERE / "tokens.lua")), r)
        before = rss_kib(authproxy.pid)
        os.environ["KNOWN_KID"] = KID
        started_at, sent = time.monotonic(), 0
        while sent < args.invalid:  # wrk stops by time, so run it until enough were sent
            flood = subprocess.run(
                ["wrk", "-t1", f"-c{c}", "-d10s", "-s", str(HERE / "garbage_tokens.lua"),
                 f"http://127.0.0.1:{ports['authproxy']}/auth"],
                capture_output=True, text=True, check=True,
                env={**os.environ, "OFFSET": str(sent)})
            sent += int(flood.stdout.split(" requests in")[0].split()[-1])
        after = rss_kib(authproxy.pid)
        print(f"{sent:,} invalid tokens in {time.monotonic() - started_at:.0f} s",
              file=sys.stderr)

    uncached = results["nginx -> authproxy, every token new (RS256)"].median_rps
    print_table(results, args.rounds, c, s)
    bare = results["nginx -> bare aiohttp 200"].median_rps
    print(f"\n(a) cached token / bare aiohttp behind nginx: "
          f"{results['nginx -> authproxy, cached token'].median_rps / bare:.2f} (target >= 0.85)")
    naive = results["nginx -> naive jwcrypto JWT(jwt=, key=JWKSet)"].median_rps
    print(f"(b) uncached RS256 / naive jwcrypto handler: {uncached / naive:.2f}x (target >= 2x)")
    if uncached * s > per_round:
        print(f"    (a run sent more requests than its {per_round:,} fresh tokens: some were "
              "cache hits; raise --tokens-per-second)")
    print(f"(c) RSS after {sent:,} distinct invalid tokens: {after[0] / 1024:.0f} MiB "
          f"(before {before[0] / 1024:.0f} MiB, peak {after[1] / 1024:.0f} MiB; target < 150 MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
