"""``mesh console``: the operator console, an HTTP server for people in front of the mesh.

It connects to the hub as the ``console`` identity (reads, and rollout records), and as a
reviewer identity when given one (labels), and prints ``MESH_CONSOLE_READY http=URL`` once it
serves."""

from __future__ import annotations

import asyncio
import logging
from contextlib import AsyncExitStack

from aiohttp import web
from nats.aio.client import Client as NATS

from mesh.console.access import Access
from mesh.console.feeds import ConsoleFeeds
from mesh.console.operations import Operations
from mesh.console.settings import ConsoleSettings
from mesh.console.state import ConsoleState
from mesh.console.web import ConsoleWeb
from mesh.review.client import ReviewClient
from mesh.security.creds import user_claims
from mesh.services.process import entry_point
from mesh.services.stopping import Shutdown
from mesh.settings import NatsSettings
from mesh.topology.processes import CONSOLE_READY
from mesh.transport.connection import close_quietly, connect

READY_PREFIX = CONSOLE_READY
SERVICE = "mesh-console"

log = logging.getLogger("mesh.console")


async def serve(settings: ConsoleSettings, shutdown: Shutdown) -> int:
    """Serve the console until ``shutdown``."""
    access = Access(settings.people())
    state = ConsoleState(settings.offline_after_s)
    async with AsyncExitStack() as stack:
        nc, desk = await _review_client(stack, settings.nats, "console")
        reviewer_nats = settings.reviewer_nats()
        reviewer = (
            (await _review_client(stack, reviewer_nats, "reviewer"))[1]
            if reviewer_nats is not None
            else None
        )
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


async def _review_client(
    stack: AsyncExitStack, nats: NatsSettings, what: str
) -> tuple[NATS, ReviewClient]:
    """A connection as the identity of ``nats``, and the review API called as that identity
    (a publish its permissions refuse fails the call at once, not after a timeout)."""
    creds = nats.credentials
    claims = await asyncio.to_thread(user_claims, creds) if creds is not None else {}
    name = str(claims.get("name") or "console")
    holder: list[ReviewClient] = []

    async def on_error(exc: Exception) -> None:
        log.warning("NATS error on the console's %s connection: %r", what, exc)
        for client in holder:
            await client.on_error(exc)

    nc = await connect(nats, f"{SERVICE}-{what}", error_cb=on_error)
    stack.push_async_callback(close_quietly, nc)
    client = ReviewClient(nc, name)
    holder.append(client)
    return nc, client


def _url(runner: web.AppRunner, host: str) -> str:
    address = runner.addresses[0]
    port = address[1]
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


main = entry_point(
    ConsoleSettings, "console", serve, SERVICE, source="flags and MESH_CONSOLE_* variables"
)
