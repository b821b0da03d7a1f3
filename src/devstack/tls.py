"""Throw-away TLS material for servers on loopback (openssl, valid two days)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from devstack.procs import DevstackError


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost: its own trust anchor."""

    cert: Path  # PEM certificate: what clients trust (and present, for mutual TLS)
    key: Path  # PEM private key (PKCS#8, unencrypted)
    bundle: Path  # key then certificate, as Kafka's PEM keystore wants them


def make_tls_files(root: Path) -> TlsFiles:
    """Generate a server certificate (and key) under ``root``."""
    if shutil.which("openssl") is None:
        raise DevstackError("openssl not found: apt-get install -y openssl")
    root.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(root / "cert.pem", root / "key.pem", root / "bundle.pem")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(files.key), "-out", str(files.cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    files.bundle.write_text(files.key.read_text() + files.cert.read_text())
    return files
