"""A person's pause, resume or abort (``mesh.fleet.admin.act``, what ``mesh rollout pause`` and the
console call) against a real JetStream bucket: an old record re-delivered into the bucket is
refused, but a record the controller wrote after the action read its own is not mistaken for one
(a pause of a rollout moving fast was refused so, naming an old record that was none)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.js.kv import KeyValue

from mesh.errors import InvalidArgumentError
from mesh.fleet.admin import _check_latest
from mesh.fleet.desired import Selector
from mesh.fleet.rollout import Gate, Rollout, encode_rollout, new_rollout, parse_stages, request
from mesh.fleet.rollouts_kv import rollout_key
from mesh.local.servers import NatsServer


def first_rollout() -> Rollout:
    gate = Gate(soak_s=5, min_requests=50, min_samples=40, max_wait_s=60)
    return new_rollout(
        "digits", "2", "1", Selector(tier="edge"), parse_stages("1,100%", gate), ["n0", "n1"],
        now=0.0,
    )  # fmt: skip


@pytest.fixture
async def kv(nats_server: NatsServer) -> AsyncIterator[KeyValue]:
    """A rollouts-like bucket keeping each key's history, on the real server."""
    nc = await nats_server.connect()
    try:
        yield await nc.jetstream().create_key_value(bucket="ROLLOUT_ACTIONS_TEST", history=16)
    finally:
        await nc.close()


async def test_a_record_written_after_the_one_read_is_not_taken_for_an_old_one(
    kv: KeyValue,
) -> None:
    key = rollout_key("digits")
    read = first_rollout()
    revision = await kv.put(key, encode_rollout(read))
    # the controller moves the rollout on after the action read its record
    await kv.put(key, encode_rollout(request(read, "pause", 1.0, "controller")))
    await _check_latest(kv, "digits", read, revision)  # not refused: it reads again


async def test_an_old_record_re_delivered_into_the_bucket_is_refused(kv: KeyValue) -> None:
    key = rollout_key("digits")
    old = first_rollout()
    await kv.put(key, encode_rollout(old))
    await kv.put(key, encode_rollout(request(old, "pause", 1.0, "person")))
    again = await kv.put(key, encode_rollout(old))  # the first record, later in the bucket
    with pytest.raises(InvalidArgumentError, match="an old record was re-delivered"):
        await _check_latest(kv, "digits", old, again)
