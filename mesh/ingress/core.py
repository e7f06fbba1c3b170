"""The ingress: Open Inference Protocol calls enter the mesh as SDK requests do.

``Ingress`` holds one ``MeshClient`` (the ingress identity), the manifests of the models it
describes, and what the entry tier serves now (asked of the nodes through the NATS micro
services API every ``refresh_s``). Each call is checked against the manifest, sent with its
budget, residency, id and the caller's trace context, and the cascade's answer comes back with
the mesh's answer metadata in ``parameters``. The HTTP and gRPC adapters are thin over this.

The client may host an edge tier (``mesh ingress --local``, ``MeshClient.host``): then the
models it serves are answered in this process, as MLServer or Triton answer theirs, and what it
is unsure of escalates over NATS as an edge node's requests do. What it serves counts as served
by the entry tier here (metadata, readiness, versions); a call pinned to a version it does not
serve goes over NATS to the entry tier's nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from mesh.errors import InvalidArgumentError, MeshError, UnavailableError
from mesh.ingress import oip
from mesh.lifecycle import Service, cancel_and_wait
from mesh.models.manifest import ModelManifest
from mesh.node.policy import RESIDENCY_LABELS
from mesh.observability import tracing
from mesh.sdk.client import MeshClient
from mesh.topology import subjects
from mesh.topology.parameters import HUMAN_REVIEW
from mesh.transport.discovery import SERVICE_NAME, package_version
from mesh.wire import decode_node_status

log = logging.getLogger("mesh.ingress")
TRACER = trace.get_tracer("mesh.ingress")

SERVER_NAME = "edge-mesh"
EXTENSIONS = ["binary_tensor_data", "mesh_cascade"]
#: bytes a request's envelope takes on the wire besides its tensors (names, ids, trace headers).
WIRE_OVERHEAD = 4096


@dataclass
class ServingState:
    """What the entry tier serves now: model name to the versions its nodes serve."""

    models: dict[str, set[str]] = field(default_factory=dict)
    nodes: int = 0
    #: monotonic time of the last refresh that heard from the fleet.
    seen_at: float | None = None


class Ingress(Service):
    def __init__(
        self,
        client: MeshClient,
        manifests: Mapping[str, ModelManifest],
        *,
        default_budget_ms: float = 1000.0,
        max_budget_ms: float = 60_000.0,
        refresh_s: float = 2.0,
        stale_after_s: float = 10.0,
    ) -> None:
        self.client = client
        self.manifests = dict(manifests)
        self.default_budget_ms = default_budget_ms
        self.max_budget_ms = max_budget_ms
        self.refresh_s = refresh_s
        self.stale_after_s = stale_after_s
        self.state = ServingState()
        self._task: asyncio.Task[None] | None = None
        self.version = "0.0.0"

    async def _start(self) -> None:
        self.version = await asyncio.to_thread(package_version)
        await self.refresh()
        self._task = asyncio.create_task(self._refresh_loop(), name="ingress-refresh")

    async def _stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task])

    # --- serving state ----------------------------------------------------------------------

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("serving state not refreshed: %r", exc)

    async def refresh(self, window_s: float = 0.25) -> None:
        """Ask every node (``$SRV.INFO.mesh-node``), then each entry node's status."""
        nc = self.client.nc
        if not nc.is_connected:
            return
        inbox = nc.new_inbox()
        replies: list[bytes] = []

        async def collect(msg: Any) -> None:
            replies.append(msg.data)

        sub = await nc.subscribe(inbox, cb=collect)
        try:
            await nc.publish(f"$SRV.INFO.{SERVICE_NAME}", b"", reply=inbox)
            await asyncio.sleep(window_s)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        entry_nodes: list[str] = []
        for data in replies:
            try:
                info = json.loads(data)
                meta = info.get("metadata") or {}
            except (ValueError, AttributeError):
                continue
            if meta.get("entry") == "true" and isinstance(meta.get("node"), str):
                entry_nodes.append(meta["node"])
        models: dict[str, set[str]] = {}
        for node in entry_nodes:
            try:
                msg = await nc.request(subjects.status(node), b"", timeout=0.5)
                status = decode_node_status(msg.data)
            except Exception:
                continue
            if not status.ready:
                continue
            for name, version in status.models.items():
                models.setdefault(name, set()).add(version)
        self.state = ServingState(
            models=models, nodes=len(entry_nodes), seen_at=time.monotonic() if replies else None
        )

    def live(self) -> bool:
        return self.running

    def _hosted(self, model: str) -> str | None:
        """The version of ``model`` the edge hosted in this process answers now, if any."""
        local = self.client.local
        return local.version_of(model) if local is not None else None

    def _remote_ready(self) -> bool:
        s = self.state
        fresh = s.seen_at is not None and time.monotonic() - s.seen_at < self.stale_after_s
        return self.client.nc.is_connected and fresh and bool(s.models)

    def ready(self) -> bool:
        """The hosted edge serves a model, or: connected, and the entry tier answered lately
        with a model it serves. (A hosted edge answers what it is sure of with NATS down; what
        it is unsure of then comes back degraded, as from an edge node.)"""
        local = self.client.local
        return (local is not None and local.serving()) or self._remote_ready()

    def problems(self) -> dict[str, str]:
        if self.ready():
            return {}
        if not self.client.nc.is_connected:
            return {"nats": "not connected to NATS"}
        return {"mesh": "no node of the entry tier reported a model it serves"}

    def _served(self, model: str) -> set[str]:
        served = set(self.state.models.get(model, ()))
        hosted = self._hosted(model)
        if hosted is not None:
            served.add(hosted)
        return served

    def versions(self, model: str) -> list[str]:
        """The versions of ``model`` the hosted edge or a ready node of the entry tier serves
        now."""
        return sorted(self._served(model))

    def model_ready(self, model: str, version: str | None) -> bool:
        served = self._served(model)
        if not served or not self.ready():
            return False
        return version in (None, "") or version in served

    def require_model(self, model: str, version: str | None) -> ModelManifest | None:
        """The model's manifest (None when only the fleet knows it); NOT_FOUND when neither
        the ingress nor the entry tier knows the model or that version (a version is known
        when a node serves it or it is the manifest's, ready or not)."""
        manifest = self.manifests.get(model)
        if manifest is None and not self._served(model):
            raise oip.not_found(model, None, [])
        if version:
            known = self._served(model)
            if manifest is not None:
                known.add(manifest.version)
            if version not in known:
                raise oip.not_found(model, version, self.versions(model))
        return manifest

    def require_ready_version(self, model: str, version: str) -> None:
        """UNAVAILABLE unless the hosted edge or a ready node of the entry tier serves
        ``version`` now."""
        if version not in self._served(model):
            raise UnavailableError(
                f"model {model} version {version} is not ready: no node of the entry tier "
                f"serves it now (ready: {self.versions(model)})"
            )

    # --- metadata ---------------------------------------------------------------------------

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.version, "extensions": list(EXTENSIONS)}

    def model_metadata(self, model: str, version: str | None) -> dict[str, Any]:
        manifest = self.require_model(model, version)
        if manifest is None:
            return {"name": model, "versions": self.versions(model), "platform": "", "inputs": [],
                    "outputs": []}  # fmt: skip
        return oip.metadata(manifest, self.versions(model))

    # --- inference --------------------------------------------------------------------------

    async def infer(
        self,
        request: oip.OipRequest,
        *,
        traceparent: Mapping[str, str] | None = None,
        budget_ms: float | None = None,
        residency: str | None = None,
        span_name: str = "infer",
    ) -> oip.OipResponse:
        """Check, send, answer. ``traceparent`` holds the caller's W3C trace headers."""
        manifest = self.require_model(request.model, request.version)
        if request.version:
            self.require_ready_version(request.model, request.version)
        oip.check_against(request, manifest)
        self._check_size(request)
        budget = self._budget(request, budget_ms)
        zone = self._residency(request, residency)
        if not traceparent:
            if not tracing.wanted_here():
                return await self._ask(request, budget, zone)
            return await self._traced(request, budget, zone, span_name)
        token = otel_context.attach(tracing.extract(traceparent))
        try:
            return await self._traced(request, budget, zone, span_name)
        finally:
            otel_context.detach(token)

    async def _traced(
        self, request: oip.OipRequest, budget: float, zone: str, span_name: str
    ) -> oip.OipResponse:
        if tracing.wanted_here():
            with TRACER.start_as_current_span(
                f"{span_name} {request.model}",
                kind=trace.SpanKind.SERVER,
                attributes={"mesh.model": request.model, "mesh.ingress": True},
            ):
                return await self._ask(request, budget, zone)
        return await self._ask(request, budget, zone)

    async def _ask(self, request: oip.OipRequest, budget: float, zone: str) -> oip.OipResponse:
        inputs = {t.name: t.data for t in request.inputs}
        # a call pinned to a version the hosted edge does not answer goes to the entry tier's
        # nodes (require_ready_version saw one of them serve it)
        pinned = request.version
        local = not pinned or self._hosted(request.model) == pinned
        result = await self.client.infer(
            request.model,
            inputs,
            budget_ms=budget,
            residency=zone,
            request_id=request.id or None,
            # the caller's wish, checked by the client: a bad value is INVALID_ARGUMENT
            human_review=str(request.parameters.get(HUMAN_REVIEW, "auto")),
            local=local,
        )
        if pinned and result.model_version != pinned:
            raise UnavailableError(
                f"model {request.model} version {request.version} did not answer: the request "
                f"went on to {result.tier} node {result.node}, which serves "
                f"{result.model_version}; a request for one version is never answered by "
                "another (leave the version out for the cascade's answer)"
            )
        outputs, binary = oip.select_outputs(request, result.outputs)
        parameters: dict[str, Any] = {
            "tier": result.tier,
            "node": result.node,
            "model_version": result.model_version,
            "confidence": float(result.confidence),
            "confidence_kind": result.confidence_kind,
            "degraded": bool(result.degraded),
            "reason": result.reason or "",
            "path": ">".join(f"{h.tier}:{h.node}" for h in result.path),
            "labels": ",".join(str(label) for label in result.labels),
        }
        return oip.OipResponse(
            model=request.model,
            version=result.model_version,
            id=request.id or result.id,
            outputs=outputs,
            parameters=parameters,
            binary=binary,
        )

    def _check_size(self, request: oip.OipRequest) -> None:
        size = sum(t.data.nbytes for t in request.inputs) + WIRE_OVERHEAD
        limit = self.client.nc.max_payload
        if size > limit:
            raise oip.TooLargeError(
                f"the inputs take {size - WIRE_OVERHEAD} bytes; a request through the mesh "
                f"carries at most about {limit - WIRE_OVERHEAD} (its NATS max_payload)"
            )

    def _budget(self, request: oip.OipRequest, given: float | None) -> float:
        value: Any = request.parameters.get(oip.BUDGET_PARAMETER, given)
        if value is None:
            return self.default_budget_ms
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise InvalidArgumentError(f"budget {value[:40]!r} is not a number") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise InvalidArgumentError(f"budget must be a positive number of ms, got {value!r}")
        if value > self.max_budget_ms:
            raise InvalidArgumentError(
                f"budget {value} ms is over the ingress's limit of {self.max_budget_ms:g} ms"
            )
        return float(value)

    @staticmethod
    def _residency(request: oip.OipRequest, given: str | None) -> str:
        value = request.parameters.get(oip.RESIDENCY_PARAMETER, given) or "any"
        if value not in RESIDENCY_LABELS:
            raise InvalidArgumentError(
                f"residency {str(value)[:40]!r} is not one of {sorted(RESIDENCY_LABELS)}"
            )
        return str(value)


__all__ = ["Ingress", "MeshError", "ServingState"]
