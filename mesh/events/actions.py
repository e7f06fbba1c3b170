"""Actions: rules that turn result events into action events, published on a subject or posted
to a webhook (``schemas/action-event.schema.json``).

``matching`` is pure: which rules a result meets. ``ActionRunner`` carries them out off the
consumer's path: a webhook is retried with backoff (tenacity) and, when it keeps failing, the
action event goes to the ``MESH_ACTIONS_DEAD`` stream with the reason; more than
``max_pending_actions`` under way go there at once, so a slow webhook never slows inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import aiohttp
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from opentelemetry import trace
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from mesh.lifecycle import Service, cancel_and_wait
from mesh.observability import tracing
from mesh.observability.metrics import MeshMetrics
from mesh.settings import ActionRule, EventSettings
from mesh.topology import subjects
from mesh.topology.headers import DEAD_REASON
from mesh.wire.codec import VERSION, packb

log = logging.getLogger("mesh.events.actions")


@dataclass(frozen=True, slots=True)
class ActionEvent:
    rule: str
    event_id: str
    model: str
    source: str
    labels: list[int]
    confidence: float | None
    tier: str
    degraded: bool
    reason: str | None
    error: str | None
    time: float

    def to_msgpack(self) -> bytes:
        return packb({"v": VERSION, "kind": "action_event", **asdict(self)})

    def to_json(self) -> bytes:
        return json.dumps({"v": VERSION, "kind": "action_event", **asdict(self)}).encode()


@dataclass(frozen=True, slots=True)
class ResultView:
    """What rules look at in a result."""

    model: str
    labels: Sequence[int]
    confidence: float | None
    tier: str
    degraded: bool
    error: str | None = None


def matches(rule: ActionRule, result: ResultView) -> bool:
    if rule.model is not None and rule.model != result.model:
        return False
    if rule.errors != (result.error is not None):
        return False
    if rule.errors:
        return True
    if rule.labels is not None and not set(rule.labels) & set(result.labels):
        return False
    conf = result.confidence
    if rule.min_confidence is not None and (conf is None or conf < rule.min_confidence):
        return False
    if rule.max_confidence is not None and (conf is None or conf > rule.max_confidence):
        return False
    if rule.degraded is not None and rule.degraded != result.degraded:
        return False
    return rule.tiers is None or result.tier in rule.tiers


def matching(rules: Sequence[ActionRule], result: ResultView) -> list[ActionRule]:
    return [rule for rule in rules if matches(rule, result)]


class ActionRunner(Service):
    def __init__(
        self,
        nc: NATS,
        js: JetStreamContext,
        settings: EventSettings,
        tier: str,
        metrics: MeshMetrics,
    ) -> None:
        self._nc = nc
        self._js = js
        self.settings = settings
        self.tier = tier
        self._metrics = metrics
        self._pending: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    async def _start(self) -> None:
        if any(rule.webhook is not None for rule in self.settings.actions):
            self._http = aiohttp.ClientSession()

    async def _stop(self) -> None:
        if self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*self._pending, return_exceptions=True)
            await cancel_and_wait(list(self._pending))
        if self._http is not None:
            await self._http.close()

    def fire(self, result: ResultView, event_id: str, source: str) -> None:
        """Start every action the result's rules call for; never waits."""
        for rule in matching(self.settings.actions, result):
            action = ActionEvent(
                rule=rule.name,
                event_id=event_id,
                model=result.model,
                source=source,
                labels=list(result.labels),
                confidence=result.confidence,
                tier=result.tier,
                degraded=result.degraded,
                reason=None,
                error=result.error,
                time=time.time(),
            )
            if len(self._pending) >= self.settings.max_pending_actions:
                coro = self._dead(rule, action, "too many actions under way")
            else:
                coro = self._run(rule, action)
            task = asyncio.create_task(coro)
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    async def _run(self, rule: ActionRule, action: ActionEvent) -> None:
        target = rule.publish or (rule.webhook.url if rule.webhook else "")
        try:
            if tracing.wanted_here():  # the event's trace: the action is part of it
                with tracing.send_span(
                    target,
                    kind=trace.SpanKind.PRODUCER,
                    message_id=action.event_id,
                    model=action.model,
                    attributes={"mesh.action.rule": rule.name},
                ):
                    await self._act(rule, action)
            else:
                await self._act(rule, action)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._dead(rule, action, f"{type(exc).__name__}: {exc}")
            return
        self._metrics.events.add(1, self.tier, action.model, f"action_{rule.name}")

    async def _act(self, rule: ActionRule, action: ActionEvent) -> None:
        if rule.publish is not None:
            headers = tracing.inject() if tracing.wanted_here() else None
            await self._nc.publish(rule.publish, action.to_msgpack(), headers=headers)
        elif rule.webhook is not None:
            await self._post(rule, action)

    async def _post(self, rule: ActionRule, action: ActionEvent) -> None:
        hook = rule.webhook
        assert hook is not None and self._http is not None
        timeout = aiohttp.ClientTimeout(total=hook.timeout_s)
        headers = {"Content-Type": "application/json", **hook.headers}
        if tracing.wanted_here():
            headers = tracing.inject(headers)
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(hook.attempts),
            wait=wait_exponential(multiplier=0.2, max=5.0),
            reraise=True,
        ):
            with attempt:
                async with self._http.post(
                    hook.url, data=action.to_json(), headers=headers, timeout=timeout
                ) as resp:
                    if resp.status >= 300:
                        raise RuntimeError(f"webhook answered {resp.status}")

    async def _dead(self, rule: ActionRule, action: ActionEvent, reason: str) -> None:
        log.warning("action %s for event %s failed: %s", rule.name, action.event_id, reason)
        self._metrics.events.add(1, self.tier, action.model, "action_dead_lettered")
        try:
            await self._js.publish(
                subjects.action_dead(rule.name),
                action.to_msgpack(),
                headers={DEAD_REASON: reason[:512]},
            )
        except Exception as exc:
            log.error("action %s could not be dead-lettered either: %r", rule.name, exc)
