"""The SDK fails fast and speaks only the mesh's typed errors; it sends no headers needlessly."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from functools import partial

import nats
import nats.errors
import numpy as np
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from mesh import MeshClient, wire
from mesh.errors import (
    DeadlineExceededError,
    ErrorCode,
    InvalidArgumentError,
    ResourceExhaustedError,
    UnavailableError,
)
from mesh.local.servers import NatsServer, free_port
from mesh.sdk.client import mesh_error
from mesh.transport.guard import GuardedClient, flush_in_order


async def test_connecting_where_no_server_listens_fails_fast_with_a_typed_error() -> None:
    started = time.monotonic()
    with pytest.raises(UnavailableError, match="cannot connect"):
        await MeshClient.connect(f"nats://127.0.0.1:{free_port()}", connect_timeout=2)
    assert time.monotonic() - started < 5


async def test_nats_failures_reach_the_caller_as_mesh_errors(nats_server: NatsServer) -> None:
    x = np.zeros((1, 64), np.float32)
    client = await MeshClient.connect(nats_server.url, **nats_server.client_options("app"))
    with pytest.raises(UnavailableError, match="no responders"):
        await client.infer("nobody-serves-this", x)
    with pytest.raises(InvalidArgumentError):
        await client.infer("not a subject token", x)
    await client.close()
    with pytest.raises(UnavailableError):
        await client.infer("digits", x)


async def test_a_request_carries_no_header_block_unless_a_trace_is_continued(
    nats_server: NatsServer,
) -> None:
    seen: list[dict[str, str] | None] = []
    watcher = await nats_server.connect()

    async def reply(msg: Msg) -> None:
        seen.append(msg.headers)
        await watcher.publish(msg.reply, b"\x80")

    await watcher.subscribe("mesh.infer.echo", cb=reply)
    await flush_in_order(watcher)
    x = np.zeros((1, 4), np.float32)
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        with pytest.raises(InvalidArgumentError):  # the reply is not a mesh reply
            await client.infer("echo", x)
        tracer = TracerProvider().get_tracer("test")
        with tracer.start_as_current_span("caller"):
            assert trace.get_current_span().get_span_context().is_valid
            with pytest.raises(InvalidArgumentError):
                await client.infer("echo", x)
    await watcher.close()
    await asyncio.sleep(0)
    assert seen[0] is None
    assert seen[1] is not None and "traceparent" in seen[1]


async def _answer(nc: NATS, msg: Msg) -> None:
    """A tier's answer: the request's id back, its first input value as the label."""
    request = wire.decode_request(msg.data)
    label = int(next(iter(request.inputs.values())).flat[0])
    hop = wire.Hop("edge", "e1", "answered", 0.1, "1", 0.9)
    response = wire.InferResponse(
        request.id, request.model, "1", "edge", "e1", {"p": np.ones((1, 2), np.float32)},
        [label], 0.9, "max_prob", [hop],
    )  # fmt: skip
    await nc.publish(msg.reply, wire.encode_response(response))


async def test_concurrent_requests_each_get_their_own_answer(nats_server: NatsServer) -> None:
    tier = await nats_server.connect()
    await tier.subscribe("mesh.infer.digits", cb=partial(_answer, tier))
    await flush_in_order(tier)
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        results = await asyncio.gather(
            *(client.infer("digits", np.full((1, 4), i, np.float32)) for i in range(200))
        )
        named = await client.infer("digits", np.zeros((1, 4), np.float32), request_id="mine")
    await tier.close()
    assert [r.label for r in results] == list(range(200))
    assert len({r.id for r in results}) == 200
    assert named.id == "mine" and named.tier == "edge" and named.path[0].node == "e1"


async def _answer_or_refuse(nc: NATS, msg: Msg) -> None:
    """Even labels answered (no headers); odd ones refused with an error reply, which carries
    the service error headers as a node's do."""
    request = wire.decode_request(msg.data)
    label = int(next(iter(request.inputs.values())).flat[0])
    if label % 2 == 0:
        await _answer(nc, msg)
        return
    error = wire.ErrorReply(request.id, ErrorCode.INVALID_ARGUMENT, f"odd {label}", "edge", "e1")
    await nc.publish(
        msg.reply, wire.encode_error(error), headers={"Nats-Service-Error-Code": "400"}
    )


async def test_replies_with_and_without_headers_reach_their_requests_on_any_connection(
    nats_server: NatsServer,
) -> None:
    """On ``MeshClient.connect``'s connection a reply without headers goes to its request from
    the read loop, one with headers through the inbox subscription; on a connection made
    elsewhere every reply comes through the subscription. The answers are the same."""
    tier = await nats_server.connect()
    await tier.subscribe("mesh.infer.digits", cb=partial(_answer_or_refuse, tier))
    await flush_in_order(tier)
    guarded = await MeshClient.connect(nats_server.url, **nats_server.client_options("app"))
    plain = MeshClient(await nats_server.connect("app"))
    assert isinstance(guarded.nc, GuardedClient) and not isinstance(plain.nc, GuardedClient)

    async def ask(client: MeshClient, i: int) -> int | str:
        try:
            result = await client.infer("digits", np.full((1, 4), i, np.float32))
        except InvalidArgumentError as error:
            return str(error)
        assert result.label is not None
        return result.label

    try:
        for client in (guarded, plain):
            got = await asyncio.gather(*(ask(client, i) for i in range(100)))
            assert got == [i if i % 2 == 0 else f"INVALID_ARGUMENT: odd {i}" for i in range(100)]
        subscription = guarded._replies.subscription
        assert subscription is not None
        assert subscription.delivered == 50, "only the 50 replies with headers went through it"
        assert plain._replies.subscription is not None
        assert plain._replies.subscription.delivered == 100
    finally:
        await guarded.close()
        await plain.close()
        await tier.close()


async def test_a_reply_subject_under_the_inbox_that_is_not_utf8_is_dropped_and_counted(
    nats_server: NatsServer,
) -> None:
    """A client allowed to publish to this client's inbox can send any bytes as the subject's
    last token; the read loop drops that message and reads on."""
    tier = await nats_server.connect()
    await tier.subscribe("mesh.infer.digits", cb=partial(_answer, tier))
    await flush_in_order(tier)
    nc = GuardedClient()
    await nc.connect(nats_server.url, **nats_server.client_options("app"))
    client = MeshClient(nc, owns_connection=False)
    try:
        assert (await client.infer("digits", np.full((1, 4), 2, np.float32))).label == 2
        prefix = client._replies.prefix.encode()
        await nc._process_msg(1, prefix + b"\xff\xfe", b"", b"\x80", b"")
        assert nc.dropped_malformed == 1
        assert (await client.infer("digits", np.full((1, 4), 4, np.float32))).label == 4
        await client.close()
        assert nc._direct == [], "a closed client leaves nothing in the connection's read loop"
    finally:
        await nc.close()
        await tier.close()


@pytest.fixture
async def silent(nats_server: NatsServer) -> AsyncIterator[None]:
    """A subscriber of model ``silent`` that never answers: requests for it wait out their
    deadline (no "no responders")."""
    nc = await nats_server.connect()
    await nc.subscribe("mesh.infer.silent")
    await flush_in_order(nc)
    yield
    await nc.close()


@pytest.mark.usefixtures("silent")
async def test_a_request_nobody_answers_gives_up_at_its_deadline(nats_server: NatsServer) -> None:
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        client.grace_ms = 50.0
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="within 150 ms"):
            await client.infer("silent", np.zeros((1, 4), np.float32), budget_ms=100)
        waited = time.monotonic() - started
    assert 0.15 <= waited < 1.0


@pytest.mark.usefixtures("silent")
async def test_a_short_deadline_sent_after_a_long_one_still_gives_up_on_time(
    nats_server: NatsServer,
) -> None:
    """Deadlines wait on a heap of ticks: one due before those already waiting re-arms the
    sweep, and the long one keeps waiting."""
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        client.grace_ms = 50.0
        long = asyncio.create_task(
            client.infer("silent", np.zeros((1, 4), np.float32), budget_ms=5_000)
        )
        await asyncio.sleep(0.05)
        started = time.monotonic()
        with pytest.raises(DeadlineExceededError, match="within 150 ms"):
            await client.infer("silent", np.zeros((1, 4), np.float32), budget_ms=100)
        waited = time.monotonic() - started
        assert 0.15 <= waited < 1.0
        assert not long.done()
        long.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await long


@pytest.mark.usefixtures("silent")
async def test_closing_the_client_fails_the_requests_still_waiting(
    nats_server: NatsServer,
) -> None:
    client = await MeshClient.connect(nats_server.url, **nats_server.client_options("app"))
    waiting = asyncio.create_task(
        client.infer("silent", np.zeros((1, 4), np.float32), budget_ms=30_000)
    )
    await asyncio.sleep(0.1)
    await client.close()
    with pytest.raises(UnavailableError, match="closed"):
        await asyncio.wait_for(waiting, 5)


async def test_a_request_over_the_servers_max_payload_is_resource_exhausted(
    nats_server: NatsServer,
) -> None:
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        with pytest.raises(ResourceExhaustedError, match="max_payload"):
            await client.infer("digits", np.zeros((400_000, 4), np.float32))


async def test_a_tier_name_that_is_not_a_subject_token_is_an_invalid_argument(
    nats_server: NatsServer,
) -> None:
    async with await MeshClient.connect(
        nats_server.url, **nats_server.client_options("app")
    ) as client:
        with pytest.raises(InvalidArgumentError, match="tier"):
            await client.infer("digits", np.zeros((1, 4), np.float32), tier="edge.>")


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (nats.errors.NoRespondersError(), UnavailableError),
        (nats.errors.TimeoutError(), DeadlineExceededError),
        (nats.errors.ConnectionClosedError(), UnavailableError),
        (nats.errors.ConnectionReconnectingError(), UnavailableError),
        (nats.errors.ConnectionDrainingError(), UnavailableError),
        (nats.errors.BadSubjectError(), InvalidArgumentError),
        (nats.errors.OutboundBufferLimitError(), UnavailableError),
        (nats.errors.SlowConsumerError("s", "", 1, None), UnavailableError),  # type: ignore[arg-type]
        (nats.errors.MaxPayloadError(), ResourceExhaustedError),
        (nats.errors.StaleConnectionError(), UnavailableError),
        (nats.errors.UnexpectedEOF(), UnavailableError),
        (ConnectionResetError(), UnavailableError),
    ],
)
def test_every_nats_failure_is_a_mesh_error(failure: Exception, expected: type) -> None:
    error = mesh_error(failure, "request 1 on mesh.infer.digits")
    assert type(error) is expected
    assert "request 1 on mesh.infer.digits" in str(error)


async def test_a_client_reads_its_inbox_prefix_from_its_credentials(
    nats_server: NatsServer,
) -> None:
    """Given only ``user_credentials`` (as ``mesh up`` prints them), the client makes its reply
    subjects under the one inbox prefix its identity may subscribe to, and gets answers."""
    edge = await nats_server.connect()
    await edge.subscribe("mesh.infer.digits", queue="mesh.entry", cb=partial(_answer, edge))
    await flush_in_order(edge)
    async with await MeshClient.connect(
        nats_server.url, user_credentials=str(nats_server.creds("app"))
    ) as client:
        result = await client.infer("digits", np.full((1, 4), 7, np.float32))
        assert client.nats._inbox_prefix == bytearray(b"_INBOX_app")
    await edge.close()
    assert result.label == 7
