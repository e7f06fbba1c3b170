"""NATS identities for the mesh: decentralized JWT auth with an operator, accounts and users.

``create_fleet`` makes an operator, a system account (the servers' own), one mesh account and a
user per identity (application, node, controller, ingress, console, administrator, site leaf
server), each with the permissions of its role (``mesh.security.permissions``), and writes each
user's ``<name>.creds`` (JWT and nkey seed, mode 0600) for ``nats.connect(...,
user_credentials=path)`` or a leaf remote's ``credentials``. ``auth_block`` renders the server
configuration that trusts them: the operator JWT, the system account and a memory resolver
preloaded with both account JWTs. Every server of the mesh (hub and site leaf servers) takes
the same block.

Why one mesh account and not one per site: the mesh is one subject space. An edge node's
escalation to ``mesh.gateway.infer.<model>``, the gateway's to the cloud, replies to inboxes,
hard examples forwarded to ``mesh.learn.<tier>.<model>`` in another JetStream domain and the
micro services discovery on ``$SRV.>`` all cross sites and must meet the same subscribers.
Accounts are isolation boundaries: one per site would need an export and an import for every
one of those subjects between every pair of accounts, and would make ``$SRV.>`` discovery see
one site at a time. Isolation between identities comes from per-user permissions instead, which
is what the issue asks: no device is trusted to see or do more than its role.

The operator and account seeds sign everything else: in a real deployment they stay offline (or
in a secrets store), and only ``.creds`` files and the server block are shipped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import nkeys  # type: ignore[import-untyped]
from nats_jwt.nkeys_ext import (  # type: ignore[import-untyped]
    create_account_pair,
    create_operator_pair,
    create_user_pair,
)
from nats_jwt.v2.account_claims import AccountClaims  # type: ignore[import-untyped]
from nats_jwt.v2.operator_claims import OperatorClaims  # type: ignore[import-untyped]
from nats_jwt.v2.user_claims import UserClaims  # type: ignore[import-untyped]

from mesh.errors import InvalidArgumentError
from mesh.security.permissions import Permissions, Role, inbox_prefix, permissions_for
from mesh.topology.subjects import check_token

#: ``allowed_connection_types`` values of a user JWT.
STANDARD = "STANDARD"
LEAFNODE = "LEAFNODE"
NO_LIMIT = -1
MAX_CONTROL_LINE = 32 * 1024


@dataclass(frozen=True)
class Operator:
    name: str
    public_key: str
    jwt: str
    seed: str = field(repr=False)


@dataclass(frozen=True)
class Account:
    name: str
    public_key: str
    jwt: str
    seed: str = field(repr=False)


@dataclass(frozen=True)
class IdentitySpec:
    """Who gets an identity: a name (also its creds file's name) and its role's parameters."""

    name: str
    role: Role
    tier: str | None = None
    upstream_tier: str | None = None
    entry: bool = False
    models: Sequence[str] | None = None
    #: the tier below a node's (whose hard examples it takes up), if any.
    downstream_tier: str | None = None
    #: the JetStream domain of a node's server (its heartbeat's bucket), if it runs a fleet agent.
    domain: str | None = None

    def permissions(self) -> Permissions:
        return permissions_for(
            self.role,
            name=self.name,
            tier=self.tier,
            upstream_tier=self.upstream_tier,
            downstream_tier=self.downstream_tier,
            entry=self.entry,
            domain=self.domain,
            models=self.models,
        )

    def record(self) -> dict[str, Any]:
        """What ``identities.json`` keeps of it (to list and re-issue identities)."""
        return {
            "role": str(self.role),
            "tier": self.tier,
            "upstream_tier": self.upstream_tier,
            "downstream_tier": self.downstream_tier,
            "entry": self.entry,
            "domain": self.domain,
            "models": list(self.models) if self.models is not None else None,
        }


@dataclass(frozen=True)
class Identity:
    """A NATS user of the mesh account: its JWT, seed and the permissions inside the JWT."""

    spec: IdentitySpec
    public_key: str
    jwt: str
    permissions: Permissions
    seed: str = field(repr=False)
    #: where ``create_fleet`` wrote its ``.creds``; None when it wrote none.
    creds_path: Path | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def role(self) -> Role:
        return self.spec.role

    @property
    def inbox_prefix(self) -> str:
        """Pass as ``nats.connect(..., inbox_prefix=...)``: the only inbox it may subscribe."""
        return inbox_prefix(self.spec.name)

    def creds(self) -> str:
        return creds_text(self.jwt, self.seed)


@dataclass(frozen=True)
class Fleet:
    operator: Operator
    system_account: Account
    account: Account
    identities: Mapping[str, Identity]

    def __getitem__(self, name: str) -> Identity:
        return self.identities[name]

    def creds_path(self, name: str) -> Path:
        path = self.identities[name].creds_path
        if path is None:
            raise LookupError(f"no creds file was written for {name!r}")
        return path


class FleetKeys(Protocol):
    """The keys a fleet's servers trust: a ``Fleet`` in memory, a ``KeyStore`` on disk."""

    @property
    def operator(self) -> Operator: ...

    @property
    def system_account(self) -> Account: ...

    @property
    def account(self) -> Account: ...


@dataclass(frozen=True)
class ServerAuthConfig:
    """What a server needs to trust the fleet: rendered by ``auth_block``."""

    operator_jwt: str
    system_account: str
    #: account public key to account JWT, for ``resolver_preload``.
    accounts: Mapping[str, str]
    #: the public key of the account every mesh identity belongs to.
    mesh_account: str = ""


def create_operator(name: str = "mesh") -> Operator:
    kp = create_operator_pair()
    claims = OperatorClaims(_text(kp.public_key), name)
    return Operator(name, _text(kp.public_key), claims.encode(kp), _text(kp.seed))


def create_account(
    operator: Operator, name: str, *, jetstream: bool = True, system_account: str = ""
) -> Account:
    kp = create_account_pair()
    claims = AccountClaims(_text(kp.public_key), name)
    claims.nats.limits = _AccountLimits(jetstream=jetstream)
    return Account(name, _text(kp.public_key), claims.encode(_keys(operator.seed)), _text(kp.seed))


def create_identity(account: Account, spec: IdentitySpec) -> Identity:
    """A user of ``account`` with the permissions of ``spec``'s role, signed by the account."""
    try:
        check_token(spec.name, "identity name")
        permissions = spec.permissions()
    except ValueError as exc:
        raise InvalidArgumentError(f"identity {spec.name!r}: {exc}") from None
    kp = create_user_pair()
    claims = UserClaims(_text(kp.public_key), spec.name)
    claims.nats.pub.allow = list(permissions.publish_allow)
    claims.nats.pub.deny = list(permissions.publish_deny)
    claims.nats.sub.allow = list(permissions.subscribe_allow)
    claims.nats.sub.deny = list(permissions.subscribe_deny)
    claims.nats.resp = _ResponsePermission() if permissions.allow_responses else None
    # A leaf server's credentials cannot open a client connection, nor a client's a leaf link.
    claims.nats.allowed_connection_types = [LEAFNODE if spec.role is Role.LEAF else STANDARD]
    claims.nats.bearer_token = False
    return Identity(
        spec=spec,
        public_key=_text(kp.public_key),
        jwt=claims.encode(_keys(account.seed)),
        permissions=permissions,
        seed=_text(kp.seed),
    )


def create_fleet(
    specs: Iterable[IdentitySpec],
    creds_dir: Path | None = None,
    *,
    operator_name: str = "mesh",
    account_name: str = "MESH",
) -> Fleet:
    """An operator, the system account, the mesh account and one user per spec.

    With ``creds_dir``, writes ``<creds_dir>/<name>.creds`` (mode 0600) for every identity.
    """
    operator, system, account = create_accounts(operator_name, account_name)
    identities: dict[str, Identity] = {}
    for spec in specs:
        if spec.name in identities:
            raise ValueError(f"two identities are named {spec.name!r}")
        identity = create_identity(account, spec)
        if creds_dir is not None:
            path = write_creds(identity, creds_dir)
            identity = Identity(
                identity.spec,
                identity.public_key,
                identity.jwt,
                identity.permissions,
                identity.seed,
                path,
            )
        identities[spec.name] = identity
    return Fleet(operator, system, account, identities)


def create_accounts(
    operator_name: str = "mesh", account_name: str = "MESH"
) -> tuple[Operator, Account, Account]:
    """A new operator with its system account (``SYS``) and the mesh account."""
    operator = create_operator(operator_name)
    system = create_account(operator, "SYS", jetstream=False)
    account = create_account(operator, account_name)
    return with_system_account(operator, system), system, account


def with_system_account(operator: Operator, system: Account) -> Operator:
    claims = OperatorClaims(operator.public_key, operator.name)
    claims.nats.system_account = system.public_key
    return Operator(
        operator.name, operator.public_key, claims.encode(_keys(operator.seed)), operator.seed
    )


def creds_text(jwt: str, seed: str) -> str:
    """The standard ``.creds`` format (as ``nsc`` writes it), which nats-py and nats-server read."""
    return (
        "-----BEGIN NATS USER JWT-----\n"
        f"{jwt}\n"
        "------END NATS USER JWT------\n"
        "\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n"
        "\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{seed}\n"
        "------END USER NKEY SEED------\n"
        "\n"
        "*************************************************************\n"
    )


def write_creds(identity: Identity, directory: Path) -> Path:
    """Write ``<directory>/<name>.creds``, readable by its owner only (created 0600, no window)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{identity.name}.creds"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(identity.creds())
    return path


def server_auth_config(keys: FleetKeys) -> ServerAuthConfig:
    return ServerAuthConfig(
        operator_jwt=keys.operator.jwt,
        system_account=keys.system_account.public_key,
        accounts={
            keys.system_account.public_key: keys.system_account.jwt,
            keys.account.public_key: keys.account.jwt,
        },
        mesh_account=keys.account.public_key,
    )


def auth_block(auth: ServerAuthConfig | FleetKeys) -> str:
    """The nats-server configuration lines that trust the fleet (operator mode, memory resolver)."""
    if not isinstance(auth, ServerAuthConfig):
        auth = server_auth_config(auth)
    preload = "\n".join(f'  {key}: "{jwt}"' for key, jwt in auth.accounts.items())
    return (
        # A CONNECT carries the user JWT, and a node's permission list makes it a few KiB:
        # over the default 4 KiB control line.
        f"max_control_line: {MAX_CONTROL_LINE}\n"
        f'operator: "{auth.operator_jwt}"\n'
        f'system_account: "{auth.system_account}"\n'
        "resolver: MEMORY\n"
        f"resolver_preload: {{\n{preload}\n}}\n"
    )


@dataclass
class _AccountLimits:
    """Account limits under the names nats-server reads.

    nats-jwt 0.2.2 writes JetStream memory storage as ``memory_storage`` where the Go JWT library
    (and so the server) reads ``mem_storage``: an account made with its class gets no memory
    streams. Serialised by nats-jwt's dataclasses-json like its own class.
    """

    jetstream: InitVar[bool] = True
    subs: int = NO_LIMIT
    data: int = NO_LIMIT
    payload: int = NO_LIMIT
    imports: int = NO_LIMIT
    exports: int = NO_LIMIT
    wildcards: bool = True
    conn: int = NO_LIMIT
    leaf: int = NO_LIMIT
    mem_storage: int = 0
    disk_storage: int = 0
    streams: int = 0
    consumer: int = 0

    def __post_init__(self, jetstream: bool) -> None:
        if jetstream:
            self.mem_storage = self.disk_storage = self.streams = self.consumer = NO_LIMIT


@dataclass
class _ResponsePermission:
    """``resp`` as the Go JWT library spells it (nats-jwt 0.2.2 writes ``max_msgs``/``expires``).

    One reply per request received, within the server's default window (2 minutes when 0)."""

    max: int = 1
    ttl: int = 0


def _keys(seed: str) -> Any:
    return nkeys.from_seed(seed.encode())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


__all__ = [
    "Account",
    "Fleet",
    "FleetKeys",
    "Identity",
    "IdentitySpec",
    "Operator",
    "ServerAuthConfig",
    "auth_block",
    "create_account",
    "create_accounts",
    "create_fleet",
    "create_identity",
    "create_operator",
    "creds_text",
    "server_auth_config",
    "write_creds",
]
