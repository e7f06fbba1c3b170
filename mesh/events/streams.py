"""The event streams of a domain (a site's, where the entry tier runs).

- ``MESH_EVENTS`` on ``mesh.events.<model>.<source>``: inference events, deduplicated by event id
  (``Nats-Msg-Id``); discard ``new`` when full, so a publisher is told (never silent loss).
- ``MESH_RESULTS`` on ``mesh.results.<model>.<source>``: one result event per inference event,
  deduplicated by event id; discard ``old`` when full, so a slow reader never stops inference.
- ``MESH_EVENTS_DEAD`` on ``mesh.deadletter.<model>.<source>``: events that failed
  ``max_deliver`` times, with the reason.

These subjects stay in their site: the leaf link to the hub neither imports nor exports them
(``mesh.security.server_config.SITE_LOCAL_SUBJECTS``), or every site's stream would take every
site's events.
"""

from __future__ import annotations

from nats.js import api

from mesh.settings import EventSettings
from mesh.topology.subjects import check_token

EVENTS_STREAM = "MESH_EVENTS"
RESULTS_STREAM = "MESH_RESULTS"
DEAD_STREAM = "MESH_EVENTS_DEAD"
EVENTS_PREFIX = "mesh.events"
RESULTS_PREFIX = "mesh.results"
DEAD_PREFIX = "mesh.deadletter"


def event_subject(model: str, source: str) -> str:
    return f"{EVENTS_PREFIX}.{check_token(model, 'model name')}.{check_token(source, 'source')}"


def result_subject(model: str, source: str) -> str:
    return f"{RESULTS_PREFIX}.{check_token(model, 'model name')}.{check_token(source, 'source')}"


def dead_subject(model: str, source: str) -> str:
    return f"{DEAD_PREFIX}.{model}.{source}"


def consumer_name(tier: str, model: str) -> str:
    """The durable pull consumer a tier's replicas share for one model."""
    return f"mesh-{check_token(tier, 'tier')}-{check_token(model, 'model name')}"


def dead_letter_bytes(settings: EventSettings) -> int:
    """Size bound of a dead-letter stream: a quarter of the event stream's (JetStream reserves
    every stream's max_bytes from the server's file store up front)."""
    return max(1024 * 1024, settings.max_bytes // 4)


def stream_configs(settings: EventSettings) -> list[api.StreamConfig]:
    window = settings.duplicate_window_s
    return [
        api.StreamConfig(
            name=EVENTS_STREAM,
            description="Inference events published by applications (mesh.events.<model>.<source>)",
            subjects=[f"{EVENTS_PREFIX}.>"],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            max_bytes=settings.max_bytes,
            max_age=settings.max_age_s,
            duplicate_window=window,
            storage=api.StorageType.FILE,
        ),
        api.StreamConfig(
            name=RESULTS_STREAM,
            description="One result event per inference event (mesh.results.<model>.<source>)",
            subjects=[f"{RESULTS_PREFIX}.>"],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_bytes=settings.results_max_bytes,
            max_msg_size=settings.max_result_bytes,
            max_age=settings.max_age_s,
            duplicate_window=window,
            storage=api.StorageType.FILE,
        ),
        api.StreamConfig(
            name=DEAD_STREAM,
            description="Events that failed max_deliver times, with the reason in a header",
            subjects=[f"{DEAD_PREFIX}.>"],
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.OLD,
            max_bytes=dead_letter_bytes(settings),
            max_age=settings.max_age_s,
            storage=api.StorageType.FILE,
        ),
    ]


def consumer_config(tier: str, model: str, settings: EventSettings) -> api.ConsumerConfig:
    name = consumer_name(tier, model)
    return api.ConsumerConfig(
        name=name,
        durable_name=name,
        filter_subject=f"{EVENTS_PREFIX}.{model}.>",
        ack_policy=api.AckPolicy.EXPLICIT,
        deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=settings.ack_wait_s,
        max_deliver=settings.max_deliver,
        max_ack_pending=settings.max_ack_pending,
    )
