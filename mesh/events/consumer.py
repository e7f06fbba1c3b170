"""The entry tier's side of the event streams: fetch events, answer them as requests, store one
result per event, then acknowledge.

One durable pull consumer per served model (``mesh-<tier>-<model>``), shared by the tier's
replicas. Each fetch of up to ``fetch_batch`` events is one batch through the data plane's local
pass; events that escalate finish on their own task. An event is acknowledged only after its
result is stored, so a node killed in between means redelivery, and the result stream drops the
second copy by source and event id (``Nats-Msg-Id``): exactly one result per event. A malformed
event gets an error result and is acknowledged; an event whose handling keeps failing goes to
the dead-letter stream with the reason after ``max_deliver`` deliveries.

An event's budget counts from its publish time: ``received_at`` is moved back by its age.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry import context as otel_context
from opentelemetry import trace

from mesh import wire
from mesh.errors import InternalError, InvalidArgumentError, MeshError
from mesh.events.actions import ActionRunner, ResultView
from mesh.events.pulling import Puller
from mesh.events.records import (
    InferenceEvent,
    ResultEvent,
    check_event_id,
    decode_event,
    encode_result,
)
from mesh.events.streams import (
    consumer_config,
    dedup_id_matches,
    result_dedup_id,
    result_subject,
)
from mesh.lifecycle import Service, cancel_and_wait
from mesh.node.dataplane import DataPlane
from mesh.node.outcomes import Outcome
from mesh.observability import tracing
from mesh.observability.metrics import MeshMetrics
from mesh.settings import EventSettings
from mesh.topology import subjects
from mesh.topology.headers import DEAD_REASON, MSG_ID
from mesh.topology.streams import (
    ACTIONS_DEAD_STREAM,
    DEAD_STREAM,
    EVENTS_STREAM,
    RESULTS_STREAM,
    events_consumer,
)
from mesh.transport.jetstream import require_stream
from mesh.transport.stores import Entry, Sent, Stored, StreamWriter

log = logging.getLogger("mesh.events")

#: how often stream depth and consumer lag are read for the gauges.
STATS_S = 2.0
#: how long a result may wait for its stream's acknowledgement.
STORE_TIMEOUT_S = 5.0
#: batches of results whose acknowledgements may be awaited at once.
STORING = 4
#: the body of an acknowledgement (nats-py's ``Msg.Ack``).
ACK = b"+ACK"


class EventConsumer(Service):
    def __init__(
        self,
        nc: NATS,
        dataplane: DataPlane,
        models: Callable[[], list[str]],
        *,
        tier: str,
        node: str,
        settings: EventSettings,
        domain: str | None,
        metrics: MeshMetrics,
    ) -> None:
        self._nc = nc
        self._dataplane = dataplane
        self._models = models
        self.tier = tier
        self.node = node
        self.settings = settings
        self._domain = domain
        self._js: JetStreamContext = nc.jetstream(domain=domain)
        self._metrics = metrics
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._pullers: list[Puller] = []
        self._writer = StreamWriter(nc)
        self._storing = asyncio.Semaphore(STORING)
        self._inflight: set[asyncio.Task[None]] = set()
        self.actions: ActionRunner | None = None
        #: figures read from JetStream every ``STATS_S``, exposed as gauges when scraped.
        self.figures: dict[tuple[str, str], float] = {}
        self._unregister: list[Callable[[], None]] = []
        self._stats_task: asyncio.Task[None] | None = None
        #: per model, the shortest budget of its last batch of events, in seconds.
        self._shortest_s: dict[str, float] = {}
        #: fetches the power governor's ``events`` step made wait.
        self.deferred = 0

    async def _start(self) -> None:
        for stream in (EVENTS_STREAM, RESULTS_STREAM, DEAD_STREAM):
            await require_stream(self._js, stream, domain=self._domain)
        if self.settings.actions:
            await require_stream(self._js, ACTIONS_DEAD_STREAM, domain=self._domain)
            self.actions = ActionRunner(self._nc, self._js, self.settings, self.tier, self._metrics)
            await self.actions.start()
        for model in self._models():
            await self.consume(model)
        self._unregister.append(
            self._metrics.observe_gauge(
                "mesh_event_streams",
                "Event streams at this node's server: depth of each stream (messages), and per "
                "model the events not yet delivered (pending), delivered and not acknowledged "
                "(ack_pending) and delivered more than once (redelivered)",
                self._gauge_values,
            )
        )
        self._stats_task = asyncio.create_task(self._stats(), name="events-stats")

    async def consume(self, model: str) -> None:
        """Start taking the events of ``model`` (a model added later is started here too)."""
        if model in self._loops:
            return
        config = consumer_config(self.tier, model, self.settings)
        await self._js.add_consumer(EVENTS_STREAM, config)
        batch = self.settings.fetch_batch
        puller = Puller(
            self._nc, EVENTS_STREAM, config.durable_name or "", window=2 * batch, batch=batch,
            domain=self._domain,
        )  # fmt: skip
        await puller.open()
        self._pullers.append(puller)
        self._loops[model] = asyncio.create_task(self._loop(model, puller), name=f"events-{model}")

    async def _stop(self) -> None:
        for unregister in self._unregister:
            unregister()
        await cancel_and_wait([*self._loops.values(), *filter(None, [self._stats_task])])
        # Events taken from the server and not yet handled are given back at once.
        for puller in self._pullers:
            await puller.close()
        # Events under way finish (their results stored and acknowledged) for a little while;
        # what does not is delivered again after ack_wait.
        if self._inflight:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*self._inflight, return_exceptions=True)
            await cancel_and_wait(list(self._inflight))
        if self.actions is not None:
            await self.actions.stop()
        await self._writer.close()

    def _gauge_values(self) -> list[tuple[float, dict[str, str]]]:
        return [
            (value, {"tier": self.tier, "figure": figure, "of": of})
            for (figure, of), value in list(self.figures.items())
        ]

    async def _stats(self) -> None:
        while True:
            if self._dataplane.savings.events_defer_s:
                # statistics have no deadline: under the power governor's events step they wait
                await asyncio.sleep(STATS_S)
                continue
            with contextlib.suppress(Exception):
                for stream in (EVENTS_STREAM, RESULTS_STREAM, DEAD_STREAM):
                    info = await self._js.stream_info(stream)
                    self.figures[("messages", stream)] = float(info.state.messages)
                for model in list(self._loops):
                    name = events_consumer(self.tier, model)
                    c = await self._js.consumer_info(EVENTS_STREAM, name)
                    self.figures[("pending", model)] = float(c.num_pending or 0)
                    self.figures[("ack_pending", model)] = float(c.num_ack_pending or 0)
                    self.figures[("redelivered", model)] = float(c.num_redelivered or 0)
            await asyncio.sleep(STATS_S)

    async def _defer(self, model: str) -> None:
        wait = deferral(self._dataplane.savings.events_defer_s, self._shortest_s.get(model))
        if wait:
            self.deferred += 1
            await asyncio.sleep(wait)

    async def _loop(self, model: str, puller: Puller) -> None:
        while True:
            await self._defer(model)
            try:
                msgs = await puller.take(timeout=1.0)
                if not msgs:
                    continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event fetch for %s failed: %r", model, exc)
                await asyncio.sleep(0.5)
                continue
            try:
                await self._handle(model, msgs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not stop the consumer: retry, then DLQ
                log.exception("a batch of %d %s events failed", len(msgs), model)
                for msg in msgs:
                    await self._retry_or_dead(msg, model, f"{type(exc).__name__}: {exc}")

    async def _handle(self, model: str, msgs: list[Msg]) -> None:
        now_wall, now_mono = time.time(), time.monotonic()
        batch: list[tuple[InferenceEvent, Msg, float]] = []
        results: list[_Result] = []
        for msg in msgs:
            source = subjects.source_of(msg.subject)
            try:
                event = self._checked(model, source, msg)
            except MeshError as exc:
                self._metrics.events.add(1, self.tier, model, "malformed")
                results.append(self._error_result(msg, model, source, _id_of(msg), exc))
                continue
            age_s = min(max(0.0, now_wall - event.published_at), event.budget_ms / 1000.0)
            if tracing.wanted(msg.headers):
                # a traced event runs on its own, inside its publisher's trace
                self._spawn(self._traced(event, msg, now_mono - age_s))
                continue
            batch.append((event, msg, now_mono - age_s))
        if batch:
            self._shortest_s[model] = min(event.budget_ms for event, _, _ in batch) / 1000.0
            outcomes = await self._dataplane.answer_batch_async(
                [(event.request(), received_at) for event, _, received_at in batch]
            )
            for (event, msg, _), outcome in zip(batch, outcomes, strict=True):
                if outcome.escalation is not None:
                    self._spawn(self._complete(event, msg, outcome))
                else:
                    results.append(self._result(event, msg, outcome))
        if results:
            await self._store(results)

    def _checked(self, model: str, source: str, msg: Msg) -> InferenceEvent:
        event = decode_event(msg.data)
        if event.model != model or event.source != source:
            raise InvalidArgumentError(
                f"event for {event.model}/{event.source} published on {msg.subject}"
            )
        if not dedup_id_matches((msg.headers or {}).get(MSG_ID, ""), source, event.id):
            raise InvalidArgumentError(
                f"event {event.id} of {source}: its {MSG_ID} header must be "
                f"{source}:{event.id}:<tag> (the SDK writes it); the event is refused"
            )
        return event

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _traced(self, event: InferenceEvent, msg: Msg, received_at: float) -> None:
        subject = msg.subject
        token = otel_context.attach(tracing.extract(msg.headers))
        try:
            with tracing.TRACER.start_as_current_span(
                f"process {subject}",
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    tracing.MESSAGING_SYSTEM: "nats",
                    tracing.DESTINATION: subject,
                    tracing.OPERATION_TYPE: "process",
                    tracing.MESSAGE_ID: event.id,
                    tracing.MODEL: event.model,
                },
            ):
                (outcome,) = await self._dataplane.answer_batch_async(
                    [(event.request(), received_at)]
                )
                if outcome.escalation is not None:
                    await self._complete(event, msg, outcome)
                else:
                    await self._store([self._result(event, msg, outcome)])
        finally:
            otel_context.detach(token)

    async def _complete(self, event: InferenceEvent, msg: Msg, outcome: Outcome) -> None:
        try:
            response = await self._dataplane.complete(outcome)
        except MeshError as exc:
            outcome.error = exc
        except Exception as exc:
            outcome.error = InternalError(f"event {event.id}: {exc!r}")
        else:
            outcome.response = response
        await self._store([self._result(event, msg, outcome)])

    def _result(self, event: InferenceEvent, msg: Msg, outcome: Outcome) -> _Result:
        response = outcome.response
        if response is None:
            error = outcome.error or InternalError(f"event {event.id} has no answer")
            self._metrics.events.add(1, self.tier, event.model, "error")
            return self._error_result(msg, event.model, event.source, event.id, error)
        self._metrics.events.add(
            1, self.tier, event.model, "degraded" if response.degraded else "answered"
        )
        view = ResultView(
            event.model, response.labels, response.confidence, response.tier, response.degraded
        )
        reply = wire.encode_response(response)
        return _Result(msg, event.model, event.source, event.id, event.published_at, reply, view)

    def _error_result(
        self, msg: Msg, model: str, source: str, event_id: str, error: MeshError
    ) -> _Result:
        reply = wire.encode_error(
            wire.ErrorReply(event_id, error.code, error.message, self.tier, self.node)
        )
        view = ResultView(model, [], None, self.tier, False, str(error))
        return _Result(msg, model, source, event_id, 0.0, reply, view)

    async def _store(self, results: list[_Result]) -> None:
        """Store the results (written together, their acknowledgements awaited together), then
        acknowledge their events, then start the actions their rules call for; a result that
        cannot be stored leaves its event to be delivered again. Actions are at least once: a
        node that dies between storing and acknowledging runs them again on redelivery (each
        action event carries the event id)."""
        stored_at = time.time()
        entries: list[Entry] = []
        for r in results:
            record = ResultEvent(
                event_id=r.event_id,
                model=r.model,
                source=r.source,
                published_at=r.published_at,
                stored_at=stored_at,
                event_sequence=_sequence_of(r.msg),
                reply=r.reply,
            )
            headers = {MSG_ID: result_dedup_id(r.source, r.event_id)}
            entries.append((result_subject(r.model, r.source), encode_result(record), headers))
        if tracing.wanted_here():
            outcomes = [
                await self._store_traced(entry, r)
                for entry, r in zip(entries, results, strict=True)
            ]
            await self._settle(results, outcomes)
            return
        # the next batch is taken while this one's acknowledgements come back (at most
        # ``STORING`` batches waiting on them); results are written in the order taken
        await self._storing.acquire()
        try:
            sent = await self._writer.send(entries, STORE_TIMEOUT_S)
        except BaseException:
            self._storing.release()
            raise
        self._spawn(self._settle_sent(results, sent))

    async def _settle_sent(self, results: list[_Result], sent: list[Sent]) -> None:
        try:
            await self._settle(results, await self._writer.collect(sent))
        finally:
            self._storing.release()

    async def _settle(self, results: list[_Result], outcomes: list[Stored | Exception]) -> None:
        publish = self._nc.publish
        for r, outcome in zip(results, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.warning("result of event %s not stored: %r", r.event_id, outcome)
                await self._retry_or_dead(r.msg, r.model, f"result not stored: {outcome!r}")
                continue
            # acknowledged as nats-py's Msg.ack does, the batch's acks in one write
            await publish(r.msg.reply, ACK)
            if self.actions is not None:
                self.actions.fire(r.view, r.event_id, r.source)

    async def _store_traced(self, entry: Entry, r: _Result) -> Stored | Exception:
        subject, payload, headers = entry
        with tracing.send_span(
            subject, kind=trace.SpanKind.PRODUCER, message_id=r.event_id, model=r.model
        ):
            (outcome,) = await self._writer.store_all(
                [(subject, payload, tracing.inject(headers))], STORE_TIMEOUT_S
            )
        return outcome

    async def _retry_or_dead(self, msg: Msg, model: str, reason: str) -> None:
        delivered = _delivered_of(msg)
        if delivered < self.settings.max_deliver:
            with contextlib.suppress(Exception):
                await msg.nak(delay=min(0.5 * delivered, 5.0))
            return
        source = subjects.source_of(msg.subject)
        headers = {DEAD_REASON: reason[:512], MSG_ID: _id_of(msg)}
        try:
            await self._js.publish(subjects.dead_letter(model, source), msg.data, headers=headers)
        except Exception as exc:
            log.error("event %s could not be dead-lettered: %r", _id_of(msg), exc)
            return
        self._metrics.events.add(1, self.tier, model, "dead_lettered")
        with contextlib.suppress(Exception):
            await msg.term()


@dataclass(slots=True)
class _Result:
    """A result to store for the event ``msg`` carried."""

    msg: Msg
    model: str
    source: str
    event_id: str
    published_at: float
    reply: bytes
    view: ResultView


def deferral(wait_s: float, shortest_budget_s: float | None) -> float:
    """Seconds a fetch waits under the power governor's ``events`` step (``wait_s``; 0 when it
    is not taken) so that events come in full batches: only for a model whose last events'
    shortest budget (their deadline) leaves room for twice the wait, and never before one
    batch has shown what its budgets are."""
    if not wait_s or shortest_budget_s is None or shortest_budget_s <= 2 * wait_s:
        return 0.0
    return wait_s


def _id_of(msg: Msg) -> str:
    """The event id from the message id header (``<source>:<id>:<tag>``), else the stream
    sequence (for a malformed event whose body cannot tell its id)."""
    header = (msg.headers or {}).get(MSG_ID, "")
    head, _, _ = header.rpartition(":")
    _, _, event_id = head.partition(":")
    if event_id:
        try:
            return check_event_id(event_id)
        except MeshError:
            pass
    return f"seq-{_sequence_of(msg)}"


def _sequence_of(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:
        return 0


def _delivered_of(msg: Msg) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1
