"""The fleet on real servers: a hub and a site linked through a proxy, three edge nodes on the
site with their fleet agents, signed versions pushed with the CLI and assigned to them under
continuous load through the SDK; tampered and untrusted versions; a cut site; fleet status."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import nats
import numpy as np
import pytest

from mesh.dev.faults import FaultProxy
from mesh.dev.fleetsim.simulate import CONSOLE, CONTROLLER
from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import MeshError
from mesh.fleet import registry
from mesh.fleet.signing import SigningKey, sign
from mesh.local.servers import ADMIN, APPLICATION, Site
from mesh.models.manifest import copy_as_version, load_manifest, sha256_of, verify_artifact
from mesh.node.tier import TierNode
from mesh.sdk.client import MeshClient
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.settings import FleetSettings, HardExampleSettings
from mesh.topology.streams import NODES_BUCKET, standard_topology
from mesh.transport.guard import flush_in_order
from mesh.transport.jetstream import provision
from mesh.wire import decode_node_event, decode_node_status
from tests.fixtures.chain import Chain, Tier
from tests.fixtures.commands import mesh_cli
from tests.fixtures.site import LinkedSite

V1 = "1-edge-int8"


@dataclass
class Fleet:
    site: Site
    proxy: FaultProxy
    chain: Chain
    key: SigningKey
    work: Path
    nodes: dict[str, TierNode] = field(default_factory=dict)
    issued: dict[str, Path] = field(default_factory=dict)

    def creds(self, spec: IdentitySpec) -> Path:
        return self.issued[spec.name]

    async def admin(self) -> Any:
        return await nats.connect(
            self.site.hub.url,
            user_credentials=str(self.creds(ADMIN)),
            inbox_prefix="_INBOX_admin",
        )

    async def seen_at_hub(self, names: set[str], timeout: float = 30.0) -> None:
        """Wait until the hub holds a heartbeat of each node named: ``mesh fleet assign``
        selects among the nodes the hub has seen, and a site's heartbeats reach it through
        the site's bucket sourced into the hub's (a loaded machine took longer than a test's
        first 300 answers)."""
        nc = await self.admin()
        try:
            js = nc.jetstream(domain="hub")
            deadline = time.monotonic() + timeout
            while not names <= set(seen := await registry.read_heartbeats(js)):
                if time.monotonic() > deadline:
                    raise AssertionError(f"the hub saw {sorted(seen)} in {timeout}s, not {names}")
                await asyncio.sleep(0.2)
        finally:
            await nc.close()

    async def mesh(self, *args: str, ok: bool = True) -> tuple[int, str, str]:
        """Run the ``mesh`` CLI in a child process."""
        code, out, err = await mesh_cli(*args)
        if ok and code != 0:
            raise AssertionError(f"mesh {' '.join(args)} exited {code}: {err[-2000:]}")
        return code, out, err

    async def start_node(self, name: str) -> TierNode:
        """Start the edge node ``name``; one started before starts again with its settings."""
        if name in self.nodes:
            node = await self.chain.restart(self.nodes[name])
        else:
            [node] = await self.chain.start(self.site.leaf.url, self.edge(name))  # type: ignore[union-attr]
        self.nodes[name] = node
        return node

    def edge(self, name: str) -> Tier:
        return Tier(
            "edge",
            model="edge-int8",
            node=name,
            hard_examples=HardExampleSettings(enabled=False),
            fleet=FleetSettings(
                enabled=True,
                domain="site",
                site="site",
                labels={"line": "4"},
                trusted_keys=[self.key.public],
                cache_dir=self.work / "cache" / name,
                heartbeat_s=0.5,
                fetch_timeout_s=10,
            ),
        )

    async def release(
        self, demo: DemoArtifacts, version: str, key: SigningKey | None = None
    ) -> Path:
        """A signed release of the float edge model as ``version``."""
        manifest = await asyncio.to_thread(
            copy_as_version, demo.edge, version, self.work / "releases" / version
        )
        signer = key or self.key

        def write_sig() -> None:
            parsed = load_manifest(manifest)
            sig = sign(
                signer,
                json.loads(manifest.read_text()),
                sha256_of(verify_artifact(parsed, manifest)),
            )
            manifest.with_suffix(".sig").write_bytes(sig.to_json())

        await asyncio.to_thread(write_sig)
        return manifest


def artifact_of(manifest: Path) -> registry.Artifact:
    return registry.Artifact(
        onnx=verify_artifact(load_manifest(manifest), manifest).read_bytes(),
        manifest_bytes=manifest.read_bytes(),
        signature_bytes=manifest.with_suffix(".sig").read_bytes(),
    )


def overwrite_artifact(manifest: Path, change: Any) -> None:
    """Change a release's ONNX bytes after it was signed."""
    path = manifest.parent / load_manifest(manifest).artifact
    path.write_bytes(change(path.read_bytes()))


@pytest.fixture
async def fleet(linked: LinkedSite, chain: Chain, tmp_path: Path, keystore: KeyStore) -> Fleet:
    key = await asyncio.to_thread(SigningKey.generate)
    f = Fleet(linked.site, linked.proxy, chain, key, tmp_path)
    for spec in (ADMIN, APPLICATION, CONTROLLER, CONSOLE):
        f.issued[spec.name] = await asyncio.to_thread(keystore.ensure, spec)
    nc = await f.admin()
    try:
        # the fleet's buckets in both domains, as `mesh fleet init --site site` makes them
        await provision(lambda domain: nc.jetstream(domain=domain), standard_topology(events=False))
    finally:
        await nc.close()
    return f


@dataclass
class Load:
    """Continuous requests through the SDK; per node, the versions in the order answered."""

    answered: int = 0
    errors: list[str] = field(default_factory=list)
    by_node: dict[str, list[str]] = field(default_factory=dict)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


async def run_load(client: MeshClient, rows: np.ndarray, load: Load, concurrency: int = 6) -> None:
    async def worker(offset: int) -> None:
        i = offset
        while not load.stop.is_set():
            try:
                result = await client.infer("digits", rows[i % len(rows)][None, :], budget_ms=3000)
            except MeshError as exc:
                load.errors.append(str(exc))
            else:
                load.answered += 1
                load.by_node.setdefault(result.node, []).append(result.model_version)
            i += concurrency

    await asyncio.gather(*(worker(k) for k in range(concurrency)))


@contextlib.asynccontextmanager
async def loading(client: MeshClient, rows: np.ndarray) -> AsyncIterator[Load]:
    """Continuous requests from ``client`` while the block runs; the client closed after."""
    load = Load()
    loader = asyncio.create_task(run_load(client, rows, load))
    try:
        yield load
    finally:
        load.stop.set()
        await loader
        await client.close()


async def wait_for(predicate: Any, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


def monotone(versions: list[str], new: str) -> bool:
    """Once a node answered with ``new``, it never answered with another version again."""
    if new not in versions:
        return False
    first = versions.index(new)
    return all(v == new for v in versions[first:])


async def test_signed_version_reaches_every_node_under_load_and_bad_ones_are_refused(
    fleet: Fleet, demo: DemoArtifacts
) -> None:
    for name in ("edge-a", "edge-b", "edge-c"):
        await fleet.start_node(name)
    rows = np.load(demo.test)["x"].astype(np.float32)
    controller = fleet.creds(CONTROLLER)
    hub = fleet.site.hub.url

    # Telemetry events as the fleet's console sees them.
    events: list[Any] = []
    nc = await fleet.admin()

    async def on_event(msg: Any) -> None:
        events.append(msg.data)

    await nc.subscribe("mesh.telemetry.>", cb=on_event)

    v2 = await fleet.release(demo, "2-edge")
    _, out, err = await fleet.mesh(
        "models",
        "push",
        str(v2),
        "--data",
        str(demo.test),
        "--servers",
        hub,
        "--creds",
        str(controller),
    )
    assert "pushed digits@2-edge" in out, out + err
    _, out, _ = await fleet.mesh(
        "models", "list", "--json", "--servers", hub, "--creds", str(controller)
    )
    listed = json.loads(out)
    assert [(v["model"], v["version"], v["signer"]) for v in listed] == [
        ("digits", "2-edge", fleet.key.public)
    ]

    client = await MeshClient.connect(
        fleet.site.leaf.url,
        user_credentials=str(fleet.creds(APPLICATION)),  # type: ignore[union-attr]
    )
    async with loading(client, rows) as load:
        await wait_for(
            lambda: len(load.by_node) == 3 and load.answered > 300, 30, "load on all nodes"
        )
        await fleet.seen_at_hub({"edge-a", "edge-b", "edge-c"})
        started = time.monotonic()
        _, out, _ = await fleet.mesh(
            "fleet", "assign", "digits", "2-edge", "--selector", "tier=edge,site=site",
            "--servers", hub, "--creds", str(controller),
        )  # fmt: skip
        assert "3 nodes: edge-a, edge-b, edge-c" in out
        await wait_for(
            lambda: all(n.served_versions()["digits"] == "2-edge" for n in fleet.nodes.values()),
            60, "every node on 2-edge",
        )  # fmt: skip
        convergence = time.monotonic() - started
        after = load.answered
        await wait_for(lambda: load.answered > after + 300, 30, "answers after the swap")

        # Tampered bytes in the store, and a version signed by a key nobody trusts.
        admin_js = nc.jetstream(domain="hub")
        v3 = await fleet.release(demo, "3-edge")
        good = await asyncio.to_thread(artifact_of, v3)
        flipped = bytearray(good.onnx)
        flipped[len(flipped) // 2] ^= 0x01
        await registry.push(
            admin_js, registry.Artifact(bytes(flipped), good.manifest_bytes, good.signature_bytes)
        )
        rogue = await asyncio.to_thread(SigningKey.generate)
        v4 = await fleet.release(demo, "4-edge", key=rogue)
        await fleet.mesh("models", "push", str(v4), "--servers", hub, "--creds", str(controller))
        for bad in ("3-edge", "4-edge"):
            await fleet.mesh(
                "fleet", "assign", "digits", bad, "--selector", "label.line=4",
                "--servers", hub, "--creds", str(controller),
            )  # fmt: skip
            await wait_for(
                lambda bad=bad: all(
                    f"digits@{bad}" in n.agent.state.rejected for n in fleet.nodes.values()  # type: ignore[union-attr]
                ),
                30, f"every node rejecting {bad}",
            )  # fmt: skip
        more = load.answered
        await wait_for(lambda: load.answered > more + 100, 30, "answers after the rejections")

    assert load.errors == [], load.errors[:5]
    for name, versions in load.by_node.items():
        assert versions[0] == V1, name
        assert monotone(versions, "2-edge"), f"{name} answered {V1} after 2-edge"
    for node in fleet.nodes.values():
        assert node.served_versions() == {"digits": "2-edge"}
        reasons = node.agent.state.rejected  # type: ignore[union-attr]
        assert "bytes were changed" in reasons["digits@3-edge"]
        assert "does not trust" in reasons["digits@4-edge"]

    await flush_in_order(nc)
    decoded = []
    for data in events:
        try:
            decoded.append(decode_node_event(data))
        except MeshError:
            continue  # drift events share the subject
    swapped = {(e.node, e.version) for e in decoded if e.event == "swapped"}
    rejected = {(e.node, e.version) for e in decoded if e.event == "rejected"}
    assert swapped == {(n, "2-edge") for n in fleet.nodes}
    assert rejected == {(n, v) for n in fleet.nodes for v in ("3-edge", "4-edge")}
    await nc.close()
    print(f"\nassign to every node serving 2-edge: {convergence:.2f} s; {load.answered} answers")


async def test_bad_input_to_the_registry_cli_is_refused(fleet: Fleet, demo: DemoArtifacts) -> None:
    await fleet.start_node("edge-a")
    controller = str(fleet.creds(CONTROLLER))
    hub = fleet.site.hub.url
    common = ("--servers", hub, "--creds", controller)
    # unsigned
    unsigned = await asyncio.to_thread(copy_as_version, demo.edge, "5-edge", fleet.work / "u")
    code, _, err = await fleet.mesh("models", "push", str(unsigned), *common, ok=False)
    assert code == 2 and "is not signed" in err
    # a signature for other bytes: the artifact changed after signing
    v6 = await fleet.release(demo, "6-edge")
    await asyncio.to_thread(overwrite_artifact, v6, lambda data: data[:-1] + bytes([data[-1] ^ 1]))
    code, _, err = await fleet.mesh("models", "push", str(v6), *common, ok=False)
    assert code == 2 and "does not match manifest" in err
    # not ONNX at all
    v7 = await fleet.release(demo, "7-edge")
    await asyncio.to_thread(overwrite_artifact, v7, lambda _: b"not a model")
    code, _, err = await fleet.mesh("models", "push", str(v7), *common, ok=False)
    assert code == 2
    # a version the registry does not have, and a selector that matches no node
    code, _, err = await fleet.mesh("fleet", "assign", "digits", "9-edge", *common, ok=False)
    assert code == 2 and "not in the registry" in err
    v8 = await fleet.release(demo, "8-edge")
    await fleet.mesh("models", "push", str(v8), *common)
    code, _, err = await fleet.mesh(
        "fleet", "assign", "digits", "8-edge", "--selector", "site=elsewhere", *common, ok=False
    )
    assert code == 2 and "matches none of the 1 nodes" in err
    assert "`mesh fleet status` lists them" in err  # and what to do about it
    # the same version again with other bytes
    await fleet.mesh("models", "push", str(v8), *common)  # identical: accepted again
    other = await fleet.release(demo, "8-edge", key=await asyncio.to_thread(SigningKey.generate))
    code, _, err = await fleet.mesh("models", "push", str(other), *common, ok=False)
    assert code == 2 and "immutable" in err
    # a malformed desired-state value changes nothing on the node
    nc = await fleet.admin()
    kv = await nc.jetstream(domain="hub").key_value("MESH_FLEET_DESIRED")
    await kv.put("digits.all", b"\x92garbage")
    await kv.put("digits.tier=edge", msgpack.packb({"v": 1, "kind": "desired_state", "model": 3}))
    await asyncio.sleep(1.5)
    node = fleet.nodes["edge-a"]
    assert node.served_versions() == {"digits": V1}
    assert node.readiness.problems() == {}
    await nc.close()


async def test_cut_site_keeps_serving_cached_version_and_heartbeats_reach_the_hub(
    fleet: Fleet, demo: DemoArtifacts
) -> None:
    for name in ("edge-a", "edge-b"):
        await fleet.start_node(name)
    controller = str(fleet.creds(CONTROLLER))
    hub = fleet.site.hub.url
    v2 = await fleet.release(demo, "2-edge")
    await fleet.mesh("models", "push", str(v2), "--servers", hub, "--creds", controller)
    await fleet.seen_at_hub({"edge-a", "edge-b"})
    await fleet.mesh("fleet", "assign", "digits", "2-edge", "--servers", hub, "--creds", controller)
    await wait_for(
        lambda: all(n.served_versions()["digits"] == "2-edge" for n in fleet.nodes.values()),
        60, "both nodes on 2-edge",
    )  # fmt: skip

    # Cut the site, restart a node while cut: it serves its cached verified version.
    fleet.proxy.blackhole(True)
    fleet.proxy.reset_all()
    cut_at = time.time()
    await fleet.nodes["edge-a"].stop()
    restarted = await fleet.start_node("edge-a")
    assert restarted.served_versions() == {"digits": "2-edge"}
    client = await MeshClient.connect(
        fleet.site.leaf.url,
        user_credentials=str(fleet.creds(APPLICATION)),  # type: ignore[union-attr]
    )
    rows = np.load(demo.test)["x"].astype(np.float32)
    answers = [await client.infer("digits", rows[i][None, :], budget_ms=2000) for i in range(40)]
    await client.close()
    assert {a.model_version for a in answers} == {"2-edge"}
    await asyncio.sleep(2.0)
    healed_at = time.time()
    fleet.proxy.heal()

    # The heartbeats written during the cut reach the hub once the link is back.
    nc = await nats.connect(
        hub, user_credentials=str(fleet.creds(CONSOLE)), inbox_prefix="_INBOX_console"
    )
    kv = await nc.jetstream(domain="hub").key_value(NODES_BUCKET)

    async def during_cut() -> list[float]:
        try:
            history = await kv.history("edge-a")
        except Exception:
            return []
        times = [decode_node_status(e.value or b"").time for e in history if e.value]
        return [t for t in times if cut_at < t < healed_at]

    deadline = time.monotonic() + 30
    seen: list[float] = []
    while time.monotonic() < deadline and len(seen) < 2:
        seen = await during_cut()
        await asyncio.sleep(0.2)
    await nc.close()
    assert len(seen) >= 2, "no heartbeat from the cut reached the hub"


async def test_fleet_status_shows_a_stopped_node_offline(fleet: Fleet, demo: DemoArtifacts) -> None:
    for name in ("edge-a", "edge-b"):
        await fleet.start_node(name)
    console = str(fleet.creds(CONSOLE))
    hub = fleet.site.hub.url

    async def status() -> list[dict[str, Any]]:
        _, out, _ = await fleet.mesh(
            "fleet", "status", "--json", "--servers", hub, "--creds", console
        )
        return json.loads(out)

    deadline = time.monotonic() + 20
    rows = await status()
    while time.monotonic() < deadline and not (len(rows) == 2 and all(r["online"] for r in rows)):
        await asyncio.sleep(0.3)
        rows = await status()
    assert {r["node"] for r in rows} == {"edge-a", "edge-b"}
    assert all(r["online"] and r["models"] == {"digits": V1} for r in rows), rows
    assert all(r["tier"] == "edge" and r["site"] == "site" for r in rows)
    # the heartbeat carries each node's energy ledger (a device-zone node: a Pi 4's profile)
    assert all(r["power"]["profile"] == "rpi4" and r["power"]["budget_w"] is None for r in rows)

    await fleet.nodes.pop("edge-b").stop()
    await asyncio.sleep(1.0)
    rows = {r["node"]: r for r in await status()}
    assert rows["edge-a"]["online"] is True
    assert rows["edge-b"]["online"] is False
    assert rows["edge-b"]["last_seen_s"] >= 0.9
    assert rows["edge-b"]["models"] == {"digits": V1}
    _, table, _ = await fleet.mesh("fleet", "status", "--servers", hub, "--creds", console)
    assert "offline" in table and "edge-b" in table


async def test_a_bucket_read_gets_every_key_while_keys_are_being_rewritten(
    nats_server: Any, admin_options: dict[str, Any]
) -> None:
    """A heartbeat bucket is rewritten all the time: a read must still see every key (nats-py's
    own initial-values marker can come before the values, and keys rewritten after the read
    began come last)."""
    nc = await nats.connect(nats_server.url, **admin_options)
    try:
        js = nc.jetstream()
        kv = await js.create_key_value(bucket="READ_RACE", history=1)
        keys = [f"node-{i}" for i in range(200)]
        for key in keys:
            await kv.put(key, b"0")
        await kv.delete("node-0")
        stop = asyncio.Event()

        async def rewrite() -> None:
            n = 0
            while not stop.is_set():
                n += 1
                await kv.put(keys[1 + n % (len(keys) - 1)], str(n).encode())
                await asyncio.sleep(0)

        writer = asyncio.create_task(rewrite())
        try:
            for _ in range(20):
                read = await registry.latest_entries(js, kv, "READ_RACE")
                assert sorted(e.key for e in read) == sorted(keys[1:])
        finally:
            stop.set()
            await writer
        assert (
            await registry.latest_entries(js, await js.create_key_value(bucket="EMPTY"), "EMPTY")
            == []
        )
    finally:
        await nc.close()
