"""Throwaway certificates for the TLS tests, made with the openssl command line: a CA, and
certificates it issues for "localhost" / 127.0.0.1 that serve as server and as client."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(folder: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    """A CA valid two days: (certificate, key)."""
    _openssl(folder, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN=radnode test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return folder / f"{name}.crt", folder / f"{name}.key"


def issue(folder: Path, ca: tuple[Path, Path], name: str, ips: tuple[str, ...] = ()) -> tuple[Path, Path]:
    """A certificate of ``ca`` for localhost and 127.0.0.1 (and ``ips``), good as server and as
    client: (certificate, key)."""
    names = ",".join(["DNS:localhost", "IP:127.0.0.1", *(f"IP:{ip}" for ip in ips)])
    (folder / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={names}\n"
        "authorityKeyIdentifier=keyid,issuer\n")
    _openssl(folder, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}")
    _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", str(ca[0]), "-CAkey", str(ca[1]),
             "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", f"{name}.ext")
    return folder / f"{name}.crt", folder / f"{name}.key"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate for localhost, a client one for radnode, and a CA not to trust."""
    ca = make_ca(folder, "ca")
    server = issue(folder, ca, "localhost")
    client = issue(folder, ca, "radnode")
    other_ca, _ = make_ca(folder, "other-ca")
    return Pki(ca[0], server[0], server[1], client[0], client[1], other_ca)
