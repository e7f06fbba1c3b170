"""What the fleet did, as its nodes tell it: versions swapped in, artifacts refused, nodes seen."""

from __future__ import annotations

from typing import Any

import nats.errors
import nats.js.errors

from mesh import MeshError
from mesh.dev.demo.journal import Journal
from mesh.dev.demo.report import FleetSummary
from mesh.dev.demo.testbed import Testbed
from mesh.fleet import registry
from mesh.wire import decode_node_event


class FleetWatch:
    def __init__(self, testbed: Testbed, journal: Journal) -> None:
        self.testbed = testbed
        self.journal = journal
        self.swaps = 0
        self.rejected = 0
        self.lines: list[str] = []

    async def on_telemetry(self, msg: Any) -> None:
        try:
            event = decode_node_event(msg.data)
        except MeshError:
            return  # drift events share the subject
        if event.event == "swapped":
            self.swaps += 1
            line = f"{event.node} swapped {event.model} {event.previous} -> {event.version}"
            self.journal.event(f"[cyan]fleet[/]: {line}, no request dropped")
        elif event.event == "rejected":
            self.rejected += 1
            line = f"{event.node} refused {event.model}@{event.version}: {event.reason}"
            self.journal.event(f"[yellow]fleet[/]: {line}")
        else:
            return
        self.lines.append(f"{self.journal.now():5.1f}s {line}")

    async def summary(self) -> FleetSummary:
        try:
            beats = await registry.read_heartbeats(self.testbed.hub_js())
        except (MeshError, nats.errors.Error, nats.js.errors.Error):
            beats = {}
        return FleetSummary(len(beats), self.swaps, self.rejected, list(self.lines))
