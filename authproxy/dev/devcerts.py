"""``authproxy dev-certs``: a local CA and a server certificate for trying TLS on a laptop."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import trustme

DEFAULT_NAMES = ("localhost", "127.0.0.1", "::1")


def write_dev_certs(
    directory: str | os.PathLike[str], names: Sequence[str] = ()
) -> dict[str, Path]:
    """Write ``ca.pem``, ``server.pem`` (certificate chain) and ``server.key`` (mode 0600).

    Returns the paths by role. A new CA each call: these are for local testing only.
    """
    Path(directory).mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="authproxy dev CA")
    cert = ca.issue_cert(*(names or DEFAULT_NAMES))
    paths = dev_cert_paths(directory)
    ca.cert_pem.write_to_path(str(paths["ca"]))
    write_private(paths["key"], cert.private_key_pem.bytes())
    with open(paths["cert"], "wb") as fh:
        for blob in cert.cert_chain_pems:
            fh.write(blob.bytes())
    return paths


def dev_cert_paths(directory: str | os.PathLike[str]) -> dict[str, Path]:
    """Where :func:`write_dev_certs` puts the CA, the certificate chain and the key."""
    out = Path(directory)
    return {"ca": out / "ca.pem", "cert": out / "server.pem", "key": out / "server.key"}


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 from its first byte (also when the file was
    there before), for keys, passwords and tokens."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)  # O_CREAT's mode applies only to a new file
        fh.write(data)
