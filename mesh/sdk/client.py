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
from collections.abc import AsyncGenerator, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors
import nats.js.api
import nats.js.errors
from nats.aio.client import Client as NATS

from mesh import wire
from mesh.errors import (
    DeadlineExceededError,
    MeshError,
)
from mesh.lifecycle import Service
from mesh.node.admission import caller_name
from mesh.node.latency import HedgePolicy, HedgeSettings, LatencyTracker
from mesh.observability import tracing
from mesh.sdk.answers import EventResult, InferResult, PublishAck
from mesh.sdk.events import PUBLISH_WINDOW, EventStreams, events_of, read_own
from mesh.sdk.inputs import DEFAULT_INPUT, checked_token, human_review_parameter, tensors_of
from mesh.security.creds import user_seed
from mesh.topology import subjects
from mesh.transport.connection import close_quietly, inbox_prefix_for, open_connection
from mesh.transport.failures import mesh_error
from mesh.transport.replies import ReplyInbox
from mesh.typedefs import Array

if TYPE_CHECKING:
    from mesh.review.records import LabelEvent
    from mesh.sdk.local import LocalEdge, LocalSettings

#: how long ``connect`` tries to reach a server at first, unless ``connect_timeout`` says.
FIRST_CONNECT_S = 5.0
#: model names whose entry subject a client keeps, so each is checked once.
MAX_CACHED_SUBJECTS = 1024
STATUS_HEADER = nats.js.api.Header.STATUS.value
#: the status of the message a server sends in place of a reply when nobody subscribes.
NO_RESPONDERS = "503"


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
        #: the edge tier hosted in this process, if any (``connect(..., local=...)``).
        self.local: LocalEdge | None = None
        self.events = EventStreams(nc, self._id_prefix, self._ids, event_key or os.urandom(32))

    @property
    def nc(self) -> NATS:
        """The NATS connection (for what the SDK does not wrap: discovery, status)."""
        return self._nc

    @classmethod
    async def connect(
        cls, servers: str | list[str], *, local: LocalSettings | None = None, **options: Any
    ) -> MeshClient:
        """Connect to the mesh's local server; nats-py's options pass through
        (``user_credentials``, ``tls``, ``inbox_prefix``...).

        ``local`` hosts an edge tier in this process (an edge node's settings, or their YAML
        file; its own credentials, of role ``local-edge``, are in its ``nats`` section): a
        request for a model it serves is answered by it with no network hop, and escalates
        over NATS as an edge node's would (``mesh.sdk.local``).

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
        client = cls(nc, event_key=event_key)
        if local is not None:
            try:
                await client.host(local, caller=caller_name(options.get("inbox_prefix", "")))
            except BaseException:
                await client.close()
                raise
        return client

    async def host(self, settings: LocalSettings, *, caller: str = "") -> LocalEdge:
        """Start an edge tier in this process; ``infer`` asks it first for the models it
        serves (``connect(..., local=...)`` calls this). ``caller`` is the application's
        identity name, to whom labels of its requests are told."""
        from mesh.sdk.local import LocalEdge

        edge = LocalEdge(settings, caller=caller)
        await edge.start()
        self.local = edge
        return edge

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
        local: bool = True,
    ) -> InferResult:
        """Ask the mesh; ``tier`` addresses one tier directly instead of the entry tier.
        ``human_review``: ``auto`` (the review queue's rules decide whether a person sees the
        case), ``always`` or ``never``; a label comes later through ``labels``. With an edge
        hosted in this process (``connect(..., local=...)``), it answers first the models it
        serves, unless ``local`` is False (then the request goes over NATS)."""
        hosted = self.local if local else None
        if hosted is not None and (tier is None or tier == hosted.tier) and hosted.serves(model):
            return await self._ask_local(
                hosted, model, inputs, budget_ms, residency, request_id, human_review
            )
        if tier is None:
            subject = self._entry_subjects.get(model) or self._entry_subject(model)
        else:
            subject = subjects.tier_infer(
                checked_token(tier, "tier"), checked_token(model, "model name")
            )
        tensors = tensors_of(inputs)
        token = f"{next(self._ids):x}"
        request = wire.InferRequest(
            request_id or self._id_prefix + token,
            model,
            tensors,
            float(budget_ms),
            residency,
            0,
            {} if human_review == "auto" else human_review_parameter(human_review),
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

    async def _ask_local(
        self,
        local: LocalEdge,
        model: str,
        inputs: Array | Mapping[str, Any],
        budget_ms: float,
        residency: str,
        request_id: str | None,
        human_review: str,
    ) -> InferResult:
        request = wire.InferRequest(
            request_id or f"{self._id_prefix}{next(self._ids):x}",
            model,
            tensors_of(inputs),
            float(budget_ms),
            residency,
            0,
            {} if human_review == "auto" else human_review_parameter(human_review),
        )
        # nothing is sent: the request's bytes on the wire are none
        return InferResult.from_response(await local.infer(request), 0)

    def _entry_subject(self, model: str) -> str:
        subject = subjects.entry(checked_token(model, "model name"))
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
        made = self.events.event(
            model, inputs, source=source, event_id=event_id, budget_ms=budget_ms,
            residency=residency, human_review=human_review,
        )  # fmt: skip
        (ack,) = await self.events.publish_all(model, source, [made], timeout, 1)
        return ack

    async def publish_many(
        self,
        model: str,
        batch: Iterable[Array | Mapping[str, Any]],
        *,
        source: str,
        event_ids: Iterable[str] | None = None,
        budget_ms: float = 5000.0,
        residency: str = "any",
        timeout: float = 30.0,
        human_review: str = "auto",
        window: int = PUBLISH_WINDOW,
    ) -> list[PublishAck]:
        """``publish`` for many events (one per item of ``batch``, ids from ``event_ids`` when
        given), written together with at most ``window`` awaiting their acknowledgement; the
        acknowledgements in order. On an error, the events before it may be stored: publishing
        the same ids again is safe (they come back as duplicates)."""
        made = events_of(
            self.events, model, batch, source=source, event_ids=event_ids,
            budget_ms=budget_ms, residency=residency, human_review=human_review,
        )  # fmt: skip
        return await self.events.publish_all(model, source, made, timeout, window)

    def results(
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
        return self.events.results(model, source=source, durable=durable, batch=batch)

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

        name = checked_token(durable or source, "durable name")
        js = self._nc.jetstream(domain=domain)
        config = nats.js.api.ConsumerConfig(
            name=name,
            durable_name=name,
            filter_subject=subjects.review_labelled(
                checked_token(model, "model name"), checked_token(source, "source")
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
        read = read_own(sub, batch, lambda msg: decode_label_event(msg.data), what, "label event")
        async with contextlib.aclosing(read):
            async for event in read:
                yield event

    async def close(self) -> None:
        """Drain and close the connection (when the client opened it); idempotent."""
        await self.stop()

    async def _stop(self) -> None:
        if self.local is not None:
            await self.local.stop()
        if self._owns and not self._nc.is_closed:
            try:
                await self._nc.drain()
            except Exception:
                await close_quietly(self._nc)
        await self._replies.close(unsubscribe=not self._owns)
        await self.events.close()


def _resend(request: wire.InferRequest, left_ms: float) -> bytes:
    """A hedge of ``request``: the same request, with what is left of its budget."""
    return wire.encode_request(replace(request, budget_ms=left_ms))


log = logging.getLogger("mesh.client")


async def _log_nats_error(exc: Exception) -> None:
    log.debug("NATS: %s: %s", type(exc).__name__, exc)


def _event_key_or_none(creds: str | Path) -> bytes | None:
    """The key of this identity's event tags, from its credentials' seed."""
    from mesh.events.streams import event_key

    seed = user_seed(creds)
    return None if seed is None else event_key(seed)


__all__ = [
    "DEFAULT_INPUT",
    "EventResult",
    "InferResult",
    "MeshClient",
    "PublishAck",
    "mesh_error",
]
