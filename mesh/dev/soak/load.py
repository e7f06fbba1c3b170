"""The soak's steady load, through the SDK as applications at every site would send it: requests
paced over the sites in turn, many in flight, every outcome tallied under the minute it was sent
in; and inference events published at each site, with a reader of each site's results."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from mesh.dev.soak.tally import EventTally, LoadTally
from mesh.errors import MeshError
from mesh.lifecycle import cancel_and_wait
from mesh.sdk.client import MeshClient

MODEL = "digits"
#: the application identity's name: the source of its events (its credentials allow no other).
SOURCE = "app"


class RequestLoad:
    """Requests at ``rate_per_s`` in all, spread over the sites in turn."""

    def __init__(
        self,
        clients: Mapping[str, MeshClient],
        rows: np.ndarray,
        tally: LoadTally,
        *,
        rate_per_s: float,
        budget_ms: float = 1000.0,
        concurrency: int = 64,
        started: float | None = None,
    ) -> None:
        self.clients = dict(clients)
        self.rows = rows
        self.tally = tally
        self.rate_per_s = rate_per_s
        self.budget_ms = budget_ms
        self.started = time.monotonic() if started is None else started
        self._slots = asyncio.Semaphore(concurrency)
        self._tasks: set[asyncio.Task[None]] = set()

    def minute(self) -> int:
        return int((time.monotonic() - self.started) // 60)

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop``; a loop that falls behind (a stalled machine) starts its pace again
        rather than sending what it missed in one burst."""
        sites = list(self.clients)
        anchor, sent = time.monotonic(), 0
        while not stop.is_set():
            delay = anchor + sent / self.rate_per_s - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                continue
            if delay < -1.0:
                anchor, sent = time.monotonic(), 0
            await self._slots.acquire()
            site = sites[sent % len(sites)]
            task = asyncio.create_task(self._ask(site, sent), name=f"soak-request-{site}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            sent += 1

    async def _ask(self, site: str, i: int) -> None:
        minute = self.minute()
        row = self.rows[i % len(self.rows)][None, :]
        self.tally.sent(minute)
        t0 = time.monotonic()
        try:
            result = await self.clients[site].infer(MODEL, row, budget_ms=self.budget_ms)
        except MeshError as error:
            self.tally.lost(minute, error.code.value, f"{site}: {error}")
        except Exception as error:  # a bug in the SDK is a lost request all the same
            self.tally.lost(minute, "INTERNAL", f"{site}: {type(error).__name__}: {error}")
        else:
            ms = (time.monotonic() - t0) * 1000.0
            self.tally.answered(minute, result.tier, ms, result.degraded, result.reason)
        finally:
            self._slots.release()

    async def drain(self, timeout: float) -> None:
        """Until every request sent has its outcome (each ends within its budget and grace)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        await cancel_and_wait(list(self._tasks))


class EventLoad:
    """Events published at ``rate_per_s`` in all over the sites, and each site's results read."""

    def __init__(
        self,
        clients: Mapping[str, MeshClient],
        rows: np.ndarray,
        tally: EventTally,
        *,
        rate_per_s: float,
        budget_ms: float = 5000.0,
        prefix: str = "soak",
    ) -> None:
        self.clients = dict(clients)
        self.rows = rows
        self.tally = tally
        self.rate_per_s = rate_per_s
        self.budget_ms = budget_ms
        self.prefix = prefix
        self._readers: list[asyncio.Task[None]] = []

    def start_readers(self) -> None:
        self._readers = [
            asyncio.create_task(self._read(site, client), name=f"soak-results-{site}")
            for site, client in self.clients.items()
        ]

    async def _read(self, site: str, client: MeshClient) -> None:
        while True:
            try:
                async with contextlib.aclosing(client.results(MODEL, source=SOURCE)) as results:
                    async for result in results:
                        self.tally.result(result.event_id, result.error is not None)
            except MeshError:
                # the site's server restarting: the durable consumer resumes where it was
                await asyncio.sleep(0.5)

    async def run(self, stop: asyncio.Event) -> None:
        sites = list(self.clients)
        i = 0
        gap = 1.0 / self.rate_per_s
        while not stop.is_set():
            site = sites[i % len(sites)]
            await self._publish(site, i)
            i += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), gap)

    async def _publish(self, site: str, i: int) -> None:
        event_id = f"{self.prefix}-{site}-{i}"
        row = self.rows[(i * 7) % len(self.rows)][None, :]
        try:
            await self.clients[site].publish(
                MODEL, row, source=SOURCE, event_id=event_id, budget_ms=self.budget_ms
            )
        except MeshError as error:
            # not stored, so not owed a result: counted apart
            self.tally.refused[error.code.value] += 1
            return
        self.tally.publish(event_id, site)

    async def wait_results(self, timeout: float) -> None:
        """Until every event published has a result, or ``timeout``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.tally.waiting:  # noqa: ASYNC110 (the readers fill the tally)
                    await asyncio.sleep(0.2)

    async def stop_readers(self) -> None:
        await cancel_and_wait(self._readers)
        self._readers = []


async def connect_sites(
    urls: Mapping[str, str], options: Mapping[str, Any]
) -> dict[str, MeshClient]:
    """One application client per site, on that site's server."""
    clients: dict[str, MeshClient] = {}
    try:
        for site, url in urls.items():
            clients[site] = await MeshClient.connect(url, name=f"soak-{site}", **options)
    except BaseException:
        await close_all(clients)
        raise
    return clients


async def close_all(clients: Mapping[str, MeshClient]) -> None:
    for client in clients.values():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5.0)


__all__ = ["MODEL", "SOURCE", "EventLoad", "RequestLoad", "close_all", "connect_sites"]
