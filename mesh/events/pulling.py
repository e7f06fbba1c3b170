"""Events taken from a durable pull consumer as they come, in batches sized to the load.

nats-py's ``fetch`` asks for a batch, waits for it message by message through a queue, and
asks for nothing while the batch is handled: under load every batch costs a round trip and a
pause, and one message at a time a round trip each. Here pull requests are kept outstanding
(``window`` messages asked for, topped up when half have come), messages land in a buffer from
the connection's read loop, and each batch is whatever has arrived when the handler is ready
for more (at most ``batch``): one event alone at low load, full batches under it.

The server ends a pull request early with a status message (408 when it expired, 409 when it
cannot be served) that says how many of its messages it will not send; those are asked for
again. A request the server dropped silently (a reconnection) is asked for again when nothing
has come for ``EXPIRES_S`` past its expiry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mesh.topology import subjects

#: how long a pull request waits on the server for its messages.
EXPIRES_S = 5.0
#: a negative acknowledgement: deliver again now (nats-py's ``Msg.Nak``).
NAK = b"-NAK"
_STATUS = "Status"
_PENDING = "Nats-Pending-Messages"
#: the statuses that end a pull request early: expired, or cannot be served.
_ENDED = ("408", "409")


class Puller:
    """Keeps ``window`` messages of one durable consumer asked for; ``take`` a batch."""

    def __init__(
        self, nc: NATS, stream: str, durable: str, *, window: int, batch: int, domain: str | None
    ) -> None:
        self._nc = nc
        self._next = subjects.js_api(f"CONSUMER.MSG.NEXT.{stream}.{durable}", domain)
        self.window = max(1, window)
        self.batch = max(1, batch)
        self._buffer: list[Msg] = []
        self._arrived = asyncio.Event()
        #: messages asked for and not yet come.
        self._owed = 0
        self._inbox = ""
        self._sub: Subscription | None = None
        self._heard = time.monotonic()
        self._asking: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        self._inbox = self._nc.new_inbox()
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_message)
        self._top_up()

    async def close(self) -> None:
        """Stop asking; messages come and not taken are given back for redelivery now."""
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
            self._sub = None
        held, self._buffer = self._buffer, []
        for msg in held:
            with contextlib.suppress(Exception):
                await self._nc.publish(msg.reply, NAK)
        for task in list(self._asking):
            task.cancel()

    async def take(self, timeout: float) -> list[Msg]:
        """The messages come so far (at most ``batch``), waiting up to ``timeout`` for one."""
        if not self._buffer:
            self._arrived.clear()
            self._check_silence()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._arrived.wait()
        buffer = self._buffer
        taken = buffer[: self.batch]
        del buffer[: self.batch]
        self._top_up()
        return taken

    async def _on_message(self, msg: Msg) -> None:
        self._heard = time.monotonic()
        headers = msg.headers
        status = headers.get(_STATUS) if headers else None
        if status is None:
            self._owed -= 1
            self._buffer.append(msg)
            self._arrived.set()
            return
        if status in _ENDED:
            assert headers is not None
            pending = headers.get(_PENDING)
            self._owed = max(0, self._owed - int(pending)) if pending and pending.isdigit() else 0
            self._top_up()
        # anything else (a heartbeat, "no messages") leaves the requests as they are

    def _check_silence(self) -> None:
        if self._owed and time.monotonic() - self._heard > 2 * EXPIRES_S:
            self._owed = 0  # the server no longer holds our requests (a reconnection)
            self._heard = time.monotonic()
            self._top_up()

    def _top_up(self) -> None:
        # ask again once half the window came, unless the handler is behind: messages it has
        # not taken yet count against the window, so a slow handler is not flooded
        owed_or_held = self._owed + len(self._buffer)
        if owed_or_held > self.window // 2 or self._sub is None:
            return
        wanted = self.window - owed_or_held
        self._owed += wanted
        request = json.dumps({"batch": wanted, "expires": int(EXPIRES_S * 1e9)}).encode()
        task = asyncio.get_running_loop().create_task(self._ask(request))
        self._asking.add(task)
        task.add_done_callback(self._asking.discard)

    async def _ask(self, request: bytes) -> None:
        try:
            await self._nc.publish(self._next, request, reply=self._inbox)
        except Exception:
            self._owed = 0  # asked again at the next take
