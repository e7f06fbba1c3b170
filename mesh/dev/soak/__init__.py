"""``mesh soak``: the mesh at scale for a long time, under chaos (issue 31).

A hub of several NATS servers and several sites, each with its gateway and edge nodes as real
processes under a supervisor (``rig``); steady requests and inference events through the SDK at
every site (``load``, tallied per minute in ``tally``); a schedule of failures beside them
(``chaos``); every process's memory, descriptors and asyncio tasks and every stream's storage
sampled; the report with its verdicts (``report``); ``run`` puts them together, each phase within
a deadline. The exit status: 0 nothing lost and steady, 1 something lost, 3 nothing lost but not
steady (memory, latency, tasks or descriptors grew), 130 interrupted.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path

from mesh.dev.soak.report import SoakReport
from mesh.dev.soak.run import SoakConfig, run_soak

__all__ = ["SoakConfig", "SoakReport", "render", "soak_main"]


async def soak_main(
    config: SoakConfig, cache: Path, say: Callable[[str], None], work: Path | None = None
) -> SoakReport:
    """Run the soak; SIGTERM cancels it like Ctrl-C, so every process started is stopped."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        report: SoakReport = await run_soak(config, say, cache, work)
        return report
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def render(report: SoakReport, say: Callable[[str], None]) -> int:
    """The minutes and the verdicts, one line each; the exit status they call for."""
    data = report.to_json()
    for minute in data["minutes"]:
        rss = sum(minute["rss_mb"].values())
        say(
            f"minute {minute['minute']:>3}: {minute['requests']} requests, {minute['lost']} lost, "
            f"p50 {minute['p50_ms']} ms, p99 {minute['p99_ms']} ms, degraded "
            f"{sum(minute['degraded'].values())}, RSS {rss:.0f} MB in all"
        )
    verdicts = report.verdicts
    say(
        f"soak: {data['requests']} requests, {data['answered']} answered, {data['lost']} lost; "
        f"events {data['events']['published']} published, {data['events']['results']} results; "
        f"{len(data['chaos'])} chaos records"
    )
    say("verdicts: " + json.dumps(verdicts.to_json()))
    if not verdicts.nothing_lost:
        return 1
    return 0 if verdicts.steady else 3
