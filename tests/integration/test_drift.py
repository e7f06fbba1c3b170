"""Drift on a serving node: in-distribution digits stay quiet, brightened ones raise one event."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import jsonschema
import msgpack
import numpy as np
from nats.aio.msg import Msg

from mesh import MeshClient
from mesh.dev.models.demo import DemoArtifacts
from mesh.local.servers import NatsServer
from mesh.node.tier import DRIFT_CHECK_SECONDS
from mesh.scoring.drift import DEFAULT_THRESHOLD
from mesh.topology import subjects
from mesh.transport.guard import flush_in_order
from tests.fixtures.chain import Chain, Tier

ROWS_PER_REQUEST = 5


async def send_rows(client: MeshClient, x: np.ndarray) -> None:
    await asyncio.gather(
        *(
            client.infer("digits", x[i : i + ROWS_PER_REQUEST], budget_ms=3000)
            for i in range(0, len(x), ROWS_PER_REQUEST)
        )
    )


async def test_shifted_digits_cross_the_drift_threshold_and_in_distribution_ones_do_not(
    nats_server: NatsServer, chain: Chain, demo: DemoArtifacts
) -> None:
    [node] = await chain.start(nats_server.url, Tier("edge", threshold=0.0, node="edge-drift"))
    served = node.models.get("digits")
    assert served is not None and served.drift is not None
    events: list[dict[str, Any]] = []

    async def on_event(msg: Msg) -> None:
        events.append(msgpack.unpackb(msg.data))

    watcher = await nats_server.connect()
    await watcher.subscribe(subjects.telemetry("edge-drift"), cb=on_event)
    await flush_in_order(watcher)
    x = np.load(demo.test)["x"].astype(np.float32)
    rng = np.random.default_rng(3)
    try:
        async with await MeshClient.connect(
            nats_server.url, **nats_server.client_options("app")
        ) as client:
            await send_rows(client, x[:300])
            await asyncio.sleep(DRIFT_CHECK_SECONDS * 3)
            calm = served.drift.scores()
            assert events == []
            assert calm["input"] < DEFAULT_THRESHOLD, calm
            assert calm["confidence"] < DEFAULT_THRESHOLD, calm

            bright = np.clip(x[300:] * 1.3 + 0.1, 0.0, 1.0)
            noisy = np.clip(x[:150] + rng.normal(0.0, 0.2, (150, x.shape[1])), 0.0, 1.0)
            await send_rows(client, np.concatenate([bright, noisy]).astype(np.float32))
            for _ in range(40):
                if events:
                    break
                await asyncio.sleep(0.1)
            # Further checks while the drift lasts must not repeat the event.
            await asyncio.sleep(DRIFT_CHECK_SECONDS * 3)
    finally:
        await watcher.close()

    shifted = served.drift.scores()
    assert shifted["input"] > DEFAULT_THRESHOLD, shifted
    input_events = [e for e in events if e["signal"] == "input"]
    assert len(input_events) == 1, events
    event = input_events[0]
    assert event["kind"] == "drift" and event["v"] == 1
    assert (event["node"], event["tier"], event["model"]) == ("edge-drift", "edge", "digits")
    assert event["psi"] > event["threshold"] == DEFAULT_THRESHOLD
    assert event["time"] > 0
    schema = json.loads((Path(__file__).parents[2] / "schemas/drift-event.schema.json").read_text())
    jsonschema.validate(event, schema)
    gauge = {
        attrs["signal"]: value for value, attrs in node.drift_values() if attrs["model"] == "digits"
    }
    assert gauge["input"] > DEFAULT_THRESHOLD
