"""Malformed messages sent to a running node over NATS: every one gets a reply, none kills it."""

from __future__ import annotations

import random
from collections import Counter

import msgpack
import numpy as np

from mesh import subjects, wire
from mesh.errors import ErrorCode
from mesh.models.demo import DemoArtifacts
from mesh.testing.embedded import NatsServer
from tests.conftest import NodeFactory, model_settings


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
    nats_server: NatsServer, start_node: NodeFactory, demo: DemoArtifacts
) -> None:
    await start_node("edge", nats_server.url, [model_settings(demo, "edge")], entry=True)
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
