"""The event streams' contracts an entry tier and an application share: subjects, the durable
consumer, and the deduplication ids. The streams themselves (``MESH_EVENTS``, ``MESH_RESULTS``,
``MESH_EVENTS_DEAD``, ``MESH_ACTIONS_DEAD``, each site's own) and their bounds are the
topology's (``mesh.topology.streams``); the provisioning step makes them.

Fair between sources:

- Each source (an application identity: its credentials allow no other source token) may have
  at most ``EventLimits.per_source_events`` events of one model waiting: the event stream keeps
  that many messages per subject and refuses more for that subject only. Acknowledged events are
  gone (a work queue), so the quota is what waits, never what was.
- An event's deduplication id is ``<source>:<event id>:<tag>``, the tag a MAC under a key only
  the source's credentials give (``event_key``): no other identity can publish a copy of
  another source's event id first and make the real one a duplicate. The entry tier takes an
  event only when the id's source and event id are the event's own.
- A result's id is ``<source>:<event id>``, made by the node: one result per source and event.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from nats.js import api

from mesh.settings import EventSettings
from mesh.topology import subjects
from mesh.topology.streams import events_consumer
from mesh.topology.subjects import check_token

#: what a MAC key is derived from, beside the credentials' seed.
_KEY_CONTEXT = b"mesh-event-id\x00"


def event_subject(model: str, source: str) -> str:
    return subjects.event(check_token(model, "model name"), check_token(source, "source"))


def result_subject(model: str, source: str) -> str:
    return subjects.result(check_token(model, "model name"), check_token(source, "source"))


def event_key(secret: bytes) -> bytes:
    """The key of a source's event tags, from a secret only it holds (its nkey seed)."""
    return hashlib.sha256(_KEY_CONTEXT + secret).digest()


def event_dedup_id(source: str, event_id: str, key: bytes) -> str:
    """``Nats-Msg-Id`` of an event: the same for every retry of one event by one source."""
    tag = hmac.new(key, f"{source}\x00{event_id}".encode(), hashlib.sha256).digest()[:16]
    return f"{source}:{event_id}:{base64.urlsafe_b64encode(tag).rstrip(b'=').decode()}"


def dedup_id_matches(header: str, source: str, event_id: str) -> bool:
    """Whether an event's ``Nats-Msg-Id`` names its own source and event id."""
    head, sep, tag = header.rpartition(":")
    return bool(sep) and bool(tag) and head == f"{source}:{event_id}"


def result_dedup_id(source: str, event_id: str) -> str:
    return f"{source}:{event_id}"


def consumer_config(tier: str, model: str, settings: EventSettings) -> api.ConsumerConfig:
    name = events_consumer(tier, model)
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=subjects.event(model, subjects.REST),
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
        max_ack_pending=settings.max_ack_pending,
    )
