"""The Open Inference Protocol ingress on a real nats-server with an edge and a cloud node:
REST (JSON and binary tensors) and gRPC, driven by clients the project did not write
(aiohttp, Triton's tritonclient over HTTP and gRPC, raw grpcio stubs), against the SDK."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_grpc
import tritonclient.http.aio as triton_http
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from mesh.dev.models.demo import DemoArtifacts
from mesh.ingress.core import Ingress
from mesh.ingress.grpc_server import GrpcIngress
from mesh.ingress.rest import create_rest_app
from mesh.local.servers import APPLICATION, NatsServer
from mesh.models.manifest import load_manifest
from mesh.node.tier import TierNode
from mesh.observability.metrics import default_metrics
from mesh.sdk.client import MeshClient
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role
from mesh.transport.http import HttpServer
from tests.fixtures.chain import Chain, Tier

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GRPC_AUTH = {"authorization": f"Bearer {TOKEN}"}
MAX_BODY = 1 << 20


@dataclass
class Rig:
    ingress: Ingress
    http: str
    grpc: str
    edge: TierNode
    app_creds: str
    server: NatsServer


async def edge_ingress(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, manifest: Path
) -> tuple[TierNode, MeshClient, Ingress, Path]:
    """An edge node serving ``digits`` over a cloud node, and an ingress for it from
    ``manifest`` on its own identity's connection; the application's credentials."""
    edge, _ = await chain.start(nats_server.url, Tier("edge", model="edge-int8"), Tier("cloud"))
    creds = await asyncio.to_thread(keystore.ensure, IdentitySpec("ingress", Role.INGRESS))
    app_creds = await asyncio.to_thread(keystore.ensure, APPLICATION)
    loaded = await asyncio.to_thread(load_manifest, manifest)
    client = await MeshClient.connect(nats_server.url, user_credentials=str(creds))
    return edge, client, Ingress(client, {"digits": loaded}, refresh_s=0.5), app_creds


async def wait_ready(ingress: Ingress) -> None:
    """Up to 5 s for the ingress to find a node for its models."""
    for _ in range(50):
        if ingress.ready():
            break
        await asyncio.sleep(0.1)


@pytest.fixture
async def rig(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> AsyncIterator[Rig]:
    edge, client, ingress, app_creds = await edge_ingress(
        nats_server, chain, keystore, demo.edge_int8
    )
    http = HttpServer(create_rest_app(ingress, token=TOKEN, max_body=MAX_BODY), "127.0.0.1", 0)
    grpc_server = GrpcIngress(ingress, port=0, token=TOKEN, max_message=MAX_BODY)
    async with client, ingress, http, grpc_server:
        await wait_ready(ingress)
        yield Rig(ingress, http.url, grpc_server.address, edge, str(app_creds), nats_server)


@pytest.fixture
def digits(demo: DemoArtifacts) -> np.ndarray:
    x: np.ndarray = np.load(demo.test)["x"][:24].astype(np.float32)
    return x


def json_body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "datatype": "FP32",
                "shape": list(x.shape),
                "data": x.ravel().tolist(),
            }
        ],
        **extra,
    }


async def rest(
    session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    headers = {**AUTH, **kwargs.pop("headers", {})}
    async with session.request(method, url, headers=headers, **kwargs) as resp:
        text = await resp.read()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


async def test_the_same_digits_get_the_same_labels_through_rest_grpc_and_the_sdk(
    rig: Rig, digits: np.ndarray
) -> None:
    async with await MeshClient.connect(rig.server.url, user_credentials=rig.app_creds) as sdk:
        want = [(await sdk.infer("digits", row[None, :])).label for row in digits]

    # REST, JSON tensors, with any HTTP client
    async with aiohttp.ClientSession() as session:
        status, body = await rest(
            session, "POST", f"{rig.http}/v2/models/digits/infer", json=json_body(digits, id="r1")
        )
    assert status == 200, body
    assert body["model_name"] == "digits" and body["id"] == "r1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["data"] == want
    assert outputs["probabilities"]["shape"] == [len(digits), 10]
    params = body["parameters"]
    assert params["tier"] in {"edge", "cloud"} and params["node"]
    assert params["path"].startswith("edge:") and isinstance(params["confidence"], float)
    assert params["degraded"] is False

    # REST, binary tensor data, with Triton's client used as its documentation shows
    client = triton_http.InferenceServerClient(url=rig.http.removeprefix("http://"))
    try:
        assert await client.is_server_live(headers=dict(AUTH))
        assert await client.is_server_ready(headers=dict(AUTH))
        assert await client.is_model_ready("digits", headers=dict(AUTH))
        meta = await client.get_model_metadata("digits", headers=dict(AUTH))
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
        inp = triton_http.InferInput("input", list(digits.shape), "FP32")
        inp.set_data_from_numpy(digits, binary_data=True)
        out = triton_http.InferRequestedOutput("label", binary_data=True)
        result = await client.infer("digits", [inp], outputs=[out], headers=dict(AUTH))
        assert result.as_numpy("label").tolist() == want
        assert result.as_numpy("probabilities") is None  # only what was asked for
    finally:
        await client.close()

    # gRPC, with Triton's client
    gclient = triton_grpc.InferenceServerClient(url=rig.grpc)
    try:
        assert await gclient.is_server_ready(headers=dict(GRPC_AUTH))
        assert await gclient.is_model_ready("digits", headers=dict(GRPC_AUTH))
        gmeta = await gclient.get_model_metadata("digits", headers=dict(GRPC_AUTH))
        assert [list(t.shape) for t in gmeta.inputs] == [[-1, 64]]
        assert (await gclient.get_server_metadata(headers=dict(GRPC_AUTH))).name == "edge-mesh"
        ginp = triton_grpc.InferInput("input", list(digits.shape), "FP32")
        ginp.set_data_from_numpy(digits)
        gresult = await gclient.infer("digits", [ginp], headers=dict(GRPC_AUTH))
        assert gresult.as_numpy("label").tolist() == want
        gparams = gresult.get_response().parameters
        assert gparams["tier"].string_param in {"edge", "cloud"}
    finally:
        await gclient.close()

    # gRPC, raw stubs of the protocol's service with typed contents
    async with grpc.aio.insecure_channel(rig.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="digits", id="g1")
        tensor = request.inputs.add(name="input", datatype="FP32", shape=list(digits.shape))
        tensor.contents.fp32_contents.extend(digits.ravel().tolist())
        reply = await stub.ModelInfer(request, metadata=tuple(GRPC_AUTH.items()))
        names = [o.name for o in reply.outputs]
        raw = reply.raw_output_contents[names.index("label")]
        assert np.frombuffer(raw, dtype="<i8").tolist() == want
        assert reply.id == "g1"


def requests_at_the_edge() -> float:
    return sum(v for k, v in default_metrics().requests.values.items() if k[0] == "edge")


BAD_REST: list[tuple[str, dict[str, Any], bytes | None, int, str]] = [
    ("wrong datatype", {"datatype": "INT32"}, None, 400, "the model takes FP32"),
    ("shape and data disagree", {"shape": [2, 64]}, None, 400, "shape [2, 64] takes 128"),
    ("a shape the model does not take", {"shape": [1, 32], "n": 32}, None, 400, "[-1, 64]"),
    ("BYTES", {"datatype": "BYTES"}, None, 400, "BYTES"),
    ("malformed JSON", {}, b'{"inputs": [', 400, "not JSON"),
]


@pytest.mark.parametrize(("case", "change", "raw", "status", "says"), BAD_REST)
async def test_rest_mistakes_get_a_clear_error_and_never_reach_the_mesh(
    rig: Rig,
    digits: np.ndarray,
    case: str,
    change: dict[str, Any],
    raw: bytes | None,
    status: int,
    says: str,
) -> None:
    n = change.pop("n", 64)
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.0] * n}
    tensor.update(change)
    before = requests_at_the_edge()
    async with aiohttp.ClientSession() as session:
        got, body = await rest(
            session,
            "POST",
            f"{rig.http}/v2/models/digits/infer",
            data=raw if raw is not None else json.dumps({"inputs": [tensor]}).encode(),
        )
    assert got == status, (case, body)
    assert says in body["error"], (case, body)
    await asyncio.sleep(0.05)
    assert requests_at_the_edge() == before


async def test_binary_lengths_unknown_models_and_big_bodies(rig: Rig, digits: np.ndarray) -> None:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 64],
                    "parameters": {"binary_data_size": 256},
                }
            ]
        }
    ).encode()
    data = digits[:1].tobytes()
    before = requests_at_the_edge()
    async with aiohttp.ClientSession() as session:
        url = f"{rig.http}/v2/models/digits/infer"
        # the header says the JSON is longer than the body
        status, body = await rest(
            session, "POST", url, data=head + data,
            headers={"Inference-Header-Content-Length": str(len(head) + 10_000)},
        )  # fmt: skip
        assert status == 400 and "the body has" in body["error"]
        # binary_data_size past the end of the body
        status, body = await rest(
            session, "POST", url, data=head + data[:100],
            headers={"Inference-Header-Content-Length": str(len(head))},
        )  # fmt: skip
        assert status == 400 and "runs past the body" in body["error"]
        # the right lengths work
        status, body = await rest(
            session, "POST", url, data=head + data,
            headers={"Inference-Header-Content-Length": str(len(head))},
        )  # fmt: skip
        assert status == 200, body
        answered = requests_at_the_edge()
        assert answered == before + 1
        status, body = await rest(session, "POST", f"{rig.http}/v2/models/nope/infer", json={})
        assert status == 404 and "nope" in body["error"]
        status, body = await rest(session, "GET", f"{rig.http}/v2/models/digits/versions/9")
        assert status == 404 and "no version '9'" in body["error"]
        status, body = await rest(session, "POST", url, data=io.BytesIO(b"x" * (MAX_BODY + 1)))
        assert status == 413 and "limit" in body["error"]
        status, body = await rest(session, "GET", f"{rig.http}/v2", headers={"Authorization": ""})
        assert status == 401
        async with session.get(f"{rig.http}/v2/health/ready") as resp:  # a probe needs no token
            assert resp.status == 200
        assert requests_at_the_edge() == answered


async def test_grpc_mistakes_get_the_matching_status_codes(rig: Rig, digits: np.ndarray) -> None:
    async def call(request: Any, metadata: dict[str, str] = GRPC_AUTH) -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(
            rig.grpc, options=[("grpc.max_send_message_length", 8 << 20)]
        ) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            try:
                await stub.ModelInfer(request, metadata=tuple(metadata.items()))
            except grpc.aio.AioRpcError as exc:
                return exc.code()
        return grpc.StatusCode.OK

    def infer(shape: list[int], raw: bytes, datatype: str = "FP32", model: str = "digits") -> Any:
        request = service_pb2.ModelInferRequest(model_name=model)
        request.inputs.add(name="input", datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
        return request

    row = digits[:1].tobytes()
    before = requests_at_the_edge()
    assert await call(infer([1, 64], row[:-4])) == grpc.StatusCode.INVALID_ARGUMENT
    assert await call(infer([1, 64], row, "FP64")) == grpc.StatusCode.INVALID_ARGUMENT
    assert await call(infer([1, 32], row[:128])) == grpc.StatusCode.INVALID_ARGUMENT
    assert await call(infer([1, 64], row, model="nope")) == grpc.StatusCode.NOT_FOUND
    big = infer([4096, 64], b"\0" * (4096 * 256))
    assert await call(big) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await call(infer([1, 64], row), {}) == grpc.StatusCode.UNAUTHENTICATED
    assert requests_at_the_edge() == before
    assert await call(infer([1, 64], row)) == grpc.StatusCode.OK
    client = triton_grpc.InferenceServerClient(url=rig.grpc)
    try:
        with pytest.raises(InferenceServerException, match=r"NOT_FOUND|no model"):
            await client.get_model_metadata("nope", headers=dict(GRPC_AUTH))
    finally:
        await client.close()


async def test_a_rest_callers_trace_runs_through_the_ingress_edge_and_cloud(
    rig: Rig, digits: np.ndarray, spans: InMemorySpanExporter
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    # every row at once: the least confident row escalates the request to the cloud
    async with aiohttp.ClientSession() as session:
        status, body = await rest(
            session, "POST", f"{rig.http}/v2/models/digits/infer",
            json=json_body(digits), headers=headers,
        )  # fmt: skip
    assert status == 200, body
    assert body["parameters"]["tier"] == "cloud", "pick rows the edge is unsure of"
    want = int(trace_id, 16)
    deadline = asyncio.get_running_loop().time() + 3
    found: list[Any] = []
    while asyncio.get_running_loop().time() < deadline:
        found = [s for s in spans.get_finished_spans() if s.context and s.context.trace_id == want]
        names = " ".join(s.name for s in found)
        if "infer digits" in names and "mesh.cloud.infer.digits" in names:
            break
        await asyncio.sleep(0.05)
    names = [s.name for s in found]
    assert any(n.startswith("POST /v2/models/digits/infer") for n in names), names
    assert any("mesh.infer.digits" in n for n in names), names
    assert any("mesh.cloud.infer.digits" in n for n in names), names
