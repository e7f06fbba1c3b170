"""The edge device on battery: the demo plays its battery manager (it reports the level in the
file the node reads), drops the level once the fleet's scenarios are done so that the node's
budget is under what it draws, and follows the node's ledger and governor for the live view and
the report (its status on ``mesh.status.<node>``, its steps on ``mesh.telemetry.<node>``)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nats.errors

from mesh import MeshError
from mesh.dev.demo.journal import Journal
from mesh.dev.demo.state import (
    BATTERY_HOURS,
    BATTERY_NODE,
    BATTERY_SQUEEZE,
    BATTERY_WH,
    BatteryView,
    DemoConfig,
)
from mesh.energy.profiles import RPI4
from mesh.topology import subjects
from mesh.wire import decode_node_status, decode_power_step

if TYPE_CHECKING:
    from mesh.dev.demo.testbed import Testbed

#: what the node's settings say of its battery and governor (``energy`` section).
GOVERNOR = {"hold_s": 2.0, "control_s": 2.0}


def battery_settings(level_path: Path) -> dict[str, Any]:
    return {
        "energy": {
            "profile": RPI4.name,
            "tick_s": 0.5,
            "window_s": 5.0,
            "budget": {
                "battery": {
                    "capacity_wh": BATTERY_WH,
                    "target_hours": BATTERY_HOURS,
                    "level_path": str(level_path),
                }
            },
            "governor": GOVERNOR,
        }
    }


def level_for(node_w: float, elapsed_s: float) -> float:
    """The battery level (percent) at which the node's budget is ``node_w``: the battery's
    average power over the time left is the budget plus the board's idle floor."""
    left_s = BATTERY_HOURS * 3600.0 - elapsed_s
    return 100.0 * (node_w + RPI4.idle_w) * left_s / (BATTERY_WH * 3600.0)


class BatteryWatch:
    def __init__(
        self, config: DemoConfig, testbed: Testbed, view: BatteryView, journal: Journal
    ) -> None:
        self.config = config
        self.testbed = testbed
        self.view = view
        self.journal = journal

    @property
    def level_path(self) -> Path:
        return self.testbed.battery_level

    async def report_level(self, percent: float) -> None:
        self.view.percent = percent
        await asyncio.to_thread(self.level_path.write_text, f"{percent:.2f}\n")

    async def poll(self) -> None:
        while True:
            with contextlib.suppress(nats.errors.Error, MeshError, asyncio.TimeoutError):
                await self.poll_once()
            await asyncio.sleep(self.config.poll_interval_s)

    async def poll_once(self) -> None:
        msg = await self.testbed.site_nc.request(subjects.status(BATTERY_NODE), b"", timeout=0.5)
        power = decode_node_status(msg.data).power
        if power is None:
            return
        view = self.view
        view.watts, view.budget_w = power.watts, power.budget_w
        view.steps, view.degrade_share = list(power.steps), power.degrade_share
        view.upstream_j, view.profile = power.upstream_j, power.profile
        # per answer over the run, not since the node started (loading, warm-up, gates)
        spent = power.compute_j + power.radio_j
        if view.start is None:
            view.start = (spent, power.answers)
        joules, answers = spent - view.start[0], power.answers - view.start[1]
        view.answers = answers
        view.joules_per_answer = joules / answers if answers > 0 else None
        if power.battery_percent is not None:
            view.percent = power.battery_percent

    async def on_step(self, msg: Any) -> None:
        try:
            event = decode_power_step(msg.data)
        except MeshError:
            return  # node events and drift events share the subject
        at = round(self.journal.now(), 2)
        self.view.changes.append((at, event.step, event.applied, event.watts, event.budget_w))
        budget = "-" if event.budget_w is None else f"{event.budget_w * 1000:.0f}"
        verb = "takes" if event.applied else "gives back"
        self.journal.event(
            f"[magenta]power[/]: {event.node} {verb} step {event.step} "
            f"({event.watts * 1000:.0f} mW against {budget} mW)"
        )

    async def squeeze(self, ready: asyncio.Event) -> None:
        """Once the fleet's scenarios are done (their canary's audits are its evidence), report
        the battery lower: the node's budget falls under what it draws."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), self.config.cut_to * self.config.duration_s)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                while self.view.watts is None:  # noqa: ASYNC110 (polls another process)
                    await asyncio.sleep(0.25)
        if self.view.watts is None:
            return
        target = BATTERY_SQUEEZE * self.view.watts
        percent = level_for(target, self.journal.now())
        await self.report_level(percent)
        self.journal.event(
            f"[magenta]battery[/]: {BATTERY_NODE} reports {percent:.0f}%: its budget falls to "
            f"{target * 1000:.0f} mW (it draws {self.view.watts * 1000:.0f} mW)"
        )
