"""Malformed messages sent to a running node over NATS: every one gets a reply, none kills it."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Iterator

import msgpack
import numpy as np
import numpy.typing as npt
import pytest

from mesh import wire
from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import ErrorCode, InvalidArgumentError
from mesh.local.servers import NatsServer
from mesh.observability import tracing
from mesh.sdk.client import InferResult, MeshClient
from mesh.topology import subjects
from mesh.typedefs import Feeds
from tests.fixtures.chain import Chain, Tier


def mutants(seed: int, count: int) -> list[bytes]:
    """Random bytes, byte-flipped valid requests, and valid maps with a field replaced."""
    rng = random.Random(seed)
    good = wire.encode_request(
        wire.InferRequest(
            id="fuzz",
            model="digits",
            inputs={"input": np.zeros((1, 64), np.float32)},
            budget_ms=500,
        )
    )
    fields = msgpack.unpackb(good, raw=False)
    junk: list[object] = [
        None,
        True,
        -1,
        2**63,
        1.5,
        float("nan"),
        "",
        "x" * 300,
        b"\x00",
        [],
        {},
        [1, [2, [3]]],
        {"a": {"b": {}}},
    ]
    out: list[bytes] = []
    for i in range(count):
        kind = i % 3
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(0, 400)))
        elif kind == 1:
            flipped = bytearray(good)
            for _ in range(rng.randrange(1, 8)):
                flipped[rng.randrange(len(flipped))] = rng.randrange(256)
            out.append(bytes(flipped))
        else:
            mutated = dict(fields)
            key = rng.choice([*mutated, "extra"])
            mutated[key] = rng.choice(junk)
            out.append(msgpack.packb(mutated, use_bin_type=True))
    return out


async def test_four_hundred_malformed_messages_each_get_a_typed_reply_and_the_node_lives(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    await chain.start(nats_server.url, Tier("edge"))
    nc = await nats_server.connect()
    codes: Counter[str] = Counter()
    try:
        for payload in mutants(seed=7, count=400):
            msg = await nc.request(subjects.entry("digits"), payload, timeout=2)
            reply = wire.decode_reply(msg.data)
            if isinstance(reply, wire.ErrorReply):
                codes[reply.code.value] += 1
                assert reply.message
                assert msg.headers is not None and "Nats-Service-Error-Code" in msg.headers
            else:
                codes["answered"] += 1
        good = wire.encode_request(
            wire.InferRequest(
                id="after",
                model="digits",
                inputs={"input": np.load(demo.test)["x"][:1].astype(np.float32)},
                budget_ms=500,
            )
        )
        final = wire.decode_reply(
            (await nc.request(subjects.entry("digits"), good, timeout=2)).data
        )
    finally:
        await nc.close()
    print(f"\nreplies to 400 malformed messages: {dict(codes)}")
    assert isinstance(final, wire.InferResponse) and final.id == "after"
    assert sum(codes.values()) == 400
    assert codes[ErrorCode.INVALID_ARGUMENT.value] > 300
    assert set(codes) <= {"answered", *(c.value for c in ErrorCode)} - {ErrorCode.INTERNAL.value}


@pytest.fixture
def untraced() -> Iterator[None]:
    """This process records no spans while the test runs: a node that records them handles
    each request on a task of its own, never in a batch with others."""
    was = tracing.recording()
    tracing.set_recording(False)
    yield
    tracing.set_recording(was)


@pytest.mark.usefixtures("untraced")
async def test_nan_and_infinite_inputs_are_refused_alone_and_beside_good_requests(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    """A request alone in its batch runs before its inputs are checked (its fused novelty tells
    when to check them); in a batch they are checked before the run. Either way a NaN or an
    infinity gets INVALID_ARGUMENT, and the requests beside it get the answers they get alone."""
    [node] = await chain.start(nats_server.url, Tier("edge"))
    assert node.dataplane is not None
    served = node.dataplane.models.get("digits")
    assert served is not None and served.checks_inputs_after
    checks: list[int] = []
    check = served.finite_rows

    def counted(feeds: Feeds) -> npt.NDArray[np.bool_] | None:
        checks.append(len(next(iter(feeds.values()))))
        return check(feeds)

    served.finite_rows = counted  # type: ignore[method-assign]  # count the checks, same result
    x = np.load(demo.test)["x"][:48].astype(np.float32)
    client = await MeshClient.connect(nats_server.url, **nats_server.client_options())
    try:
        alone = [await client.infer("digits", x[i : i + 1]) for i in range(len(x))]
        assert checks == [], "a finite request alone was checked before its run"
        for value in (np.nan, np.inf, -np.inf):
            bad = x[:1].copy()
            bad[0, 17] = value
            with pytest.raises(InvalidArgumentError, match="NaN or infinite input values"):
                await client.infer("digits", bad)
        assert checks == [1, 1, 1], "each bad request alone is checked once, after its run"

        checks.clear()
        poisoned = {i: x[i : i + 1].copy() for i in range(0, len(x), 6)}
        for i, row in poisoned.items():
            row[0, i % 64] = (np.nan, np.inf, -np.inf)[i % 3]
        outcomes = await asyncio.gather(
            *(client.infer("digits", poisoned.get(i, x[i : i + 1])) for i in range(len(x))),
            return_exceptions=True,
        )
    finally:
        await client.close()
    for i, outcome in enumerate(outcomes):
        if i in poisoned:
            assert isinstance(outcome, InvalidArgumentError), outcome
        else:
            assert isinstance(outcome, InferResult), outcome
            assert outcome.labels == alone[i].labels
            assert outcome.confidence == pytest.approx(alone[i].confidence, rel=1e-6)
    assert any(rows > 1 for rows in checks), "no batch of several requests was checked"
