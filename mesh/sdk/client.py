"""The application SDK: ``result = await client.infer("digits", x, budget_ms=200)``.

Every failure a caller can meet is one of the mesh's typed errors (``mesh.errors``); nats-py's
exceptions never reach the caller. A request costs the client little: no span and no trace header
unless this process records spans or the caller is inside a trace, no header block at all when
there are no headers, a request id from a counter, the reply decoded once.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.api
import nats.js.errors
import numpy as np
from nats.aio.client import Client as NATS

from mesh import wire
from mesh.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    MeshError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnavailableError,
)
from mesh.lifecycle import Service
from mesh.node.latency import HedgePolicy, HedgeSettings, LatencyTracker
from mesh.observability import tracing
from mesh.security.creds import user_seed
from mesh.topology import parameters, subjects
from mesh.topology.headers import MSG_ID
from mesh.transport.connection import close_quietly, inbox_prefix_for, open_connection
from mesh.transport.failures import mesh_error
from mesh.transport.replies import ReplyInbox
from mesh.typedefs import Array

if TYPE_CHECKING:
    from mesh.review.records import LabelEvent

#: name a single array is sent under; a single-input model takes it whatever its input's name.
DEFAULT_INPUT = "input"
#: how long ``connect`` tries to reach a server at first, unless ``connect_timeout`` says.
FIRST_CONNECT_S = 5.0
#: model names whose entry subject a client keeps, so each is checked once.
MAX_CACHED_SUBJECTS = 1024
STATUS_HEADER = nats.js.api.Header.STATUS.value
#: the status of the message a server sends in place of a reply when nobody subscribes.
NO_RESPONDERS = "503"


@dataclass(slots=True)
class InferResult:
    """The mesh's answer to one request. Read-only by convention: not a frozen dataclass, since
    one is built per request and a frozen ``__init__`` costs several times a plain one."""

    id: str
    model: str
    outputs: dict[str, Array]
    labels: list[int]
    confidence: float
    confidence_kind: str
    tier: str
    node: str
    model_version: str
    path: list[wire.Hop]
    degraded: bool
    reason: str | None
    #: bytes of the request as sent.
    request_bytes: int

    @property
    def label(self) -> int | None:
        """The predicted class of the first row."""
        return self.labels[0] if self.labels else None

    @classmethod
    def from_response(cls, resp: wire.InferResponse, request_bytes: int) -> InferResult:
        return cls(
            resp.id,
            resp.model,
            resp.outputs,
            resp.labels,
            resp.confidence,
            resp.confidence_kind,
            resp.tier,
            resp.node,
            resp.model_version,
            resp.path,
            resp.degraded,
            resp.reason,
            request_bytes,
        )


@dataclass(slots=True)
class PublishAck:
    """An event stored: its id, the stream and sequence, and whether it was there already."""

    event_id: str
    stream: str
    sequence: int
    duplicate: bool


@dataclass(slots=True)
class EventResult(InferResult):
    """A result event: what ``infer`` would have returned, plus the event's id, when it was
    published and stored, and its sequence in the event stream. An error result has ``error``
    set and empty outputs."""

    event_id: str = ""
    source: str = ""
    published_at: float = 0.0
    stored_at: float = 0.0
    event_sequence: int = 0
    error: MeshError | None = None

    @classmethod
    def of(cls, record: Any, reply: wire.Message, size: int) -> EventResult:
        extra = {
            "event_id": record.event_id,
            "source": record.source,
            "published_at": record.published_at,
            "stored_at": record.stored_at,
            "event_sequence": record.event_sequence,
        }
        if isinstance(reply, wire.ErrorReply):
            return cls(
                reply.id, record.model, {}, [], 0.0, "", reply.tier, reply.node, "", [], False,
                None, size, error=reply.to_exception(), **extra,
            )  # fmt: skip
        return cls(
            reply.id, reply.model, reply.outputs, reply.labels, reply.confidence,
            reply.confidence_kind, reply.tier, reply.node, reply.model_version, reply.path,
            reply.degraded, reply.reason, size, **extra,
        )  # fmt: skip


def _tensors(inputs: Array | Mapping[str, Any]) -> dict[str, Array]:
    """A request's tensors: a mapping of name to array, or one array under ``DEFAULT_INPUT``."""
    if type(inputs) is np.ndarray:  # the common case, without the Mapping ABC's check
        return {DEFAULT_INPUT: inputs}
    if isinstance(inputs, Mapping):
        return {name: np.asarray(value) for name, value in inputs.items()}
    return {DEFAULT_INPUT: np.asarray(inputs)}


class MeshClient(Service):
    """A connection to the mesh through the application's local NATS server."""

    def __init__(
        self,
        nc: NATS,
        *,
        owns_connection: bool = True,
        grace_ms: float = 250.0,
        event_key: bytes | None = None,
        hedging: HedgeSettings | None = HedgeSettings(),  # noqa: B008 (frozen, shared)
    ) -> None:
        self._nc = nc
        self._owns = owns_connection
        #: extra wait past the budget before giving up: the mesh answers within the budget,
        #: so a reply later than this means something broke, not that the tier was slow.
        self.grace_ms = grace_ms
        # Request ids: a random prefix per client and a counter. Unique per client (the counter)
        # and hard to guess across clients (48 random bits), for a fraction of uuid4's cost,
        # which reads os.urandom on every call. The counter also names each reply's inbox token.
        self._id_prefix = os.urandom(6).hex()
        self._ids = itertools.count(1)
        self._replies = ReplyInbox(nc, self._next_token, _resend)
        #: when a late request is asked again (None: never), and each subject's answer times.
        self.hedging = hedging
        self._policies: dict[str, HedgePolicy] = {}
        #: entry subjects of the model names checked so far.
        self._entry_subjects: dict[str, str] = {}
        self._lifecycle_started = True  # connected already: ``async with`` only closes it
        #: the key of this client's event ids' tags (``mesh.events.streams.event_dedup_id``):
        #: from its credentials' seed, so retries across restarts deduplicate; else random.
        self._event_key = event_key or os.urandom(32)

    @property
    def nc(self) -> NATS:
        """The NATS connection (for what the SDK does not wrap: discovery, status)."""
        return self._nc

    @classmethod
    async def connect(cls, servers: str | list[str], **options: Any) -> MeshClient:
        """Connect to the mesh's local server; nats-py's options pass through
        (``user_credentials``, ``tls``, ``inbox_prefix``...).

        The first connection fails with ``UnavailableError`` within ``connect_timeout`` (default
        5 s) when no server answers; once connected, the client reconnects for ever."""
        options.setdefault("name", "mesh-client")
        options.setdefault("max_reconnect_attempts", -1)
        # nats-py's default error callback logs every failed attempt with a traceback; a caller
        # gets the one typed error below instead, and the attempts at debug level.
        options.setdefault("error_cb", _log_nats_error)
        creds = options.get("user_credentials")
        event_key: bytes | None = None
        if isinstance(creds, str | Path):
            if "inbox_prefix" not in options:
                # The mesh lets an identity read replies under its own inbox prefix only.
                prefix = await asyncio.to_thread(inbox_prefix_for, creds)
                if prefix is not None:
                    options["inbox_prefix"] = prefix
            event_key = await asyncio.to_thread(_event_key_or_none, creds)
        first_s = float(options.pop("connect_timeout", FIRST_CONNECT_S))
        nc = await open_connection(
            servers, first_connect_s=first_s, connect_timeout=first_s, **options
        )
        return cls(nc, event_key=event_key)

    @property
    def nats(self) -> NATS:
        return self._nc

    async def infer(
        self,
        model: str,
        inputs: Array | Mapping[str, Any],
        *,
        budget_ms: float = 1000.0,
        residency: str = "any",
        request_id: str | None = None,
        tier: str | None = None,
        human_review: str = "auto",
    ) -> InferResult:
        """Ask the mesh; ``tier`` addresses one tier directly instead of the entry tier.
        ``human_review``: ``auto`` (the review queue's rules decide whether a person sees the
        case), ``always`` or ``never``; a label comes later through ``labels``."""
        if tier is None:
            subject = self._entry_subjects.get(model) or self._entry_subject(model)
        else:
            subject = subjects.tier_infer(_token(tier, "tier"), _token(model, "model name"))
        tensors = _tensors(inputs)
        token = f"{next(self._ids):x}"
        request = wire.InferRequest(
            request_id or self._id_prefix + token,
            model,
            tensors,
            float(budget_ms),
            residency,
            0,
            {} if human_review == "auto" else _human_review(human_review),
        )
        payload = wire.encode_request(request)
        timeout = (budget_ms + self.grace_ms) / 1000.0
        if not tracing.wanted_here():
            return await self._ask(subject, payload, timeout, None, request, token)
        with tracing.send_span(
            subject,
            kind=tracing.SpanKind.PRODUCER,
            message_id=request.id,
            model=model,
            attributes={tracing.BODY_SIZE: len(payload)},
        ) as span:
            try:
                result = await self._ask(
                    subject, payload, timeout, tracing.inject(), request, token
                )
            except MeshError as error:
                span.set_attribute("error.type", error.code.value)
                raise
            span.set_attributes(
                {
                    tracing.ANSWERED_BY: result.tier,
                    tracing.CONFIDENCE: result.confidence,
                    tracing.DEGRADED: result.degraded,
                }
            )
            return result

    def _entry_subject(self, model: str) -> str:
        subject = subjects.entry(_token(model, "model name"))
        if len(self._entry_subjects) < MAX_CACHED_SUBJECTS:
            self._entry_subjects[model] = subject
        return subject

    def _next_token(self) -> str:
        return f"{next(self._ids):x}"

    def policy(self, subject: str) -> HedgePolicy | None:
        """The answer times of ``subject`` and when its late requests are asked again."""
        policy = self._policies.get(subject)
        if policy is None and self.hedging is not None:
            if len(self._policies) >= MAX_CACHED_SUBJECTS:
                return None
            policy = self._policies[subject] = HedgePolicy(LatencyTracker(), self.hedging)
        return policy

    async def _ask(
        self,
        subject: str,
        payload: bytes,
        timeout: float,
        headers: dict[str, str] | None,
        request: wire.InferRequest,
        token: str,
    ) -> InferResult:
        policy = self._policies.get(subject) or self.policy(subject)
        replies = self._replies
        # ``ReplyInbox.ask``, inline: a coroutine frame less a request
        pending = replies.expect(
            subject, timeout, headers, token, request, policy, request.budget_ms
        )
        try:
            prefix = replies.prefix or await replies.open()
            await self._nc.publish(subject, payload, reply=prefix + token, headers=headers)
            answer = await pending.future
        except MeshError:
            raise
        except Exception as exc:
            raise mesh_error(exc, f"request {request.id} on {subject}") from None
        finally:
            del replies.waiting[token]
            if pending.sent_at is not None:
                replies.forget_copies(pending)
        if answer is None:
            raise DeadlineExceededError(
                f"no answer for request {request.id} within {timeout * 1000:.0f} ms "
                f"(budget + {self.grace_ms:.0f} ms grace)"
            )
        data, reply_headers, answered = answer
        elapsed_ms = pending.elapsed_ms(answered, replies.now())
        if not data and reply_headers and reply_headers.get(STATUS_HEADER) == NO_RESPONDERS:
            raise mesh_error(nats.errors.NoRespondersError(), f"request {request.id} on {subject}")
        decoded = wire.decode_reply(data)
        if isinstance(decoded, wire.ErrorReply):
            if policy is not None:
                policy.observe(elapsed_ms, decoded.node or None)
            raise decoded.to_exception()
        if policy is not None:
            # the member of the queue group that took it: the first hop (the answer may come
            # from a tier above it)
            path = decoded.path
            policy.observe(elapsed_ms, path[0].node if path else decoded.node)
        return InferResult.from_response(decoded, len(payload))

    # --- event streams ---------------------------------------------------------------------

    async def publish(
        self,
        model: str,
        inputs: Array | Mapping[str, Any],
        *,
        source: str,
        event_id: str | None = None,
        budget_ms: float = 5000.0,
        residency: str = "any",
        timeout: float = 5.0,
        human_review: str = "auto",
    ) -> PublishAck:
        """Append an inference event to the local event stream; returns once it is stored (not
        when it is inferred). ``event_id`` (default: a fresh one) deduplicates: publishing the
        same id again stores nothing new and says ``duplicate``. ``source`` is this client's
        identity name (its credentials allow no other). While the source has as many events of
        the model waiting as its quota allows, the call waits for room up to ``timeout``, then
        raises ``ResourceExhaustedError`` (as does a full stream); a model no entry tier here
        takes events for raises ``NotFoundError``."""
        from mesh.events.records import InferenceEvent, check_event_id, encode_event
        from mesh.events.streams import event_dedup_id, event_subject

        subject = event_subject(model, source)
        tensors = _tensors(inputs)
        event = InferenceEvent(
            id=check_event_id(event_id or f"{self._id_prefix}e{next(self._ids):x}"),
            model=model,
            source=source,
            inputs=tensors,
            budget_ms=float(budget_ms),
            residency=residency,
            published_at=time.time(),
            human_review=human_review
            if human_review == "auto"
            else _human_review(human_review)[parameters.HUMAN_REVIEW],
        )
        headers = {MSG_ID: event_dedup_id(source, event.id, self._event_key)}
        payload = encode_event(event)
        try:
            ack = await self._store_event(subject, model, payload, headers, event.id, timeout)
        except PermissionDeniedError as exc:
            raise PermissionDeniedError(
                f"{exc.message}. An identity publishes events under its own name only: "
                "source= must be the identity's name"
            ) from None
        except nats.js.errors.APIError as exc:
            raise _event_refused(exc, model, source, len(payload)) from None
        except nats.js.errors.NoStreamResponseError:
            raise NotFoundError(
                f"no event stream takes events for model {model} here: no entry tier at this "
                "site serves it with events (or the site's streams were never provisioned)"
            ) from None
        except Exception as exc:
            raise mesh_error(exc, f"publishing an event on {subject}") from None
        return PublishAck(event.id, ack.stream, int(ack.seq), bool(ack.duplicate))

    async def _store_event(
        self,
        subject: str,
        model: str,
        payload: bytes,
        headers: dict[str, str],
        event_id: str,
        timeout: float,
    ) -> Any:
        """Store the event; while its source is at its quota of waiting events, wait for room
        until ``timeout`` (the quota is the source's back-pressure, not an error at once)."""
        js = self._nc.jetstream()
        deadline = time.monotonic() + timeout
        pause = 0.005
        while True:
            left = max(0.001, deadline - time.monotonic())
            try:
                if tracing.wanted_here():
                    with tracing.send_span(
                        subject,
                        kind=tracing.SpanKind.PRODUCER,
                        message_id=event_id,
                        model=model,
                        attributes={tracing.BODY_SIZE: len(payload)},
                    ):
                        return await js.publish(
                            subject, payload, headers=tracing.inject(headers), timeout=left
                        )
                return await js.publish(subject, payload, headers=headers, timeout=left)
            except nats.js.errors.APIError as exc:
                if not _quota_full(exc) or time.monotonic() + pause >= deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def results(
        self,
        model: str,
        *,
        source: str,
        durable: str | None = None,
        batch: int = 64,
    ) -> AsyncGenerator[EventResult, None]:
        """The result events of ``source``'s events for ``model``, oldest first, through a
        durable consumer (named ``durable``, default ``source``: this identity's), so that a
        restart resumes after the last result taken. A result is acknowledged when the next one
        is asked for; an error result carries ``error`` and no outputs."""
        from mesh.events.records import decode_result
        from mesh.events.streams import result_subject
        from mesh.topology.streams import RESULTS_STREAM

        name = _token(durable or source, "durable name")
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
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except Exception as exc:
                    raise mesh_error(exc, f"reading results of {model} for {source}") from None
                for msg in msgs:
                    try:
                        record = decode_result(msg.data)
                        reply = wire.decode_reply(record.reply)
                    except MeshError as exc:
                        log.warning("skipping a malformed result event: %s", exc)
                        await msg.ack()
                        continue
                    yield EventResult.of(record, reply, len(msg.data))
                    await msg.ack()
        finally:
            # A pull subscription left open holds up the connection's drain (its queue never
            # empties once nothing fetches), so the caller's break ends it here.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def labels(
        self,
        model: str,
        *,
        source: str,
        durable: str | None = None,
        domain: str | None = "hub",
        batch: int = 64,
    ) -> AsyncGenerator[LabelEvent, None]:
        """The labels people gave ``source``'s requests and events of ``model`` (by request or
        event id), oldest first, through a durable consumer (``durable``, default ``source``)
        on the hub's ``MESH_REVIEW_LABELLED``: a restart resumes after the last one taken. Only
        this identity's own are readable (its permissions)."""
        from mesh.review.records import decode_label_event
        from mesh.topology.streams import REVIEW_LABELLED_STREAM

        name = _token(durable or source, "durable name")
        js = self._nc.jetstream(domain=domain)
        config = nats.js.api.ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=subjects.review_labelled(
                _token(model, "model name"), _token(source, "source")
            ),
            ack_policy=nats.js.api.AckPolicy.EXPLICIT,
            deliver_policy=nats.js.api.DeliverPolicy.ALL,
        )
        what = f"reading labels of {model} for {source}"
        try:
            await js.add_consumer(REVIEW_LABELLED_STREAM, config)
            sub = await js.pull_subscribe_bind(durable=name, stream=REVIEW_LABELLED_STREAM)
        except Exception as exc:
            raise mesh_error(exc, what) from None
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
                        event = decode_label_event(msg.data)
                    except MeshError as exc:
                        log.warning("skipping a malformed label event: %s", exc)
                        await msg.ack()
                        continue
                    yield event
                    await msg.ack()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def close(self) -> None:
        """Drain and close the connection (when the client opened it); idempotent."""
        await self.stop()

    async def _stop(self) -> None:
        if self._owns and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception:
                await close_quietly(self._nc)
        await self._replies.close(unsubscribe=not self._owns)


def _resend(request: wire.InferRequest, left_ms: float) -> bytes:
    """A hedge of ``request``: the same request, with what is left of its budget."""
    return wire.encode_request(replace(request, budget_ms=left_ms))


def _human_review(value: str) -> dict[str, Any]:
    """The request parameter of a caller's ``human_review`` (a typed error for a bad one)."""
    from mesh.review.records import check_human_review

    return {parameters.HUMAN_REVIEW: check_human_review(value).value}


def _token(value: str, what: str) -> str:
    try:
        return subjects.check_token(value, what)
    except ValueError as exc:
        raise InvalidArgumentError(str(exc)) from None


log = logging.getLogger("mesh.client")


#: JetStream's "message size exceeds maximum allowed".
TOO_LARGE = 10054


def _quota_full(exc: Any) -> bool:
    """JetStream refused the event because its subject (its source, for its model) holds as
    many waiting events as the stream allows one subject: "maximum messages per subject
    exceeded" (one error code covers every store failure, so the text tells)."""
    return "per subject" in f"{exc.description or ''}".lower()


def _event_refused(exc: Any, model: str, source: str, size: int) -> MeshError:
    """What a refused event publish means, for the one who published it."""
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


async def _log_nats_error(exc: Exception) -> None:
    log.debug("NATS: %s: %s", type(exc).__name__, exc)


def _event_key_or_none(creds: str | Path) -> bytes | None:
    """The key of this identity's event tags, from its credentials' seed."""
    from mesh.events.streams import event_key

    seed = user_seed(creds)
    return None if seed is None else event_key(seed)
