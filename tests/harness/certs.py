"""Throwaway certificate authorities and certificates for TLS tests, made with the openssl command."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.harness.requires import require_programs


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(workdir: Path, name: str) -> KeyPair:
    """A self-signed CA (EC P-256 keeps generation fast)."""
    require_programs("openssl")
    workdir.mkdir(parents=True, exist_ok=True)
    pair = KeyPair(workdir / f"{name}.crt", workdir / f"{name}.key")
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(pair.key), "-out", str(pair.cert), "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=workdir,
    )  # fmt: skip
    return pair


def issue(ca: KeyPair, workdir: Path, name: str, *, client: bool = False) -> KeyPair:
    """A leaf certificate signed by `ca`: for 127.0.0.1/localhost, or a client certificate."""
    pair = KeyPair(workdir / f"{name}.crt", workdir / f"{name}.key")
    csr = workdir / f"{name}.csr"
    ext = workdir / f"{name}.ext"
    usage = "clientAuth" if client else "serverAuth"
    ext.write_text(f"extendedKeyUsage={usage}\n" + ("" if client else "subjectAltName=IP:127.0.0.1,DNS:localhost\n"))
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", str(pair.key), "-out", str(csr), "-subj", f"/CN={name}",
        cwd=workdir,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca.cert), "-CAkey", str(ca.key), "-CAcreateserial",
        "-out", str(pair.cert), "-days", "2", "-extfile", str(ext),
        cwd=workdir,
    )  # fmt: skip
    return pair


def client_context(ca: KeyPair, identity: KeyPair | None = None) -> ssl.SSLContext:
    """A client that trusts `ca` and, if given, presents `identity`."""
    context = ssl.create_default_context(cafile=str(ca.cert))
    if identity is not None:
        context.load_cert_chain(str(identity.cert), str(identity.key))
    return context
