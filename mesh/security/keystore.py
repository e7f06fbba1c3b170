"""A fleet's keys on disk: the operator, its accounts, every identity's ``.creds``, and TLS.

``KeyStore.create(directory)`` makes a new fleet (``mesh identities init``); ``KeyStore.open``
reads one back; ``add`` signs a new identity with the mesh account's key, which needs no server
restart: the servers trust the account, and the account signs its users. The layout:

- ``fleet.json`` (0600): operator and account seeds and JWTs. The keys to the fleet: in a real
  deployment it stays offline or in a secrets store.
- ``auth.conf``: the ``nats-server`` configuration that trusts the fleet (operator mode, memory
  resolver with both account JWTs). Every server of the mesh ``include``s it.
- ``account.conf``: ``MESH_ACCOUNT``, the mesh account's public key, for a site leaf server's
  remote (``account: $MESH_ACCOUNT``).
- ``creds/<name>.creds`` (0600): one per identity, for ``user_credentials`` or a leaf remote.
- ``identities.json``: who has which role (names, tiers), to list and re-issue them.
- ``tls/``: with ``tls=True``, a development CA, a server certificate for the loopback
  addresses and a client certificate (``mesh.security.tls.write_development_pki``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mesh.errors import InvalidArgumentError
from mesh.security.identities import (
    Account,
    IdentitySpec,
    Operator,
    ServerAuthConfig,
    auth_block,
    create_accounts,
    create_identity,
    server_auth_config,
    write_creds,
)
from mesh.security.permissions import Role
from mesh.security.tls import DevelopmentPKI, TLSFiles, write_development_pki

FLEET_FILE = "fleet.json"
AUTH_FILE = "auth.conf"
ACCOUNT_FILE = "account.conf"
IDENTITIES_FILE = "identities.json"
CREDS_DIR = "creds"
TLS_DIR = "tls"


class KeyStoreError(InvalidArgumentError):
    """A key store directory that is missing, damaged, or already holds another fleet."""


@dataclass(frozen=True)
class KeyStore:
    directory: Path
    operator: Operator
    system_account: Account
    account: Account

    # ---- creating and opening -------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        tls: bool = True,
        hosts: Sequence[str] = ("127.0.0.1", "localhost"),
    ) -> KeyStore:
        """A new fleet in ``directory`` (created; refused if it already holds one); with
        ``tls``, development certificates whose server certificate names ``hosts``."""
        directory.mkdir(parents=True, exist_ok=True)
        if (directory / FLEET_FILE).exists():
            raise KeyStoreError(f"{directory} already holds a fleet's keys; open it instead")
        operator, system, account = create_accounts()
        store = cls(directory, operator, system, account)
        _write_private(
            directory / FLEET_FILE,
            json.dumps(
                {
                    "operator": asdict(operator),
                    "system_account": asdict(system),
                    "account": asdict(account),
                },
                indent=2,
            ),
        )
        (directory / AUTH_FILE).write_text(auth_block(store.server_auth()))
        # For a site's leaf remote (``account: $MESH_ACCOUNT``): the account the link binds to.
        # A file of its own, as a server refuses a variable it does not use.
        (directory / ACCOUNT_FILE).write_text(f'MESH_ACCOUNT: "{account.public_key}"\n')
        (directory / IDENTITIES_FILE).write_text("{}\n")
        if tls:
            write_development_pki(directory / TLS_DIR, hosts=hosts)
        return store

    @classmethod
    def open(cls, directory: Path) -> KeyStore:
        try:
            data = json.loads((directory / FLEET_FILE).read_text())
            return cls(
                directory,
                Operator(**data["operator"]),
                Account(**data["system_account"]),
                Account(**data["account"]),
            )
        except FileNotFoundError:
            raise KeyStoreError(
                f"{directory} holds no fleet keys: create them with `mesh identities init`"
            ) from None
        except (ValueError, KeyError, TypeError) as exc:
            raise KeyStoreError(f"{directory / FLEET_FILE} is damaged: {exc}") from None

    @classmethod
    def open_or_create(cls, directory: Path, *, tls: bool = True) -> KeyStore:
        if (directory / FLEET_FILE).exists():
            return cls.open(directory)
        return cls.create(directory, tls=tls)

    # ---- identities -----------------------------------------------------------------------

    def add(self, spec: IdentitySpec) -> Path:
        """Issue (or re-issue, with a new key) ``spec``'s identity; the path of its creds."""
        identity = create_identity(self.account, spec)
        path = write_creds(identity, self.directory / CREDS_DIR)
        registry = self.identities()
        registry[spec.name] = spec.record()
        (self.directory / IDENTITIES_FILE).write_text(json.dumps(registry, indent=2) + "\n")
        return path

    def ensure(self, spec: IdentitySpec) -> Path:
        """The creds of ``spec``'s identity, issued unless one with the same role exists."""
        known = self.identities().get(spec.name)
        path = self.creds_path(spec.name)
        if known == spec.record() and path.exists():
            return path
        return self.add(spec)

    def identities(self) -> dict[str, Any]:
        path = self.directory / IDENTITIES_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def creds_path(self, name: str) -> Path:
        return self.directory / CREDS_DIR / f"{name}.creds"

    # ---- servers --------------------------------------------------------------------------

    def server_auth(self) -> ServerAuthConfig:
        return server_auth_config(self)

    @property
    def auth_file(self) -> Path:
        return self.directory / AUTH_FILE

    @property
    def pki(self) -> DevelopmentPKI | None:
        """The development TLS files, when the store was created with them."""
        tls = self.directory / TLS_DIR
        ca = tls / "ca.pem"
        if not ca.exists():
            return None
        return DevelopmentPKI(
            ca_file=ca,
            server=TLSFiles(tls / "server-cert.pem", tls / "server-key.pem", ca),
            client=TLSFiles(tls / "client-cert.pem", tls / "client-key.pem", ca),
        )


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(text)


#: The identities ``mesh identities init`` issues for the README's three tiers on one site.
def standard_identities(edge_replicas: int = 1) -> list[IdentitySpec]:
    specs = [
        IdentitySpec("app", Role.APPLICATION),
        IdentitySpec("cloud-0", Role.NODE, tier="cloud", downstream_tier="gateway", domain="hub"),
        IdentitySpec(
            "gateway-0",
            Role.NODE,
            tier="gateway",
            upstream_tier="cloud",
            downstream_tier="edge",
            domain="site",
        ),
        *(
            IdentitySpec(
                f"edge-{i}",
                Role.NODE,
                tier="edge",
                upstream_tier="gateway",
                entry=True,
                domain="site",
            )
            for i in range(edge_replicas)
        ),
        IdentitySpec("controller", Role.CONTROLLER),
        IdentitySpec("ingress", Role.INGRESS),
        IdentitySpec("console", Role.CONSOLE),
        IdentitySpec("admin", Role.OPERATOR),
        IdentitySpec("site-leaf", Role.LEAF),
        IdentitySpec("reviewer", Role.REVIEWER),
        IdentitySpec("review-intake", Role.REVIEW_INTAKE),
        IdentitySpec("review-desk", Role.REVIEW_DESK),
    ]
    return specs


__all__ = ["KeyStore", "KeyStoreError", "standard_identities"]
