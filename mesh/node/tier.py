"""A tier node: one NATS connection, its models, the data plane, its transports.

The same ``TierNode`` runs on every tier; the settings make it an edge, a gateway or a cloud
node. Its parts are async context managers composed with an ``AsyncExitStack`` and torn down in
reverse: stop taking requests, let those in flight finish, stop the models, close NATS.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack

from nats.aio.client import Client as NATS

from mesh import wire
from mesh.errors import InvalidArgumentError
from mesh.events.consumer import EventConsumer
from mesh.fleet.agent import FleetAgent, restore
from mesh.lifecycle import Service, cancel_and_wait
from mesh.node.breaker import BreakerState, CircuitBreaker
from mesh.node.dataplane import DataPlane
from mesh.node.latency import LatencyTracker
from mesh.node.outcomes import ModelTable, TierIdentity
from mesh.node.power import NodePower
from mesh.node.repository import load_model
from mesh.node.runtime import ModelRunner
from mesh.node.served import ServedModel
from mesh.node.shadow import ShadowRunner
from mesh.node.upstream import UpstreamLink
from mesh.observability.metrics import GaugeSource, MeshMetrics
from mesh.review.feed import ReviewFeed
from mesh.settings import ModelSettings, NodeSettings
from mesh.topology import subjects
from mesh.transport.connection import connect
from mesh.transport.discovery import NodeRegistration, package_version
from mesh.transport.endpoint import NatsEndpoint
from mesh.transport.guard import ConnectionWatch
from mesh.transport.hardexamples import HardExampleCollector, HardExampleInbox, HardExampleStore
from mesh.transport.http import HttpServer, Readiness, create_app
from mesh.transport.upstream import NatsUpstream
from mesh.wire import NodeStatus

log = logging.getLogger("mesh.node")

_STATE_VALUE = {BreakerState.CLOSED: 0.0, BreakerState.HALF_OPEN: 1.0, BreakerState.OPEN: 2.0}

#: how often the drift scores are compared with the threshold (they are not, per request).
DRIFT_CHECK_SECONDS = 0.5


class TierNode(Service):
    """``hosted``: the node runs inside an application's process, which asks its data plane
    directly (``mesh.sdk.local``): no NATS endpoint takes requests and no events are consumed;
    every other part (upstream, breakers, hard examples, review, fleet agent, discovery,
    metrics) is the same."""

    def __init__(
        self, settings: NodeSettings, *, metrics: MeshMetrics, hosted: bool = False
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.hosted = hosted
        self.models = ModelTable()
        self.readiness = Readiness()
        self.nc: NATS | None = None
        self.dataplane: DataPlane | None = None
        self.upstream: UpstreamLink | None = None
        self.store: HardExampleStore | None = None
        self.inbox: HardExampleInbox | None = None
        self.collector: HardExampleCollector | None = None
        self.endpoint: NatsEndpoint | None = None
        self.http: HttpServer | None = None
        self.registration: NodeRegistration | None = None
        self.watch: ConnectionWatch | None = None
        self.agent: FleetAgent | None = None
        self.events: EventConsumer | None = None
        self.review: ReviewFeed | None = None
        #: versions run in shadow beside the served ones (a rollout's shadow stage).
        self.shadow = ShadowRunner(
            cpu_share=settings.shadow.cpu_share, max_queue=settings.shadow.max_queue
        )
        #: the energy ledger and power governor (None: ``energy.enabled`` is off).
        self.power: NodePower | None = None
        #: the settings each served model was loaded with (the agent derives new versions' from it)
        self._model_settings: dict[str, ModelSettings] = {}
        #: the runners of the versions it serves, started and not yet stopped: stopped with
        #: the node. One list rather than a callback on the exit stack per swap, which kept
        #: every version swapped out (its session, its weights) alive until the node stopped.
        self._runners: list[ModelRunner] = []
        #: called once the NATS connection is found dead (``mesh node`` exits for its supervisor).
        self.on_fatal: Callable[[str], None] | None = None
        self.drift_threshold = settings.drift_threshold
        self._stack = AsyncExitStack()
        self.readiness.add("nats", self._nats_problem)
        self.readiness.add("models", self._models_problem)

    @property
    def identity(self) -> TierIdentity:
        s = self.settings
        return TierIdentity(tier=s.tier, node=s.node, zone=s.zone, max_hops=s.max_hops)

    async def _start(self) -> None:
        """Its parts in order, each torn down in reverse: health first, then the connection,
        the models, the request path, the ways in (requests, events), discovery and the fleet
        agent."""
        s = self.settings
        stack = self._stack
        if s.http_port is not None:
            app = create_app(f"mesh-{s.tier}", self.readiness)
            self.http = HttpServer(app, s.http_host, s.http_port)
            await stack.enter_async_context(self.http)
        self.nc = await self._connect()
        stack.push_async_callback(self._close_nats)
        self.watch = ConnectionWatch(
            self.nc,
            on_dead=self._connection_dead,
            interval_s=s.nats.watch_interval_s,
            timeout_s=s.nats.watch_timeout_s,
        )
        await stack.enter_async_context(self.watch)
        if s.energy.enabled:
            nc = self.nc
            self.power = NodePower(
                s.energy,
                self.identity,
                self.metrics,
                publish=lambda data: nc.publish(subjects.telemetry(s.node), data),
            )
            await stack.enter_async_context(self.power)
        models = await self._load_models(stack)
        await stack.enter_async_context(self.shadow)
        if s.upstream is not None:
            self.upstream = self._make_upstream(self.nc)
        if s.review.enabled:
            self.review = ReviewFeed(
                self.nc,
                identity=self.identity,
                site=s.fleet.site_name if s.fleet.enabled else (s.hard_examples.domain or ""),
                entry=s.entry,
                top=s.upstream is None,
                models=self.models,
                settings=s.review,
                metrics=self.metrics,
                shadow=self.shadow,
            )
            await stack.enter_async_context(self.review)
        if s.hard_examples.enabled:
            await self._start_hard_examples(stack, self.nc)
        await self._start_request_path(stack, self.nc, models)
        await self._start_registration_and_agent(stack, self.nc)
        self._gauge(
            "mesh_drift_psi",
            "Population stability index of recent inputs and confidences against the training "
            "reference, by model and signal (0.1 moderate, 0.25 major)",
            self.drift_values,
        )
        watch = asyncio.create_task(self._watch_drift(self.nc))
        stack.push_async_callback(cancel_and_wait, watch)
        log.info(
            "node %s serving tier %s (models %s, upstream %s)",
            s.node,
            s.tier,
            self.models.versions(),
            s.upstream.tier if s.upstream else None,
        )

    async def _load_models(self, stack: AsyncExitStack) -> list[ModelSettings]:
        """Every model it serves, loaded and warm (the fleet's cached versions first)."""
        s = self.settings
        models = s.models
        if s.fleet.enabled:
            models = await asyncio.to_thread(restore, s.fleet, list(s.models))
        stack.push_async_callback(self._stop_runners)
        for model_settings in models:
            served = await load_model(model_settings, s.tier)
            await self._start_runner(served)
            self._meter(served)
            self.models.put(served)
            self._model_settings[model_settings.name] = model_settings
        self._gauge(
            "mesh_model_info",
            "Model versions in use: 1 per (tier, model, version) served now",
            lambda: [
                (1.0, {"tier": s.tier, "model": name, "version": version})
                for name, version in self.models.versions().items()
            ],
        )
        return models

    async def _start_request_path(
        self, stack: AsyncExitStack, nc: NATS, models: list[ModelSettings]
    ) -> None:
        """The data plane, and the ways in: the NATS endpoint, and events on the entry tier
        (none for a hosted node: its application asks the data plane)."""
        s = self.settings
        self.dataplane = DataPlane(
            self.identity,
            self.models,
            self.upstream,
            self.store,
            metrics=self.metrics,
            peers=NatsUpstream(nc, s.tier, from_tier=s.tier, pass_on=False),
            review=self.review,
            shadow=self.shadow,
            energy=self.power.ledger if self.power is not None else None,
            savings=self.power.savings if self.power is not None else None,
        )
        await stack.enter_async_context(self.dataplane)
        if self.hosted:
            return
        self.endpoint = NatsEndpoint(
            nc,
            self.dataplane,
            entry=s.entry,
            max_inflight=s.max_inflight,
            max_inflight_per_caller=min(s.max_inflight_per_caller, s.max_inflight),
            max_batch=max((m.batching.max_batch_size for m in models), default=1),
            drain_seconds=s.nats.drain_timeout_s,
            metrics=self.metrics,
        )
        await stack.enter_async_context(self.endpoint)
        if s.entry and s.events.enabled:
            self.events = EventConsumer(
                nc,
                self.dataplane,
                lambda: list(self.models.versions()),
                tier=s.tier,
                node=s.node,
                settings=s.events,
                domain=None,
                metrics=self.metrics,
            )
            await stack.enter_async_context(self.events)

    async def _start_registration_and_agent(self, stack: AsyncExitStack, nc: NATS) -> None:
        """Discovery (``$SRV``, ``mesh.status.<node>``) and, with the fleet on, its agent."""
        s = self.settings
        self.registration = NodeRegistration(
            nc,
            tier=s.tier,
            node=s.node,
            zone=s.zone,
            models=self.models.versions(),
            status=self.status,
            entry=s.entry,
        )
        await stack.enter_async_context(self.registration)
        if s.fleet.enabled:
            self.agent = FleetAgent(
                nc,
                self,
                s.fleet,
                name=s.node,
                tier=s.tier,
                metrics=self.metrics,
                mesh_version=lambda: asyncio.to_thread(package_version),
                device=self.power.profile if self.power is not None else None,
            )
            await stack.enter_async_context(self.agent)

    async def _connect(self) -> NATS:
        s = self.settings
        return await connect(
            s.nats,
            f"mesh-{s.tier}-{s.node}",
            error_cb=self._on_nats_error,
            disconnected_cb=self._on_disconnect,
            reconnected_cb=self._on_reconnect,
        )

    async def swap_model(self, settings: ModelSettings, drain_seconds: float = 10.0) -> str | None:
        """Serve another version of a model without dropping a request; returns the old version.

        The new version is loaded and warmed beside the old one, then takes new requests at
        once. A batch takes its model from the table and, when it runs on the event loop, runs
        it with no await in between; batches run in the model's worker are counted in
        ``in_flight``, so once that is 0 nothing can still reach the old version."""
        assert self.running, "start the node first"
        served = await load_model(settings, self.settings.tier)
        await self._start_runner(served)
        self._meter(served)
        old = self.models.put(served)
        self._model_settings[settings.name] = settings
        await self.shadow.serving_changed(served.name, served.version)
        if old is None:
            if self.endpoint is not None:
                await self.endpoint.serve_model(served.name)
            if self.events is not None:
                await self.events.consume(served.name)
            return None
        try:
            async with asyncio.timeout(drain_seconds):
                await old.wait_idle()
        except TimeoutError:
            log.warning(
                "old version of %s still busy after %.0f s; stopping it", old.name, drain_seconds
            )
        await old.runner.stop()
        if old.runner in self._runners:  # not when the node stopped meanwhile
            self._runners.remove(old.runner)
        log.info(
            "node %s swapped %s from version %s to %s",
            self.settings.node,
            served.name,
            old.version,
            served.version,
        )
        return old.version

    async def shadow_model(self, settings: ModelSettings) -> str | None:
        """Run another version of a served model in shadow beside it: loaded and warmed, then
        given copies of the served version's inputs after their replies; it never answers.
        Returns the version it replaces in shadow."""
        assert self.running, "start the node first"
        serving = self.models.get(settings.name)
        if serving is None:
            raise InvalidArgumentError(
                f"node {self.settings.node} serves no {settings.name} to run a shadow beside"
            )
        served = await load_model(settings, self.settings.tier)
        await served.runner.start()
        old = await self.shadow.put(served, serving.version)
        log.info(
            "node %s runs %s@%s in shadow beside %s",
            self.settings.node, served.name, served.version, serving.version,
        )  # fmt: skip
        return old

    async def drop_shadow(self, name: str) -> str | None:
        """Stop running ``name``'s shadow version; the version it ran."""
        return await self.shadow.remove(name)

    def shadow_versions(self) -> dict[str, str]:
        return self.shadow.versions()

    async def _start_runner(self, served: ServedModel) -> None:
        await served.runner.start()
        self._runners.append(served.runner)

    async def _stop_runners(self) -> None:
        while self._runners:
            await self._runners.pop().stop()

    def _meter(self, served: ServedModel) -> None:
        if self.power is not None:
            served.meter = self.power.ledger.meter(served.name)

    def _make_upstream(self, nc: NATS) -> UpstreamLink:
        s = self.settings
        assert s.upstream is not None
        latency = LatencyTracker(max_age_seconds=10.0)

        def on_transition(name: str, old: BreakerState, new: BreakerState) -> None:
            if new is BreakerState.HALF_OPEN:
                # Latencies from before the breaker opened say nothing about the link now.
                latency.clear()
            self.metrics.breaker_transitions.add(1, s.tier, name, old.value, new.value)

        breaker = CircuitBreaker(
            s.upstream.breaker,
            name=s.upstream.tier,
            on_transition=on_transition,
        )
        self._gauge(
            "mesh_breaker_state",
            "Circuit breaker state per upstream: 0 closed, 1 half-open, 2 open",
            lambda: [(_STATE_VALUE[breaker.state], {"tier": s.tier, "upstream": breaker.name})],
        )
        return UpstreamLink(
            NatsUpstream(nc, s.upstream.tier, from_tier=s.tier),
            zone=s.upstream.zone,
            timeout_ms=s.upstream.timeout_ms,
            reserve_ms=s.upstream.reserve_ms,
            breaker=breaker,
            latency=latency,
        )

    async def _start_hard_examples(self, stack: AsyncExitStack, nc: NATS) -> None:
        """This tier's own store (when it has a tier above) and its collector of the tier
        below's (when it has one)."""
        s = self.settings
        if s.upstream is not None:
            self.store = HardExampleStore(
                nc, tier=s.tier, node=s.node, settings=s.hard_examples, metrics=self.metrics
            )
            await stack.enter_async_context(self.store)
            self._gauge(
                "mesh_hard_example_backlog",
                "Hard examples stored locally, not yet taken up by the tier above",
                self._backlog_values,
            )
        if s.hard_examples.collect_from is not None:
            self.inbox = HardExampleInbox(nc, tier=s.tier, settings=s.hard_examples)
            await stack.enter_async_context(self.inbox)
            self.collector = HardExampleCollector(
                nc,
                tier=s.tier,
                below=s.hard_examples.collect_from,
                settings=s.hard_examples,
                metrics=self.metrics,
                # what reaches the top tier reaches the hub: a case for a person
                on_taken=self.review.hard_example
                if self.review is not None and s.upstream is None
                else None,
            )
            await stack.enter_async_context(self.collector)

    def _gauge(self, name: str, description: str, source: GaugeSource) -> None:
        self._stack.callback(self.metrics.observe_gauge(name, description, source))

    def _backlog_values(self) -> list[tuple[float, dict[str, str]]]:
        if self.store is None:
            return []
        return [(float(self.store.backlog), {"tier": self.settings.tier})]

    def served_versions(self) -> dict[str, str]:
        return self.models.versions()

    def model_settings(self, name: str) -> ModelSettings | None:
        return self._model_settings.get(name)

    def status(self) -> NodeStatus:
        breakers: dict[str, str] = {}
        if self.upstream is not None:
            breakers[self.upstream.breaker.name] = self.upstream.breaker.state.value
        problems = self.readiness.problems()
        drift = [psi for psi, _ in self.drift_values()]
        evidence = {}
        for model in list(self.models.models.values()):
            scores = model.drift.scores() if model.drift is not None else {}
            evidence[model.name] = model.evidence.snapshot(
                model.version, max(scores.values()) if scores else None
            )
        return NodeStatus(
            node=self.settings.node,
            tier=self.settings.tier,
            models=self.models.versions(),
            breakers=breakers,
            backlog=self.store.backlog if self.store is not None else 0,
            ready=not problems,
            time=time.time(),
            zone=self.settings.zone,
            problems=[f"{k}: {v}" for k, v in problems.items()],
            drift=max(drift) if drift else None,
            evidence=evidence,
            answered=self.endpoint.answered.snapshot() if self.endpoint is not None else None,
            shadows=self.shadow.snapshot(),
            power=self.power.status() if self.power is not None else None,
        )

    def drift_values(self) -> list[tuple[float, dict[str, str]]]:
        values: list[tuple[float, dict[str, str]]] = []
        for model in list(self.models.models.values()):
            if model.drift is None:
                continue
            for signal, psi in model.drift.scores().items():
                attributes = {"tier": self.settings.tier, "model": model.name, "signal": signal}
                values.append((psi, attributes))
        return values

    async def _watch_drift(self, nc: NATS) -> None:
        while True:
            await asyncio.sleep(DRIFT_CHECK_SECONDS)
            # in a call of its own, so no model is held between checks (one swapped out meanwhile
            # is let go at once)
            await self._check_drift(nc)

    async def _check_drift(self, nc: NATS) -> None:
        paused = self.power is not None and self.power.savings.drift_paused
        for model in list(self.models.models.values()):
            if model.drift is None:
                continue
            if paused:
                # the power governor's drift step: no drift share offered for review
                if self.review is not None:
                    self.review.set_drift(model.name, None)
                continue
            for signal in model.drift.crossed(self.drift_threshold):
                psi = model.drift.scores()[signal]
                await self._report_drift(nc, model, signal, psi)
            if self.review is not None:
                raised = model.drift.raised
                scores = model.drift.scores() if raised else {}
                self.review.set_drift(
                    model.name, max((scores.get(sig, 0.0) for sig in raised), default=None)
                )

    async def _report_drift(self, nc: NATS, model: ServedModel, signal: str, psi: float) -> None:
        s = self.settings
        event = wire.DriftEvent(
            node=s.node,
            tier=s.tier,
            model=model.name,
            model_version=model.version,
            signal=signal,
            psi=psi,
            threshold=self.drift_threshold,
            time=time.time(),
        )
        log.warning(
            "drift on %s@%s at node %s: %s PSI %.3f over %.2f",
            model.name,
            model.version,
            s.node,
            signal,
            psi,
            self.drift_threshold,
            extra={"fields": dataclasses.asdict(event)},
        )
        try:
            await nc.publish(subjects.telemetry(s.node), wire.encode_drift_event(event))
        except Exception:
            log.exception("could not publish the drift event of node %s", s.node)

    def _nats_problem(self) -> str | None:
        if self.watch is not None and self.watch.dead is not None:
            return self.watch.dead
        if self.nc is None or not self.nc.is_connected:
            return "not connected to NATS"
        return None

    def _connection_dead(self, reason: str) -> None:
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def _models_problem(self) -> str | None:
        if self.dataplane is None or (self.endpoint is None and not self.hosted):
            return "models loading"
        cold = [m.name for m in self.models.models.values() if not m.runner.warm]
        return f"models not warm: {cold}" if cold else None

    async def _on_nats_error(self, exc: Exception) -> None:
        log.warning("NATS error on node %s: %r", self.settings.node, exc)

    async def _on_disconnect(self) -> None:
        log.warning("node %s disconnected from NATS", self.settings.node)

    async def _on_reconnect(self) -> None:
        log.info("node %s reconnected to NATS", self.settings.node)

    async def _close_nats(self) -> None:
        nc, self.nc = self.nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await nc.drain()
            with contextlib.suppress(Exception):
                await nc.close()

    async def _stop(self) -> None:
        await self._stack.aclose()
