"""What the console reads from NATS, as the ``console`` identity: every node's heartbeats and
each model's rollout and evidence window (ordered consumers on the hub's buckets: the latest of
each key, then every change), the nodes' telemetry, and the review queue and its ground truth
(the review API, asked every few seconds). Each message's key is checked against what it says
(NATS may re-deliver what another identity wrote); what cannot be read is shown as such."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NoKeysError

from mesh.console.state import ConsoleState
from mesh.errors import InvalidArgumentError, MeshError
from mesh.fleet.rollout import decode_rollout
from mesh.fleet.rollout.evidence import decode_window
from mesh.fleet.rollouts_kv import window_key
from mesh.lifecycle import Service, cancel_and_wait
from mesh.review.api import ReviewApi
from mesh.topology import streams, subjects
from mesh.transport.jetstream import require_stream
from mesh.wire import decode_drift_event, decode_node_event, decode_node_status

log = logging.getLogger("mesh.console")

KV_OPERATION = "KV-Operation"
#: seconds between looks at who went offline (the pages' "last seen" moves with it).
TICK_S = 1.0


class ConsoleFeeds(Service):
    def __init__(
        self,
        nc: NATS,
        state: ConsoleState,
        *,
        domain: str,
        desk: ReviewApi | None,
        review_poll_s: float = 2.0,
        quality_poll_s: float = 10.0,
        report_days: int = 14,
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(domain=domain)
        self.domain = domain
        self.state = state
        self.desk = desk
        self.review_poll_s = review_poll_s
        self.quality_poll_s = quality_poll_s
        self.report_days = report_days
        self._subs: list[Any] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._backfilled: set[str] = set()

    async def _start(self) -> None:
        for stream in (streams.NODES_STREAM, streams.ROLLOUTS_STREAM):
            await require_stream(self._js, stream, domain=self.domain)
        self._subs.append(await self._follow(streams.NODES_BUCKET, ">", self._on_beat))
        # the rollout records and the stages' evidence windows, not the controllers' lease
        for keys in (streams.rollout_key(">"), window_key(">")):
            self._subs.append(await self._follow(streams.ROLLOUTS_BUCKET, keys, self._on_rollout))
        self._subs.append(
            await self._nc.subscribe(subjects.TELEMETRY_WILDCARD, cb=self._on_telemetry)
        )
        self._tasks.append(asyncio.create_task(self._tick()))
        if self.desk is not None:
            self._tasks.append(asyncio.create_task(self._poll_queue(self.desk)))
            self._tasks.append(asyncio.create_task(self._poll_quality(self.desk)))
        else:
            self.state.queue.problem = "this console was started without the review API"
            self.state.quality_problem = self.state.queue.problem

    async def _stop(self) -> None:
        await cancel_and_wait(self._tasks)
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _follow(self, bucket: str, keys: str, handle: Any) -> Any:
        return await self._js.subscribe(
            subjects.kv(bucket, keys),
            stream=subjects.kv_stream(bucket),
            ordered_consumer=True,
            deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
            cb=handle,
        )

    # --- heartbeats, rollouts, telemetry ----------------------------------------------------

    async def _on_beat(self, msg: Msg) -> None:
        if _deleted(msg):
            return
        key = msg.subject.removeprefix(subjects.kv(streams.NODES_BUCKET, ""))
        try:
            beat = decode_node_status(msg.data)
        except InvalidArgumentError as exc:
            self.state.fleet.unreadable(key, exc.message)
            self.state.changed()
            return
        if beat.node != key:
            self.state.fleet.unreadable(key, f"a heartbeat of {beat.node[:40]!r} under its key")
            return
        if self.state.fleet.beat(beat):
            self.state.changed()

    async def _on_rollout(self, msg: Msg) -> None:
        if _deleted(msg):
            return
        key = msg.subject.removeprefix(subjects.kv(streams.ROLLOUTS_BUCKET, ""))
        try:
            if key.startswith(streams.ROLLOUT_KEY_PREFIX):
                rollout = decode_rollout(msg.data)
                if streams.rollout_key(rollout.model) != key:
                    raise InvalidArgumentError(f"a rollout of {rollout.model} under {key}")
                held = self.state.rollouts.get(rollout.model)
                if held is None or held.id != rollout.id or rollout.updated_at >= held.updated_at:
                    self.state.rollouts[rollout.model] = rollout
            else:
                model = key.partition(".")[2]
                window = decode_window(msg.data) if key == window_key(model) else None
                if window is None:
                    return
                self.state.windows[model] = window
        except InvalidArgumentError as exc:
            log.warning("unreadable rollout entry %s: %s", key, exc.message)
            return
        self.state.changed()

    async def _on_telemetry(self, msg: Msg) -> None:
        node = msg.subject.removeprefix(subjects.telemetry(""))
        event: Any
        try:
            event = decode_drift_event(msg.data)
        except MeshError:
            try:
                event = decode_node_event(msg.data)
            except MeshError:
                return
        if event.node != node:
            return
        self.state.fleet.event(event)
        self.state.changed()

    async def backfill(self, name: str) -> None:
        """A node's stored heartbeats into its journal, once (its page asks)."""
        if name in self._backfilled or not self.state.fleet.has(name):
            return
        self._backfilled.add(name)
        try:
            kv = await self._js.key_value(streams.NODES_BUCKET)
            entries = await kv.history(name)
        except (NoKeysError, Exception) as exc:
            log.info("no history of node %s: %r", name, exc)
            return
        beats = []
        for entry in entries:
            with contextlib.suppress(MeshError):
                beats.append(decode_node_status(entry.value or b""))
        self.state.fleet.backfill(name, beats)
        self.state.changed()

    async def _tick(self) -> None:
        while True:
            self.state.fleet.tick(self.state.clock())
            self.state.changed()
            await asyncio.sleep(TICK_S)

    # --- the review queue and ground truth --------------------------------------------------

    async def _poll_queue(self, desk: ReviewApi) -> None:
        view = self.state.queue
        while True:
            try:
                answer = await desk.list(status="pending", limit=100)
                items = [i for i in answer.get("items") or [] if isinstance(i, dict)]
                total = answer.get("total")
                if items != view.items or view.problem is not None or total != view.total:
                    view.items = items
                    view.total = int(total) if isinstance(total, int) else len(items)
                    view.problem = None
                    self.state.changed()
            except MeshError as exc:
                if view.problem != exc.message:
                    view.problem = exc.message
                    self.state.changed()
            await asyncio.sleep(self.review_poll_s)

    async def _poll_quality(self, desk: ReviewApi) -> None:
        board = self.state.quality
        while True:
            try:
                if not board.backfilled:
                    labelled = await desk.list(status="labelled", limit=1000)
                    total = labelled.get("total")
                    if isinstance(total, int) and total <= len(labelled.get("items") or []):
                        board.backfill(labelled.get("items") or [])
                board.stats(self.state.clock(), await desk.stats())
                board.report(await desk.report(days=self.report_days))
                self.state.quality_problem = None
                self.state.changed()
            except MeshError as exc:
                self.state.quality_problem = exc.message
                self.state.changed()
            await asyncio.sleep(self.quality_poll_s)


def _deleted(msg: Msg) -> bool:
    headers = msg.headers or {}
    return headers.get(KV_OPERATION) in ("DEL", "PURGE")


__all__ = ["ConsoleFeeds"]
