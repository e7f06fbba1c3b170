"""The fleet controller: drives staged rollouts by writing desired state (``mesh controller``).

Any number may run, in the cloud tier, each with the controller's identity; one leads. The lease
is a key in ``MESH_FLEET_ROLLOUTS`` updated with compare-and-set on its revision every tick: the
leader renews it, the others take it over when it has not moved for ``lease_s`` of their own
clock.

Each tick the leader, for every rollout in KV:

1. makes the desired state say what the rollout implies now (``rollout.desired_for``: idempotent,
   so a new leader finishes the writes of an old one that died between two of them);
2. runs ``rollout.step`` on the fleet's latest heartbeats (watched, not polled);
3. stores a newly opened evidence window, then the rollout, with compare-and-set on its revision:
   a write that lost to a person's pause or abort (``mesh rollout``) is dropped and redone from
   the new state on the next tick. A stage is therefore never repeated or skipped, whichever
   controller runs it.

The lease is a ``mesh.fleet.lease.KvLease``; what ``mesh rollout start|status|pause|resume|abort``
do is ``mesh.fleet.admin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from mesh.errors import InvalidArgumentError
from mesh.fleet import registry
from mesh.fleet.desired import (
    DesiredState,
    Revisioned,
    Selector,
    decode_desired,
    desired_key,
    encode_desired,
)
from mesh.fleet.lease import KvLease
from mesh.fleet.rollout import (
    NodeView,
    Rollout,
    StagePhase,
    Window,
    decode_rollout,
    decode_window,
    desired_for,
    encode_rollout,
    encode_window,
    step,
    view_of,
)
from mesh.fleet.rollouts_kv import (
    LEASE_KEY,
    ROLLOUT_PREFIX,
    rollouts_bucket,
    window_key,
)
from mesh.lifecycle import Service, cancel_and_wait
from mesh.topology.streams import DESIRED_BUCKET, HUB_DOMAIN, NODES_BUCKET, ROLLOUTS_BUCKET
from mesh.wire import NodeStatus, decode_node_status

log = logging.getLogger("mesh.fleet.controller")

#: how long after a rollout ends a new leader still writes its last desired state, once (the
#: old one may have died between ending it and writing that).
FINISH_GRACE_S = 120.0
#: longest a watch waits past nats-py's initial-values marker for an entry saying it is caught up.
SYNC_WAIT_S = 10.0


class Controller(Service):
    def __init__(
        self,
        nc: NATS,
        *,
        name: str,
        domain: str = HUB_DOMAIN,
        tick_s: float = 1.0,
        lease_s: float = 5.0,
        offline_after_s: float = 10.0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.tick_s = tick_s
        self.lease_s = lease_s
        self.offline_after_s = offline_after_s
        self.on_event = on_event
        self._js = nc.jetstream(domain=domain)
        self._tasks: list[asyncio.Task[None]] = []
        self.heartbeats: dict[str, NodeStatus | str] = {}
        self.desired: dict[str, Revisioned] = {}
        self.rollouts: dict[str, tuple[Rollout, int]] = {}
        self._windows: dict[str, Window | None] = {}
        #: rollouts that ended and whose last desired state this controller has written.
        self._finished: set[str] = set()
        self._lease: KvLease | None = None
        self._kv: KeyValue | None = None
        self._desired_kv: KeyValue | None = None
        #: whether the first full read of each watched bucket is in.
        self._synced: dict[str, asyncio.Event] = {}

    @property
    def leader(self) -> bool:
        return self._lease is not None and self._lease.held

    async def _start(self) -> None:
        self._kv = await rollouts_bucket(self._js)
        self._lease = KvLease(self._kv, LEASE_KEY, self.name, self.lease_s)
        self._desired_kv = await registry.desired_bucket(self._js)
        self._synced = {b: asyncio.Event() for b in (NODES_BUCKET, DESIRED_BUCKET, ROLLOUTS_BUCKET)}
        self._tasks = [
            asyncio.create_task(self._watch(NODES_BUCKET, self._on_heartbeat)),
            asyncio.create_task(self._watch(DESIRED_BUCKET, self._on_desired)),
            asyncio.create_task(self._watch(ROLLOUTS_BUCKET, self._on_rollout)),
            asyncio.create_task(self._loop(), name=f"controller-{self.name}"),
        ]

    async def _stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._lease is not None:
            await self._lease.release()

    # --- watching the fleet -----------------------------------------------------------------

    async def _watch(self, bucket: str, on_entry: Callable[[str, bytes | None, int], None]) -> None:
        while True:
            try:
                kv = await self._js.key_value(bucket)
                # synced once an entry had nothing pending behind it: nats-py's marker can come
                # before the values (see registry.latest_entries)
                empty = await registry.stream_last_seq(self._js, bucket) == 0
                synced = self._synced[bucket]
                watcher = await kv.watchall()
                try:
                    async for entry in watcher:
                        if entry is None:
                            if empty:
                                synced.set()
                            elif not synced.is_set():  # never wait forever on a skipped one
                                asyncio.get_running_loop().call_later(SYNC_WAIT_S, synced.set)
                            continue
                        value = None if entry.operation is not None else entry.value
                        on_entry(entry.key, value, int(entry.revision or 0))
                        if entry.delta == 0:
                            synced.set()
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("controller %s: watch of %s stopped: %r", self.name, bucket, exc)
            await asyncio.sleep(1.0)

    def _on_heartbeat(self, key: str, value: bytes | None, revision: int) -> None:
        if value is None:
            self.heartbeats.pop(key, None)
            return
        try:
            self.heartbeats[key] = decode_node_status(value)
        except InvalidArgumentError as exc:
            self.heartbeats[key] = exc.message

    def _on_desired(self, key: str, value: bytes | None, revision: int) -> None:
        if value is None:
            self.desired.pop(key, None)
            return
        try:
            self.desired[key] = Revisioned(decode_desired(value), revision)
        except InvalidArgumentError:
            self.desired.pop(key, None)

    def _on_rollout(self, key: str, value: bytes | None, revision: int) -> None:
        if not key.startswith(ROLLOUT_PREFIX):
            return
        if value is None:
            self.rollouts.pop(key, None)
            return
        try:
            self.rollouts[key] = (decode_rollout(value), revision)
        except InvalidArgumentError as exc:
            log.warning("ignoring unreadable rollout %s: %s", key, exc.message)

    async def synced(self, timeout: float = 10.0) -> None:
        """Wait until the first read of every watched bucket is in."""
        async with asyncio.timeout(timeout):
            for event in self._synced.values():
                await event.wait()

    # --- leading ---------------------------------------------------------------------------

    async def _loop(self) -> None:
        assert self._lease is not None
        await self.synced(timeout=60.0)
        while True:
            try:
                led = self._lease.held
                if await self._lease.hold():
                    if not led:
                        self._event(f"controller {self.name} leads")
                    await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller %s: tick failed", self.name)
            await asyncio.sleep(self.tick_s)

    # --- one tick ---------------------------------------------------------------------------

    async def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for key, (rollout, revision) in list(self.rollouts.items()):
            if not rollout.active:
                # once, lest it fight a later assignment made by hand
                if rollout.id not in self._finished and now - rollout.updated_at < FINISH_GRACE_S:
                    await self._reconcile(rollout)
                self._finished.add(rollout.id)
                continue
            await self._reconcile(rollout)
            views = self.views(rollout, now)
            window = await self._window(rollout)
            result = step(rollout, views, window, now)
            if result.window is not None:
                await self._put_window(rollout.model, result.window)
            if result.rollout == rollout:
                continue
            assert self._kv is not None
            try:
                new_revision = await self._kv.update(
                    key, encode_rollout(result.rollout), last=revision
                )
            except KeyWrongLastSequenceError:
                continue  # someone paused or aborted it meanwhile: next tick sees that
            self.rollouts[key] = (result.rollout, new_revision)
            for event in result.events:
                self._event(event)
            await self._reconcile(result.rollout)
            if not result.rollout.active:
                self._finished.add(result.rollout.id)

    def views(self, rollout: Rollout, now: float) -> dict[str, NodeView]:
        return {
            name: view_of(
                rollout.model,
                rollout.version,
                name,
                status,
                now=now,
                offline_after_s=self.offline_after_s,
            )
            for name, status in list(self.heartbeats.items())
        }

    async def _window(self, rollout: Rollout) -> Window | None:
        if rollout.phase != StagePhase.SOAKING:
            return None
        held = self._windows.get(rollout.model)
        if held is not None and held.rollout == rollout.id and held.stage == rollout.current_stage:
            return held
        assert self._kv is not None
        try:
            entry = await self._kv.get(window_key(rollout.model))
        except KeyNotFoundError:
            return None
        window = decode_window(entry.value or b"")
        self._windows[rollout.model] = window
        return window

    async def _put_window(self, model: str, window: Window) -> None:
        assert self._kv is not None
        await self._kv.put(window_key(model), encode_window(window))
        self._windows[model] = window

    async def _reconcile(self, rollout: Rollout) -> None:
        """Write the desired state the rollout implies where it differs from what KV holds."""
        assert self._desired_kv is not None
        kv = self._desired_kv
        wanted = desired_for(rollout)
        writes: list[tuple[str, DesiredState | None]] = []
        if wanted.base is not None:
            writes.append((rollout.model, _state(rollout, wanted.base, rollout.selector)))
        for node in rollout.targets:
            version = wanted.nodes.get(node)
            if version is None:
                writes.append((desired_key(rollout.model, Selector(node=node)), None))
            else:
                writes.append((node, _state(rollout, version, Selector(node=node))))
        for key_or_node, state in writes:
            if state is None:
                if key_or_node in self.desired:
                    with contextlib.suppress(KeyNotFoundError):
                        await kv.delete(key_or_node)
                    self.desired.pop(key_or_node, None)
                continue
            held = self.desired.get(state.key)
            if held is not None and held.state.version == state.version:
                continue
            revision = await kv.put(state.key, encode_desired(state))
            self.desired[state.key] = Revisioned(state, int(revision))

    def _event(self, text: str) -> None:
        log.info("%s", text)
        if self.on_event is not None:
            self.on_event(text)


def _state(rollout: Rollout, version: str, selector: Selector) -> DesiredState:
    return DesiredState(
        model=rollout.model,
        version=version,
        selector=selector,
        time=time.time(),
        by=f"rollout {rollout.id}",
    )
