"""What a node gives up on, on real servers (issue 26, finding 1's second half and finding 5):
an artifact still arriving at the site is waited for and taken once complete; a version signed
with the wrong key is refused at push when the trusted keys are given, re-signed in place, and
the nodes' refusal of it is cleared by ``mesh fleet retry``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid

import pytest

from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import NotFoundError, UnavailableError
from mesh.fleet import registry
from mesh.fleet.release import signed_artifact
from mesh.fleet.signing import SigningKey
from mesh.models.manifest import copy_as_version
from mesh.topology.streams import MODEL_STORE
from mesh.topology.subjects import object_chunks, object_meta
from tests.integration import test_fleet
from tests.integration.test_fleet import CONTROLLER, V1, Fleet, artifact_of, wait_for

#: the fleet of test_fleet: a hub and a site, edge nodes with their agents on the site
fleet = test_fleet.fleet

pytestmark = pytest.mark.timeout(240)


async def test_an_artifact_of_several_chunks_reaches_a_site_whole(
    fleet: Fleet, demo: DemoArtifacts
) -> None:
    """The cloud model is 198528 bytes, two chunks of the object store: a site's mirror that
    kept one message a subject had only the last 67456 bytes of it (the issue's refusal)."""
    manifest = await asyncio.to_thread(
        copy_as_version, demo.cloud, "1-cloud", fleet.work / "releases" / "cloud"
    )
    artifact = await asyncio.to_thread(signed_artifact, manifest, fleet.key)
    assert len(artifact.onnx) > 128 * 1024
    nc = await fleet.admin()
    try:
        await registry.store(nc.jetstream(domain="hub"), artifact)
        site = nc.jetstream(domain="site")
        async with asyncio.timeout(30):
            while True:
                try:
                    fetched = await registry.fetch(site, "digits", "1-cloud")
                    break
                except (NotFoundError, UnavailableError):  # the mirror catching up
                    await asyncio.sleep(0.2)
    finally:
        await nc.close()
    assert fetched.onnx == artifact.onnx


async def test_an_artifact_still_arriving_at_the_site_is_waited_for_then_taken(
    fleet: Fleet, demo: DemoArtifacts
) -> None:
    """The issue's node refused ``1-cloud`` as ``truncated or corrupt: 67456 of 198528 bytes``
    for good while the site's mirror caught up; now it waits and takes it once complete."""
    node = await fleet.start_node("edge-a")
    v2 = await fleet.release(demo, "2-edge")
    artifact = await asyncio.to_thread(artifact_of, v2)
    onnx = artifact.onnx
    nc = await fleet.admin()
    try:
        js = nc.jetstream(domain="hub")
        store = await js.object_store(MODEL_STORE)
        # the ONNX object's meta says it is whole; only the first of its chunks is there yet
        nuid = uuid.uuid4().hex
        chunks = [onnx[i : i + 8192] for i in range(0, len(onnx), 8192)]
        assert len(chunks) > 2
        await js.publish(object_chunks(MODEL_STORE, nuid), chunks[0])
        digest = base64.urlsafe_b64encode(hashlib.sha256(onnx).digest()).decode()
        meta = {
            "name": "digits/2-edge/onnx", "bucket": MODEL_STORE, "nuid": nuid,
            "size": len(onnx), "chunks": len(chunks), "digest": f"SHA-256={digest}",
            "mtime": "2025-01-01T00:00:00Z", "options": {"max_chunk_size": 8192},
        }  # fmt: skip
        await js.publish(
            object_meta(MODEL_STORE, "digits/2-edge/onnx"),
            json.dumps(meta).encode(),
            headers={"Nats-Rollup": "sub"},
        )
        await store.put("digits/2-edge/manifest", artifact.manifest_bytes)
        await store.put("digits/2-edge/signature", artifact.signature_bytes)
        hub = fleet.site.hub.url
        await fleet.seen_at_hub({"edge-a"})
        await fleet.mesh(
            "fleet", "assign", "digits", "2-edge", "--selector", "tier=edge",
            "--servers", hub, "--creds", str(fleet.creds(CONTROLLER)),
        )  # fmt: skip
        agent = node.agent
        assert agent is not None
        await wait_for(lambda: "digits@2-edge" in agent.waiting, 20, "the node to wait for it")
        waited = agent.waiting["digits@2-edge"]
        assert f"8192 of {len(onnx)} bytes" in waited.reason, waited.reason
        await asyncio.sleep(2.0)
        assert agent.state.rejected == {}, agent.state.rejected
        assert agent.waiting["digits@2-edge"].attempts > waited.attempts
        assert agent.state.pending == {"digits": "2-edge"}
        assert node.served_versions() == {"digits": V1}
        for chunk in chunks[1:]:
            await js.publish(object_chunks(MODEL_STORE, nuid), chunk)
        # the new version serves as soon as it is swapped in; the agent says it is done once
        # the old one has drained (a loaded machine saw the first without the second)
        took = await wait_for(
            lambda: node.served_versions() == {"digits": "2-edge"} and not agent.state.pending,
            60,
            "the node to take it",
        )
    finally:
        await nc.close()
    assert agent.state.rejected == {} and agent.waiting == {} and agent.state.pending == {}
    print(f"\ntaken {took:.1f} s after its last chunk arrived")


async def test_a_wrongly_signed_version_is_re_signed_and_its_refusal_cleared(
    fleet: Fleet, demo: DemoArtifacts
) -> None:
    nodes = [await fleet.start_node(name) for name in ("edge-a", "edge-b")]
    hub = ("--servers", fleet.site.hub.url, "--creds", str(fleet.creds(CONTROLLER)))
    trusted = ("--trusted-key", fleet.key.public)
    rogue = await asyncio.to_thread(SigningKey.generate)
    v2 = await fleet.release(demo, "2-edge", key=rogue)

    # given the keys the nodes trust, push refuses a signature by another
    code, _, err = await fleet.mesh("models", "push", str(v2), *trusted, *hub, ok=False)
    assert code == 2 and "does not trust" in err, err
    # without them it goes in, and the nodes refuse it
    await fleet.mesh("models", "push", str(v2), *hub)
    await fleet.seen_at_hub({"edge-a", "edge-b"})
    await fleet.mesh("fleet", "assign", "digits", "2-edge", "--selector", "tier=edge", *hub)

    def refusing() -> bool:
        return all("digits@2-edge" in n.agent.state.rejected for n in nodes)  # type: ignore[union-attr]

    await wait_for(refusing, 30, "both nodes to refuse 2-edge")

    # signed again with the right key: the same bytes and manifest, another signature
    await fleet.release(demo, "2-edge")
    code, _, err = await fleet.mesh("models", "push", str(v2), *hub, ok=False)
    assert code == 2 and "immutable" in err and "signature may be replaced" in err, err
    _, out, err = await fleet.mesh("models", "push", str(v2), *trusted, *hub)
    assert out.startswith("re-signed digits@2-edge"), out
    assert "mesh fleet retry --all digits 2-edge" in err
    await asyncio.sleep(1.5)
    assert refusing(), "a refusal is cleared by an operator, not by time"

    started = time.monotonic()
    _, out, _ = await fleet.mesh("fleet", "retry", "--all", "digits", "2-edge", *hub)
    assert "refusal of digits@2-edge cleared on edge-a, edge-b" in out, out
    await wait_for(
        lambda: all(n.served_versions() == {"digits": "2-edge"} for n in nodes), 60,
        "both nodes to take the re-signed version",
    )  # fmt: skip
    print(f"\nretry to both nodes serving it: {time.monotonic() - started:.1f} s")
    assert all(n.agent.state.rejected == {} for n in nodes)  # type: ignore[union-attr]
    _, out, _ = await fleet.mesh("fleet", "retry", "edge-a", "digits", "2-edge", *hub)
    assert "edge-a has not refused digits@2-edge: nothing to clear" in out
    code, _, err = await fleet.mesh("fleet", "retry", "edge-z", "digits", "2-edge", *hub, ok=False)
    assert code == 2 and "no node edge-z" in err
