"""The node agent: takes the versions the fleet assigns this node, and says how it is doing.

Inside ``mesh node`` when ``fleet.enabled``. It watches the desired state in its own JetStream
domain (a site's mirror keeps working while the hub is out of reach) and, for each model whose
assigned version differs from the one served, one at a time:

1. fetches the version's parts from its domain's copy of the store (waiting a bounded time for a
   site's mirror to catch up with the desired state);
2. verifies the signature against the node's trusted keys, the bytes against the signed
   sha256, and the manifest against the model it claims to be and the inputs served now;
3. keeps it in the cache directory, then runs the device gate: single-row latency at p99 and the
   memory loading it adds, against the manifest's budget, measured here;
4. swaps it in with ``swap_model`` (no request dropped), and records it as the version to serve
   after a restart.

A version that fails any step is reported (a ``rejected`` node event on ``mesh.telemetry.<node>``,
``mesh_fleet_events_total``, and ``rejected`` in the heartbeat) and never retried; what serves
keeps serving. A new assignment of another version is tried afresh.

Every ``heartbeat_s`` the node writes its status to its key in ``MESH_NODES_<DOMAIN>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError
from pydantic import ValidationError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from mesh.errors import InvalidArgumentError, MeshError, NotFoundError, UnavailableError
from mesh.fleet.desired import DesiredState, Revisioned, decode_desired, resolve
from mesh.fleet.registry import Artifact, fetch
from mesh.fleet.signing import ArtifactSignature, load_trusted_keys, verify
from mesh.lifecycle import Service, cancel_and_wait
from mesh.models.manifest import ModelManifest, load_manifest
from mesh.models.session import open_session
from mesh.models.validate import judge, synthetic_rows
from mesh.observability.metrics import MeshMetrics, bucket_quantile, tier_totals
from mesh.settings import FleetSettings, ModelSettings
from mesh.topology import subjects
from mesh.topology.streams import DESIRED_BUCKET, nodes_bucket
from mesh.wire import NodeEvent, NodeStatus, encode_node_event, encode_node_status

log = logging.getLogger("mesh.fleet.agent")

CURRENT_FILE = "current.json"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature.json"
#: runs of the latency gate between two yields to the event loop (it runs on the loop: a
#: worker thread would time the wait for the GIL under load, not the model).
_GATE_CHUNK = 10
#: latency measurements before a version is judged over budget (the best one counts).
GATE_ATTEMPTS = 3
#: one device gate at a time in a process: a device runs one agent, but a simulated fleet runs
#: a hundred in one process, and gates timed together time each other.
_GATE_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _gate_lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _GATE_LOCKS.get(loop)
    if lock is None:
        lock = _GATE_LOCKS[loop] = asyncio.Lock()
    return lock


class Swappable(Protocol):
    """What the agent needs of its node."""

    def served_versions(self) -> dict[str, str]: ...
    def model_settings(self, name: str) -> ModelSettings | None: ...
    async def swap_model(self, settings: ModelSettings) -> str | None: ...
    def status(self) -> NodeStatus: ...


def plan(
    desired: Mapping[str, DesiredState],
    served: Mapping[str, str],
    rejected: Mapping[str, str],
) -> list[tuple[str, str]]:
    """The (model, version) swaps to make: assigned, not served, not refused before."""
    return [
        (model, state.version)
        for model, state in sorted(desired.items())
        if served.get(model) != state.version and f"{model}@{state.version}" not in rejected
    ]


@dataclass
class AgentState:
    """What the heartbeat reports of the agent."""

    pending: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)
    swaps: int = 0


class VersionCache:
    """Verified versions on disk: ``<dir>/<model>/<version>/`` and ``current.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def version_dir(self, model: str, version: str) -> Path:
        return self.root / subjects.check_token(model, "model name") / version

    def store(self, artifact: Artifact, manifest: ModelManifest) -> Path:
        """Write the three parts; returns the manifest's path. Blocking."""
        folder = self.version_dir(manifest.name, manifest.version)
        folder.mkdir(parents=True, exist_ok=True)
        onnx_path = (folder / manifest.artifact).resolve()
        if not onnx_path.is_relative_to(folder.resolve()) or onnx_path.name in (
            MANIFEST_FILE,
            SIGNATURE_FILE,
        ):
            raise InvalidArgumentError(
                f"manifest names artifact {manifest.artifact!r}, not a file name of its own"
            )
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        for path, data in (
            (onnx_path, artifact.onnx),
            (folder / SIGNATURE_FILE, artifact.signature_bytes),
            (folder / MANIFEST_FILE, artifact.manifest_bytes),
        ):
            _write_atomic(path, data)
        return folder / MANIFEST_FILE

    def current(self) -> dict[str, str]:
        try:
            data = json.loads((self.root / CURRENT_FILE).read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items()}

    def set_current(self, model: str, version: str) -> None:
        current = self.current()
        current[model] = version
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.root / CURRENT_FILE, json.dumps(current, indent=1).encode())

    def load_verified(
        self, model: str, version: str, trusted: Mapping[str, Any]
    ) -> tuple[Artifact, ModelManifest, Path]:
        """A cached version, verified again as if fetched. Blocking."""
        folder = self.version_dir(model, version)
        try:
            manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
            signature_bytes = (folder / SIGNATURE_FILE).read_bytes()
            manifest = ModelManifest.model_validate_json(manifest_bytes)
            onnx = (folder / manifest.artifact).read_bytes()
        except (OSError, ValidationError) as exc:
            raise NotFoundError(f"cached {model}@{version} is incomplete: {exc}") from None
        artifact = Artifact(onnx, manifest_bytes, signature_bytes)
        verify(artifact.signature, artifact.manifest, onnx, dict(trusted))
        return artifact, manifest, folder / MANIFEST_FILE


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def settings_for(base: ModelSettings | None, name: str, manifest_path: Path) -> ModelSettings:
    """The settings of a fetched version: the node's settings of that model (batching, rows,
    threads), with the artifact, version and threshold taken from the new manifest."""
    if base is None:
        return ModelSettings(name=name, manifest=manifest_path)
    data = base.model_dump()
    data.update(path=None, manifest=manifest_path, sha256=None, version=None, threshold=None)
    return ModelSettings.model_validate(data)


def restore(settings: FleetSettings, models: list[ModelSettings]) -> list[ModelSettings]:
    """The models to load at start: each one the cache holds a verified current version of
    replaces the configured one (a restart while cut off serves what was last verified).
    Blocking. A cached version that no longer verifies is skipped and logged."""
    if not settings.enabled or settings.cache_dir is None:
        return models
    cache = VersionCache(settings.cache_dir)
    trusted = load_trusted_keys(settings.trusted_keys)
    by_name = {m.name: m for m in models}
    out = dict(by_name)
    for model, version in cache.current().items():
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
    ) -> None:
        assert settings.cache_dir is not None
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
        self._entries: dict[str, Revisioned] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._last_totals: tuple[float, float, list[float]] | None = None
        self._figures: tuple[float | None, float | None] = (None, None)
        self._mesh_version = mesh_version
        #: ``model@version`` this node has served: a version it ran here passed on this device
        #: already (or was configured for it), so going back to it (a rollback) is not held up
        #: by a device gate timed in a busy moment. Its signature and bytes are still checked.
        self.proven: set[str] = set()

    async def _start(self) -> None:
        self.proven.update(f"{m}@{v}" for m, v in self._node.served_versions().items())
        self._tasks = [
            asyncio.create_task(self._watch(), name=f"fleet-watch-{self.name}"),
            asyncio.create_task(self._reconcile(), name=f"fleet-apply-{self.name}"),
            asyncio.create_task(self._heartbeat(), name=f"fleet-heartbeat-{self.name}"),
        ]

    async def _stop(self) -> None:
        await cancel_and_wait(self._tasks)
        # A last heartbeat, so the fleet sees the node stop rather than time out.
        with contextlib.suppress(Exception):
            await self._beat(ready=False)

    # --- desired state ----------------------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                kv = await self._js.key_value(DESIRED_BUCKET)
                watcher = await kv.watchall()
                try:
                    async for entry in watcher:
                        if entry is None:
                            continue
                        self._on_entry(entry.key, entry.value, entry.revision, entry.operation)
                finally:
                    with contextlib.suppress(Exception):
                        await watcher.stop()  # type: ignore[no-untyped-call]
            except asyncio.CancelledError:
                raise
            except BucketNotFoundError:
                log.info("no desired-state bucket in domain %s yet", self.settings.domain)
            except Exception as exc:
                log.warning("desired-state watch of node %s stopped: %r", self.name, exc)
            await asyncio.sleep(2.0)

    def _on_entry(self, key: str, value: bytes | None, revision: int | None, op: Any) -> None:
        # Only assignments whose selector matches this node are kept, and only they wake the
        # reconcile loop: a rollout stage writes one key per node, and every agent of a site
        # sees every key (250 at a 50% stage of 500 nodes; a hundred agents in a process of
        # the simulated fleet resolved all of them on each, and their processes stalled).
        if op is not None or not value:  # DEL or PURGE: the assignment is withdrawn
            if self._entries.pop(key, None) is not None:
                self._wake.set()
            return
        try:
            state = decode_desired(value)
        except InvalidArgumentError as exc:
            log.warning("ignoring malformed desired state %s: %s", key[:200], exc.message)
            return
        s = self.settings
        if not state.selector.matches(self.tier, s.site_name, self.name, s.labels):
            return
        self._entries[key] = Revisioned(state, int(revision or 0))
        self._wake.set()

    def desired(self) -> dict[str, DesiredState]:
        s = self.settings
        return resolve(
            self._entries.values(), tier=self.tier, site=s.site_name, node=self.name,
            labels=s.labels,
        )  # fmt: skip

    async def _reconcile(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            for model, version in plan(
                self.desired(), self._node.served_versions(), self.state.rejected
            ):
                # The assignment may have moved on while an earlier swap ran.
                current = self.desired().get(model)
                if current is None or current.version != version:
                    continue
                await self.apply(model, version)

    # --- one version --------------------------------------------------------------------------

    async def apply(self, model: str, version: str) -> bool:
        """Fetch, verify, gate and swap ``model@version``; False when it was refused."""
        self.state.pending[model] = version
        try:
            artifact = await self._fetch(model, version)
            manifest = await asyncio.to_thread(self._check, artifact, model, version)
            manifest_path = await asyncio.to_thread(self.cache.store, artifact, manifest)
            if f"{model}@{version}" not in self.proven:
                async with _gate_lock():
                    await self._gate(manifest, manifest_path)
            settings = settings_for(self._node.model_settings(model), model, manifest_path)
            previous = await self._node.swap_model(settings)
        except asyncio.CancelledError:
            raise
        except MeshError as exc:
            await self._reject(model, version, exc.message)
            return False
        except Exception as exc:  # a model that crashes ONNX Runtime at load, for one
            log.warning("taking %s@%s failed unexpectedly", model, version, exc_info=True)
            await self._reject(model, version, f"{type(exc).__name__}: {exc}")
            return False
        finally:
            self.state.pending.pop(model, None)
        await asyncio.to_thread(self.cache.set_current, model, version)
        self.proven.add(f"{model}@{version}")
        self.state.swaps += 1
        await self._event("swapped", model, version, previous, "assigned by the fleet")
        return True

    async def _fetch(self, model: str, version: str) -> Artifact:
        # Missing parts are waited for (a site's mirror may lag the desired state); a corrupt or
        # oversized part is not.
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((NotFoundError, UnavailableError)),
            stop=stop_after_delay(self.settings.fetch_timeout_s),
            wait=wait_exponential(multiplier=0.25, max=5.0),
            reraise=True,
        ):
            with attempt:
                return await fetch(
                    self._js, model, version, max_bytes=self.settings.max_artifact_bytes
                )
        raise AssertionError("unreachable")

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

    async def _gate(self, manifest: ModelManifest, manifest_path: Path) -> None:
        """The device gate: latency and memory here, against the manifest's budget.

        A device serving traffic is a noisy place to time a model: one burst can push a p99
        over budget. The latency is measured up to ``GATE_ATTEMPTS`` times, a moment apart, and
        the best p99 judged, so a version fails only when it is over budget every time."""
        artifact_path = manifest_path.parent / manifest.artifact
        before = await asyncio.to_thread(_rss)
        session = await asyncio.to_thread(open_session, artifact_path)
        after = await asyncio.to_thread(_rss)
        memory_mb = max(0.0, (after - before) / (1024 * 1024))
        rows = synthetic_rows(manifest, self.settings.gate_runs)
        feed = manifest.inputs[0].name
        output = manifest.scored_output
        for i in range(min(10, len(rows))):
            session.run([output], {feed: rows[i : i + 1]})
        p99 = float("inf")
        for attempt in range(GATE_ATTEMPTS):
            if attempt:
                await asyncio.sleep(0.5)
            timings = np.empty(len(rows))
            for start in range(0, len(rows), _GATE_CHUNK):
                for i in range(start, min(start + _GATE_CHUNK, len(rows))):
                    t0 = time.perf_counter()
                    session.run([output], {feed: rows[i : i + 1]})
                    timings[i] = time.perf_counter() - t0
                await asyncio.sleep(0)
            p99 = min(p99, float(np.percentile(timings, 99) * 1e3))
            if p99 <= manifest.profile.latency_p99_ms:
                break
        del session
        failures = judge(p99, memory_mb, None, manifest.profile, manifest.quality)
        if failures:
            raise InvalidArgumentError("fails the device gate: " + "; ".join(failures))
        log.info(
            "%s@%s passes the device gate on %s: p99 %.3f ms, +%.1f MB",
            manifest.name,
            manifest.version,
            self.name,
            p99,
            memory_mb,
        )

    async def _reject(self, model: str, version: str, reason: str) -> None:
        self.state.rejected[f"{model}@{version}"] = reason
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
        await self._beat()

    # --- heartbeat --------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while True:
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("heartbeat of node %s not stored: %r", self.name, exc)
            await asyncio.sleep(self.settings.heartbeat_s)

    def _window_figures(self) -> tuple[float | None, float | None]:
        """Escalation rate and p99 (ms) since the last heartbeat; the last figures when no
        request came in between."""
        totals = tier_totals(self.metrics, self.tier)
        last, self._last_totals = self._last_totals, totals
        if last is None:
            return self._figures
        requests = totals[0] - last[0]
        if requests <= 0:
            return self._figures
        escalations = totals[1] - last[1]
        buckets = [a - b for a, b in zip(totals[2], last[2], strict=True)]
        p99 = bucket_quantile(buckets, self.metrics.latency.bounds, 0.99)
        self._figures = (min(1.0, escalations / requests), p99)
        return self._figures

    async def _beat(self, ready: bool | None = None) -> None:
        base = self._node.status()
        rate, p99 = self._window_figures()
        status = NodeStatus(
            node=base.node,
            tier=base.tier,
            models=base.models,
            breakers=base.breakers,
            backlog=base.backlog,
            ready=base.ready if ready is None else ready,
            time=time.time(),
            site=self.settings.site_name,
            zone=base.zone,
            labels=dict(self.settings.labels),
            pending=dict(self.state.pending),
            rejected=dict(self.state.rejected),
            problems=base.problems if ready is None else ["stopped"],
            escalation_rate=rate,
            drift=base.drift,
            p99_ms=p99,
            swaps=self.state.swaps,
            mesh_version=await self._mesh_version() if self._mesh_version else "",
            evidence=base.evidence,
        )
        subject = f"$KV.{nodes_bucket(self.settings.domain)}.{self.name}"
        await self._js.publish(subject, encode_node_status(status), timeout=2.0)


def _rss() -> int:
    rss: int = psutil.Process().memory_info().rss
    return rss


def _shapes(manifest: ModelManifest) -> list[tuple[str, list[int | None]]]:
    return [(t.dtype, list(t.shape[1:])) for t in manifest.inputs]
