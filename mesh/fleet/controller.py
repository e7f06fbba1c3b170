"""The fleet controller: drives staged rollouts by writing desired state (``mesh controller``).

Any number may run, in the cloud tier, each with the controller's identity; one leads. The lease
is a key in ``MESH_FLEET_ROLLOUTS`` updated with compare-and-set on its revision every tick: the
leader renews it, the others watch its revision and take it over when it has not moved for
``lease_s`` of their own clock (no wall clocks compared across machines). A leader that cannot
renew stops acting before its lease could have passed to another.

Each tick the leader, for every rollout in KV:

1. makes the desired state say what the rollout implies now (``rollout.desired_for``: idempotent,
   so a new leader finishes the writes of an old one that died between two of them);
2. runs ``rollout.step`` on the fleet's latest heartbeats (watched, not polled);
3. stores a newly opened evidence window, then the rollout, with compare-and-set on its revision:
   a write that lost to a person's pause or abort (``mesh rollout``) is dropped and redone from
   the new state on the next tick. A stage is therefore never repeated or skipped, whichever
   controller runs it.

The functions at the end are what ``mesh rollout start|status|pause|resume|abort`` do.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from mesh.errors import InvalidArgumentError, NotFoundError
from mesh.fleet import registry
from mesh.fleet.desired import (
    DesiredState,
    Revisioned,
    Selector,
    decode_desired,
    desired_key,
    encode_desired,
    resolve,
)
from mesh.fleet.rollout import (
    Gate,
    NodeView,
    Rollout,
    Window,
    decode_rollout,
    decode_window,
    desired_for,
    encode_rollout,
    encode_window,
    new_rollout,
    parse_duration,
    parse_stages,
    request,
    step,
    view_of,
)
from mesh.fleet.signing import load_trusted_keys, verify
from mesh.lifecycle import Service, cancel_and_wait
from mesh.topology.streams import DESIRED_BUCKET, HUB_DOMAIN, NODES_BUCKET, ROLLOUTS_BUCKET
from mesh.wire import NodeStatus, decode_node_status

log = logging.getLogger("mesh.fleet.controller")

LEASE_KEY = "lease.controller"
#: how long after a rollout ends a new leader still writes its last desired state, once (the
#: old one may have died between ending it and writing that).
FINISH_GRACE_S = 120.0
#: longest a watch waits past nats-py's initial-values marker for an entry saying it is caught up.
SYNC_WAIT_S = 10.0


def rollout_key(model: str) -> str:
    return f"rollout.{model}"


def window_key(model: str) -> str:
    return f"window.{model}"


async def rollouts_bucket(js: JetStreamContext) -> KeyValue:
    try:
        return await js.key_value(ROLLOUTS_BUCKET)
    except BucketNotFoundError:
        raise NotFoundError(f"no rollouts bucket {ROLLOUTS_BUCKET}: run mesh fleet init") from None


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
        self._lease_revision: int | None = None
        self._renewed_at = 0.0
        self._seen_lease: tuple[int, float] | None = None
        self._kv: KeyValue | None = None
        self._desired_kv: KeyValue | None = None
        #: whether the first full read of each watched bucket is in.
        self._synced: dict[str, asyncio.Event] = {}

    @property
    def leader(self) -> bool:
        return self._lease_revision is not None

    async def _start(self) -> None:
        self._kv = await rollouts_bucket(self._js)
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
        if self._lease_revision is not None and self._kv is not None:
            # Hand the lease on at once rather than after it runs out.
            with contextlib.suppress(Exception):
                await self._kv.delete(LEASE_KEY, last=self._lease_revision)
            self._lease_revision = None

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
        if not key.startswith("rollout."):
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
        await self.synced(timeout=60.0)
        while True:
            try:
                if await self._hold_lease():
                    await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("controller %s: tick failed", self.name)
            await asyncio.sleep(self.tick_s)

    async def _hold_lease(self) -> bool:
        assert self._kv is not None
        kv = self._kv
        mono = time.monotonic()
        value = json.dumps({"holder": self.name, "at": time.time()}).encode()
        if self._lease_revision is not None:
            try:
                self._lease_revision = await kv.update(LEASE_KEY, value, last=self._lease_revision)
                self._renewed_at = mono
                return True
            except KeyWrongLastSequenceError:
                log.warning("controller %s lost the lead", self.name)
                self._lease_revision = None
                return False
            except Exception as exc:
                # Not renewed: act only while no one else can have taken it over.
                held = mono - self._renewed_at < self.lease_s * 0.5
                if not held:
                    self._lease_revision = None
                log.warning("controller %s could not renew its lease: %r", self.name, exc)
                return held
        try:
            entry = await kv.get(LEASE_KEY)
        except KeyNotFoundError:
            return await self._take(kv, value, None)
        revision = int(entry.revision or 0)
        if self._seen_lease is None or self._seen_lease[0] != revision:
            self._seen_lease = (revision, mono)
        try:
            holder = json.loads(entry.value or b"{}").get("holder")
        except ValueError:
            holder = None
        if holder == self.name or mono - self._seen_lease[1] >= self.lease_s:
            return await self._take(kv, value, revision)
        return False

    async def _take(self, kv: KeyValue, value: bytes, revision: int | None) -> bool:
        try:
            if revision is None:
                self._lease_revision = await kv.create(LEASE_KEY, value)
            else:
                self._lease_revision = await kv.update(LEASE_KEY, value, last=revision)
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            return False
        self._renewed_at = time.monotonic()
        self._event(f"controller {self.name} leads")
        return True

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
        if rollout.phase != "soaking":
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


# --- what mesh rollout does ----------------------------------------------------------------


async def start_rollout(
    js: JetStreamContext,
    model: str,
    version: str,
    *,
    stages: str,
    soak: str | None = None,
    gate_terms: Sequence[str] = (),
    selector: Selector | None = None,
    trusted_keys: Sequence[str] = (),
    by: str = "",
    offline_after_s: float = 10.0,
    now: float | None = None,
) -> Rollout:
    """Check everything, then store a pending rollout for the controller to drive. Refused,
    with nothing written: a version not in the registry or not signed by a trusted key, a bad
    stage list or gate, a selector matching no online node serving the model, or a model with a
    rollout still running."""
    now = time.time() if now is None else now
    selector = selector or Selector()
    if not trusted_keys:
        raise InvalidArgumentError(
            "give the public keys nodes trust (--trusted-key or $MESH_TRUSTED_KEYS): a rollout "
            "starts only for a version they would load"
        )
    if not await registry.has_version(js, model, version):
        raise NotFoundError(f"{model}@{version} is not in the registry: mesh models push it first")
    artifact = await registry.fetch(js, model, version)
    verify(
        artifact.signature, artifact.manifest, artifact.onnx, load_trusted_keys(list(trusted_keys))
    )
    declared = artifact.manifest.get("rollout")
    gate = (
        Gate.from_dict((declared or {}).get("gate") or {}) if isinstance(declared, dict) else Gate()
    )
    gate = Gate.parse(gate_terms, gate)
    if soak is not None:
        gate = Gate.from_dict({"soak_s": parse_duration(soak)}, gate)
    plan = parse_stages(stages, gate)

    kv = await rollouts_bucket(js)
    try:
        existing = await kv.get(rollout_key(model))
    except KeyNotFoundError:
        existing = None
    if existing is not None and existing.value:
        try:
            held = decode_rollout(existing.value)
        except InvalidArgumentError:
            held = None
        if held is not None and held.active:
            raise InvalidArgumentError(
                f"rollout {held.id} of {model}@{held.version} is {held.state}: one rollout per "
                "model at a time (mesh rollout abort it first)"
            )

    heartbeats = await registry.read_heartbeats(js)
    targets: list[str] = []
    suspect: set[str] = set()
    served: Counter[str] = Counter()
    for name, status in heartbeats.items():
        if isinstance(status, str):
            continue
        online = now - status.time <= offline_after_s and "stopped" not in status.problems
        if not online or model not in status.models:
            continue
        if selector.matches(status.tier, status.site, name, status.labels):
            targets.append(name)
            served[status.models[model]] += 1
            view = view_of(model, version, name, status, now=now, offline_after_s=offline_after_s)
            if view.problem is not None:
                suspect.add(name)
    if not targets:
        raise InvalidArgumentError(
            f"selector {selector.key} matches no online node serving {model}: nothing to roll "
            "out to"
        )
    # What the targets serve now is what a failure returns them to (not what the desired
    # state last said: a version assigned there may have been refused by every node).
    previous = served.most_common(1)[0][0]
    if previous == version:
        raise InvalidArgumentError(
            f"most nodes matching {selector.key} already serve {model}@{version}"
        )
    _check_not_shadowed(
        model, version, selector, heartbeats, targets, await registry.read_desired(js)
    )
    if not await registry.has_version(js, model, previous):
        raise InvalidArgumentError(
            f"the nodes serve {model}@{previous}, which is not in the registry: a rollout could "
            "not roll back to it (mesh models push it first)"
        )
    rollout = new_rollout(
        model, version, previous, selector, plan, targets, now=now, by=by, suspect=suspect
    )
    encoded = encode_rollout(rollout)
    try:
        if existing is None:
            await kv.create(rollout_key(model), encoded)
        else:
            await kv.update(rollout_key(model), encoded, last=int(existing.revision or 0))
    except KeyWrongLastSequenceError:
        raise InvalidArgumentError(
            f"another rollout of {model} was started at the same moment; see mesh rollout status"
        ) from None
    return rollout


def _check_not_shadowed(
    model: str,
    version: str,
    selector: Selector,
    heartbeats: dict[str, NodeStatus | str],
    targets: list[str],
    entries: list[Revisioned],
) -> None:
    """A rollout ends by assigning the version to its selector; an assignment more specific
    than that (a site, labels, a node) would keep some targets on another version for good.
    Refused up front, naming it."""
    mine = [e for e in entries if e.state.model == model]
    top = max((e.revision for e in mine), default=0) + 1
    base = Revisioned(DesiredState(model, version, selector, time.time()), top)
    shadowed: dict[str, list[str]] = {}
    for name in targets:
        status = heartbeats[name]
        assert isinstance(status, NodeStatus)
        wins = resolve(
            [*mine, base], tier=status.tier, site=status.site, node=name, labels=status.labels
        ).get(model)
        if wins is not None and wins.key != base.state.key:
            shadowed.setdefault(wins.key, []).append(name)
    if shadowed:
        key, nodes = next(iter(shadowed.items()))
        raise InvalidArgumentError(
            f"assignment {key} is more specific than selector {selector.key} and covers "
            f"{len(nodes)} of its nodes ({', '.join(nodes[:3])}...): roll out with that "
            "selector, or remove the assignment"
        )


async def read_rollouts(js: JetStreamContext) -> dict[str, Rollout]:
    """Model to its latest rollout (read key by key: see ``registry.latest_entries``)."""
    kv = await rollouts_bucket(js)
    out: dict[str, Rollout] = {}
    for entry in await registry.latest_entries(js, kv, ROLLOUTS_BUCKET, "rollout.*"):
        with contextlib.suppress(InvalidArgumentError):
            rollout = decode_rollout(entry.value or b"")
            out[rollout.model] = rollout
    return out


async def act(js: JetStreamContext, model: str, action: str, by: str = "") -> Rollout:
    """Pause, resume or abort the rollout of ``model`` (compare-and-set; retried on a race)."""
    kv = await rollouts_bucket(js)
    for _ in range(10):
        try:
            entry = await kv.get(rollout_key(model))
        except KeyNotFoundError:
            raise NotFoundError(f"no rollout of {model}") from None
        changed = request(decode_rollout(entry.value or b""), action, time.time(), by)
        try:
            await kv.update(
                rollout_key(model), encode_rollout(changed), last=int(entry.revision or 0)
            )
        except KeyWrongLastSequenceError:
            await asyncio.sleep(0.05)
            continue
        return changed
    raise InvalidArgumentError(f"the rollout of {model} kept changing; try again")


def summary(rollout: Rollout) -> dict[str, Any]:
    """One rollout for ``mesh rollout status --json``: the record plus stage timings."""
    record: dict[str, Any] = json.loads(encode_rollout(rollout))
    record["stage_seconds"] = [
        round(s.judged_at - s.started_at, 1) if s.judged_at and s.started_at else None
        for s in rollout.log
    ]
    return record
