"""How every mesh process and the SDK open their NATS connection: one set of options, one first
connect.

``connect_options`` turns ``NatsSettings`` into ``nats.connect`` keyword arguments: servers,
credentials, the identity's inbox prefix read from its creds (the mesh lets an identity read
replies under ``_INBOX_<name>`` only), TLS, the connect timeout and the reconnect policy (for
ever, ``reconnect_wait_s`` apart). ``open_connection`` makes the first connection: nats-py
retries a first connect as it retries reconnects, so a process may start before its server (in
compose or Kubernetes it often does); a deadline bounds the wait, and a failure is one typed
error that says which failure it was (``mesh.transport.failures``): a URL that is no NATS URL
and credentials the server rejects fail at once. The attempt is cancellable at any moment,
which is how a process told to stop while it connects stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client as NATS

from mesh.errors import MeshError
from mesh.security.creds import inbox_prefix_of
from mesh.transport.denials import Rights
from mesh.transport.failures import check_url, is_rejection, rejected, unreachable
from mesh.transport.guard import GuardedClient

if TYPE_CHECKING:
    from mesh.settings import NatsSettings

log = logging.getLogger("mesh.connection")

ErrorCallback = Callable[[Exception], Awaitable[None]]


def inbox_prefix_for(credentials: Path | str | None, inbox_prefix: str | None = None) -> str | None:
    """The inbox prefix to connect with: the one given, else the one the creds allow."""
    if inbox_prefix is not None or credentials is None:
        return inbox_prefix
    return inbox_prefix_of(credentials)


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """The client TLS context the settings ask for (reads files: call it off the event loop)."""
    if settings.tls_ca is None and settings.tls_cert is None:
        return None
    context = ssl.create_default_context(cafile=str(settings.tls_ca) if settings.tls_ca else None)
    if settings.tls_cert is not None:
        key = str(settings.tls_key) if settings.tls_key else None
        context.load_cert_chain(str(settings.tls_cert), key)
    return context


def connect_options(settings: NatsSettings, name: str) -> dict[str, Any]:
    """Keyword arguments for ``nats.connect``; reads the creds and TLS files (blocking: call it
    from a worker thread in async code)."""
    options: dict[str, Any] = {
        "servers": list(settings.servers),
        "name": name,
        "connect_timeout": settings.connect_timeout_s,
        "reconnect_time_wait": settings.reconnect_wait_s,
        "drain_timeout": settings.drain_timeout_s,
        "max_reconnect_attempts": -1,
        "allow_reconnect": True,
    }
    if settings.credentials is not None:
        options["user_credentials"] = str(settings.credentials)
    prefix = inbox_prefix_for(settings.credentials, settings.inbox_prefix)
    if prefix is not None:
        options["inbox_prefix"] = prefix
    if settings.nkeys_seed is not None:
        options["nkeys_seed"] = str(settings.nkeys_seed)
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    return options


async def open_connection(
    servers: str | Sequence[str], *, first_connect_s: float, **options: Any
) -> GuardedClient:
    """The first connection, tried until ``first_connect_s`` has passed; ``options`` pass to
    nats-py's ``connect`` (an ``error_cb`` among them still hears every failed attempt).

    A URL that is no NATS URL fails at once (``InvalidArgumentError``), and so do credentials
    the server rejects (``UnauthenticatedError``: trying again cannot help); a server that
    cannot be reached is tried until the deadline, then ``UnavailableError`` says why (refused,
    unknown host, TLS, not a NATS port)."""
    urls = [check_url(url) for url in ([servers] if isinstance(servers, str) else servers)]
    creds = options.get("user_credentials")
    creds_path = str(creds) if isinstance(creds, str | Path) else None
    rights = await asyncio.to_thread(Rights.of_credentials, creds_path)
    last: list[BaseException] = []
    caller_cb: ErrorCallback | None = options.pop("error_cb", None)
    rejection: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def on_error(exc: Exception) -> None:
        last[:] = [exc]
        if is_rejection(exc) and not rejection.done():
            rejection.set_result(exc)
        if caller_cb is not None:
            await caller_cb(exc)

    log.info("connecting to NATS at %s", ", ".join(urls))
    nc = GuardedClient()
    nc.rights = rights
    attempt = asyncio.ensure_future(nc.connect(urls, error_cb=on_error, **options))
    try:
        async with asyncio.timeout(first_connect_s):
            first: list[asyncio.Future[Any]] = [attempt, rejection]
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        connected = attempt.done() and attempt.exception() is None
        if not connected and rejection.done():
            raise rejected(urls, rights, creds_path)
        attempt.result()
    except MeshError:
        await _abandon(nc, attempt)
        raise
    except Exception as exc:  # refused, unknown host, TLS, not a NATS port...
        await _abandon(nc, attempt)
        raise unreachable(urls, last[0] if last else exc, first_connect_s) from None
    except BaseException:
        # Cancelled (a process told to stop while it connects): leave no reconnect task behind.
        await asyncio.shield(_abandon(nc, attempt))
        raise
    return nc


async def _abandon(nc: NATS, attempt: asyncio.Future[None]) -> None:
    if not attempt.done():
        attempt.cancel()
    with contextlib.suppress(BaseException):
        await attempt
    await close_quietly(nc)


async def connect(
    settings: NatsSettings,
    name: str,
    *,
    error_cb: ErrorCallback | None = None,
    disconnected_cb: Callable[[], Awaitable[None]] | None = None,
    reconnected_cb: Callable[[], Awaitable[None]] | None = None,
) -> GuardedClient:
    """A process's connection: ``settings``' options, reconnecting for ever once connected,
    the first connect bounded by ``first_connect_s``."""
    options = await asyncio.to_thread(connect_options, settings, name)
    callbacks: dict[str, Any] = {
        "error_cb": error_cb or _log_error(name),
        "disconnected_cb": disconnected_cb,
        "reconnected_cb": reconnected_cb,
    }
    servers = options.pop("servers")
    return await open_connection(
        servers,
        first_connect_s=settings.first_connect_s,
        **options,
        **{key: cb for key, cb in callbacks.items() if cb is not None},
    )


@asynccontextmanager
async def connected(settings: NatsSettings, name: str) -> AsyncIterator[GuardedClient]:
    """``connect``, closed on the way out."""
    nc = await connect(settings, name)
    try:
        yield nc
    finally:
        await close_quietly(nc)


def _log_error(name: str) -> ErrorCallback:
    async def on_error(exc: Exception) -> None:
        log.warning("NATS error on %s: %r", name, exc)

    return on_error


async def close_quietly(nc: NATS) -> None:
    """Close a connection that may never have opened (which fails in many ways)."""
    try:
        await nc.close()
    except Exception:
        return
