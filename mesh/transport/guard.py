"""A NATS connection that reads on whatever arrives, and a watch for one that stopped reading.

nats-py (2.16) ends its read loop on any unexpected exception while it turns a received message
into a ``Msg``, for instance a subject or reply subject that is not valid UTF-8, which any client
allowed to publish can send (the reply subject is the publisher's to choose): it logs "nats:
encountered error" and stops reading, while ``is_connected`` stays true and the server keeps
routing this node's share of the queue group to it. Nothing reconnects it until the
stale-connection ping gives up minutes later. A minimal reproduction, against any nats-server:

    sub = await nc.subscribe("x.>", cb=handler)    # nc = await nats.connect(url)
    # from a raw socket: CONNECT {}\r\nPUB x.\xff 2\r\nhi\r\n
    # -> "nats: encountered error ... UnicodeDecodeError" and nc never delivers another message

``GuardedClient`` contains it: a message nats-py cannot build is dropped and counted, and the
connection reads on. This overrides ``Client._process_msg``, a private method, deliberately: it is
the one place every received message passes, and the alternative is a process that any publisher
can silence. The same override hands the SDK's replies to the requests waiting for them
(``reply_directly``) as they are read, as nats-py does for its own old-style requests, instead of
queueing each for a subscription task that only passes it on: a task switch less per reply,
about 30 us of a request's 0.65 ms at one request at a time (measured against the same SDK
through its subscription, in one run).

The same client reports permission violations to whoever waits on them (issue 26): the server
answers a publish or subscription its credentials do not cover with an ``-ERR`` line and drops
it, and nats-py only hands that line to the error callback, so a request on that subject would
wait out its timeout. ``_process_err`` (private too, the one place those lines pass) parses it
(``mesh.transport.denials``) and fails at once, with a ``PermissionDeniedError`` naming the
identity, the subject and what the identity may do: every ``request`` (nats-py's, which the
JetStream API, key-value and object stores use) waiting on that subject or on a reply inbox the
server refused, and every listener added with ``on_denied`` (the SDK's own requests).

``ConnectionWatch`` covers whatever else could stop a read loop. It finds it two ways: a logging
handler on nats-py's logger reacts to that line at once, and a round trip every ``interval_s``
finds any other way a connection can stop reading. The round trip is a message to a subscription
of its own (an inbox subject): nats-py's ``flush`` cannot tell, since it skips the PING and
returns at once when its read loop has ended.
Either way it verifies with its own connection (the logger is shared by every connection in the
process) and then calls ``on_dead``: the node reports not ready at once and exits so that its
supervisor restarts it (nats-py has no public way to drop and redial a connection that believes
it is up).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from mesh.errors import PermissionDeniedError
from mesh.lifecycle import Service, cancel_and_wait
from mesh.transport.denials import Rights, Violation, denied, parse_violation

log = logging.getLogger("mesh.nats_guard")


async def flush_in_order(nc: NATS) -> None:
    """Return once the server has processed every command given to ``nc`` before the call.

    nats-py 2.16's ``flush`` writes its PING straight to the socket, ahead of commands still
    queued for its flusher task, so its PONG can come back before the server has a SUB sent
    just before it: another connection's message published then finds no interest (seen in the
    permission tests). The first flush lets the flusher write what was queued; the second
    PING follows it on the socket, and the server answers a connection's commands in order."""
    await nc.flush()
    await nc.flush()


#: takes the token that follows a direct prefix in a reply's subject, and the reply's payload.
DirectReply = Callable[[str, bytes], None]
#: hears each permission violation (``GuardedClient.explain`` words it for a subject).
DenialListener = Callable[[Violation], None]


@dataclass(eq=False, slots=True)
class _Waiting:
    """A ``request`` in flight: its subject, and the task to stop if the server refuses it."""

    subject: str
    task: asyncio.Task[Any]
    error: PermissionDeniedError | None = None


class GuardedClient(NATS):
    """A nats-py ``Client`` whose read loop survives a message it cannot build.

    Use it as ``nc = GuardedClient(); await nc.connect(...)`` (nats-py's own ``connect``)."""

    def __init__(self) -> None:
        super().__init__()
        #: messages dropped because nats-py could not build them (bad subject, reply, headers).
        self.dropped_malformed = 0
        self._direct: list[tuple[bytes, DirectReply]] = []
        #: who this connection is and what its credentials allow (``open_connection`` sets it).
        self.rights = Rights()
        #: the last permission violation the server reported, and how many there were.
        self.last_denial: PermissionDeniedError | None = None
        self.denials = 0
        self._denial_listeners: list[DenialListener] = []
        self._waiting: set[_Waiting] = set()

    def on_denied(self, listener: DenialListener) -> None:
        """Call ``listener`` with each permission violation, in the read loop (keep it quick)."""
        self._denial_listeners.append(listener)

    def remove_denial_listener(self, listener: DenialListener) -> None:
        if listener in self._denial_listeners:
            self._denial_listeners.remove(listener)

    @property
    def reply_inbox(self) -> str:
        """The prefix nats-py's own requests take their replies under."""
        return bytes(self._inbox_prefix).decode()

    async def request(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float = 0.5,
        old_style: bool = False,
        headers: dict[str, Any] | None = None,
    ) -> Msg:
        """nats-py's ``request``, failed at once with ``PermissionDeniedError`` when the server
        refuses its subject or its reply inbox."""
        task = asyncio.current_task()
        if task is None:
            return await super().request(subject, payload, timeout, old_style, headers)
        waiting = _Waiting(subject, task)
        self._waiting.add(waiting)
        try:
            return await super().request(subject, payload, timeout, old_style, headers)
        except asyncio.CancelledError:
            if waiting.error is None or task.uncancel() > 0:
                raise
            raise waiting.error from None
        finally:
            self._waiting.discard(waiting)

    async def _process_err(self, err_msg: str) -> None:
        violation = parse_violation(err_msg)
        if violation is not None:
            self._denied(violation)
        await super()._process_err(err_msg)

    def explain(self, violation: Violation, subject: str | None = None) -> PermissionDeniedError:
        """The error for ``violation`` of this connection's identity, naming ``subject`` as its
        caller spelled it (nats-py hands the server's text over lowercased)."""
        return denied(violation, self.rights, subject)

    def _denied(self, violation: Violation) -> None:
        error = self.explain(violation)
        self.denials += 1
        self.last_denial = error
        # the error callback hears it too (a node logs it as a warning); a command tells its
        # user once, through the error it raises
        log.debug("%s", error.message)
        inbox = self.reply_inbox
        for waiting in list(self._waiting):
            if waiting.error is None and violation.blocks(waiting.subject, inbox):
                waiting.error = self.explain(violation, waiting.subject)
                waiting.task.cancel()
        for listener in list(self._denial_listeners):
            listener(violation)

    def reply_directly(self, prefix: str, handler: DirectReply) -> None:
        """Give every message under ``prefix`` that has no headers to ``handler`` as it is read.

        For a subscription to ``prefix`` + ``*`` that only resolves futures: ``handler`` runs
        in the read loop, so it must be quick and must not raise. Messages with headers (a
        server's no-responders status, error replies) still go to the subscription."""
        self._direct.append((prefix.encode(), handler))

    def stop_replying_directly(self, prefix: str) -> None:
        key = prefix.encode()
        self._direct = [(p, handler) for p, handler in self._direct if p != key]

    async def _process_msg(
        self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes
    ) -> None:
        try:
            if self._direct and not headers:
                for prefix, handler in self._direct:
                    if subject.startswith(prefix):
                        stats = self.stats
                        stats["in_msgs"] += 1
                        stats["in_bytes"] += len(data)
                        handler(subject[len(prefix) :].decode(), data)
                        return
            await super()._process_msg(sid, subject, reply, data, headers)
        except Exception as exc:
            self.dropped_malformed += 1
            log.warning(
                "dropped a message nats-py could not read (%s: %s) on subject %r",
                type(exc).__name__,
                str(exc)[:200],
                bytes(subject[:128]),
            )


#: the line nats-py logs when its read loop ends on an unexpected exception.
READ_LOOP_ENDED = "nats: encountered error"

DeadCallback = Callable[[str], None]


class _ReadLoopEnded(logging.Handler):
    def __init__(self, notice: Callable[[], None]) -> None:
        super().__init__(logging.ERROR)
        self._notice = notice

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == READ_LOOP_ENDED:
            self._notice()


class ConnectionWatch(Service):
    def __init__(
        self,
        nc: NATS,
        *,
        on_dead: DeadCallback,
        interval_s: float = 2.0,
        timeout_s: float = 2.0,
    ) -> None:
        self._nc = nc
        self._on_dead = on_dead
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        #: why the connection was found dead, once it was.
        self.dead: str | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._handler = _ReadLoopEnded(self._notice)

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._echo = asyncio.Event()
        self._subject = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._subject, cb=self._on_echo)
        logging.getLogger("nats.aio.client").addHandler(self._handler)
        self._task = loop.create_task(self._watch(), name="nats-watch")

    async def _stop(self) -> None:
        logging.getLogger("nats.aio.client").removeHandler(self._handler)
        if self._task is not None:
            await cancel_and_wait(self._task)

    async def _on_echo(self, _: Msg) -> None:
        self._echo.set()

    def _connected(self) -> bool:
        return bool(self._nc.is_connected)

    def _notice(self) -> None:
        # Called from logging, possibly off the loop's thread.
        self._loop.call_soon_threadsafe(self._wake.set)

    async def _watch(self) -> None:
        while self.dead is None:
            try:
                async with asyncio.timeout(self.interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.probe()

    async def probe(self) -> None:
        """One round trip through the server; a connection that claims to be up and does not
        get its own message back within ``timeout_s`` is dead."""
        if not self._connected() or self.dead is not None:
            return
        self._echo.clear()
        reconnects = self._nc.stats["reconnects"]
        try:
            await self._nc.publish(self._subject, b"")
            async with asyncio.timeout(self.timeout_s):
                await self._echo.wait()
        except TimeoutError:
            if not self._connected():
                return
            if self._nc.stats["reconnects"] != reconnects:
                # The echo left on a connection that has since been replaced, as after a
                # process resumes from a freeze the server ended (it drops a client silent
                # for seconds): lost with it, not a sign of a dead read loop. Ask again.
                self._wake.set()
                return
            self.dead = (
                f"NATS connection stopped reading (its own message did not come back within "
                f"{self.timeout_s:.1f}s)"
            )
            log.error("%s; reporting not ready", self.dead)
            self._on_dead(self.dead)
        except nats.errors.Error:
            return
