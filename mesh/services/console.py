"""``mesh console``: the operator console, an HTTP server for people in front of the mesh.

It connects to the hub as the ``console`` identity (reads, and rollout records), and as a
reviewer identity when given one (labels), and prints ``MESH_CONSOLE_READY http=URL`` once it
serves."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from aiohttp import web

from mesh.console.access import Access
from mesh.console.feeds import ConsoleFeeds
from mesh.console.operations import Operations
from mesh.console.settings import ConsoleSettings
from mesh.console.state import ConsoleState
from mesh.console.web import ConsoleWeb
from mesh.services.process import service_main
from mesh.services.stopping import Shutdown
from mesh.topology.processes import CONSOLE_READY
from mesh.transport.connection import connected

READY_PREFIX = CONSOLE_READY
SERVICE = "mesh-console"


async def serve(settings: ConsoleSettings, shutdown: Shutdown) -> int:
    """Serve the console until ``shutdown``."""
    access = Access(settings.people())
    state = ConsoleState(settings.offline_after_s)
    async with AsyncExitStack() as stack:
        nc = await stack.enter_async_context(connected(settings.nats, SERVICE))
        desk = None
        reviewer = None
        feeds = ConsoleFeeds(
            nc, state, domain=settings.domain, desk=desk,
            review_poll_s=settings.review_poll_s, quality_poll_s=settings.quality_poll_s,
            report_days=settings.report_days,
        )  # fmt: skip
        await stack.enter_async_context(feeds)
        operations = Operations(nc, state, domain=settings.domain, reviewer=reviewer)
        site = ConsoleWeb(state, access, operations, desk=desk, backfill=feeds.backfill)
        runner = web.AppRunner(site.app(), shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        stack.callback(site.close)
        tcp = web.TCPSite(runner, settings.host, settings.port)
        await tcp.start()
        print(f"{READY_PREFIX} http={_url(runner, settings.host)}", flush=True)
        await shutdown.wait()
    return 0


def _url(runner: web.AppRunner, host: str) -> str:
    address = runner.addresses[0]
    port = address[1]
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def main(
    config: Path | None = None,
    *,
    flags: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Run the console until SIGINT or SIGTERM; invalid settings exit with status 2."""
    service_main(
        ConsoleSettings, "console", serve, SERVICE, config, flags=flags, defaults=defaults,
        source="flags and MESH_CONSOLE_* variables",
    )  # fmt: skip
