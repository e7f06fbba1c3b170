"""How the demo releases edge versions, as an operator would at the hub: build and sign a version
(tampered after signing, or confusing two classes, when a scenario asks), push it to the fleet's
registry, assign it or roll it out in stages, and wait for the rollout's outcome."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats.errors
import nats.js.errors

from mesh import MeshError
from mesh.dev.demo.journal import Journal
from mesh.dev.demo.state import MODEL
from mesh.dev.demo.testbed import Testbed
from mesh.dev.models.faulty import confuse_classes
from mesh.fleet import registry
from mesh.fleet.admin import act, start_rollout, wait_rollout_end
from mesh.fleet.desired import DesiredState, Selector
from mesh.fleet.rollout import Rollout, report
from mesh.fleet.signing import SigningKey, sign
from mesh.models.manifest import copy_as_version, sha256_of

_FLEET_ERRORS = (MeshError, nats.errors.Error, nats.js.errors.Error)


class Releaser:
    """Releases edge versions at the hub and keeps the report of each staged rollout."""

    def __init__(self, testbed: Testbed, journal: Journal) -> None:
        self.testbed = testbed
        self.journal = journal
        #: the staged rollouts so far, as ``mesh demo --report`` lists them.
        self.rollouts: list[dict[str, Any]] = []

    async def release(
        self,
        version: str,
        what: str,
        *,
        tamper: bool = False,
        assign: bool = True,
        confused: bool = False,
    ) -> bool:
        """Sign and push ``version``; with ``assign``, assign it straight to the edge tier."""
        artifact = await asyncio.to_thread(self._build, version, tamper, confused)
        js = self.testbed.hub_js()
        try:
            await registry.push(js, artifact)
            if assign:
                await registry.assign(
                    js,
                    DesiredState(MODEL, version, Selector(tier="edge"), time.time(), by="demo"),
                )
        except _FLEET_ERRORS as exc:
            self.journal.event(f"[red]fleet: could not release {MODEL}@{version}[/]: {exc}")
            return False
        if assign:
            self.journal.event(
                f"[cyan]fleet[/]: {MODEL}@{version} ({what}) pushed and assigned to tier=edge"
            )
        else:
            self.journal.event(f"[cyan]fleet[/]: {MODEL}@{version} ({what}) signed and pushed")
        return True

    def _build(self, version: str, tamper: bool, confused: bool) -> registry.Artifact:
        testbed = self.testbed
        demo = testbed.demo
        out = testbed.work_dir / "releases" / version
        if version == testbed.initial_version:
            manifest = copy_as_version(demo.edge_weak, version, out)
        elif confused:
            manifest = confuse_classes(demo.edge, version, out)
        else:
            manifest = copy_as_version(demo.edge, version, out)
        parsed = json.loads(manifest.read_text())
        onnx = (manifest.parent / parsed["artifact"]).read_bytes()
        key = SigningKey.load(testbed.mesh.signing_key_path)
        signature = sign(key, parsed, sha256_of(manifest.parent / parsed["artifact"]))
        if tamper:
            onnx = onnx[:-1] + bytes([onnx[-1] ^ 1])
        return registry.Artifact(onnx, manifest.read_bytes(), signature.to_json())

    async def roll_out(
        self, version: str, what: str, *, confused: bool = False, samples: int = 150
    ) -> Rollout | None:
        """Push ``version`` and roll it out over the edge tier, beginning in shadow on a canary
        node: then that node serves it, then both."""
        if not await self.release(version, what, assign=False, confused=confused):
            return None
        js = self.testbed.hub_js()
        trusted = [self.testbed.mesh.signing_public or ""]
        try:
            started = await start_rollout(
                js, MODEL, version, stages="1,100%", soak="1.5s",
                gate_terms=["min_requests=30", f"min_samples={samples}", "max_wait_s=15"],
                selector=Selector(tier="edge"), trusted_keys=trusted,
                by="demo", offline_after_s=3.0, shadow=True,
            )  # fmt: skip
        except _FLEET_ERRORS as exc:
            self.journal.event(f"[red]rollout of {MODEL}@{version} refused[/]: {exc}")
            return None
        return await self.follow(started)

    async def follow(self, started: Rollout, timeout_s: float = 30.0) -> Rollout:
        """Say where ``started`` goes and wait for its end (aborted when the run is out of
        time); it joins the report's rollouts."""
        version = started.version
        js = self.testbed.hub_js()
        first = "in shadow beside the serving version on 1 node, " if started.shadow else ""
        self.journal.event(
            f"[cyan]rollout[/]: {MODEL}@{version} to tier=edge: {first}then serving on 1 node, "
            f"then all; rolls back to {started.previous_version}"
        )
        current = await wait_rollout_end(js, MODEL, started.id, timeout_s, poll_s=0.25)
        if current is None:
            current = await act(js, MODEL, "abort", "demo (out of time)")
            self.journal.event(
                f"[yellow]rollout of {MODEL}@{version} aborted[/]: the run is ending"
            )
        self.rollouts.append(report(current))
        served = current.answers_served_before_decision
        if current.failed_gate:
            self.journal.event(
                f"[yellow]rollout[/]: {MODEL}@{version} {current.outcome} at stage "
                f"{current.stages[current.current_stage].name}, {served} answers served: "
                f"{current.reason}"
            )
        else:
            self.journal.event(
                f"[green]rollout[/]: {MODEL}@{version} {current.outcome}, {served} answers "
                "served before the decision"
            )
        return current
