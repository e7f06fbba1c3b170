"""Where rollouts are kept: the hub's ``MESH_FLEET_ROLLOUTS`` bucket, one key per model's
latest rollout, one for the evidence window of its running stage, and the controllers' lease."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from mesh.errors import NotFoundError
from mesh.topology.streams import ROLLOUTS_BUCKET

LEASE_KEY = "lease.controller"
ROLLOUT_PREFIX = "rollout."
#: what the assignments a controller writes for a rollout say they are by: ``rollout <id>``.
ROLLOUT_BY = "rollout "


def rollout_key(model: str) -> str:
    return f"{ROLLOUT_PREFIX}{model}"


def window_key(model: str) -> str:
    return f"window.{model}"


async def rollouts_bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(ROLLOUTS_BUCKET)
    except BucketNotFoundError:
        raise NotFoundError(f"no rollouts bucket {ROLLOUTS_BUCKET}: run mesh fleet init") from None
