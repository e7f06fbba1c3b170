"""Store-and-forward of hard examples through JetStream.

A tier that answers a case meant for upstream (the link was down, slow or refused) records it in
a stream of its own JetStream domain, ``MESH_HARD_<TIER>`` on ``mesh.hard.<tier>.<model>``, which
keeps working while the WAN is gone. A forwarder drains that stream to the upstream tier's inbox,
``MESH_LEARN_<TIER>`` on ``mesh.learn.<tier>.<model>`` in the upstream's domain, once the link is
back. Each message carries the request id as ``Nats-Msg-Id``: the inbox's duplicate window drops a
second copy, so a crash between publishing upstream and acknowledging locally delivers once.
The local stream is a work queue: what is acknowledged is gone, what is left is the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    Header,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from opentelemetry import trace
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_exponential_jitter,
)

from mesh import wire
from mesh.lifecycle import Service, cancel_and_wait
from mesh.observability import tracing
from mesh.observability.metrics import MeshMetrics
from mesh.settings import HardExampleSettings
from mesh.topology import subjects

log = logging.getLogger("mesh.hardexamples")

MSG_ID = Header.MSG_ID.value
_TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,
)


async def ensure_stream(js: JetStreamContext, config: StreamConfig, timeout: float = 10.0) -> None:
    """Create the stream or bring its limits up to date; retried while JetStream starts up."""
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(_TRANSIENT),
        wait=wait_exponential_jitter(multiplier=0.05, max=1.0),
        stop=stop_after_delay(timeout),
        reraise=True,
    ):
        with attempt:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError:
                await js.update_stream(config)


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
        self.stream = subjects.hard_example_stream(tier)
        self._js = nc.jetstream(domain=settings.domain)
        self._metrics = metrics

    async def _start(self) -> None:
        s = self.settings
        await ensure_stream(
            self._js,
            StreamConfig(
                name=self.stream,
                subjects=[subjects.hard_examples_wildcard(self.tier)],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                max_bytes=s.max_bytes,
                max_age=s.max_age_s,
                discard=DiscardPolicy.OLD,
                duplicate_window=min(s.duplicate_window_s, s.max_age_s),
            ),
        )

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

    async def backlog(self) -> int:
        info = await self._js.stream_info(self.stream)
        return int(info.state.messages)


class HardExampleInbox(Service):
    """The stream where a tier receives hard examples from the tiers below it."""

    def __init__(self, nc: NATS, *, tier: str, settings: HardExampleSettings) -> None:
        self.tier = tier
        self.settings = settings
        self.stream = subjects.inbox_stream(tier)
        self._js = nc.jetstream(domain=settings.domain)

    async def _start(self) -> None:
        s = self.settings
        await ensure_stream(
            self._js,
            StreamConfig(
                name=self.stream,
                subjects=[subjects.inbox_wildcard(self.tier)],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_bytes=s.max_bytes,
                max_age=s.max_age_s,
                duplicate_window=min(s.duplicate_window_s, s.max_age_s),
            ),
        )

    async def count(self) -> int:
        info = await self._js.stream_info(self.stream)
        return int(info.state.messages)


class HardExampleForwarder(Service):
    """Drains the local stream to the upstream tier's inbox, retrying while the link is down."""

    def __init__(
        self,
        nc: NATS,
        *,
        tier: str,
        upstream_tier: str,
        settings: HardExampleSettings,
        metrics: MeshMetrics,
        batch: int = 64,
    ) -> None:
        self.tier = tier
        self.upstream_tier = upstream_tier
        self.settings = settings
        self.stream = subjects.hard_example_stream(tier)
        self.forwarded = 0
        self.duplicates = 0
        self.backlog = 0
        self._nc = nc
        self._js = nc.jetstream(domain=settings.domain)
        self._up = nc.jetstream(domain=settings.upstream_domain)
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False
        self._metrics = metrics

    async def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"forward-{self.tier}")
            self._watch = asyncio.create_task(self._watch_backlog(), name=f"backlog-{self.tier}")

    async def _stop(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._task, self._watch) if t is not None]
        self._task = self._watch = None
        await cancel_and_wait(tasks)
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                log.error("hard-example task %s failed", task.get_name(), exc_info=task.exception())

    async def _watch_backlog(self, every: float = 0.5) -> None:
        # Read apart from forwarding: while the link is down the forwarder sits retrying one
        # example, and the backlog is exactly what an operator wants to see grow then.
        while True:
            await self._refresh_backlog()
            await asyncio.sleep(every)

    async def _run(self) -> None:
        sub = await self._subscribe()
        try:
            while not self._stopping:
                try:
                    messages = await sub.fetch(self._batch, timeout=1.0)
                except TimeoutError:
                    await self._refresh_backlog()
                    continue
                except _TRANSIENT:
                    await asyncio.sleep(0.5)
                    continue
                except Exception:
                    # The forwarder must outlive any one failure: what is not acknowledged is
                    # fetched again, and the inbox drops what it already has.
                    log.exception("fetching hard examples from %s failed; retrying", self.stream)
                    await asyncio.sleep(1.0)
                    continue
                for msg in messages:
                    try:
                        await self._forward(msg)
                    except Exception:
                        log.exception("forwarding a hard example failed; it will be redelivered")
                await self._refresh_backlog()
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(_TRANSIENT),
            wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
            reraise=True,
        ):
            with attempt:
                return await self._js.pull_subscribe(
                    subjects.hard_examples_wildcard(self.tier),
                    durable=f"forward-{self.tier}",
                    stream=self.stream,
                    config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0),
                )
        raise AssertionError("unreachable: AsyncRetrying reraises")

    async def _forward(self, msg: Msg) -> None:
        model = msg.subject.rsplit(".", 1)[-1]
        msg_id = (msg.headers or {}).get(MSG_ID, "")
        links: list[trace.Link] = []
        with contextlib.suppress(Exception):
            example = wire.decode_hard_example(msg.data)
            if example.traceparent:
                span_ctx = trace.get_current_span(
                    tracing.extract({"traceparent": example.traceparent})
                ).get_span_context()
                links.append(trace.Link(span_ctx))
        subject = subjects.inbox(self.upstream_tier, model)
        with tracing.TRACER.start_as_current_span(
            f"send {subject}",
            kind=tracing.SpanKind.PRODUCER,
            links=links,
            attributes={
                tracing.MESSAGING_SYSTEM: "nats",
                tracing.DESTINATION: subject,
                tracing.OPERATION_TYPE: "send",
                tracing.MESSAGE_ID: msg_id,
                tracing.TIER: self.tier,
            },
        ):
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(_TRANSIENT),
                wait=wait_exponential_jitter(multiplier=0.1, max=5.0),
                reraise=True,
            ):
                with attempt:
                    ack = await self._up.publish(
                        subject, msg.data, timeout=2.0, headers={MSG_ID: msg_id}
                    )
        if ack.duplicate:
            self.duplicates += 1
        else:
            self.forwarded += 1
        self._metrics.hard_examples.add(1, self.tier, "duplicate" if ack.duplicate else "forwarded")
        await msg.ack()

    async def _refresh_backlog(self) -> None:
        with contextlib.suppress(Exception):
            info = await self._js.stream_info(self.stream)
            self.backlog = int(info.state.messages)
