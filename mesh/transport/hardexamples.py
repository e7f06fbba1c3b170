"""Store-and-forward of hard examples through JetStream.

A tier that answers a case meant for upstream (the link was down, slow or refused) records it in
a stream of its own JetStream domain, ``MESH_HARD_<TIER>`` on ``mesh.hard.<tier>.<model>``, which
keeps working while the WAN is gone. The tier above takes them up: its ``HardExampleCollector``
pulls that stream (in the lower tier's domain: a site's, for the cloud) through one durable
consumer its replicas share, stores each case in its own ``MESH_LEARN_<TIER>`` on
``mesh.learn.<tier>.<model>``, and only then acknowledges it (the consumer in another domain
carries that domain's name, ``collector_consumer``: acknowledgements do not name theirs). Each
message carries the request id as ``Nats-Msg-Id``: the learn stream's duplicate window drops a
second copy, so a crash between storing above and acknowledging below delivers once. The lower
stream is a work queue: what is acknowledged is gone, what is left is the backlog, which the
lower tier reports.

The tier above pulls, rather than the tier below pushing, because no identity may consume a
stream whose content only it writes: NATS delivers a consumer's messages wherever its caller
asks without checking the caller's rights (see ``mesh.security.permissions``). No node creates
a stream either: the provisioning step does (``mesh.transport.jetstream``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig
from opentelemetry import trace
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from mesh import wire
from mesh.lifecycle import Service, cancel_and_wait
from mesh.observability import tracing
from mesh.observability.metrics import MeshMetrics
from mesh.settings import HardExampleSettings
from mesh.topology import subjects
from mesh.topology.headers import MSG_ID
from mesh.topology.streams import collector_consumer, hard_example_stream, inbox_stream
from mesh.transport.jetstream import TRANSIENT, consume, require_stream

log = logging.getLogger("mesh.hardexamples")


class HardExampleStore(Service):
    """Records hard examples in the local stream; the ``HardExampleSink`` of the data plane."""

    def __init__(
        self,
        nc: NATS,
        *,
        tier: str,
        node: str,
        settings: HardExampleSettings,
        metrics: MeshMetrics,
    ) -> None:
        self.tier = tier
        self.node = node
        self.settings = settings
        self.stream = hard_example_stream(tier)
        #: cases recorded here the tier above has not taken up yet.
        self.backlog = 0
        self._js = nc.jetstream(domain=settings.domain)
        self._metrics = metrics
        self._watch: asyncio.Task[None] | None = None

    async def _start(self) -> None:
        info = await require_stream(self._js, self.stream, domain=self.settings.domain)
        self.backlog = int(info.state.messages)
        self._watch = asyncio.create_task(self._watch_backlog(), name=f"backlog-{self.tier}")

    async def _stop(self) -> None:
        await cancel_and_wait([t for t in (self._watch,) if t is not None])
        self._watch = None

    async def _watch_backlog(self, every: float = 0.5) -> None:
        # What the tier above has not taken up yet: it grows while the link is down, which is
        # exactly when an operator wants to see it.
        while True:
            with contextlib.suppress(Exception):
                info = await self._js.stream_info(self.stream)
                self.backlog = int(info.state.messages)
            await asyncio.sleep(every)

    async def record(
        self, request: wire.InferRequest, answer: wire.InferResponse, reason: str
    ) -> None:
        example = wire.HardExample(
            id=request.id,
            model=request.model,
            tier=self.tier,
            node=self.node,
            reason=reason,
            created_at=time.time(),
            request=request,
            answer=wire.RecordedAnswer(
                labels=answer.labels,
                confidence=answer.confidence,
                model_version=answer.model_version,
            ),
            traceparent=tracing.inject().get("traceparent"),
        )
        await self._js.publish(
            subjects.hard_examples(self.tier, request.model),
            wire.encode_hard_example(example),
            timeout=1.0,
            headers={MSG_ID: request.id},
        )
        self._metrics.hard_examples.add(1, self.tier, "recorded")


class HardExampleInbox(Service):
    """The stream where a tier keeps what it took up from the tier below it."""

    def __init__(self, nc: NATS, *, tier: str, settings: HardExampleSettings) -> None:
        self.tier = tier
        self.settings = settings
        self.stream = inbox_stream(tier)
        self._js = nc.jetstream(domain=settings.domain)

    async def _start(self) -> None:
        await require_stream(self._js, self.stream, domain=self.settings.domain)

    async def count(self) -> int:
        info = await self._js.stream_info(self.stream)
        return int(info.state.messages)


class HardExampleCollector(Service):
    """Takes up the hard examples of the tier below, from each domain it runs in, into this
    tier's learn stream; retries while a link is down."""

    def __init__(
        self,
        nc: NATS,
        *,
        tier: str,
        below: str,
        settings: HardExampleSettings,
        metrics: MeshMetrics,
        batch: int = 64,
        on_taken: Callable[[wire.HardExample], None] | None = None,
    ) -> None:
        self.tier = tier
        self.below = below
        #: told of each case stored here for the first time (the review queue's feed).
        self.on_taken = on_taken
        self.settings = settings
        self.source = hard_example_stream(below)
        #: the consumer in the collector's own domain; another domain's carries its name.
        self.consumer = collector_consumer(tier)
        #: cases stored here, and second copies the learn stream dropped.
        self.forwarded = 0
        self.duplicates = 0
        self._nc = nc
        self._js = nc.jetstream(domain=settings.domain)
        self._batch = batch
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics = metrics

    async def _start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(domain), name=f"collect-{self.below}-{domain}")
            for domain in self.settings.collect_domains
        ]

    async def _stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("hard-example task %s failed", task.get_name(), exc_info=task.exception())

    async def _run(self, domain: str | None) -> None:
        below = self._nc.jetstream(domain=domain)
        sub = await self._subscribe(below, collector_consumer(self.tier, domain))
        # What is not acknowledged is fetched again, and the learn stream drops what it already
        # has (its dedup window), so a failure costs a redelivery, never a duplicate.
        await consume(sub, self._batch, self._take, f"hard examples from {self.source}")

    async def _subscribe(
        self, below: JetStreamContext, consumer: str
    ) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            name=consumer,
            durable_name=consumer,
            filter_subject=subjects.hard_examples_wildcard(self.below),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=30.0,
        )
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TRANSIENT),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
            reraise=True,
        ):
            with attempt:
                await below.add_consumer(self.source, config)
                return await below.pull_subscribe_bind(durable=consumer, stream=self.source)
        raise AssertionError("unreachable: AsyncRetrying reraises")

    async def _take(self, msg: Msg) -> None:
        model = subjects.model_of(msg.subject)
        msg_id = (msg.headers or {}).get(MSG_ID, "")
        links: list[trace.Link] = []
        example: wire.HardExample | None = None
        with contextlib.suppress(Exception):
            example = wire.decode_hard_example(msg.data)
            if example.traceparent:
                span_ctx = trace.get_current_span(
                    tracing.extract({"traceparent": example.traceparent})
                ).get_span_context()
                links.append(trace.Link(span_ctx))
        subject = subjects.inbox(self.tier, model)
        with tracing.TRACER.start_as_current_span(
            f"send {subject}",
            kind=tracing.SpanKind.PRODUCER,
            links=links,
            attributes={
                tracing.MESSAGING_SYSTEM: "nats",
                tracing.DESTINATION: subject,
                tracing.OPERATION_TYPE: "send",
                tracing.MESSAGE_ID: msg_id,
                tracing.TIER: self.below,
            },
        ):
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(TRANSIENT),
                wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
                reraise=True,
            ):
                with attempt:
                    ack = await self._js.publish(
                        subject, msg.data, timeout=2.0, headers={MSG_ID: msg_id}
                    )
        if ack.duplicate:
            self.duplicates += 1
        else:
            self.forwarded += 1
        label = "duplicate" if ack.duplicate else "forwarded"
        self._metrics.hard_examples.add(1, self.below, label)
        await msg.ack()
        if self.on_taken is not None and example is not None and not ack.duplicate:
            self.on_taken(example)
