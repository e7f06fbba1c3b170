"""The drain: once every request is answered, the hard examples the gateway kept during the
outage reach the hub; the run waits for them (or ``drain_timeout_s``)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from mesh.dev.demo.journal import Journal
from mesh.dev.demo.state import DemoConfig, LinkView, Tally, hard_examples_buffered


async def drain(config: DemoConfig, view: LinkView, tally: Tally, journal: Journal) -> float:
    """Waits for the backlog to reach the hub; the seconds it took."""
    waiting = view.backlog or view.delivered < tally.degraded
    journal.event(
        "all requests answered"
        + ("; waiting for the hard-example backlog to drain" if waiting else "")
    )
    drain_s = await _wait_drained(config, view, tally)
    journal.event(f"backlog {view.backlog}, {view.delivered} hard examples at the hub")
    return drain_s


async def _wait_drained(config: DemoConfig, view: LinkView, tally: Tally) -> float:
    began = time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(config.drain_timeout_s):
            while view.backlog or view.delivered < hard_examples_buffered(view, tally):  # noqa: ASYNC110 (polls another process)
                await asyncio.sleep(0.2)
    await asyncio.sleep(config.poll_interval_s * 2)
    return time.monotonic() - began
