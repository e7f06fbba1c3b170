"""Issue 25's attacks on the ingress, and issue 26's OIP points, against real servers: an edge
and a cloud node on a real nats-server, the ingress in process or as its own ``mesh ingress``
process (whose memory is read from /proc), driven by aiohttp, Triton's tritonclient and raw
sockets.

On 6f07119: 12 concurrent 60 MB ModelInfer calls without a token grew the ingress by about
1 GB; 4 concurrent 60 MB REST bodies by 540 MB while another caller waited up to 4.5 s; a
100,000-deep body was a 500; a slow-header client was never cut off; one caller's flood took
every other caller's room; ``versions/1-edge-int8`` was answered by ``1-cloud``."""

from __future__ import annotations

import asyncio
import io
import json
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import numpy as np
import pytest
import tritonclient.grpc.aio as triton_grpc
from tritonclient.utils import InferenceServerException

from mesh.dev.models.demo import DemoArtifacts
from mesh.ingress.callers import Callers
from mesh.ingress.core import Ingress
from mesh.ingress.gate import Gate, GateLimits
from mesh.ingress.grpc_server import GrpcIngress
from mesh.ingress.rest import RestServer, create_rest_app
from mesh.local.servers import NatsServer
from mesh.sdk.client import MeshClient
from mesh.security.identities import IdentitySpec
from mesh.security.keystore import KeyStore
from mesh.security.permissions import Role
from tests.fixtures.chain import Chain, Tier
from tests.fixtures.commands import stop_child
from tests.integration.test_ingress import edge_ingress, wait_ready

pytestmark = [pytest.mark.timeout(240)]

TOKEN = "shared-token"
CALLERS = {"flood": "flood-token", "calm": "calm-token"}
MB = 1 << 20


def auth(caller: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {CALLERS[caller]}"}


def grpc_auth(caller: str) -> dict[str, str]:
    return {"authorization": f"Bearer {CALLERS[caller]}"}


def small_body(rows: int = 1) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "input", "datatype": "FP32", "shape": [rows, 64], "data": [0.0] * 64 * rows}
        ]
    }


@dataclass
class Calm:
    """Another caller: a small REST infer every 20 ms while an attack runs."""

    url: str
    headers: dict[str, str]
    local_addr: tuple[str, int] | None = None
    latencies_ms: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _stop: bool = False

    async def _run(self) -> None:
        connector = aiohttp.TCPConnector(local_addr=self.local_addr)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            while not self._stop:
                started = time.monotonic()
                async with session.post(
                    f"{self.url}/v2/models/digits/infer", json=small_body(), headers=self.headers
                ) as resp:
                    await resp.read()
                    self.statuses.append(resp.status)
                self.latencies_ms.append((time.monotonic() - started) * 1000)
                await asyncio.sleep(0.02)

    async def __aenter__(self) -> Calm:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0.5)
        self.latencies_ms.clear()
        self.statuses.clear()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop = True
        assert self._task is not None
        await self._task

    def summary(self) -> str:
        lat = sorted(self.latencies_ms)
        return f"{len(lat)} calls, p50 {statistics.median(lat):.0f} ms, max {lat[-1]:.0f} ms"


# --- the ingress as its own process ---------------------------------------------------------


@dataclass
class IngressProcess:
    proc: asyncio.subprocess.Process
    http: str
    grpc: str

    async def memory_mb(self) -> tuple[int, int]:
        """VmRSS and VmHWM (its peak so far) of the process, in MB."""

        def read() -> tuple[int, int]:
            fields = dict(
                line.split(":", 1)
                for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
            )
            return int(fields["VmRSS"].split()[0]) >> 10, int(fields["VmHWM"].split()[0]) >> 10

        return await asyncio.to_thread(read)


@pytest.fixture
async def ingress_process(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> AsyncIterator[IngressProcess]:
    await chain.start(nats_server.url, Tier("edge", model="edge-int8"), Tier("cloud"))
    creds = await asyncio.to_thread(keystore.ensure, IdentitySpec("ingress", Role.INGRESS))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mesh.cli", "ingress", "--servers", nats_server.url,
        "--creds", str(creds), "--manifest", str(demo.edge_int8), "--token", TOKEN,
        "--http-port", "0", "--grpc-port", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "MESH_INGRESS_CALLERS": json.dumps(CALLERS)},
    )  # fmt: skip
    assert proc.stdout is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        async with asyncio.timeout(60):
            while not (line := (await proc.stdout.readline()).decode()).startswith(
                "MESH_INGRESS_READY"
            ):
                assert line, "the ingress exited before it was ready"
        words = dict(word.split("=", 1) for word in line.split()[1:])
        ingress = IngressProcess(proc, words["http"], words["grpc"])
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                async with session.get(f"{ingress.http}/v2/health/ready") as resp:
                    if resp.status == 200:
                        break
                await asyncio.sleep(0.1)
        drain = asyncio.create_task(proc.stdout.read())
        yield ingress
    finally:
        await stop_child(proc, 10)
        if drain is not None:
            await drain


GRPC_ATTACK = """
import json, sys, threading
import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException
x = np.zeros((60_000_000 // 256, 64), np.float32)  # 60 MB
codes = []
def call():
    client = grpcclient.InferenceServerClient(sys.argv[1])
    tensor = grpcclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    try:
        client.infer("digits", [tensor])
        codes.append("OK")
    except InferenceServerException as exc:
        codes.append(str(exc.status()).removeprefix("StatusCode."))
threads = [threading.Thread(target=call) for _ in range(12)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps(codes))
"""


async def test_grpc_calls_without_a_token_are_refused_before_their_60_mb_are_read(
    ingress_process: IngressProcess,
) -> None:
    rss_before, _ = await ingress_process.memory_mb()
    async with Calm(ingress_process.http, auth("calm")) as calm:
        attack = await asyncio.create_subprocess_exec(
            sys.executable, "-c", GRPC_ATTACK, ingress_process.grpc,
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await attack.communicate()
    rss_after, peak = await ingress_process.memory_mb()
    print(
        f"\n12 x 60 MB gRPC without a token: ingress RSS {rss_before} MB before, peak {peak} MB, "
        f"{rss_after} MB after; another caller: {calm.summary()}"
    )
    assert json.loads(out) == ["UNAUTHENTICATED"] * 12
    # 720 MB were sent; what grows is grpcio's flow-control windows, not the messages
    assert peak - rss_before < 200
    assert calm.statuses and set(calm.statuses) == {200}


def big_json_body(megabytes: int) -> bytes:
    x = np.round(np.random.default_rng(0).random(megabytes * 100_000), 6)
    rows = len(x) // 64
    tensor = {
        "name": "input",
        "datatype": "FP32",
        "shape": [rows, 64],
        "data": x[: rows * 64].tolist(),
    }
    return json.dumps({"inputs": [tensor]}).encode()


async def test_four_60_mb_rest_bodies_of_one_caller_wait_their_turn_and_never_stall_another(
    ingress_process: IngressProcess,
) -> None:
    body = await asyncio.to_thread(big_json_body, 60)
    rss_before, _ = await ingress_process.memory_mb()

    async def flood(session: aiohttp.ClientSession) -> tuple[int, str]:
        url = f"{ingress_process.http}/v2/models/digits/infer"
        async with session.post(url, data=io.BytesIO(body), headers=auth("flood")) as resp:
            return resp.status, (await resp.json())["error"]

    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        Calm(ingress_process.http, auth("calm")) as calm,
        aiohttp.ClientSession(timeout=timeout) as session,
    ):
        answers = await asyncio.gather(*[flood(session) for _ in range(4)])
    rss_after, peak = await ingress_process.memory_mb()
    print(
        f"\n4 x {len(body) / 1e6:.0f} MB REST bodies: ingress RSS {rss_before} MB before, "
        f"peak {peak} MB, {rss_after} MB after; another caller: {calm.summary()}; "
        f"answers {sorted(status for status, _ in answers)}"
    )
    for status, message in answers:
        # too large for the mesh once parsed, or no room within its caller's share in time
        assert (status == 413 and "max_payload" in message) or (
            status == 429 and "flood has" in message
        ), (status, message)
    assert any(status == 413 for status, _ in answers)
    # one body of the caller at a time (its share is one largest body): on 6f07119, +540 MB
    assert peak - rss_before < 3 * (len(body) >> 20)
    assert calm.statuses and set(calm.statuses) == {200}


# --- the ingress in process, with small limits ----------------------------------------------

LIMITS = GateLimits(
    max_body=1 * MB, bytes_in_flight=4 * MB, bytes_per_caller=1 * MB,
    requests=16, requests_per_caller=4, wait_s=0.5, body_timeout_s=1.5,
)  # fmt: skip


@dataclass
class Guarded:
    ingress: Ingress
    gate: Gate
    http: str
    grpc: str
    server: NatsServer
    app_creds: str


async def start_guarded(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, manifest: Path
) -> AsyncIterator[Guarded]:
    _, client, ingress, app_creds = await edge_ingress(nats_server, chain, keystore, manifest)
    callers, gate = Callers(TOKEN, CALLERS), Gate(LIMITS)
    app = create_rest_app(ingress, callers=callers, gate=gate)
    http = RestServer(app, "127.0.0.1", 0, header_timeout_s=1.0)
    grpc_server = GrpcIngress(ingress, port=0, callers=callers, gate=gate)
    async with client, ingress, http, grpc_server:
        await wait_ready(ingress)
        yield Guarded(ingress, gate, http.url, grpc_server.address, nats_server, str(app_creds))


@pytest.fixture
async def guarded(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> AsyncIterator[Guarded]:
    async for rig in start_guarded(nats_server, chain, keystore, demo.edge_int8):
        yield rig


async def post(
    url: str, headers: dict[str, str], *, data: bytes | None = None, json_body: Any = None,
    local_addr: tuple[str, int] | None = None,
) -> tuple[int, Any]:  # fmt: skip
    connector = aiohttp.TCPConnector(local_addr=local_addr)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(url, data=data, json=json_body, headers=headers) as resp,
    ):
        text = await resp.read()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text


DEEP = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": '
    + b"[" * 100_000
    + b"]" * 100_000
    + b"}]}",
    b'{"inputs": [], "parameters": ' + b'{"a": ' * 100_000 + b"1" + b"}" * 100_001,
]
MISTAKES = [
    b"\xff\xfe\x00", b"", b"null", b'{"inputs": "x"}', b'{"inputs": [{"name": 3}]}',
    b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [1e999]}]}',
    b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [99999999, 99999999]}]}',
    b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [[[1], 2]]}]}',
    b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": "\\ud800"}]}',
]  # fmt: skip


async def test_deep_json_is_a_400_naming_the_limit_and_no_mistake_is_a_500(
    guarded: Guarded,
) -> None:
    url = f"{guarded.http}/v2/models/digits/infer"
    for text in DEEP:
        status, body = await post(url, auth("calm"), data=text)
        assert status == 400 and "limit of 32 levels" in body["error"], (text[:40], body)
    for text in MISTAKES:
        status, body = await post(url, auth("calm"), data=text)
        assert 400 <= status < 500 and body["error"], (text[:60], status, body)
    status, _ = await post(url, auth("calm"), json_body=small_body())
    assert status == 200


async def open_request(
    http: str, headers: dict[str, str], declared: int, sent: bytes = b"{",
    local_addr: tuple[str, int] | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:  # fmt: skip
    """A request whose headers say ``declared`` bytes of body and whose body stops after
    ``sent``: its caller holds its place at the gate until the body times out."""
    host, port = http.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port), local_addr=local_addr)
    head = [
        "POST /v2/models/digits/infer HTTP/1.1",
        f"Host: {host}",
        f"Content-Length: {declared}",
    ]
    head += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + sent)
    await writer.drain()
    return reader, writer


async def until(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``check``: the gate's counts have no event to wait on."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.01)


async def test_a_slow_header_is_cut_off_and_a_slow_body_is_a_408(guarded: Guarded) -> None:
    host, port = guarded.http.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed_after = None
    while time.monotonic() - started < 10:
        writer.write(b"X-Slow: a\r\n")  # a header line every 0.2 s, never the end
        try:
            await writer.drain()
            if await asyncio.wait_for(reader.read(100), 0.2) == b"":
                closed_after = time.monotonic() - started
                break
        except TimeoutError:
            continue
        except ConnectionError:
            closed_after = time.monotonic() - started
            break
    writer.close()
    print(f"\nslow header cut off after {closed_after} s (header timeout 1 s)")
    assert closed_after is not None and closed_after < 5

    reader, writer = await open_request(guarded.http, auth("calm"), declared=1000)
    started = time.monotonic()
    reply = await asyncio.wait_for(reader.read(4096), 10)
    took = time.monotonic() - started
    writer.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b"did not arrive within 1.5 s" in reply
    assert took < 5
    assert guarded.gate.requests.inflight == 0 and guarded.gate.bytes.inflight == 0


async def test_a_grpc_message_that_does_not_arrive_in_time_is_deadline_exceeded(
    guarded: Guarded,
) -> None:
    async def nothing_yet() -> AsyncIterator[bytes]:
        await asyncio.sleep(10)
        yield b""

    async with grpc.aio.insecure_channel(guarded.grpc) as channel:
        infer = channel.stream_unary("/inference.GRPCInferenceService/ModelInfer")
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await infer(nothing_yet(), metadata=tuple(grpc_auth("calm").items()))
    assert refused.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "did not arrive within 1.5 s" in str(refused.value.details())
    assert time.monotonic() - started < 5
    await until(lambda: guarded.gate.requests.inflight == 0 and guarded.gate.bytes.inflight == 0)


async def test_one_callers_flood_takes_its_own_share_over_rest_and_grpc(guarded: Guarded) -> None:
    url = f"{guarded.http}/v2/models/digits/infer"
    held = [await open_request(guarded.http, auth("flood"), declared=100) for _ in range(4)]
    await until(lambda: guarded.gate.requests.held_by("flood") == 4)
    status, body = await post(url, auth("flood"), json_body=small_body())
    assert status == 429 and "4 requests of flood in flight (its share)" in body["error"]
    grpc_flood = triton_grpc.InferenceServerClient(url=guarded.grpc)
    grpc_calm = triton_grpc.InferenceServerClient(url=guarded.grpc)
    row = np.zeros((1, 64), np.float32)
    tensor = triton_grpc.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(row)
    flood_auth = grpc_auth("flood")
    try:
        with pytest.raises(InferenceServerException, match=r"RESOURCE_EXHAUSTED|its share"):
            await grpc_flood.infer("digits", [tensor], headers=flood_auth)
        # the other caller has all its room, whichever way it calls
        assert (await post(url, auth("calm"), json_body=small_body()))[0] == 200
        calm_auth = grpc_auth("calm")
        answer = await grpc_calm.infer("digits", [tensor], headers=calm_auth)
        assert answer.as_numpy("label") is not None
        for _, writer in held:
            writer.close()
        await until(lambda: guarded.gate.requests.held_by("flood") == 0)
        assert (await grpc_flood.infer("digits", [tensor], headers=flood_auth)) is not None
    finally:
        await grpc_flood.close()
        await grpc_calm.close()


async def test_one_callers_bytes_in_flight_hold_back_its_bodies_not_anothers(
    guarded: Guarded,
) -> None:
    url = f"{guarded.http}/v2/models/digits/infer"
    rows = 256  # as many as the model takes, the body padded to 400 KB (the limit is 1 MiB)
    big = json.dumps(small_body(rows)).encode().ljust(400_000)
    _, writer = await open_request(guarded.http, auth("flood"), declared=900_000)
    await until(lambda: guarded.gate.bytes.held_by("flood") == 900_000)
    started = time.monotonic()
    status, body = await post(url, auth("flood"), data=big)
    waited = time.monotonic() - started
    assert status == 429 and "flood has 900000 bytes" in body["error"], body
    assert waited >= 0.45  # it waited for room, then was refused
    grpc_flood = triton_grpc.InferenceServerClient(url=guarded.grpc)
    tensor = triton_grpc.InferInput("input", [1, 64], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 64), np.float32))
    try:  # a gRPC message of unknown length needs room for the largest: the flood has none
        with pytest.raises(InferenceServerException, match=r"RESOURCE_EXHAUSTED|no room"):
            await grpc_flood.infer("digits", [tensor], headers=grpc_auth("flood"))
    finally:
        await grpc_flood.close()
    status, body = await post(url, auth("calm"), data=big)
    assert status == 200 and body["outputs"][0]["shape"][0] == rows, body
    writer.close()
    await until(lambda: guarded.gate.bytes.inflight == 0)


async def test_callers_with_the_shared_token_are_told_apart_by_their_address(
    guarded: Guarded,
) -> None:
    shared = {"Authorization": f"Bearer {TOKEN}"}
    url = f"{guarded.http}/v2/models/digits/infer"
    held = [await open_request(guarded.http, shared, declared=100) for _ in range(4)]
    await until(lambda: guarded.gate.requests.held_by("127.0.0.1") == 4)
    status, body = await post(url, shared, json_body=small_body())
    assert status == 429 and "127.0.0.1 in flight" in body["error"]
    status, _ = await post(url, shared, json_body=small_body(), local_addr=("127.0.0.2", 0))
    assert status == 200
    for _, writer in held:
        writer.close()


# --- issue 26: versions -----------------------------------------------------------------------


@pytest.fixture
async def cloud_manifest_rig(
    nats_server: NatsServer, chain: Chain, keystore: KeyStore, demo: DemoArtifacts
) -> AsyncIterator[Guarded]:
    """The ingress describes ``digits`` by the cloud's manifest (1-cloud), as after a rollout
    the entry tier serves a version other than the manifest's: no entry node serves 1-cloud."""
    async for rig in start_guarded(nats_server, chain, keystore, demo.cloud):
        yield rig


async def test_metadata_lists_ready_versions_and_a_pinned_version_is_never_answered_by_another(
    cloud_manifest_rig: Guarded, demo: DemoArtifacts
) -> None:
    rig = cloud_manifest_rig
    x = np.load(demo.test)["x"][:24].astype(np.float32)
    async with await MeshClient.connect(rig.server.url, user_credentials=rig.app_creds) as sdk:
        tiers = [(await sdk.infer("digits", row[None, :])).tier for row in x]
    sure = x[tiers.index("edge")]
    base = f"{rig.http}/v2/models/digits"
    async with aiohttp.ClientSession(headers=auth("calm")) as session:
        async with session.get(base) as resp:
            meta = await resp.json()
        assert meta["versions"] == ["1-edge-int8"], meta  # 1-cloud is the manifest's, not ready
        async with session.get(f"{base}/versions/1-cloud/ready") as resp:
            assert resp.status == 503 and (await resp.json())["ready"] is False

    def body(rows: np.ndarray) -> dict[str, Any]:
        return {"inputs": [{"name": "input", "datatype": "FP32", "shape": list(rows.shape),
                            "data": rows.ravel().tolist()}]}  # fmt: skip

    status, answer = await post(f"{base}/versions/1-cloud/infer", auth("calm"), json_body=body(x))
    assert status == 503 and "version 1-cloud is not ready" in answer["error"], answer
    # every row at once escalates to the cloud: 1-edge-int8 did not answer, so it is refused
    pinned = f"{base}/versions/1-edge-int8/infer"
    status, answer = await post(pinned, auth("calm"), json_body=body(x))
    assert status == 503, answer
    assert "version 1-edge-int8 did not answer" in answer["error"]
    assert "which serves 1-cloud" in answer["error"]
    status, answer = await post(pinned, auth("calm"), json_body=body(sure[None, :]))
    assert status == 200 and answer["model_version"] == "1-edge-int8", answer

    client = triton_grpc.InferenceServerClient(url=rig.grpc)
    calm_auth = grpc_auth("calm")
    try:
        meta = await client.get_model_metadata("digits", headers=calm_auth)
        assert list(meta.versions) == ["1-edge-int8"]
        tensor = triton_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException, match="did not answer"):
            await client.infer("digits", [tensor], model_version="1-edge-int8", headers=calm_auth)
        one = triton_grpc.InferInput("input", [1, 64], "FP32")
        one.set_data_from_numpy(sure[None, :])
        result = await client.infer("digits", [one], model_version="1-edge-int8", headers=calm_auth)
        assert result.get_response().model_version == "1-edge-int8"
    finally:
        await client.close()


async def test_a_mistaken_input_names_the_tensor_readably(guarded: Guarded) -> None:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 32], "data": [0.0] * 64}
    url = f"{guarded.http}/v2/models/digits/infer"
    status, body = await post(url, auth("calm"), json_body={"inputs": [tensor]})
    assert status == 400
    assert body["error"] == "input 'input' has 64 values; shape [1, 32] takes 32"
