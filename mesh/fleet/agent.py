"""The node agent: takes the versions the fleet assigns this node, and says how it is doing.

Inside ``mesh node`` when ``fleet.enabled``. It watches the desired state in its own JetStream
domain (a site's mirror keeps working while the hub is out of reach) and, for each model whose
assigned version differs from the one served, one at a time:

1. fetches the version's parts from its domain's copy of the store (waiting a bounded time for a
   site's mirror to catch up with the desired state);
2. verifies the signature against the node's trusted keys, the bytes against the signed
   sha256, and the manifest against the model it claims to be and the inputs served now;
3. keeps it in the cache directory (``mesh.fleet.cache``), then runs the device gate
   (``mesh.fleet.device_gate``): single-row latency at p99 and the memory loading it adds,
   against the manifest's budget, measured here;
4. swaps it in with ``swap_model`` (no request dropped), and records it as the version to serve
   after a restart.

A version whose parts are missing or not yet complete at the site is not refused: the node keeps
it pending and tries again, pausing longer each time (``mesh.fleet.refusals``), for as long as it
is assigned. A version that fails any check is refused: reported (a ``rejected`` node event on
``mesh.telemetry.<node>``, ``mesh_fleet_events_total``, and ``rejected`` in the heartbeat) and not
tried again until an operator clears the refusal (``mesh fleet retry``); what serves keeps
serving. A new assignment of another version is tried afresh.

It obeys a desired-state entry only when the entry's model and selector make the key it arrived
under and it is not older than the newest entry seen under that key (``DesiredReader``: entries
re-delivered into the bucket are ignored). It watches the revocations too: a version revoked by a
key it trusts is refused, and a node serving one swaps to its assigned version or, when that is
the revoked one, to the last version it served before (a ``revoked`` warning event). Taking a
version older than the one served (a downgrade) is done, with a ``downgraded`` warning event and
``downgraded`` in the heartbeat.

Every ``heartbeat_s`` the node writes its status to its key in ``MESH_NODES_<DOMAIN>``
(``mesh.fleet.heartbeat``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Protocol

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from pydantic import ValidationError

from mesh.energy.profiles import DeviceProfile
from mesh.errors import InvalidArgumentError, MeshError
from mesh.fleet.cache import VersionCache, settings_for
from mesh.fleet.desired import DesiredReader, DesiredState, resolve, version_order
from mesh.fleet.device_gate import run_device_gate
from mesh.fleet.heartbeat import AgentState, Heartbeat
from mesh.fleet.refusals import Waiting, decode_retry, is_retry_key, transient, waiting
from mesh.fleet.registry import Artifact, fetch
from mesh.fleet.revocation import Revocation, decode_revocation, verify_revocation
from mesh.fleet.signing import ArtifactSignature, load_trusted_keys, verify
from mesh.lifecycle import Service, cancel_and_wait
from mesh.models.manifest import ModelManifest, load_manifest
from mesh.observability.metrics import MeshMetrics
from mesh.settings import FleetSettings, ModelSettings
from mesh.topology import subjects
from mesh.topology.streams import DESIRED_BUCKET, REVOKED_BUCKET
from mesh.transport.jetstream import BucketEntry, watch_bucket
from mesh.wire import NodeEvent, NodeStatus, encode_node_event

log = logging.getLogger("mesh.fleet.agent")


class Swappable(Protocol):
    """What the agent needs of its node."""

    def served_versions(self) -> dict[str, str]: ...
    def shadow_versions(self) -> dict[str, str]: ...
    def model_settings(self, name: str) -> ModelSettings | None: ...
    async def swap_model(self, settings: ModelSettings) -> str | None: ...
    async def shadow_model(self, settings: ModelSettings) -> str | None: ...
    async def drop_shadow(self, name: str) -> str | None: ...
    def status(self) -> NodeStatus: ...


def plan(
    desired: Mapping[str, DesiredState],
    served: Mapping[str, str],
    rejected: Mapping[str, str],
    revoked: Collection[str] = (),
    waiting: Mapping[str, Waiting] | None = None,
    now: float = 0.0,
) -> list[tuple[str, str]]:
    """The (model, version) swaps to make: assigned, not served, not refused before, not
    revoked, and not waiting for a later try."""
    out: list[tuple[str, str]] = []
    for model, state in sorted(desired.items()):
        key = f"{model}@{state.version}"
        held = (waiting or {}).get(key)
        if served.get(model) == state.version or key in rejected or key in revoked:
            continue
        if held is None or held.due <= now:
            out.append((model, state.version))
    return out


def shadow_plan(
    desired: Mapping[str, DesiredState],
    shadows: Mapping[str, str],
    served: Mapping[str, str],
    refused: Collection[str],
    waiting: Mapping[str, Waiting] | None = None,
    now: float = 0.0,
) -> list[tuple[str, str | None]]:
    """The shadows to start (model, version) or stop (model, None): a version assigned to run
    in shadow beside a served model, not served already, not refused or revoked (``refused``
    holds both), and not waiting for a later try; a running shadow no longer assigned (or
    refused meanwhile) stops."""
    out: list[tuple[str, str | None]] = []
    for model in sorted(set(desired) | set(shadows)):
        state = desired.get(model)
        wanted = state.shadow if state is not None else None
        if wanted is not None and (
            f"{model}@{wanted}" in refused or served.get(model) in (None, wanted)
        ):
            wanted = None
        running = shadows.get(model)
        if wanted == running:
            continue
        if wanted is None:
            out.append((model, None))
            continue
        held = (waiting or {}).get(f"{model}@{wanted}")
        if held is None or held.due <= now:
            out.append((model, wanted))
    return out


def fallback(
    model: str, served: str, assigned: str | None, history: list[str], refused: Collection[str]
) -> str | None:
    """What a node serving a revoked ``model@served`` swaps to: the version it is assigned,
    unless that is revoked or refused too; else the last version it served before that is
    neither."""
    candidates = [assigned] if assigned is not None else []
    candidates += list(reversed(history))
    for version in candidates:
        if version is not None and version != served and f"{model}@{version}" not in refused:
            return version
    return None


def restore(settings: FleetSettings, models: list[ModelSettings]) -> list[ModelSettings]:
    """The models to load at start: each one the cache holds a verified current version of
    replaces the configured one (a restart while cut off serves what was last verified).
    Blocking. A cached version that no longer verifies is skipped and logged."""
    if not settings.enabled or settings.cache_dir is None:
        return models
    cache = VersionCache(settings.cache_dir)
    trusted = load_trusted_keys(settings.trusted_keys)
    revoked = cache.revoked()
    by_name = {m.name: m for m in models}
    out = dict(by_name)
    for model, version in cache.current().items():
        if f"{model}@{version}" in revoked:
            log.warning("cached %s@%s not used: it was revoked", model, version)
            continue
        try:
            _, _, manifest_path = cache.load_verified(model, version, trusted)
        except MeshError as exc:
            log.warning("cached %s@%s not used: %s", model, version, exc.message)
            continue
        out[model] = settings_for(by_name.get(model), model, manifest_path)
        log.info("serving cached verified %s@%s", model, version)
    return list(out.values())


class FleetAgent(Service):
    def __init__(
        self,
        nc: NATS,
        node: Swappable,
        settings: FleetSettings,
        *,
        name: str,
        tier: str,
        metrics: MeshMetrics,
        mesh_version: Callable[[], Awaitable[str]] | None = None,
        device: DeviceProfile | None = None,
    ) -> None:
        assert settings.cache_dir is not None
        #: the device profile the gate prices a version's energy on (None: by its tier).
        self.device = device
        self._nc = nc
        self._node = node
        self.settings = settings
        self.name = name
        self.tier = tier
        self.metrics = metrics
        self.state = AgentState()
        self.cache = VersionCache(settings.cache_dir)
        self.trusted = load_trusted_keys(settings.trusted_keys)
        self._js: JetStreamContext = nc.jetstream(domain=settings.domain)
        self.assignments = DesiredReader(keep=self._matches)
        #: ``model@version`` to why, for every revocation verified with a trusted key.
        self.revoked: dict[str, str] = self.cache.revoked()
        #: per model, the versions served here, oldest first (what a revoked one falls back to).
        self.history: dict[str, list[str]] = {}
        self._synced = asyncio.Event()
        #: (revoked version, what it swaps to) already announced with a ``revoked`` event.
        self._warned: set[tuple[str, str | None]] = set()
        #: the latest revision of the desired-state bucket seen, and what it was when each
        #: refusal was made: a retry request written after a refusal clears it.
        self._revision = 0
        self._refused_at: dict[str, int] = {}
        #: ``model@version`` not fetched yet (missing or incomplete at the site), and when next.
        self.waiting: dict[str, Waiting] = {}
        self._cleared = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.heartbeat = Heartbeat(
            self._js,
            node,
            settings,
            self.state,
            name=name,
            tier=tier,
            metrics=metrics,
            mesh_version=mesh_version,
        )
        #: ``model@version`` this node has served: a version it ran here passed on this device
        #: already (or was configured for it), so going back to it (a rollback) is not held up
        #: by a device gate timed in a busy moment. Its signature and bytes are still checked.
        self.proven: set[str] = set()

    async def _start(self) -> None:
        for model, version in self._node.served_versions().items():
            self.proven.add(f"{model}@{version}")
            self.history.setdefault(model, []).append(version)
        who = f"node {self.name}"
        watch_desired = watch_bucket(
            self._js, DESIRED_BUCKET, self._on_desired, history=True, synced=self._synced,
            retry_s=2.0, who=who,
        )  # fmt: skip
        watch_revoked = watch_bucket(
            self._js, REVOKED_BUCKET, self._on_revocation, retry_s=2.0, who=who
        )
        self._tasks = [
            asyncio.create_task(watch_desired, name=f"fleet-watch-{self.name}"),
            asyncio.create_task(watch_revoked, name=f"fleet-revoked-{self.name}"),
            asyncio.create_task(self._reconcile(), name=f"fleet-apply-{self.name}"),
            asyncio.create_task(self.heartbeat.run(), name=f"fleet-heartbeat-{self.name}"),
        ]

    async def _stop(self) -> None:
        await cancel_and_wait(self._tasks)
        # A last heartbeat, so the fleet sees the node stop rather than time out.
        with contextlib.suppress(Exception):
            await self.heartbeat.beat(ready=False)

    # --- desired state ----------------------------------------------------------------------

    def _matches(self, state: DesiredState) -> bool:
        s = self.settings
        return state.selector.matches(self.tier, s.site_name, self.name, s.labels)

    def _on_desired(self, entry: BucketEntry) -> None:
        # Only assignments whose selector matches this node are kept, and only they wake the
        # reconcile loop: a rollout stage writes one key per node, and every agent of a site
        # sees every key (250 at a 50% stage of 500 nodes; a hundred agents in a process of
        # the simulated fleet resolved all of them on each, and their processes stalled).
        self._revision = max(self._revision, int(entry.revision or 0))
        if is_retry_key(entry.key):
            if not entry.deleted:
                self._on_retry(entry.key, entry.value, int(entry.revision or 0))
            return
        try:
            changed = self.assignments.apply(entry.key, entry.value, entry.revision, entry.deleted)
        except InvalidArgumentError as exc:
            log.warning("node %s ignores desired state %s: %s", self.name, entry.key[:200],
                        exc.message)  # fmt: skip
            return
        if changed:
            self._wake.set()

    def _on_retry(self, key: str, value: bytes, revision: int) -> None:
        # A retry request only lets a refused version be tried (and checked) again: one
        # re-delivered into the bucket at a later revision can do no more than that.
        try:
            request = decode_retry(value)
        except InvalidArgumentError as exc:
            log.warning("ignoring malformed retry request %s: %s", key[:200], exc.message)
            return
        refused = f"{request.model}@{request.version}"
        if not request.applies_to(self.name) or refused not in self.state.rejected:
            return
        if revision <= self._refused_at.get(refused, 0):
            return  # asked before this refusal was made
        reason = self.state.rejected.pop(refused)
        self._refused_at.pop(refused, None)
        log.info(
            "node %s: refusal of %s cleared by %s (it was: %s)",
            self.name, refused, request.by or "an operator", reason,
        )  # fmt: skip
        self._cleared = True
        self._wake.set()

    def _on_revocation(self, entry: BucketEntry) -> None:
        if entry.deleted:
            return  # a revocation is for good
        try:
            revocation = decode_revocation(entry.value)
            verify_revocation(revocation, self.trusted)
        except InvalidArgumentError as exc:
            log.warning("node %s ignores revocation %s: %s", self.name, entry.key[:200],
                        exc.message)  # fmt: skip
            return
        self._revoke(revocation)

    def _revoke(self, revocation: Revocation) -> None:
        if self.revoked.get(revocation.target) == revocation.reason:
            return
        self.revoked[revocation.target] = revocation.reason
        try:
            self.cache.add_revoked(revocation.target, revocation.reason)
        except OSError as exc:
            log.warning("node %s could not keep revocation %s: %r", self.name,
                        revocation.target, exc)  # fmt: skip
        self._wake.set()

    def desired(self) -> dict[str, DesiredState]:
        s = self.settings
        return resolve(
            self.assignments.entries.values(), tier=self.tier, site=s.site_name,
            node=self.name, labels=s.labels,
        )  # fmt: skip

    async def _reconcile(self) -> None:
        # no swap before the desired state is read in full: history comes oldest first
        await self._synced.wait()
        while True:
            due = min((w.due for w in self.waiting.values()), default=None)
            pause = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)
            self._wake.clear()
            self._forget_unassigned()
            if self._cleared:
                self._cleared = False
                with contextlib.suppress(Exception):
                    await self.heartbeat.beat()
            await self._leave_revoked()
            desired = self.desired()
            for model, state in desired.items():
                target = f"{model}@{state.version}"
                if target in self.revoked and target not in self.state.rejected:
                    await self._reject(model, state.version, f"revoked: {self.revoked[target]}")
            for model, version in plan(
                desired,
                self._node.served_versions(),
                self.state.rejected,
                self.revoked,
                self.waiting,
                time.monotonic(),
            ):
                # The assignment may have moved on while an earlier swap ran.
                current = self.desired().get(model)
                if current is None or current.version != version:
                    continue
                await self.apply(model, version)
            await self._reconcile_shadows()

    async def _reconcile_shadows(self) -> None:
        """Start the shadows assigned, stop those no longer assigned."""
        for model, version in shadow_plan(
            self.desired(),
            self._node.shadow_versions(),
            self._node.served_versions(),
            {*self.state.rejected, *self.revoked},
            self.waiting,
            time.monotonic(),
        ):
            if version is None:
                stopped = await self._node.drop_shadow(model)
                log.info("node %s stopped running %s@%s in shadow", self.name, model, stopped)
                with contextlib.suppress(Exception):
                    await self.heartbeat.beat()
                continue
            current = self.desired().get(model)
            if current is not None and current.shadow == version:
                await self.apply(model, version, shadow=True)

    def _forget_unassigned(self) -> None:
        """Stop waiting for versions no longer assigned (a rollback moved on meanwhile)."""
        assigned = {f"{m}@{s.version}" for m, s in self.desired().items()}
        assigned |= {f"{m}@{s.shadow}" for m, s in self.desired().items() if s.shadow}
        for key in [k for k in self.waiting if k not in assigned]:
            del self.waiting[key]
            model, _, version = key.partition("@")
            if self.state.pending.get(model) == version:
                del self.state.pending[model]

    async def _leave_revoked(self) -> None:
        """Swap every model served at a revoked version to its fallback. One with none keeps
        serving (no answer at all would be worse) after a ``revoked`` event saying so, once."""
        for model, served in sorted(self._node.served_versions().items()):
            target = f"{model}@{served}"
            if target not in self.revoked:
                continue
            assigned = self.desired().get(model)
            version = fallback(
                model, served, assigned.version if assigned else None,
                self.history.get(model, []), {*self.revoked, *self.state.rejected},
            )  # fmt: skip
            if (target, version) not in self._warned:
                self._warned.add((target, version))
                reason = f"{self.revoked[target]}; swapping to {version or 'nothing'}"
                await self._event("revoked", model, served, None, reason)
            if version is not None:
                await self.apply(model, version)

    # --- one version --------------------------------------------------------------------------

    async def apply(self, model: str, version: str, *, shadow: bool = False) -> bool:
        """Fetch, verify, gate and swap ``model@version`` in (or, with ``shadow``, run it in
        shadow beside the version served); False when it was refused or could not be fetched
        yet (then it is tried again later)."""
        key = f"{model}@{version}"
        if not shadow:
            self.state.pending[model] = version
        try:
            artifact = await self._cached(model, version) or await self._fetch(model, version)
        except asyncio.CancelledError:
            raise
        except MeshError as exc:
            if transient(exc):
                self._wait(key, exc.message)
                return False
            if not shadow:
                self.state.pending.pop(model, None)
            self.waiting.pop(key, None)
            await self._reject(model, version, exc.message)
            return False
        except Exception as exc:  # the connection's own errors: the server may be back soon
            self._wait(key, f"{type(exc).__name__}: {exc}")
            return False
        self.waiting.pop(key, None)
        if shadow:
            return await self._shadow(model, version, artifact)
        return await self._take(model, version, artifact)

    def _wait(self, key: str, reason: str) -> None:
        now = time.monotonic()
        held = self.waiting.get(key)
        self.waiting[key] = held.after(now, reason) if held else waiting(now, reason)
        # said when it starts, then once it has lasted fetch_timeout_s
        timeout = self.settings.fetch_timeout_s
        if held is None or now - held.since >= timeout > held.at - held.since:
            log.warning(
                "node %s: %s not complete at its site for %.0fs (%s); trying again for as long "
                "as it is assigned", self.name, key, now - self.waiting[key].since, reason,
            )  # fmt: skip

    async def _checked(self, model: str, version: str, artifact: Artifact) -> ModelSettings:
        """A fetched version verified, kept in the cache and through the device gate, as the
        settings to load it with; raises ``MeshError`` naming why it is refused."""
        manifest = await asyncio.to_thread(self._check, artifact, model, version)
        manifest_path = await asyncio.to_thread(self.cache.store, artifact, manifest)
        if f"{model}@{version}" not in self.proven:
            await run_device_gate(
                manifest, manifest_path, runs=self.settings.gate_runs, node=self.name,
                device=self.device,
            )  # fmt: skip
        return settings_for(self._node.model_settings(model), model, manifest_path)

    async def _install(
        self, model: str, version: str, artifact: Artifact, *, shadow: bool
    ) -> tuple[bool, str | None]:
        """Verify, gate and swap a fetched version, or run it in shadow: whether it took, and
        the version it replaced. A refusal is reported to the fleet."""
        install = self._node.shadow_model if shadow else self._node.swap_model
        try:
            settings = await self._checked(model, version, artifact)
            return True, await install(settings)
        except asyncio.CancelledError:
            raise
        except MeshError as exc:
            await self._reject(model, version, exc.message)
        except Exception as exc:  # a model that crashes ONNX Runtime at load, for one
            doing = (
                f"running {model}@{version} in shadow" if shadow else f"taking {model}@{version}"
            )
            log.warning("%s failed unexpectedly", doing, exc_info=True)
            await self._reject(model, version, f"{type(exc).__name__}: {exc}")
        return False, None

    async def _shadow(self, model: str, version: str, artifact: Artifact) -> bool:
        """Verify, gate and run a fetched version in shadow; False when it was refused. It
        passes the checks a version to serve passes: it runs on this node's inputs too."""
        took, _ = await self._install(model, version, artifact, shadow=True)
        if not took:
            return False
        self.proven.add(f"{model}@{version}")
        log.info("node %s runs %s@%s in shadow (assigned by the fleet)", self.name, model, version)
        with contextlib.suppress(Exception):
            await self.heartbeat.beat()
        return True

    async def _take(self, model: str, version: str, artifact: Artifact) -> bool:
        """Verify, gate and swap a fetched version; False when it was refused."""
        try:
            took, previous = await self._install(model, version, artifact, shadow=False)
        finally:
            self.state.pending.pop(model, None)
        if not took:
            return False
        await asyncio.to_thread(self.cache.set_current, model, version)
        self.proven.add(f"{model}@{version}")
        self.state.swaps += 1
        self.history.setdefault(model, []).append(version)
        await self._event("swapped", model, version, previous, "assigned by the fleet")
        if previous is not None and version_order(version) < version_order(previous):
            self.state.downgraded[model] = previous
            await self._event("downgraded", model, version, previous,
                              f"{version} is older than {previous}, which it served")  # fmt: skip
        else:
            self.state.downgraded.pop(model, None)
        return True

    async def _cached(self, model: str, version: str) -> Artifact | None:
        """The version from this node's cache, verified again, if it holds it (a fallback from a
        revoked version needs no server)."""
        try:
            artifact, _, _ = await asyncio.to_thread(
                self.cache.load_verified, model, version, self.trusted
            )
        except MeshError:
            return None
        return artifact

    async def _fetch(self, model: str, version: str) -> Artifact:
        return await fetch(self._js, model, version, max_bytes=self.settings.max_artifact_bytes)

    def _check(self, artifact: Artifact, model: str, version: str) -> ModelManifest:
        signature: ArtifactSignature = artifact.signature
        manifest_obj = artifact.manifest
        verify(signature, manifest_obj, artifact.onnx, self.trusted)
        try:
            manifest = ModelManifest.model_validate(manifest_obj)
        except ValidationError as exc:
            raise InvalidArgumentError(f"manifest of {model}@{version} is invalid: {exc}") from None
        if (manifest.name, manifest.version) != (model, version):
            raise InvalidArgumentError(
                f"assigned {model}@{version}, the stored manifest is "
                f"{manifest.name}@{manifest.version}"
            )
        served = self._node.model_settings(model)
        if served is not None and served.manifest is not None:
            current = load_manifest(served.manifest)
            if _shapes(current) != _shapes(manifest):
                raise InvalidArgumentError(
                    f"{model}@{version} takes inputs {_shapes(manifest)}, the version served "
                    f"takes {_shapes(current)}: callers would break"
                )
        return manifest

    async def _reject(self, model: str, version: str, reason: str) -> None:
        self.state.rejected[f"{model}@{version}"] = reason
        self._refused_at[f"{model}@{version}"] = self._revision
        log.warning(
            "node %s rejected %s@%s: %s; %s keeps serving",
            self.name,
            model,
            version,
            reason,
            self._node.served_versions().get(model, "nothing"),
        )
        await self._event("rejected", model, version, None, reason)

    async def _event(
        self, event: str, model: str, version: str, previous: str | None, reason: str
    ) -> None:
        self.metrics.fleet_events.add(1, self.tier, model, event)
        record = NodeEvent(
            node=self.name,
            tier=self.tier,
            event=event,
            model=model,
            version=version,
            previous=previous,
            reason=reason,
            time=time.time(),
        )
        try:
            await self._nc.publish(subjects.telemetry(self.name), encode_node_event(record))
        except Exception as exc:
            log.warning("could not publish the %s event of node %s: %r", event, self.name, exc)
        await self.heartbeat.beat()


def _shapes(manifest: ModelManifest) -> list[tuple[str, list[int | None]]]:
    return [(t.dtype, list(t.shape[1:])) for t in manifest.inputs]
