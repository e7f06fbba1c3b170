"""The application's side of the event streams: publish events (one, or many with a bounded
window of acknowledgements outstanding) and read their results.

Publishes are asynchronous JetStream publishes (``mesh.transport.stores``): a batch is written
at once and its acknowledgements read together. While a source has as many events of a model
waiting as its quota allows, the events refused for it are sent again with backoff until the
caller's ``timeout``: the quota is the source's back-pressure, not an error at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from mesh import wire
from mesh.errors import (
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from mesh.events.records import InferenceEvent, check_event_id, decode_result, encode_event
from mesh.events.streams import event_dedup_id, event_subject, result_subject
from mesh.observability import tracing
from mesh.sdk.answers import EventResult, PublishAck
from mesh.sdk.inputs import checked_token, human_review_parameter, tensors_of
from mesh.topology import parameters
from mesh.topology.headers import MSG_ID
from mesh.topology.streams import RESULTS_STREAM
from mesh.transport.failures import mesh_error
from mesh.transport.stores import Entry, Stored, StreamWriter
from mesh.typedefs import Array

log = logging.getLogger("mesh.client")

T = TypeVar("T")

#: events of one ``publish_many`` awaiting their acknowledgements at once, unless it says.
PUBLISH_WINDOW = 256
#: JetStream's "message size exceeds maximum allowed".
TOO_LARGE = 10054


class EventStreams:
    """Events published and results read over one connection (``MeshClient`` holds one)."""

    def __init__(self, nc: NATS, id_prefix: str, ids: itertools.count[int], key: bytes) -> None:
        self._nc = nc
        self._id_prefix = id_prefix
        self._ids = ids
        self._key = key
        self._writer = StreamWriter(nc)

    def event(
        self,
        model: str,
        inputs: Array | Mapping[str, Any],
        *,
        source: str,
        event_id: str | None,
        budget_ms: float,
        residency: str,
        human_review: str,
    ) -> tuple[InferenceEvent, Entry]:
        """An event and what stores it: its subject, payload and deduplication id."""
        subject = event_subject(model, source)
        event = InferenceEvent(
            id=check_event_id(event_id or f"{self._id_prefix}e{next(self._ids):x}"),
            model=model,
            source=source,
            inputs=tensors_of(inputs),
            budget_ms=float(budget_ms),
            residency=residency,
            published_at=time.time(),
            human_review=human_review
            if human_review == "auto"
            else human_review_parameter(human_review)[parameters.HUMAN_REVIEW],
        )
        headers = {MSG_ID: event_dedup_id(source, event.id, self._key)}
        return event, (subject, encode_event(event), headers)

    async def publish_all(
        self,
        model: str,
        source: str,
        events: Sequence[tuple[InferenceEvent, Entry]],
        timeout: float,
        window: int,
    ) -> list[PublishAck]:
        """Store ``events`` with at most ``window`` awaiting acknowledgement; the typed error
        of the first one not stored (the others are stored: publishing them again is safe,
        their ids make them duplicates)."""
        deadline = time.monotonic() + timeout
        acks: list[PublishAck] = []
        for start in range(0, len(events), max(1, window)):
            chunk = events[start : start + max(1, window)]
            entries = [entry for _, entry in chunk]
            if tracing.wanted_here():
                entries = [(s, p, tracing.inject(h or {})) for s, p, h in entries]
                with tracing.send_span(
                    entries[0][0],
                    kind=tracing.SpanKind.PRODUCER,
                    message_id=chunk[0][0].id,
                    model=model,
                    attributes={tracing.BODY_SIZE: sum(len(p) for _, p, _ in entries)},
                ):
                    outcomes = await self._store(entries, deadline)
            else:
                outcomes = await self._store(entries, deadline)
            for (event, (subject, payload, _)), outcome in zip(chunk, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    raise _refused(outcome, model, source, subject, len(payload))
                acks.append(PublishAck(event.id, outcome.stream, outcome.seq, outcome.duplicate))
        return acks

    async def _store(self, entries: list[Entry], deadline: float) -> list[Stored | Exception]:
        """Store ``entries``; those refused for their source's quota again, with backoff."""
        writer = self._writer
        outcomes = await writer.store_all(entries, _left(deadline))
        pause = 0.005
        while True:
            full = [i for i, o in enumerate(outcomes) if _quota_full(o)]
            if not full or time.monotonic() + pause >= deadline:
                return outcomes
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)
            again = await writer.store_all([entries[i] for i in full], _left(deadline))
            for i, outcome in zip(full, again, strict=True):
                outcomes[i] = outcome

    async def results(
        self, model: str, *, source: str, durable: str | None, batch: int
    ) -> AsyncGenerator[EventResult, None]:
        name = checked_token(durable or source, "durable name")
        js = self._nc.jetstream()
        config = nats.js.api.ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=result_subject(model, source),
            ack_policy=nats.js.api.AckPolicy.EXPLICIT,
            deliver_policy=nats.js.api.DeliverPolicy.ALL,
        )
        try:
            await js.add_consumer(RESULTS_STREAM, config)
            sub = await js.pull_subscribe_bind(durable=name, stream=RESULTS_STREAM)
        except PermissionDeniedError as exc:
            raise PermissionDeniedError(
                f"{exc.message}. An identity reads the results of its own events only, through "
                "a consumer of its own name: source= and durable= must be the identity's name"
            ) from None
        except Exception as exc:
            raise mesh_error(exc, f"reading results of {model} for {source}") from None

        def result(msg: Msg) -> EventResult:
            record = decode_result(msg.data)
            return EventResult.of(record, wire.decode_reply(record.reply), len(msg.data))

        what = f"reading results of {model} for {source}"
        async with contextlib.aclosing(read_own(sub, batch, result, what, "result event")) as read:
            async for one in read:
                yield one

    async def close(self) -> None:
        await self._writer.close()


def events_of(
    streams: EventStreams,
    model: str,
    batch: Iterable[Array | Mapping[str, Any]],
    *,
    source: str,
    event_ids: Iterable[str] | None,
    budget_ms: float,
    residency: str,
    human_review: str,
) -> list[tuple[InferenceEvent, Entry]]:
    ids: Iterable[str | None] = event_ids if event_ids is not None else itertools.repeat(None)
    made = [
        streams.event(
            model,
            inputs,
            source=source,
            event_id=event_id,
            budget_ms=budget_ms,
            residency=residency,
            human_review=human_review,
        )
        for inputs, event_id in zip(batch, ids, strict=False)
    ]
    if event_ids is not None and len({event.id for event, _ in made}) != len(made):
        raise InvalidArgumentError("publish_many: event ids repeat within one batch")
    return made


async def read_own(
    sub: JetStreamContext.PullSubscription,
    batch: int,
    decode: Callable[[Msg], T],
    what: str,
    kind: str,
) -> AsyncGenerator[T, None]:
    """A caller's own consumer read for as long as the caller iterates: each message
    ``decode``-d and acknowledged once taken; a malformed one (a ``MeshError`` from ``decode``)
    skipped with a warning naming its ``kind``, and acknowledged; a failed fetch raised as a
    ``MeshError`` on ``what``. A caller that yields what it reads on closes it with
    ``contextlib.aclosing``: its break must end the subscription at once."""
    try:
        while True:
            try:
                msgs = await sub.fetch(batch, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            except Exception as exc:
                raise mesh_error(exc, what) from None
            for msg in msgs:
                try:
                    record = decode(msg)
                except MeshError as exc:
                    log.warning("skipping a malformed %s: %s", kind, exc)
                    await msg.ack()
                    continue
                yield record
                await msg.ack()
    finally:
        # A pull subscription left open holds up the connection's drain (its queue never
        # empties once nothing fetches), so the caller's break ends it here.
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _left(deadline: float) -> float:
    return max(0.001, deadline - time.monotonic())


def _quota_full(exc: object) -> bool:
    """JetStream refused the event because its subject (its source, for its model) holds as
    many waiting events as the stream allows one subject: "maximum messages per subject
    exceeded" (one error code covers every store failure, so the text tells)."""
    if not isinstance(exc, nats.js.errors.APIError):
        return False
    return "per subject" in f"{exc.description or ''}".lower()


def _refused(exc: Exception, model: str, source: str, subject: str, size: int) -> MeshError:
    """What an event not stored means, for the one who published it."""
    if isinstance(exc, PermissionDeniedError):
        return PermissionDeniedError(
            f"{exc.message}. An identity publishes events under its own name only: "
            "source= must be the identity's name"
        )
    if isinstance(exc, MeshError):
        return exc
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return NotFoundError(
            f"no event stream takes events for model {model} here: no entry tier at this "
            "site serves it with events (or the site's streams were never provisioned)"
        )
    if isinstance(exc, nats.js.errors.APIError):
        return _api_refusal(exc, model, source, size)
    return mesh_error(exc, f"publishing an event on {subject}")


def _api_refusal(exc: nats.js.errors.APIError, model: str, source: str, size: int) -> MeshError:
    text = f"{exc.description or exc}"
    if _quota_full(exc):
        return ResourceExhaustedError(
            f"source {source} has as many events of {model} waiting to be inferred as its quota "
            f"allows ({text}); the event was not stored: publish more slowly, or ask for a "
            "larger per-source quota (EventLimits.per_source_events)"
        )
    if exc.err_code == TOO_LARGE:
        return InvalidArgumentError(
            f"the event is {size} bytes, over the event stream's largest event ({text})"
        )
    if "maximum" in text.lower() or "limit" in text.lower():
        return ResourceExhaustedError(f"event stream is full ({text}): the event was not stored")
    return UnavailableError(f"event not stored: {text}")
