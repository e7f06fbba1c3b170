"""Ten thousand adversarial inputs against a live node process: bodies and raw protocol frames.

Bodies come from a seeded mutation fuzzer (random bytes, flipped bytes of a valid request, a valid
map with one field replaced by junk); frames are written to a raw socket: subjects and reply
subjects that are not UTF-8 or are huge, header blocks whose declared lengths lie or whose lines
are garbage, payload sizes past the server's limit. Every 50 inputs a good request must still get
its answer. At the end the node process is alive, has answered every body with a typed reply
(never INTERNAL) and its memory is within 20% of where it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from collections import Counter
from pathlib import Path

import nats
import nats.errors
import numpy as np
import psutil
import pytest
import yaml

from mesh import wire
from mesh.dev.models.demo import DemoArtifacts
from mesh.dev.rawnats import connect_line
from mesh.errors import ErrorCode
from mesh.local.layout import node_identity
from mesh.local.servers import NatsServer
from mesh.topology import subjects
from tests.integration.test_malformed_over_nats import mutants

BODIES = 6000
FRAMES = 4000
GOOD_EVERY = 50


def protocol_frames(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    body = b"hello"
    frames: list[bytes] = []
    for i in range(count):
        kind = i % 8
        if kind == 0:  # subject not UTF-8
            frames.append(b"PUB mesh.infer." + rng.randbytes(3) + b" 5\r\n" + body + b"\r\n")
        elif kind == 1:  # reply subject not UTF-8, on the real subject
            frames.append(
                b"PUB mesh.infer.digits _INBOX." + rng.randbytes(4) + b" 5\r\n" + body + b"\r\n"
            )
        elif kind == 2:  # declared header length that lies about where the headers end
            block = b"NATS/1.0\r\nA: b\r\n" + rng.randbytes(20).replace(b"\r", b"") + body
            header_len = rng.choice([5, 12, len(block) - 2, len(block) + 10])
            frames.append(
                b"HPUB mesh.infer.digits _INBOX.x %d %d\r\n%s\r\n" % (header_len, len(block), block)
            )
        elif kind == 3:  # garbage header lines, valid lengths
            header = (
                b"NATS/1.0\r\n"
                + rng.randbytes(rng.randrange(1, 40)).replace(b"\r", b"")
                + b"\r\n\r\n"
            )
            frames.append(
                b"HPUB mesh.infer.digits _INBOX.y %d %d\r\n%s%s\r\n"
                % (len(header), len(header) + len(body), header, body)
            )
        elif kind == 4:  # a huge declared payload
            frames.append(b"PUB mesh.infer.digits 999999999\r\n" + body + b"\r\n")
        elif kind == 5:  # a very long subject
            frames.append(b"PUB mesh.infer." + b"a" * 5000 + b" 5\r\n" + body + b"\r\n")
        elif kind == 6:  # random bytes as a protocol line
            frames.append(rng.randbytes(rng.randrange(1, 200)) + b"\r\n")
        else:  # a request with no reply subject: dropped cheaply
            frames.append(b"PUB mesh.infer.digits 5\r\n" + body + b"\r\n")
    return frames


async def _send_frame(host: str, port: int, creds: str, frame: bytes) -> None:
    """One frame on a fresh raw connection (the server closes it on most protocol errors),
    signed in with a device's credentials."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        info = await reader.readline()
        writer.write(connect_line(creds, info) + frame)
        writer.write(b"PING\r\n")
        await writer.drain()
        await asyncio.wait_for(reader.read(4096), 0.5)
    except (TimeoutError, OSError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_ten_thousand_adversarial_inputs_leave_a_node_answering_with_steady_memory(
    nats_server: NatsServer, demo: DemoArtifacts, tmp_path: Path
) -> None:
    config = tmp_path / "edge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "tier": "edge",
                "node": "edge-fuzz",
                "zone": "device",
                "entry": True,
                "nats": {
                    "servers": [nats_server.url],
                    "credentials": str(
                        await nats_server.issue(node_identity("edge-fuzz", "edge", entry=True))
                    ),
                },
                "models": [{"name": "digits", "manifest": str(demo.edge)}],
                "hard_examples": {"enabled": False},
            }
        )
    )
    node = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mesh.cli",
        "node",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert node.stdout is not None
    while b"READY" not in await asyncio.wait_for(node.stdout.readline(), 60):
        pass
    drain = asyncio.create_task(node.stdout.read())
    process = psutil.Process(node.pid)
    nc = await nats_server.connect("app")
    creds = nats_server.creds("app").read_text()
    x = np.load(demo.test)["x"].astype(np.float32)
    good_answers = 0
    interrupted = 0

    async def ask_good(i: int) -> None:
        """A good request; one that meets the node reconnecting is retried for up to 1 s."""
        nonlocal good_answers, interrupted
        good = wire.encode_request(
            wire.InferRequest(
                id=f"good{i}", model="digits", inputs={"x": x[i % len(x)][None]}, budget_ms=2000
            )
        )
        for attempt in range(20):
            try:
                msg = await nc.request(subjects.entry("digits"), good, timeout=5)
                break
            except nats.errors.NoRespondersError:
                interrupted += attempt == 0
                await asyncio.sleep(0.05)
        reply = wire.decode_reply(msg.data)
        assert isinstance(reply, wire.InferResponse), reply
        good_answers += 1

    try:
        for i in range(200):
            await ask_good(i)
        rss_before = process.memory_info().rss

        codes: Counter[str] = Counter()
        for i, payload in enumerate(mutants(seed=11, count=BODIES)):
            msg = await nc.request(subjects.entry("digits"), payload, timeout=5)
            reply = wire.decode_reply(msg.data)
            codes[reply.code.value if isinstance(reply, wire.ErrorReply) else "answered"] += 1
            if i % GOOD_EVERY == 0:
                await ask_good(i)

        host, port = nats_server.url.removeprefix("nats://").rsplit(":", 1)
        for i, frame in enumerate(protocol_frames(seed=13, count=FRAMES)):
            await _send_frame(host, int(port), creds, frame)
            if i % GOOD_EVERY == 0:
                await ask_good(i)

        for i in range(200):
            await ask_good(i)
        rss_after = process.memory_info().rss
    finally:
        await nc.close()
        alive = process.is_running() and process.status() != psutil.STATUS_ZOMBIE
        if alive:
            node.terminate()
        status = await node.wait()
        output = (await drain).decode(errors="replace")
        if status not in (0, -15):
            print(f"node exited with {status}:\n{output[-4000:]}")

    print(
        f"\nbodies: {dict(codes)}; frames: {FRAMES}; good answers: {good_answers} "
        f"({interrupted} met a reconnect and were retried); "
        f"rss {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB"
    )
    assert alive
    assert sum(codes.values()) == BODIES
    assert ErrorCode.INTERNAL.value not in codes
    assert good_answers == 400 + BODIES // GOOD_EVERY + FRAMES // GOOD_EVERY
    assert rss_after < rss_before * 1.2
