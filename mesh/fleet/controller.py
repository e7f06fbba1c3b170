"""The fleet controller: drives staged rollouts by writing desired state (``mesh controller``).

Any number may run, in the cloud tier, each with the controller's identity; one leads. The lease
is a key in ``MESH_FLEET_ROLLOUTS`` updated with compare-and-set on its revision every tick: the
leader renews it, the others take it over when it has not moved for ``lease_s`` of their own
clock.

Each tick the leader, for every rollout in KV:

1. makes the desired state say what the rollout implies now (``rollout.desired_for``: idempotent,
   so a new leader finishes the writes of an old one that died between two of them), each write
   stamped after the newest entry under its key and each removal a withdrawal record;
2. runs ``rollout.step`` on the fleet's latest heartbeats (watched, not polled; taken in at most
   once every half ``heartbeat_s`` per node: ``rollout.BeatFilter``), or rolls the rollout back
   when its version was revoked;
3. stores a newly opened evidence window, then the rollout, with compare-and-set on its revision:
   a write that lost to a person's pause or abort (``mesh rollout``) is dropped and redone from
   the new state on the next tick. A stage is therefore never repeated or skipped, whichever
   controller runs it.

Every bucket it reads is checked entry by entry (``mesh.fleet.replay``): a heartbeat must name
its key's node, a desired state its key's model and selector, a rollout its key's model, none
older than the newest seen under its key; what fails is logged and ignored.

The lease is a ``mesh.fleet.lease.KvLease``; what ``mesh rollout start|status|pause|resume|abort``
do is ``mesh.fleet.admin``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from mesh.errors import InvalidArgumentError, MeshError
from mesh.fleet import registry
from mesh.fleet.desired import (
    DesiredReader,
    DesiredState,
    Selector,
    desired_key,
    encode_desired,
)
from mesh.fleet.lease import KvLease
from mesh.fleet.refusals import is_retry_key
from mesh.fleet.replay import ReplayGuard, next_stamp
from mesh.fleet.revocation import Revocation, decode_revocation, verify_revocation
from mesh.fleet.rollout import (
    BeatFilter,
    LabelFigures,
    NodeView,
    Rollout,
    RolloutPhase,
    StagePhase,
    Window,
    decode_rollout,
    decode_window,
    desired_for,
    encode_rollout,
    encode_window,
    label_figures,
    revoke,
    step,
    view_of,
)
from mesh.fleet.rollouts_kv import (
    LEASE_KEY,
    ROLLOUT_PREFIX,
    rollout_key,
    rollouts_bucket,
    window_key,
)
from mesh.lifecycle import Service, cancel_and_wait
from mesh.topology.streams import (
    DESIRED_BUCKET,
    HUB_DOMAIN,
    NODES_BUCKET,
    REVOKED_BUCKET,
    ROLLOUTS_BUCKET,
)
from mesh.transport.jetstream import BucketEntry, watch_bucket
from mesh.wire import NodeStatus

log = logging.getLogger("mesh.fleet.controller")

#: how long after a rollout ends a new leader still writes its last desired state, once (the
#: old one may have died between ending it and writing that).
FINISH_GRACE_S = 120.0
#: how often a rollout's labels are asked of the review desk, and how long it may take.
LABELS_EVERY_S = 2.0
LABELS_TIMEOUT_S = 2.0


class LabelSource(Protocol):
    """The review desk's ground truth (``mesh.review.client.ReviewClient``): per model, version
    and tier, labelled items and those answered as the person did (``versions`` of ``stats``)."""

    async def stats(self, *, model: str | None = None) -> dict[str, Any]: ...


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
        heartbeat_s: float = 1.0,
        on_event: Callable[[str], None] | None = None,
        labels: LabelSource | None = None,
    ) -> None:
        self.name = name
        #: where the labels a rollout's gates may judge come from (None: no labels).
        self.labels = labels
        #: per model, when its labels were last asked for and what they were.
        self._labels: dict[str, tuple[float, list[tuple[str, str, int, int]] | None]] = {}
        self.tick_s = tick_s
        self.lease_s = lease_s
        self.offline_after_s = offline_after_s
        self.on_event = on_event
        self._js = nc.jetstream(domain=domain)
        self._tasks: list[asyncio.Task[None]] = []
        #: a node's heartbeats count at most once every half interval (jitter allowed for).
        self.beats = BeatFilter(min_interval_s=heartbeat_s / 2)
        self.desired = DesiredReader()
        self.rollouts: dict[str, tuple[Rollout, int]] = {}
        self._rollout_order = ReplayGuard()
        #: ``model@version`` to its revocation.
        self.revoked: dict[str, Revocation] = {}
        self._windows: dict[str, Window | None] = {}
        #: rollouts that ended and whose last desired state this controller has written.
        self._finished: set[str] = set()
        self._lease: KvLease | None = None
        self._kv: KeyValue | None = None
        self._desired_kv: KeyValue | None = None
        #: whether the first full read of each watched bucket is in.
        self._synced: dict[str, asyncio.Event] = {}
        #: entries ignored, per bucket (logged at 1, 2, 4, 8...).
        self.ignored: dict[str, int] = {}

    @property
    def leader(self) -> bool:
        return self._lease is not None and self._lease.held

    @property
    def heartbeats(self) -> dict[str, NodeStatus | str]:
        return self.beats.taken

    async def _start(self) -> None:
        self._kv = await rollouts_bucket(self._js)
        self._lease = KvLease(self._kv, LEASE_KEY, self.name, self.lease_s)
        self._desired_kv = await registry.desired_bucket(self._js)
        watched: list[tuple[str, Callable[[BucketEntry], None], bool]] = [
            (NODES_BUCKET, self._on_heartbeat, False),
            (DESIRED_BUCKET, self._on_desired, True),
            (ROLLOUTS_BUCKET, self._on_rollout, True),
            (REVOKED_BUCKET, self._on_revocation, False),
        ]
        # Leading waits for the first full read of every bucket but the revocations: a fleet
        # provisioned before they existed still runs its rollouts (its nodes refuse a revoked
        # version on their own).
        self._synced = {bucket: asyncio.Event() for bucket, _, _ in watched[:-1]}
        who = f"controller {self.name}"
        self._tasks = []
        for bucket, handler, history in watched:
            synced = self._synced.get(bucket)
            watch = watch_bucket(self._js, bucket, handler, history=history, synced=synced, who=who)
            self._tasks.append(asyncio.create_task(watch))
        self._tasks.append(asyncio.create_task(self._loop(), name=f"controller-{self.name}"))

    async def _stop(self) -> None:
        await cancel_and_wait(self._tasks)
        if self._lease is not None:
            await self._lease.release()

    # --- watching the fleet -----------------------------------------------------------------

    def _ignore(self, bucket: str, key: str, reason: str) -> None:
        count = self.ignored.get(bucket, 0) + 1
        self.ignored[bucket] = count
        if count & (count - 1) == 0:  # a flood of replays does not flood the log
            log.warning(
                "controller %s ignored an entry of %s under %s (%d so far): %s",
                self.name, bucket, key[:120], count, reason,
            )  # fmt: skip

    def _on_heartbeat(self, entry: BucketEntry) -> None:
        self.beats.offer(entry.key, None if entry.deleted else entry.value, time.time())

    def _on_desired(self, entry: BucketEntry) -> None:
        if is_retry_key(entry.key):
            return  # an operator's retry request (``mesh fleet retry``), for the nodes
        try:
            self.desired.apply(entry.key, entry.value, entry.revision, entry.deleted)
        except InvalidArgumentError as exc:
            self._ignore(DESIRED_BUCKET, entry.key, exc.message)

    def _on_rollout(self, entry: BucketEntry) -> None:
        if not entry.key.startswith(ROLLOUT_PREFIX):
            return
        if entry.deleted:
            self.rollouts.pop(entry.key, None)
            return
        try:
            rollout = decode_rollout(entry.value)
        except InvalidArgumentError as exc:
            self._ignore(ROLLOUTS_BUCKET, entry.key, exc.message)
            return
        problem = self._rollout_order.check(
            entry.key, rollout_key(rollout.model), rollout.generation
        )
        if problem is not None:
            self._ignore(ROLLOUTS_BUCKET, entry.key, problem)
            return
        self.rollouts[entry.key] = (rollout, entry.revision)

    def _on_revocation(self, entry: BucketEntry) -> None:
        if entry.deleted:
            return  # a revocation is for good
        try:
            revocation = decode_revocation(entry.value)
            verify_revocation(revocation, None)
        except InvalidArgumentError as exc:
            self._ignore(REVOKED_BUCKET, entry.key, exc.message)
            return
        self.revoked[revocation.target] = revocation

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
            revocation = self.revoked.get(f"{rollout.model}@{rollout.version}")
            if revocation is not None and rollout.state != RolloutPhase.ROLLING_BACK:
                changed = revoke(rollout, revocation.reason, now)
                await self._store(key, revision, changed, (changed.reason,))
                continue
            await self._reconcile(rollout)
            views = self.views(rollout, now)
            window = await self._window(rollout)
            result = step(rollout, views, window, now, await self._labels_of(rollout, now))
            if result.window is not None:
                await self._put_window(rollout.model, result.window)
            if result.rollout != rollout:
                await self._store(key, revision, result.rollout, result.events)

    async def _store(
        self, key: str, revision: int, rollout: Rollout, events: tuple[str, ...]
    ) -> None:
        """Store ``rollout`` with compare-and-set on ``revision``; a write that lost to a
        person's pause or abort is dropped (the next tick starts from the new state)."""
        assert self._kv is not None
        try:
            new_revision = await self._kv.update(key, encode_rollout(rollout), last=revision)
        except KeyWrongLastSequenceError:
            return
        self._rollout_order.check(key, rollout_key(rollout.model), rollout.generation)
        self.rollouts[key] = (rollout, new_revision)
        for event in events:
            self._event(event)
        await self._reconcile(rollout)
        if not rollout.active:
            self._finished.add(rollout.id)

    async def _labels_of(self, rollout: Rollout, now: float) -> LabelFigures | None:
        """What labels say of the rollout's version and the one it replaces, asked of the
        review desk at most every ``LABELS_EVERY_S``; None without a desk or labels."""
        if self.labels is None:
            return None
        asked, versions = self._labels.get(rollout.model, (float("-inf"), None))
        if now - asked >= LABELS_EVERY_S:
            try:
                async with asyncio.timeout(LABELS_TIMEOUT_S):
                    stats = await self.labels.stats(model=rollout.model)
                versions = [
                    (str(v["version"]), str(v["tier"]), int(v["labelled"]), int(v["correct"]))
                    for v in stats.get("versions", [])
                ]
            except (MeshError, TimeoutError, KeyError, TypeError, ValueError) as exc:
                if versions is None or now - asked > 60:
                    log.info("controller %s has no labels of %s: %r", self.name,
                             rollout.model, exc)  # fmt: skip
            self._labels[rollout.model] = (now, versions)
        if versions is None:
            return None
        tier = rollout.selector.tier or ""
        return label_figures(versions, rollout.version, rollout.previous_version, tier)

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
            for name, status in list(self.beats.take(now).items())
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
        wanted = desired_for(rollout)
        writes: list[tuple[str, str | None, Selector, str | None]] = []
        if wanted.base is not None:
            writes.append((desired_key(rollout.model, rollout.selector), wanted.base,
                           rollout.selector, None))  # fmt: skip
        for node in rollout.targets:
            selector = Selector(node=node)
            writes.append((desired_key(rollout.model, selector), wanted.nodes.get(node), selector,
                           wanted.shadows.get(node)))  # fmt: skip
        for key, version, selector, shadow in writes:
            held = self.desired.entries.get(key)
            if version is None:
                if held is not None:
                    await self._withdraw(key, held.state, rollout)
                continue
            if held is not None and (held.state.version, held.state.shadow) == (version, shadow):
                continue
            await self._assign(key, rollout, version, selector, shadow)

    async def _assign(
        self,
        key: str,
        rollout: Rollout,
        version: str,
        selector: Selector,
        shadow: str | None = None,
    ) -> None:
        assert self._desired_kv is not None
        state = DesiredState(
            model=rollout.model,
            version=version,
            selector=selector,
            time=next_stamp(time.time(), self.desired.newest(key)),
            by=f"rollout {rollout.id}",
            shadow=shadow,
        )
        encoded = encode_desired(state)
        revision = await self._desired_kv.put(key, encoded)
        self.desired.apply(key, encoded, int(revision), False)

    async def _withdraw(self, key: str, held: DesiredState, rollout: Rollout) -> None:
        withdrawal = held.withdrawal(
            next_stamp(time.time(), self.desired.newest(key)), by=f"rollout {rollout.id}"
        )
        try:
            await registry.withdraw(self._js, withdrawal)
        except MeshError as exc:
            log.warning("controller %s could not withdraw %s: %s", self.name, key, exc.message)
            return
        self.desired.apply(key, encode_desired(withdrawal), 0, True)

    def _event(self, text: str) -> None:
        log.info("%s", text)
        if self.on_event is not None:
            self.on_event(text)
