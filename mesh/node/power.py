"""The node's energy: its ledger, its sensors and its power governor, on one tick.

Every ``tick_s`` the node reads its sensors (off the event loop: they are files), prices a
CPU-second from a compute sensor when it has one, settles the ledger, works out its budget (a
battery's from its level and the time left), lets the governor decide, and reports each step the
governor takes or gives back: a counter, a log line and a ``power_step`` event on
``mesh.telemetry.<node>``. The data plane, the drift watch and the event consumer read the
governor's ``Savings`` as they work; nothing here runs per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from mesh.energy.budget import PowerBudget
from mesh.energy.governor import Governor, Savings, StepChange, steps_text
from mesh.energy.ledger import EnergyLedger
from mesh.energy.sensors import LevelFile, Sensor, SensorSample, SensorSuite, probe
from mesh.energy.settings import EnergySettings
from mesh.lifecycle import Service, cancel_and_wait
from mesh.node.outcomes import TierIdentity
from mesh.observability.metrics import MeshMetrics
from mesh.wire import PowerStatus, PowerStepEvent, encode_power_step

log = logging.getLogger("mesh.energy")

Publish = Callable[[bytes], Awaitable[Any]]


class NodePower(Service):
    def __init__(
        self,
        settings: EnergySettings,
        identity: TierIdentity,
        metrics: MeshMetrics,
        *,
        publish: Publish | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.identity = identity
        self.metrics = metrics
        self.publish = publish
        self._clock = clock
        self.profile = settings.device(identity.zone)
        self.ledger = EnergyLedger(
            self.profile,
            sample_every=settings.sample_every,
            clock=clock,
            keep_s=max(120.0, 2 * max(settings.window_s, settings.governor.control_s)),
        )
        tier = identity.tier
        self.ledger.on_settled = lambda model, part, joules: metrics.energy.add(
            joules, tier, model, part
        )
        self.budget: PowerBudget | None = (
            settings.budget.budget() if settings.budget is not None else None
        )
        self.governor: Governor | None = (
            Governor(settings.governor.config(), clock) if self.budget is not None else None
        )
        self.savings = self.governor.savings if self.governor is not None else Savings()
        self.sensors = SensorSuite([], settings.proc_root)
        self.sample = SensorSample()
        #: the node's budget in watts at the last tick.
        self.budget_w: float | None = self.budget.watts if self.budget is not None else None
        #: every step change so far, in order, with the wall-clock time it was made.
        self.changes: list[tuple[float, StepChange]] = []
        self.started = clock()
        self._task: asyncio.Task[None] | None = None
        self._undo: list[Callable[[], None]] = []

    # --- lifecycle ---------------------------------------------------------------------------

    async def _start(self) -> None:
        s = self.settings
        found: list[Sensor] = await asyncio.to_thread(probe, s.sysfs_root) if s.sensors else []
        battery = s.budget.battery if s.budget is not None else None
        if battery is not None and battery.level_path is not None:
            found.insert(0, LevelFile(battery.level_path))
        self.sensors = SensorSuite(found, s.proc_root)
        log.info(
            "energy ledger of %s: profile %s (%.2f W a busy core, %s link), sensors %s, budget %s",
            self.identity.node,
            self.profile.name,
            self.profile.active_w_per_core,
            self.profile.link.name,
            self.sensors.names or "none found",
            "none" if s.budget is None else s.budget.model_dump(exclude_none=True),
        )
        self.metrics.refreshers.append(self._refresh)
        self._undo.append(lambda: self.metrics.refreshers.remove(self._refresh))
        self._gauge(
            "mesh_power_watts",
            "Average power of the node: its ledger's (compute and radio) over its window, and "
            "the device's as a sensor measured it",
            self._power_values,
        )
        self._gauge("mesh_power_budget_watts", "The node's power budget now", self._budget_values)
        self._gauge(
            "mesh_energy_upstream_joules",
            "What one request and its reply upstream cost the device's radio at the mean sizes "
            "seen here: its energy per answer if every request went up (cloud-only)",
            self._upstream_values,
        )
        self._gauge(
            "mesh_power_governor",
            "The power governor: steps of its ladder in effect (1 each), the share of unsure "
            "requests answered here degraded 'power', and the battery level in percent",
            self._governor_values,
        )
        self._task = asyncio.create_task(self._run(), name=f"power-{self.identity.node}")

    async def _stop(self) -> None:
        await cancel_and_wait([t for t in (self._task,) if t is not None])
        for undo in self._undo:
            undo()

    def _gauge(self, name: str, description: str, source: Any) -> None:
        self._undo.append(self.metrics.observe_gauge(name, description, source))

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.settings.tick_s)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("energy tick of node %s failed", self.identity.node)

    # --- one tick ----------------------------------------------------------------------------

    async def tick(self) -> list[StepChange]:
        now = self._clock()
        if self.sensors.sensors:
            self.sample = await asyncio.to_thread(self.sensors.sample, now)
            self.ledger.calibrate(self.sample.w_per_core, self.sample.compute_source)
        self.ledger.settle(self.answers())
        governor, budget = self.governor, self.budget
        if governor is None or budget is None:
            return []
        watts = self.ledger.watts(self.settings.governor.control_s)
        if watts is None:
            return []
        elapsed = now - self.started
        self.budget_w = budget.node_w(
            elapsed_s=elapsed,
            idle_w=self.profile.idle_w,
            level_percent=self.sample.battery_percent,
            spent_j=self.ledger.total_j + self.profile.idle_w * elapsed,
        )
        changes = governor.decide(watts, self.budget_w)
        for change in changes:
            await self._report(change)
        return changes

    async def _report(self, change: StepChange) -> None:
        wall = time.time()
        self.changes.append((wall, change))
        governor = self.governor
        assert governor is not None
        action = "applied" if change.applied else "released"
        self.metrics.power_steps.add(1, self.identity.tier, change.step.value, action)
        log.warning(
            "node %s %s power step %s at %.4f W against a budget of %s W (steps now: %s)",
            self.identity.node,
            "takes" if change.applied else "gives back",
            change.step.value,
            change.watts,
            "-" if change.budget_w is None else f"{change.budget_w:.4f}",
            steps_text(governor.steps),
        )
        if self.publish is None:
            return
        event = PowerStepEvent(
            node=self.identity.node,
            tier=self.identity.tier,
            step=change.step.value,
            applied=change.applied,
            watts=change.watts,
            budget_w=change.budget_w,
            saved_w=change.saved_w,
            steps=[s.value for s in governor.steps],
            degrade_share=governor.savings.degrade_share,
            time=wall,
        )
        try:
            await self.publish(encode_power_step(event))
        except Exception as exc:
            log.debug("power step of node %s not published: %r", self.identity.node, exc)

    def answers(self) -> dict[str, float]:
        """Answers per model so far at this tier: every request answered, but the errors."""
        tier = self.identity.tier
        out: dict[str, float] = {}
        for (at, model, outcome, _), count in list(self.metrics.requests.values.items()):
            if at == tier and outcome != "error":
                out[model] = out.get(model, 0.0) + count
        return out

    def _refresh(self) -> None:
        self.ledger.settle(self.answers())

    # --- what it reports ---------------------------------------------------------------------

    def status(self) -> PowerStatus:
        ledger = self.ledger
        ledger.settle(self.answers())
        totals = ledger.totals()
        governor = self.governor
        return PowerStatus(
            profile=self.profile.name,
            compute_source=ledger.compute_source,
            watts=ledger.watts(self.settings.window_s),
            window_s=self.settings.window_s,
            budget_w=self.budget_w,
            steps=[s.value for s in governor.steps] if governor is not None else [],
            degrade_share=self.savings.degrade_share,
            unreachable=governor.unreachable if governor is not None else False,
            compute_j=totals.compute_j,
            radio_j=totals.radio_j,
            answers=int(totals.answers),
            joules_per_answer=ledger.joules_per_answer(),
            upstream_j=ledger.upstream_joules() if totals.radio.received else None,
            battery_percent=self.sample.battery_percent,
            sensor_w=self.sample.device_w,
            sensors=self.sensors.names,
        )

    def _power_values(self) -> list[tuple[float, dict[str, str]]]:
        tier = self.identity.tier
        rows: list[tuple[float, dict[str, str]]] = []
        watts = self.ledger.watts(self.settings.window_s)
        if watts is not None:
            rows.append((watts, {"tier": tier, "source": "ledger"}))
        if self.sample.device_w is not None:
            rows.append((self.sample.device_w, {"tier": tier, "source": "sensor"}))
        return rows

    def _upstream_values(self) -> list[tuple[float, dict[str, str]]]:
        if not self.ledger.totals().radio.received:
            return []
        return [(self.ledger.upstream_joules(), {"tier": self.identity.tier})]

    def _budget_values(self) -> list[tuple[float, dict[str, str]]]:
        if self.budget_w is None:
            return []
        return [(self.budget_w, {"tier": self.identity.tier})]

    def _governor_values(self) -> list[tuple[float, dict[str, str]]]:
        tier = self.identity.tier
        rows: list[tuple[float, dict[str, str]]] = []
        governor = self.governor
        if governor is not None:
            taken = set(governor.steps)
            for step in governor.config.ladder:
                rows.append((float(step in taken), {"tier": tier, "figure": "step", "step": step}))
            rows.append((self.savings.degrade_share, {"tier": tier, "figure": "degrade_share"}))
        if self.sample.battery_percent is not None:
            rows.append((self.sample.battery_percent, {"tier": tier, "figure": "battery_percent"}))
        return rows
