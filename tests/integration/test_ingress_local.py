"""The OIP ingress hosting the edge tier in its own process (``mesh ingress --local``), as MLServer
and Triton serve their models: a real ``mesh ingress`` child on a real nats-server, a cloud node
above it and no edge node at all, driven by Triton's own HTTP and gRPC clients. What the hosted
edge is sure of it answers itself; the rest escalates to the cloud over NATS; with the cloud gone
the unsure come back degraded, never lost, and the ingress stays ready."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc.aio as triton_grpc
import tritonclient.http.aio as triton_http
import yaml
from tritonclient.utils import InferenceServerException

from mesh.dev.models.demo import DemoArtifacts
from mesh.local.layout import local_edge_identity, settings_yaml
from mesh.local.servers import APPLICATION, NatsServer
from mesh.local.supervisor import ChildProcess
from mesh.node.policy import DEGRADED_REASONS
from mesh.node.tier import TierNode
from mesh.sdk.client import MeshClient
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role
from mesh.settings import NatsSettings
from mesh.topology.processes import INGRESS_READY
from tests.fixtures.chain import Chain, Tier
from tests.fixtures.commands import mesh_cli

pytestmark = pytest.mark.timeout(180)

TOKEN = "hosted-edge-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
HOSTED = "ingress-edge"


@dataclass
class Rig:
    http: str
    grpc: str
    cloud: TierNode
    #: a client of the application's that hosts the same edge settings under another name
    reference: MeshClient
    ingress: ChildProcess


def as_input(kind: type, row: np.ndarray) -> object:
    tensor = kind("input", list(row.shape), "FP32")
    tensor.set_data_from_numpy(row)
    return tensor


@pytest.fixture
async def rig(
    nats_server: NatsServer,
    chain: Chain,
    keystore: KeyStore,
    demo: DemoArtifacts,
    tmp_path: Path,
) -> AsyncIterator[Rig]:
    # An edge node's settings (the chain provisions its streams), then no edge node: every
    # answer the edge tier gives comes from inside the ingress.
    edge, cloud = await chain.start(
        nats_server.url, Tier("edge", model="edge-int8", upstream_timeout_ms=300), Tier("cloud")
    )
    await edge.stop()
    settings = {}
    for name in (HOSTED, "app-edge"):
        creds = await asyncio.to_thread(
            keystore.ensure, local_edge_identity(name, "edge", upstream_tier="cloud")
        )
        nats = NatsSettings(servers=[nats_server.url], credentials=creds)
        settings[name] = edge.settings.model_copy(update={"node": name, "nats": nats})
    local_yaml = tmp_path / "hosted-edge.yaml"
    local_yaml.write_text(yaml.safe_dump(settings_yaml(settings[HOSTED]), sort_keys=False))
    ingress_creds = await asyncio.to_thread(keystore.ensure, IdentitySpec("ingress", Role.INGRESS))
    ingress = ChildProcess(
        "ingress",
        [
            *(sys.executable, "-m", "mesh.cli", "ingress", "--servers", nats_server.url),
            *("--creds", str(ingress_creds), "--manifest", str(demo.edge_int8)),
            *("--local", str(local_yaml), "--token", TOKEN),
            *("--http-port", "0", "--grpc-port", "0"),
        ],
        tmp_path / "ingress.log",
        ready_prefix=INGRESS_READY,
    )
    app = await asyncio.to_thread(keystore.ensure, APPLICATION)
    await ingress.start()
    try:
        reference = await MeshClient.connect(
            nats_server.url, user_credentials=str(app), local=settings["app-edge"]
        )
        async with reference:
            http = ingress.info["http"].removeprefix("http://")
            yield Rig(http, ingress.info["grpc"], cloud, reference, ingress)
    finally:
        await ingress.stop()


async def test_the_hosted_edge_answers_what_it_is_sure_of_and_escalates_the_rest(
    rig: Rig, demo: DemoArtifacts
) -> None:
    rows = np.load(demo.test)["x"][:40].astype(np.float32)
    http = triton_http.InferenceServerClient(rig.http)
    try:
        assert await http.is_server_ready(headers=HEADERS)
        assert await http.is_model_ready("digits", headers=HEADERS)
        hosted_version = rig.reference.local.version_of("digits") if rig.reference.local else None
        meta = await http.get_model_metadata("digits", headers=HEADERS)
        assert meta["versions"] == [hosted_version]
        tiers: list[str] = []
        for row in rows:
            ours = await http.infer(
                "digits", [as_input(triton_http.InferInput, row[None, :])], headers=HEADERS
            )
            theirs = await rig.reference.infer("digits", row[None, :])
            params = ours.get_response()["parameters"]
            # the same cascade as an edge hosted by an application: same tier, label, path
            assert params["tier"] == theirs.tier
            assert ours.as_numpy("label").tolist() == theirs.labels
            if theirs.tier == "edge":
                assert params["node"] == HOSTED and params["path"] == f"edge:{HOSTED}"
            else:
                assert params["path"].startswith(f"edge:{HOSTED}>cloud:")
            assert params["degraded"] is False
            tiers.append(params["tier"])
        # the edge was sure of some rows and not of others: both ways were taken
        assert {"edge", "cloud"} <= set(tiers), tiers
    finally:
        await http.close()

    grpc = triton_grpc.InferenceServerClient(rig.grpc)
    grpc_headers = {"authorization": f"Bearer {TOKEN}"}
    try:
        answer = await grpc.infer(
            "digits",
            [as_input(triton_grpc.InferInput, rows[:1])],
            headers=grpc_headers,
        )
        assert answer.get_response().parameters["tier"].string_param in {"edge", "cloud"}
        # a version nobody serves is NOT_FOUND at once, not a timeout
        with pytest.raises(InferenceServerException, match="no version"):
            await grpc.infer(
                "digits",
                [as_input(triton_grpc.InferInput, rows[:1])],
                model_version="no-such-version",
                headers=grpc_headers,
            )
    finally:
        await grpc.close()


async def test_with_the_cloud_gone_the_hosted_edge_still_answers_and_says_what_is_degraded(
    rig: Rig, demo: DemoArtifacts
) -> None:
    rows = np.load(demo.test)["x"][:40].astype(np.float32)
    await rig.cloud.stop()
    http = triton_http.InferenceServerClient(rig.http)
    try:
        degraded: list[str] = []
        for row in rows:
            ours = await http.infer(
                "digits", [as_input(triton_http.InferInput, row[None, :])], headers=HEADERS
            )
            params = ours.get_response()["parameters"]
            assert params["tier"] == "edge" and params["node"] == HOSTED
            if params["degraded"]:
                assert params["reason"] in DEGRADED_REASONS, params
                degraded.append(params["reason"])
        assert degraded, "no row was unsure: the cloud's absence was never met"
        assert await http.is_server_ready(headers=HEADERS)
        assert await http.is_model_ready("digits", headers=HEADERS)
    finally:
        await http.close()
    assert rig.ingress.running


async def test_hosted_edge_settings_that_cannot_work_stop_the_ingress_at_once(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "edge.yaml"
    bad.write_text("tier: edge\nnode: x\nmodels: 3\n")
    code, _, err = await mesh_cli(
        *("ingress", "--servers", "nats://127.0.0.1:9", "--local", str(bad)),
        *("--http-port", "0", "--grpc-port", "0"),
    )
    assert code == 2, err
    assert f"invalid hosted edge (--local) settings ({bad}): models:" in err
