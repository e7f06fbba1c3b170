"""Every row of the permission table on a real nats-server in operator mode (issue 11).

One server (JetStream domain ``site``, memory resolver preloaded with the fleet's accounts) for
the module; every identity connects with its own ``.creds`` and inbox prefix. An allowed action
is shown to work end to end (a request answered, a message received, a stream written); a
forbidden one to be refused the way nats-py reports it: a ``Permissions Violation`` through
``error_cb``, and no message delivered, no reply, or a JetStream API call that times out while
the stream stays as it was.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, StreamConfig
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, ServiceConfig

from mesh.local.servers import free_port, server_binary
from mesh.observability.metrics import MeshMetrics
from mesh.security.identities import Fleet, IdentitySpec, auth_block, create_fleet
from mesh.security.permissions import Role
from mesh.security.server_config import leaf_remote_block, leaf_remotes_block, leafnodes_block
from mesh.security.tls import DevelopmentPKI, write_development_pki
from mesh.settings import HardExampleSettings
from mesh.topology.streams import hard_example_spec, learn_spec
from mesh.transport.guard import flush_in_order
from mesh.transport.hardexamples import HardExampleCollector, HardExampleInbox, HardExampleStore
from mesh.transport.jetstream import ensure

pytestmark = pytest.mark.timeout(60)

QUIET_S = 0.3
JS_TIMEOUT_S = 0.5

SPECS = [
    IdentitySpec("app1", Role.APPLICATION),
    IdentitySpec("app2", Role.APPLICATION),
    IdentitySpec(
        "edge-1", Role.NODE, tier="edge", upstream_tier="gateway", entry=True, domain="site"
    ),
    IdentitySpec(
        "edge-2", Role.NODE, tier="edge", upstream_tier="gateway", entry=True, domain="site"
    ),
    IdentitySpec(
        "gateway-1",
        Role.NODE,
        tier="gateway",
        upstream_tier="cloud",
        downstream_tier="edge",
        domain="site",
    ),
    IdentitySpec("cloud-1", Role.NODE, tier="cloud", downstream_tier="gateway", domain="hub"),
    IdentitySpec("controller", Role.CONTROLLER),
    IdentitySpec("ingress", Role.INGRESS),
    IdentitySpec("console", Role.CONSOLE),
    IdentitySpec("admin", Role.OPERATOR),
    IdentitySpec("site-leaf", Role.LEAF),
]


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    http_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def monitor(self, endpoint: str) -> dict[str, Any]:
        with urlopen(f"http://127.0.0.1:{self.http_port}/{endpoint}", timeout=2) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


def start_server(directory: Path, name: str, body: str) -> Server:
    """A nats-server on free loopback ports with ``body`` appended to its configuration."""
    directory.mkdir(parents=True, exist_ok=True)
    port, http_port = free_port(), free_port()
    conf = directory / "server.conf"
    conf.write_text(
        f'server_name: "{name}"\nlisten: "127.0.0.1:{port}"\nhttp: "127.0.0.1:{http_port}"\n' + body
    )
    log = directory / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [server_binary(), "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT
        )
    server = Server(name, process, port, http_port, log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited:\n{log.read_text()[-2000:]}")
        try:
            if server.monitor("healthz").get("status") == "ok":
                return server
        except OSError:
            pass
        time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{name} did not become healthy:\n{log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return create_fleet(SPECS, tmp_path_factory.mktemp("creds"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fleet: Fleet) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("nats")
    body = f'jetstream {{ store_dir: "{directory / "js"}", domain: "site" }}\n' + auth_block(fleet)
    s = start_server(directory, "site", body)
    yield s
    s.stop()


@dataclass
class Conn:
    nc: NATS
    errors: list[Exception]
    #: set by every error the connection reports.
    changed: asyncio.Event

    def violations(self) -> list[str]:
        return [
            str(e).lower()
            for e in self.errors
            if isinstance(e, nats.errors.Error) and "permissions violation" in str(e).lower()
        ]

    async def expect_violation(self, kind: str, subject: str, queue: str | None = None) -> None:
        """Wait for the server's ``Permissions Violation for <kind> to "<subject>"``."""
        wanted = f'permissions violation for {kind} to "{subject}"'.lower()
        if queue is not None:
            wanted += f' using queue "{queue}"'.lower()
        async with asyncio.timeout(5.0):
            while not any(v == f"nats: {wanted}" for v in self.violations()):
                self.changed.clear()
                await self.changed.wait()


Connect = Callable[..., Awaitable[Conn]]


@pytest.fixture
async def connect(server: Server, fleet: Fleet) -> Any:
    """Connect as an identity of the fleet: its creds file and its own inbox prefix."""
    conns: list[NATS] = []

    async def open_(name: str, url: str | None = None) -> Conn:
        errors: list[Exception] = []
        changed = asyncio.Event()

        async def on_error(e: Exception) -> None:
            errors.append(e)
            changed.set()

        nc = await nats.connect(
            url or server.url,
            user_credentials=str(fleet.creds_path(name)),
            inbox_prefix=fleet[name].inbox_prefix,
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=2,
        )
        conns.append(nc)
        return Conn(nc, errors, changed)

    yield open_
    for nc in conns:
        await nc.close()


async def ask(conn: Conn, subject: str) -> Msg:
    """A request answered once the responder's interest is seen (a busy server may take a
    moment after the responder's flush): retried on no responders for up to 5 s."""
    async with asyncio.timeout(5.0):
        while True:
            try:
                return await conn.nc.request(subject, b"x", timeout=2)
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.05)


def unique_model() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


async def echo(msg: Msg) -> None:
    await msg.respond(b"answered:" + msg.data)


class Collector:
    """A subscription's messages, to show that one got nothing."""

    def __init__(self) -> None:
        self.messages: list[Msg] = []
        self._changed = asyncio.Event()

    async def add(self, msg: Msg) -> None:
        self.messages.append(msg)
        self._changed.set()

    async def wait_for(self, count: int = 1) -> None:
        async with asyncio.timeout(5.0):
            while len(self.messages) < count:
                self._changed.clear()
                await self._changed.wait()


async def refused_connect(url: str, **options: Any) -> Exception:
    nc = NATS()
    try:
        with pytest.raises(nats.errors.Error) as raised:
            await nc.connect(
                url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=2, **options
            )
    finally:
        await nc.close()  # nats-py leaves the refused socket open otherwise
    return raised.value


# ---- connecting ---------------------------------------------------------------------------


async def test_a_connection_without_credentials_is_refused(server: Server) -> None:
    error = await refused_connect(server.url)
    assert "authorization violation" in str(error).lower()


async def test_credentials_of_another_operator_are_refused(server: Server, tmp_path: Path) -> None:
    stranger = await asyncio.to_thread(
        create_fleet, [IdentitySpec("app1", Role.APPLICATION)], tmp_path
    )
    error = await refused_connect(server.url, user_credentials=str(stranger.creds_path("app1")))
    assert "authorization violation" in str(error).lower()


async def test_leaf_credentials_cannot_open_a_client_connection(
    server: Server, fleet: Fleet
) -> None:
    error = await refused_connect(server.url, user_credentials=str(fleet.creds_path("site-leaf")))
    assert "authorization violation" in str(error).lower()


# ---- application --------------------------------------------------------------------------


async def test_an_application_gets_answers_through_its_own_inbox(connect: Connect) -> None:
    app, edge = await connect("app1"), await connect("edge-1")
    model = unique_model()
    await edge.nc.subscribe(f"mesh.infer.{model}", queue="mesh.entry", cb=echo)
    await flush_in_order(edge.nc)

    reply = await ask(app, f"mesh.infer.{model}")

    assert reply.data == b"answered:x"
    assert reply.subject.startswith("_INBOX_app1.")
    assert app.violations() == [] and edge.violations() == []


async def test_an_application_may_address_one_tier_directly_and_nothing_else_of_it(
    connect: Connect,
) -> None:
    app, edge = await connect("app1"), await connect("edge-1")
    model = unique_model()
    await edge.nc.subscribe(f"mesh.edge.infer.{model}", queue="mesh.edge", cb=echo)
    await flush_in_order(edge.nc)

    reply = await ask(app, f"mesh.edge.infer.{model}")

    assert reply.data == b"answered:x"
    await app.nc.publish(f"mesh.learn.edge.{model}", b"forged")
    await app.expect_violation("publish", f"mesh.learn.edge.{model}")


async def test_an_application_publishes_events_only_as_itself(connect: Connect) -> None:
    app, admin = await connect("app1"), await connect("admin")
    model = unique_model()
    seen = Collector()
    await admin.nc.subscribe(f"mesh.events.{model}.>", cb=seen.add)
    await flush_in_order(admin.nc)

    await app.nc.publish(f"mesh.events.{model}.app1", b"mine")
    await app.nc.publish(f"mesh.events.{model}.app2", b"forged")
    await app.expect_violation("publish", f"mesh.events.{model}.app2")
    await seen.wait_for(1)
    await asyncio.sleep(QUIET_S)

    assert [m.subject for m in seen.messages] == [f"mesh.events.{model}.app1"]


async def test_an_application_reads_only_its_own_results_through_its_own_consumer(
    connect: Connect,
) -> None:
    app1, app2, admin = await connect("app1"), await connect("app2"), await connect("admin")
    model = unique_model()
    await admin.nc.jetstream().add_stream(
        StreamConfig(name="MESH_RESULTS", subjects=["mesh.results.>"])
    )
    for source in ("app1", "app2"):
        await admin.nc.jetstream().publish(f"mesh.results.{model}.{source}", source.encode())

    def config(name: str, source: str) -> ConsumerConfig:
        return ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=f"mesh.results.{model}.{source}",
            ack_policy=AckPolicy.EXPLICIT,
        )

    js1 = app1.nc.jetstream(timeout=JS_TIMEOUT_S)
    await js1.add_consumer("MESH_RESULTS", config("app1", "app1"))
    sub = await js1.pull_subscribe_bind(durable="app1", stream="MESH_RESULTS")
    [msg] = await sub.fetch(1, timeout=2)
    assert msg.data == b"app1"
    await msg.ack()

    # another's results, under its own consumer name or under the other's
    with pytest.raises(nats.errors.TimeoutError):
        await js1.add_consumer("MESH_RESULTS", config("app1x", "app2"))
    with pytest.raises(nats.errors.TimeoutError):
        await js1.add_consumer("MESH_RESULTS", config("app2", "app2"))
    # the other's consumer, once it exists, cannot be pulled from
    js2 = app2.nc.jetstream(timeout=JS_TIMEOUT_S)
    await js2.add_consumer("MESH_RESULTS", config("app2", "app2"))
    stolen = await js1.pull_subscribe_bind(durable="app2", stream="MESH_RESULTS")
    with pytest.raises(nats.errors.TimeoutError):
        await stolen.fetch(1, timeout=1)
    await app1.expect_violation("publish", "$JS.API.CONSUMER.MSG.NEXT.MESH_RESULTS.app2")
    own = await js2.pull_subscribe_bind(durable="app2", stream="MESH_RESULTS")
    [msg] = await own.fetch(1, timeout=2)
    assert msg.data == b"app2"
    await admin.nc.jetstream().delete_stream("MESH_RESULTS")


async def test_an_application_cannot_listen_beyond_its_inbox(connect: Connect) -> None:
    app, admin = await connect("app1"), await connect("admin")
    model = unique_model()
    seen = Collector()
    refused = [
        ("mesh.>", None),
        ("_INBOX_app2.>", None),
        ("mesh.edge.infer.>", None),
        ("mesh.infer.>", "mesh.entry"),
    ]
    for subject, queue in refused:
        await app.nc.subscribe(subject, queue=queue or "", cb=seen.add)
    for subject, queue in refused:
        await app.expect_violation("subscription", subject, queue)

    for subject in (f"mesh.edge.infer.{model}", f"mesh.infer.{model}", "_INBOX_app2.reply"):
        await admin.nc.publish(subject, b"not for app1")
    await flush_in_order(admin.nc)
    await asyncio.sleep(QUIET_S)
    assert seen.messages == []


async def test_an_application_cannot_publish_hard_examples_or_telemetry(
    connect: Connect,
) -> None:
    app, admin = await connect("app1"), await connect("admin")
    seen = Collector()
    await admin.nc.subscribe("mesh.hard.>", cb=seen.add)
    await admin.nc.subscribe("mesh.telemetry.>", cb=seen.add)
    await flush_in_order(admin.nc)

    await app.nc.publish("mesh.hard.edge.digits", b"poison")
    await app.nc.publish("mesh.telemetry.x", b"forged")
    await app.expect_violation("publish", "mesh.hard.edge.digits")
    await app.expect_violation("publish", "mesh.telemetry.x")
    await asyncio.sleep(QUIET_S)
    assert seen.messages == []


@pytest.mark.parametrize("operation", ["DELETE", "PURGE"])
async def test_an_application_cannot_delete_or_purge_a_stream(
    connect: Connect, operation: str
) -> None:
    app, admin = await connect("app1"), await connect("admin")
    stream = f"X_{uuid.uuid4().hex[:8].upper()}"
    admin_js = admin.nc.jetstream()
    await admin_js.add_stream(StreamConfig(name=stream, subjects=[f"x.{stream}"]))
    await admin_js.publish(f"x.{stream}", b"kept")

    subject = f"$JS.API.STREAM.{operation}.{stream}"
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await app.nc.request(subject, b"", timeout=JS_TIMEOUT_S)
    await app.expect_violation("publish", subject)

    info = await admin_js.stream_info(stream)
    assert info.state.messages == 1
    await admin_js.delete_stream(stream)


async def test_an_application_cannot_read_the_fleets_desired_state(connect: Connect) -> None:
    app = await connect("app1")
    js = app.nc.jetstream(timeout=JS_TIMEOUT_S)
    with pytest.raises(nats.errors.TimeoutError):
        await js.key_value("MESH_FLEET_DESIRED")
    await app.expect_violation("publish", "$JS.API.STREAM.INFO.KV_MESH_FLEET_DESIRED")


# ---- nodes --------------------------------------------------------------------------------


async def test_an_edge_node_takes_its_subjects_only_in_its_queue_groups(
    connect: Connect,
) -> None:
    edge, admin = await connect("edge-1"), await connect("admin")
    model = unique_model()
    await edge.nc.subscribe(f"mesh.edge.infer.{model}", queue="mesh.edge", cb=echo)
    seen = Collector()
    refused = [
        ("mesh.edge.infer.>", None),
        ("mesh.edge.infer.>", "mesh.cloud"),
        ("mesh.cloud.infer.>", "mesh.cloud"),
        ("mesh.gateway.infer.>", "mesh.gateway"),
    ]
    for subject, queue in refused:
        await edge.nc.subscribe(subject, queue=queue or "", cb=seen.add)
    for subject, queue in refused:
        await edge.expect_violation("subscription", subject, queue)

    reply = await ask(admin, f"mesh.edge.infer.{model}")
    assert reply.data == b"answered:x"
    for tier in ("cloud", "gateway"):
        await admin.nc.publish(f"mesh.{tier}.infer.{model}", b"not for the edge")
    await flush_in_order(admin.nc)
    await asyncio.sleep(QUIET_S)
    assert seen.messages == []


async def test_only_the_entry_tier_joins_the_entry_queue_group(connect: Connect) -> None:
    gateway = await connect("gateway-1")
    await gateway.nc.subscribe("mesh.infer.>", queue="mesh.entry")
    await gateway.expect_violation("subscription", "mesh.infer.>", "mesh.entry")


async def test_a_node_escalates_only_to_its_upstream_tier(connect: Connect) -> None:
    edge, gateway, cloud = (
        await connect("edge-1"),
        await connect("gateway-1"),
        await connect("cloud-1"),
    )
    model = unique_model()
    await gateway.nc.subscribe(f"mesh.gateway.infer.{model}", queue="mesh.gateway", cb=echo)
    got = Collector()
    await cloud.nc.subscribe(f"mesh.cloud.infer.{model}", queue="mesh.cloud", cb=got.add)
    await flush_in_order(gateway.nc)
    await flush_in_order(cloud.nc)

    reply = await ask(edge, f"mesh.gateway.infer.{model}")
    assert reply.data == b"answered:x"

    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await edge.nc.request(f"mesh.cloud.infer.{model}", b"skip", timeout=QUIET_S)
    await edge.expect_violation("publish", f"mesh.cloud.infer.{model}")
    assert got.messages == []


async def test_a_node_publishes_only_its_own_telemetry(connect: Connect) -> None:
    edge, console = await connect("edge-1"), await connect("console")
    seen = Collector()
    await console.nc.subscribe("mesh.telemetry.>", cb=seen.add)
    await flush_in_order(console.nc)

    await edge.nc.publish("mesh.telemetry.edge-1", b"drift")
    await edge.nc.publish("mesh.telemetry.edge-2", b"forged")
    await edge.expect_violation("publish", "mesh.telemetry.edge-2")
    await seen.wait_for(1)
    await asyncio.sleep(QUIET_S)
    assert [m.subject for m in seen.messages] == ["mesh.telemetry.edge-1"]


async def test_a_subscription_is_at_the_server_once_flush_in_order_returns(
    tmp_path: Path, fleet: Fleet
) -> None:
    """The telemetry test above lost its one message now and then: nats-py's ``flush`` had its
    PONG back before the server read the SUB sent just before it. The server's own trace shows
    the order it read a connection's commands in."""
    traced = await asyncio.to_thread(
        start_server, tmp_path / "traced", "traced", "trace: true\n" + auth_block(fleet)
    )
    try:
        nc = await nats.connect(
            traced.url,
            user_credentials=str(fleet.creds_path("console")),
            inbox_prefix=fleet["console"].inbox_prefix,
            allow_reconnect=False,
        )
        try:
            for k in range(20):
                await nc.subscribe(f"mesh.telemetry.probe{k}")
                await flush_in_order(nc)
                lines = (await asyncio.to_thread(traced.log.read_text)).splitlines()
                pings = [i for i, line in enumerate(lines) if "<<- [PING]" in line]
                sub = next(
                    i for i, line in enumerate(lines) if f"[SUB mesh.telemetry.probe{k} " in line
                )
                assert sub < pings[-1], f"the SUB of probe{k} was read after the last PING"
        finally:
            await nc.close()
    finally:
        await asyncio.to_thread(traced.stop)


async def test_hard_examples_are_kept_by_their_tier_and_taken_up_by_the_one_above(
    connect: Connect,
) -> None:
    """The node's JetStream grants are enough for ``mesh.transport.hardexamples`` as it is,
    on streams the administrator provisioned; the tier that writes the cases cannot read
    them back (NATS would deliver them wherever it asks)."""
    edge, gateway, admin = (
        await connect("edge-1"),
        await connect("gateway-1"),
        await connect("admin"),
    )
    for spec in (hard_example_spec("edge"), learn_spec("gateway")):
        await ensure(admin.nc.jetstream(), spec)
    settings = HardExampleSettings(collect_from="edge")
    store = HardExampleStore(
        edge.nc, tier="edge", node="edge-1", settings=settings, metrics=MeshMetrics()
    )
    inbox = HardExampleInbox(gateway.nc, tier="gateway", settings=settings)
    await store.start()
    await inbox.start()
    await edge.nc.jetstream().publish(
        "mesh.hard.edge.digits", b"case", headers={"Nats-Msg-Id": "r1"}
    )
    collector = HardExampleCollector(
        gateway.nc, tier="gateway", below="edge", settings=settings, metrics=MeshMetrics()
    )
    await collector.start()
    try:
        async with asyncio.timeout(10):
            while await inbox.count() < 1:  # noqa: ASYNC110 (polls the server)
                await asyncio.sleep(0.05)
        assert collector.forwarded == 1
    finally:
        await collector.stop()
        await inbox.stop()
        await store.stop()
    assert edge.violations() == [] and gateway.violations() == []
    with pytest.raises(nats.errors.TimeoutError):
        await edge.nc.request(
            "$JS.API.CONSUMER.MSG.NEXT.MESH_HARD_EDGE.collect-gateway", b"1", timeout=0.5
        )
    await edge.expect_violation(
        "publish", "$JS.API.CONSUMER.MSG.NEXT.MESH_HARD_EDGE.collect-gateway"
    )


@pytest.mark.parametrize(
    ("call", "subject"),
    [
        ("delete", "$JS.API.STREAM.DELETE.MESH_HARD_GATEWAY"),
        ("purge", "$JS.API.STREAM.PURGE.MESH_HARD_GATEWAY"),
        ("create", "$JS.API.STREAM.CREATE.MESH_HARD_CLOUD"),
    ],
)
async def test_a_node_cannot_delete_purge_or_create_streams_it_does_not_own(
    connect: Connect, call: str, subject: str
) -> None:
    gateway, admin = await connect("gateway-1"), await connect("admin")
    await ensure(admin.nc.jetstream(), hard_example_spec("gateway"))
    await gateway.nc.publish("mesh.hard.gateway.digits", b"case")
    await flush_in_order(gateway.nc)
    js = gateway.nc.jetstream(timeout=JS_TIMEOUT_S)
    with pytest.raises(nats.errors.TimeoutError):
        if call == "delete":
            await js.delete_stream("MESH_HARD_GATEWAY")
        elif call == "purge":
            await js.purge_stream("MESH_HARD_GATEWAY")
        else:
            await js.add_stream(StreamConfig(name="MESH_HARD_CLOUD", subjects=["x.cloud"]))
    await gateway.expect_violation("publish", subject)

    admin_js = admin.nc.jetstream()
    assert (await admin_js.stream_info("MESH_HARD_GATEWAY")).state.messages >= 1
    with pytest.raises(nats.js.errors.NotFoundError):
        await admin_js.stream_info("MESH_HARD_CLOUD")


async def test_a_node_answers_discovery_and_status_requests(connect: Connect) -> None:
    edge, console = await connect("edge-1"), await connect("console")

    async def status(request: Request) -> None:
        await request.respond(b"ready")

    service = await add_service(
        edge.nc, ServiceConfig(name="mesh-node", version="0.1.0", description="test")
    )
    await service.add_endpoint(
        EndpointConfig(name="status", subject="mesh.status.edge-1", handler=status)
    )
    await flush_in_order(edge.nc)  # the server has the subscriptions before another connection asks
    try:
        ping = await console.nc.request("$SRV.PING.mesh-node", b"", timeout=2)
        assert json.loads(ping.data)["name"] == "mesh-node"
        reply = await console.nc.request("mesh.status.edge-1", b"", timeout=2)
        assert reply.data == b"ready"
    finally:
        await service.stop()
    assert edge.violations() == [] and console.violations() == []


# ---- controller, console, ingress, administrator ------------------------------------------


async def test_only_the_controller_writes_the_desired_state(connect: Connect) -> None:
    controller, edge, console = (
        await connect("controller"),
        await connect("edge-1"),
        await connect("console"),
    )
    admin = await connect("admin")
    await admin.nc.jetstream().create_key_value(KeyValueConfig(bucket="MESH_FLEET_DESIRED"))
    kv = await controller.nc.jetstream().key_value("MESH_FLEET_DESIRED")
    await kv.put("edge-1", b"digits@2")

    node_kv = await edge.nc.jetstream(timeout=JS_TIMEOUT_S).key_value("MESH_FLEET_DESIRED")
    assert (await node_kv.get("edge-1")).value == b"digits@2"
    with pytest.raises(nats.errors.TimeoutError):
        await node_kv.put("edge-1", b"digits@evil")
    await edge.expect_violation("publish", "$KV.MESH_FLEET_DESIRED.edge-1")

    console_kv = await console.nc.jetstream(timeout=JS_TIMEOUT_S).key_value("MESH_FLEET_DESIRED")
    assert (await console_kv.get("edge-1")).value == b"digits@2"
    with pytest.raises(nats.errors.TimeoutError):
        await console_kv.put("edge-1", b"digits@evil")
    await console.expect_violation("publish", "$KV.MESH_FLEET_DESIRED.edge-1")

    assert (await kv.get("edge-1")).value == b"digits@2"


async def test_a_node_writes_only_its_own_heartbeat_and_the_console_reads_them(
    connect: Connect,
) -> None:
    admin, edge, console = await connect("admin"), await connect("edge-1"), await connect("console")
    await admin.nc.jetstream().create_key_value(KeyValueConfig(bucket="MESH_NODES_SITE"))
    await admin.nc.jetstream().create_key_value(KeyValueConfig(bucket="MESH_FLEET_NODES"))
    js = edge.nc.jetstream(timeout=JS_TIMEOUT_S)
    await js.publish("$KV.MESH_NODES_SITE.edge-1", b"beat")
    with pytest.raises(nats.errors.TimeoutError):
        await js.publish("$KV.MESH_NODES_SITE.edge-2", b"forged")
    await edge.expect_violation("publish", "$KV.MESH_NODES_SITE.edge-2")
    # its own name as a key is no way into the desired state
    with pytest.raises(nats.errors.TimeoutError):
        await js.publish("$KV.MESH_FLEET_DESIRED.edge-1", b"digits@evil")
    await edge.expect_violation("publish", "$KV.MESH_FLEET_DESIRED.edge-1")

    beats = await console.nc.jetstream(timeout=JS_TIMEOUT_S).key_value("MESH_FLEET_NODES")
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await beats.get("edge-1")
    with pytest.raises(nats.errors.TimeoutError):
        await beats.put("edge-1", b"forged")
    site = await admin.nc.jetstream().key_value("MESH_NODES_SITE")
    assert [e.value for e in await site.history("edge-1")] == [b"beat"]
    with pytest.raises(nats.js.errors.KeyNotFoundError):
        await site.get("edge-2")


async def test_the_controller_cannot_delete_the_desired_state(connect: Connect) -> None:
    controller, admin = await connect("controller"), await connect("admin")
    await admin.nc.jetstream().create_key_value(KeyValueConfig(bucket="MESH_FLEET_DESIRED"))
    js = controller.nc.jetstream(timeout=JS_TIMEOUT_S)
    with pytest.raises(nats.errors.TimeoutError):
        await js.delete_key_value("MESH_FLEET_DESIRED")
    await controller.expect_violation("publish", "$JS.API.STREAM.DELETE.KV_MESH_FLEET_DESIRED")


async def test_the_console_observes_but_cannot_infer(connect: Connect) -> None:
    console, admin = await connect("console"), await connect("admin")
    seen = Collector()
    await admin.nc.subscribe("mesh.infer.>", cb=seen.add)
    await flush_in_order(admin.nc)
    await console.nc.publish("mesh.infer.digits", b"x")
    await console.expect_violation("publish", "mesh.infer.digits")
    await console.nc.subscribe("mesh.edge.infer.>", queue="mesh.edge")
    await console.expect_violation("subscription", "mesh.edge.infer.>", "mesh.edge")
    await asyncio.sleep(QUIET_S)
    assert seen.messages == []


async def test_the_ingress_sends_requests_and_receives_results_but_serves_nothing(
    connect: Connect,
) -> None:
    ingress, edge, admin = await connect("ingress"), await connect("edge-1"), await connect("admin")
    model = unique_model()
    await edge.nc.subscribe(f"mesh.infer.{model}", queue="mesh.entry", cb=echo)
    await flush_in_order(edge.nc)
    assert (await ask(ingress, f"mesh.infer.{model}")).data == b"answered:x"

    results = Collector()
    await ingress.nc.subscribe(f"mesh.results.{model}.*", cb=results.add)
    await flush_in_order(ingress.nc)
    await admin.nc.publish(f"mesh.results.{model}.device-7", b"result")
    await results.wait_for(1)

    await ingress.nc.subscribe("mesh.infer.>", queue="mesh.entry")
    await ingress.expect_violation("subscription", "mesh.infer.>", "mesh.entry")
    await ingress.nc.publish("mesh.hard.edge.digits", b"poison")
    await ingress.expect_violation("publish", "mesh.hard.edge.digits")


async def test_the_administrator_may_delete_and_purge_streams(connect: Connect) -> None:
    admin = await connect("admin")
    js = admin.nc.jetstream()
    stream = f"ADMIN_{uuid.uuid4().hex[:8].upper()}"
    await js.add_stream(StreamConfig(name=stream, subjects=[f"admin.{stream}"]))
    await js.publish(f"admin.{stream}", b"x")
    assert await js.purge_stream(stream)
    assert (await js.stream_info(stream)).state.messages == 0
    assert await js.delete_stream(stream)
    assert admin.violations() == []


# ---- leaf servers over TLS ----------------------------------------------------------------


@dataclass
class LeafRig:
    hub: Server
    leaves: dict[str, Server]


@pytest.fixture(scope="module")
def leaf_rig(tmp_path_factory: pytest.TempPathFactory, fleet: Fleet) -> Iterator[LeafRig]:
    base = tmp_path_factory.mktemp("leaf")
    pki: DevelopmentPKI = write_development_pki(base / "pki", client_name="site-leaf")
    auth = auth_block(fleet)
    leaf_port = free_port()
    hub = start_server(
        base / "hub",
        "hub",
        auth + leafnodes_block(f"127.0.0.1:{leaf_port}", tls=pki.server, verify=True) + "\n",
    )
    url = f"nats-leaf://127.0.0.1:{leaf_port}"
    creds = fleet.creds_path("site-leaf")
    account = fleet.account.public_key
    remotes = {
        "site-good": leaf_remote_block(
            [url], credentials=creds, account=account, ca_file=pki.ca_file, client_cert=pki.client
        ),
        "site-no-creds": leaf_remote_block(
            [url], account=account, ca_file=pki.ca_file, client_cert=pki.client
        ),
        "site-no-tls": leaf_remote_block([url], credentials=creds, account=account),
        "site-app-creds": leaf_remote_block(
            [url],
            credentials=fleet.creds_path("app1"),
            account=account,
            ca_file=pki.ca_file,
            client_cert=pki.client,
        ),
    }
    leaves: dict[str, Server] = {}
    try:
        for name, remote in remotes.items():
            leaves[name] = start_server(
                base / name, name, auth + leaf_remotes_block([remote]) + "\n"
            )
        yield LeafRig(hub, leaves)
    finally:
        for leaf in leaves.values():
            leaf.stop()
        hub.stop()


async def test_only_a_leaf_with_site_credentials_over_tls_joins_the_hub(
    leaf_rig: LeafRig,
) -> None:
    def leaf_names() -> list[str]:
        return sorted(leaf["name"] for leaf in leaf_rig.hub.monitor("leafz").get("leafs") or [])

    async with asyncio.timeout(10):
        while "site-good" not in await asyncio.to_thread(leaf_names):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    # The others dial every second (reconnect: 1): give each a few tries.
    await asyncio.sleep(2.5)
    assert await asyncio.to_thread(leaf_names) == ["site-good"]

    def log(name: str) -> str:
        return leaf_rig.leaves[name].log.read_text()

    # Refused for the reason each was set up to show, not for some other fault.
    assert "Leafnode Error 'Authorization Violation'" in await asyncio.to_thread(
        log, "site-no-creds"
    )
    assert "Leafnode Error 'Authorization Violation'" in await asyncio.to_thread(
        log, "site-app-creds"
    )
    assert "certificate signed by unknown authority" in await asyncio.to_thread(log, "site-no-tls")


async def test_a_site_leaf_cannot_write_models_or_destroy_streams_at_the_hub(
    leaf_rig: LeafRig, connect: Connect
) -> None:
    """Even the administrator's traffic, entering at a site, is held to the leaf role.

    (``$KV.>`` does not cross a leaf link at all, so the desired state is shown safe by the
    controller test; these subjects would cross but for the leaf role's denies.)
    """
    hub_admin = await connect("admin", leaf_rig.hub.url)
    site_admin = await connect("admin", leaf_rig.leaves["site-good"].url)
    seen = Collector()
    for subject in ("$O.MESH_MODELS.>", "$JS.hub.API.>", "mesh.telemetry.>"):
        await hub_admin.nc.subscribe(subject, cb=seen.add)
    await flush_in_order(hub_admin.nc)
    crossing = {"mesh.telemetry.site", "$JS.hub.API.STREAM.INFO.X"}
    denied = {"$O.MESH_MODELS.C.x", "$JS.hub.API.STREAM.DELETE.X", "$JS.hub.API.STREAM.PURGE.X"}

    async with asyncio.timeout(10):
        while not crossing <= {m.subject for m in seen.messages}:
            for subject in sorted(denied | crossing):
                await site_admin.nc.publish(subject, b"")
            await asyncio.sleep(0.1)
    for subject in sorted(denied):
        await site_admin.nc.publish(subject, b"")
    await asyncio.sleep(QUIET_S)
    assert {m.subject for m in seen.messages} == crossing


async def test_site_traffic_crosses_the_authenticated_leaf_link(
    leaf_rig: LeafRig, connect: Connect
) -> None:
    async with asyncio.timeout(10):
        while (await asyncio.to_thread(leaf_rig.hub.monitor, "leafz")).get("leafnodes", 0) < 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    edge = await connect("edge-1", leaf_rig.hub.url)
    app = await connect("app1", leaf_rig.leaves["site-good"].url)
    model = unique_model()
    await edge.nc.subscribe(f"mesh.infer.{model}", queue="mesh.entry", cb=echo)
    await flush_in_order(edge.nc)
    async with asyncio.timeout(5):
        while True:
            try:
                reply = await app.nc.request(f"mesh.infer.{model}", b"x", timeout=0.5)
                break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.1)  # interest takes a moment to cross the link
    assert reply.data == b"answered:x"
