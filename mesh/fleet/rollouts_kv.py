"""Where rollouts are kept: the hub's ``MESH_FLEET_ROLLOUTS`` bucket, one key per model's
latest rollout, one for the evidence window of its running stage, and the controllers' lease."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from mesh.topology.streams import ROLLOUT_KEY_PREFIX, ROLLOUTS_BUCKET, rollout_key
from mesh.transport.jetstream import require_bucket

LEASE_KEY = "lease.controller"
ROLLOUT_PREFIX = ROLLOUT_KEY_PREFIX
#: what the assignments a controller writes for a rollout say they are by: ``rollout <id>``.
ROLLOUT_BY = "rollout "


def window_key(model: str) -> str:
    return f"window.{model}"


__all__ = ["LEASE_KEY", "ROLLOUT_PREFIX", "rollout_key", "rollouts_bucket", "window_key"]


async def rollouts_bucket(js: JetStreamContext) -> KeyValue:
    return await require_bucket(js, ROLLOUTS_BUCKET, "rollouts")
