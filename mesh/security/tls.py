"""TLS for the mesh's NATS links: certificate files and the server configuration that uses them.

Where the files come from:

- Tests and ``mesh up`` make a throwaway CA and certificates with ``write_development_pki``
  (the ``trustme`` package, a development dependency): a CA, a server certificate for the
  loopback addresses and a client certificate, all in one directory, keys readable by their
  owner only.
- A real deployment takes them from its own PKI (a company CA, Vault's PKI engine, step-ca,
  cert-manager): each server's certificate names the addresses clients and leaf servers dial,
  and its CA bundle is the ``ca_file`` of every client and leaf remote. Never ship the
  development CA: its key sits next to the certificates.

``tls_block`` renders ``tls { ... }`` for a server's client port (top level) or inside
``leafnodes { ... }`` for the port leaf servers dial; ``verify`` makes the server ask for and
check a client certificate (mutual TLS), which a leaf remote presents with ``cert_file`` and
``key_file`` in its own ``tls`` block (``mesh.security.server_config.leaf_remote_block``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSFiles:
    """A certificate, its key and the CA bundle that verifies the other side."""

    cert_file: Path
    key_file: Path
    ca_file: Path


@dataclass(frozen=True)
class DevelopmentPKI:
    """What ``write_development_pki`` wrote."""

    ca_file: Path
    #: for servers: a certificate for the given hosts.
    server: TLSFiles
    #: for clients and leaf remotes presenting a certificate (mutual TLS).
    client: TLSFiles


def write_development_pki(
    directory: Path,
    hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    client_name: str = "mesh-client",
) -> DevelopmentPKI:
    """A throwaway CA, a server certificate for ``hosts`` and a client certificate.

    For tests and ``mesh up`` only (needs ``trustme``, from the ``dev`` extra).
    """
    try:
        import trustme
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError(
            "write_development_pki needs trustme (pip install 'edge-mesh[dev]'); "
            "a deployment takes its certificates from its own PKI"
        ) from exc

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="edge-mesh development CA")
    server = ca.issue_cert(*hosts)
    client = ca.issue_cert(client_name)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    files = {}
    for name, cert in (("server", server), ("client", client)):
        cert_file = directory / f"{name}-cert.pem"
        key_file = directory / f"{name}-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        _write_private(key_file, cert.private_key_pem.bytes())
        files[name] = TLSFiles(cert_file, key_file, ca_file)
    return DevelopmentPKI(ca_file=ca_file, server=files["server"], client=files["client"])


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def tls_block(files: TLSFiles, *, verify: bool = False, timeout_s: float = 2.0) -> str:
    """``tls { ... }`` for a server: top level for the client port, or in ``leafnodes { }``.

    ``verify`` requires and checks a client certificate signed by ``files.ca_file``.
    """
    lines = [
        f"cert_file: {_quote(files.cert_file)}",
        f"key_file: {_quote(files.key_file)}",
        f"ca_file: {_quote(files.ca_file)}",
        f"timeout: {timeout_s:g}",
    ]
    if verify:
        lines.append("verify: true")
    return "tls {\n  " + "\n  ".join(lines) + "\n}"


def client_tls_block(ca_file: Path, client: TLSFiles | None = None) -> str:
    """``tls { ... }`` for a leaf remote: the CA to verify the hub, and a certificate if asked."""
    lines = [f"ca_file: {_quote(ca_file)}"]
    if client is not None:
        lines.append(f"cert_file: {_quote(client.cert_file)}")
        lines.append(f"key_file: {_quote(client.key_file)}")
    return "tls {\n  " + "\n  ".join(lines) + "\n}"


def _quote(value: object) -> str:
    text = str(value)
    if '"' in text or "\n" in text:
        raise ValueError(f"{text!r} cannot be written into a nats-server configuration")
    return f'"{text}"'


__all__ = [
    "DevelopmentPKI",
    "TLSFiles",
    "client_tls_block",
    "tls_block",
    "write_development_pki",
]
