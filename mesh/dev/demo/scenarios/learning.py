"""The improve loop in the demo: once the simulated reviewer has labelled enough of the queue,
the learn job (``mesh.learn.job``, as ``mesh learn run`` runs it) exports the labels, has the
demo's own trainer (``mesh.dev.models.trainer``) retrain the edge's model on the weak
version's rows plus what people labelled, imports, recalibrates, gates, signs and pushes the
result, and rolls it out beginning in shadow. The improvement is measured on the test split's
held-out rows, which no training, label or traffic saw, for the version the edge served before
and the one it serves after."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from mesh import MeshError
from mesh.dev.demo.journal import Journal
from mesh.dev.demo.report import Improvement
from mesh.dev.demo.scenarios.releases import Releaser
from mesh.dev.demo.state import MODEL, DemoConfig, ReviewView
from mesh.dev.models.evaluate import edge_figures
from mesh.fleet.admin import read_rollouts
from mesh.fleet.signing import SigningKey
from mesh.learn.export import ReviewReader
from mesh.learn.job import LearnResult, LearnSettings, learn

#: the version the loop makes.
LEARNED = "2-edge-learned"


class LearningLoop:
    def __init__(
        self, config: DemoConfig, releaser: Releaser, view: ReviewView, journal: Journal
    ) -> None:
        self.config = config
        self.releaser = releaser
        self.view = view
        self.journal = journal
        self.result: LearnResult | None = None
        self.improvement: Improvement | None = None

    async def run(self, review: ReviewReader) -> None:
        """Wait for the labels, learn, follow the rollout, measure."""
        cfg, view = self.config, self.view
        testbed = self.releaser.testbed
        before = testbed.initial_version
        after = before
        view.learning = f"waiting for {cfg.learn_after} labels"
        if await self._labels_in(0.55 * cfg.duration_s):
            after = await self._learn(review) or before
        self.improvement = await self._measure(before, after)

    async def _labels_in(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                while self.view.given < self.config.learn_after:  # noqa: ASYNC110
                    await asyncio.sleep(0.25)
        except TimeoutError:
            self.view.learning = f"only {self.view.given} labels in time: nothing learned"
            self.journal.event(f"[yellow]learning[/]: {self.view.learning}")
            return False
        return True

    async def _learn(self, review: ReviewReader) -> str | None:
        """The learn job, then its rollout; the version the edge serves after it."""
        testbed = self.releaser.testbed
        demo = testbed.demo
        cfg = self.config
        self.view.learning = f"training on {self.view.given} labels"
        self.journal.event(
            f"[magenta]learning[/]: {self.view.given} labels: the learn job exports them and "
            "runs the demo's trainer on the weak version's rows plus the labelled ones"
        )
        settings = LearnSettings(
            model=MODEL,
            train=[
                sys.executable, "-m", "mesh.dev.models.trainer", "--base", str(demo.weak_train),
                "--data", "{data}", "--out", "{out}",
            ],
            reference=demo.calib,
            work_dir=testbed.work_dir / "learn",
            upstream=demo.cloud,
            version=LEARNED,
            min_labels=cfg.learn_after,
            stages="1,100%",
            soak="1.5s",
            gates=("min_requests=30", "min_samples=60", "max_wait_s=15"),
            offline_after_s=3.0,
        )  # fmt: skip
        key = await asyncio.to_thread(SigningKey.load, testbed.mesh.signing_key_path)
        js = testbed.hub_js()
        try:
            self.result = await learn(
                js, review, settings, key, [key.public],
                progress=lambda text: self.journal.event(f"[magenta]learning[/]: {text}"),
            )  # fmt: skip
        except MeshError as exc:
            self.view.learning = f"failed: {exc.message[:80]}"
            self.journal.event(f"[red]learning failed[/]: {exc.message}")
            return None
        self.view.learning = f"rolling out {LEARNED}, beginning in shadow"
        started = (await read_rollouts(js)).get(MODEL)
        if started is None or started.id != self.result.rollout:
            return None
        done = await self.releaser.follow(started)
        self.view.learning = f"{LEARNED} {done.outcome}"
        return LEARNED if done.outcome == "completed" else None

    async def _measure(self, before: str, after: str) -> Improvement:
        testbed = self.releaser.testbed
        result = self.result
        paths: dict[str, Path] = {before: testbed.demo.edge_weak}
        if result is not None:
            paths[result.version] = Path(result.manifest)
        x, y = testbed.heldout_x, testbed.heldout_y
        first = await asyncio.to_thread(edge_figures, paths[before], x, y)
        last = first if after == before else await asyncio.to_thread(
            edge_figures, paths[after], x, y
        )  # fmt: skip
        improvement = Improvement(
            version_before=before,
            version_after=after,
            labels_used=result.labels if result is not None else 0,
            trained_on=result.trained_on if result is not None else 0,
            held_back=result.held_back if result is not None else 0,
            heldout_rows=len(y),
            before=first,
            after=last,
        )
        self.journal.event(f"[magenta]learning[/]: on {len(y)} held-out rows: {improvement.line()}")
        return improvement
