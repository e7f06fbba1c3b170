"""What the demo watches at the site while the load runs: the gateway's breaker (its status and
its transition counters), the hard-example backlog at the gateway and what reached the hub."""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import nats.errors
import nats.js.errors
from nats.js import JetStreamContext

from mesh import MeshError
from mesh.dev.demo.journal import Journal
from mesh.dev.demo.state import (
    GATEWAY,
    GATEWAY_TIER,
    DemoConfig,
    LinkView,
    Transition,
    gateway_figures,
    transition_counts,
)
from mesh.dev.demo.testbed import Testbed
from mesh.dev.demo.view import TRANSITION_TEXT
from mesh.topology import subjects
from mesh.topology.streams import hard_example_stream, inbox_stream
from mesh.wire import decode_node_status


async def stream_state(js: JetStreamContext, stream: str) -> tuple[int, int]:
    """Messages in ``stream`` now, and how many it ever stored (its last sequence)."""
    try:
        info = await js.stream_info(stream)
    except nats.js.errors.NotFoundError:
        return 0, 0
    return int(info.state.messages), int(info.state.last_seq)


class GatewayObserver:
    """Polls the site every ``poll_interval_s`` and writes what it sees into the link view."""

    def __init__(
        self, config: DemoConfig, testbed: Testbed, view: LinkView, journal: Journal
    ) -> None:
        self.config = config
        self.testbed = testbed
        self.view = view
        self.journal = journal
        #: transition counts at the last scrape, and the state the last one reported left in.
        self._seen: dict[str, int] = {}
        self._chain = "closed"

    async def poll(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                await self.poll_once(session)
                await asyncio.sleep(self.config.poll_interval_s)

    async def poll_once(self, session: aiohttp.ClientSession) -> None:
        with contextlib.suppress(nats.errors.Error, MeshError, asyncio.TimeoutError):
            await self._poll_breaker()
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
            self.observe_transitions(await self.gateway_metrics(session))
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            await self._poll_backlog()
        with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
            self.view.delivered = (
                await stream_state(self.testbed.hub_nc.jetstream(), inbox_stream("cloud"))
            )[0]

    async def _poll_breaker(self) -> None:
        msg = await self.testbed.site_nc.request(subjects.status(GATEWAY), b"", timeout=0.5)
        status = decode_node_status(msg.data)
        self.view.breaker = status.breakers.get("cloud", next(iter(status.breakers.values()), "?"))

    async def _poll_backlog(self) -> None:
        view = self.view
        view.backlog, view.stored = await stream_state(
            self.testbed.site_js(), hard_example_stream(GATEWAY_TIER)
        )
        view.backlog_peak = max(view.backlog_peak, view.backlog)
        recovered = view.healed_at_s is not None and view.drained_at_s is None
        if recovered and view.backlog == 0 and view.backlog_peak:
            view.drained_at_s = self.journal.now()
            self.journal.event(f"hard-example backlog drained: {view.backlog_peak} sent to the hub")

    def observe_transitions(self, metrics: dict[str, float]) -> None:
        """New breaker transitions since the last scrape, in the order the state machine allows.

        A probe in HALF_OPEN takes a millisecond, far less than a poll interval: the gateway's
        transition counters see every change where its status record shows only the current state.
        """
        counts = transition_counts(metrics)
        new = {k: n - self._seen.get(k, 0) for k, n in counts.items() if n > self._seen.get(k, 0)}
        self._seen = counts
        at = round(self.journal.now(), 2)
        while new:
            key = next((k for k in new if k.startswith(f"{self._chain}->")), next(iter(new)))
            before, _, after = key.partition("->")
            self.view.transitions.append(Transition(at, before, after))
            self.journal.event(TRANSITION_TEXT.get(key, f"gateway breaker: {key}"))
            new[key] -= 1
            if new[key] == 0:
                del new[key]
            self._chain = after

    async def gateway_metrics(self, session: aiohttp.ClientSession) -> dict[str, float]:
        """Counters of the gateway's Prometheus endpoint that the report uses."""
        url = self.testbed.mesh.nodes[GATEWAY].http_url
        if url is None:
            return {}
        timeout = aiohttp.ClientTimeout(total=2)
        async with session.get(f"{url}/metrics", timeout=timeout) as resp:
            return gateway_figures(await resp.text())
