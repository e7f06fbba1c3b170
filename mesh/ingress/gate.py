"""The ingress's gate: how many calls it takes, and how many bytes of bodies each may hold.

A call whose caller is known (``mesh.ingress.callers``) enters with a request slot, by the
node's rule (``mesh.node.admission.Admission``: in all and per caller; past it,
RESOURCE_EXHAUSTED at once), then takes bytes for its body before the body is read
(``ByteShares``). Bytes that are not free now are waited for up to ``wait_s``, then the call is
refused with RESOURCE_EXHAUSTED: a caller's large bodies wait behind each other, never in front
of another caller's. A body whose length is not known before it is read (gRPC never says it;
a chunked REST body) takes the largest body allowed while it is read and keeps what it took.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType

from mesh.errors import DeadlineExceededError, ResourceExhaustedError
from mesh.ingress.shares import ByteShares
from mesh.node.admission import Admission


class BusyError(ResourceExhaustedError):
    """No room at the gate for this caller now (429 over REST): a retry later may succeed."""


class BodyTimeoutError(DeadlineExceededError):
    """A body that did not arrive within ``body_timeout_s`` of being let in (408 over REST)."""


@dataclass(frozen=True)
class GateLimits:
    #: largest body (REST) or message (gRPC) one call may send.
    max_body: int = 64 << 20
    bytes_in_flight: int = 256 << 20
    bytes_per_caller: int = 64 << 20
    requests: int = 256
    requests_per_caller: int = 64
    #: how long a body waits for bytes to be free before it is refused.
    wait_s: float = 1.0
    #: how long a body may take to arrive once it is let in.
    body_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_body > self.bytes_per_caller:
            raise ValueError("the largest body must fit in a caller's share of bytes")


@dataclass(slots=True)
class _Waiter:
    caller: str
    n: int
    #: set once its bytes are taken for it.
    granted: asyncio.Future[None]


class Gate:
    def __init__(self, limits: GateLimits | None = None) -> None:
        self.limits = limits or GateLimits()
        self.requests = Admission(self.limits.requests, self.limits.requests_per_caller)
        self.bytes = ByteShares(self.limits.bytes_in_flight, self.limits.bytes_per_caller)
        #: bodies waiting for bytes, in the order they came; none of them fits now.
        self._waiters: list[_Waiter] = []

    def enter(self, caller: str) -> Ticket:
        """A request slot for ``caller``; RESOURCE_EXHAUSTED at once when it has none."""
        refusal = self.requests.refusal(caller)
        if refusal is not None:
            raise BusyError(f"the ingress is busy: {refusal}")
        self.requests.acquire(caller)
        return Ticket(self, caller)

    async def _take(self, caller: str, n: int) -> None:
        refusal = self.bytes.refusal(caller, n)
        if refusal is None:
            self.bytes.acquire(caller, n)
            return
        if self.bytes.never_fits(n):
            raise BusyError(f"no room for a body of {n} bytes: {refusal}")
        # Bytes given back are handed to the waiters in turn (``_grant``), each woken only once
        # its own are taken: a gRPC caller's many calls (each holding the largest message
        # while it is read) pass one by one, without waking every waiter at every give-back.
        waiter = _Waiter(caller, n, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.limits.wait_s):
                await waiter.granted
        except TimeoutError:
            if self._granted(waiter):
                return  # granted as the time ran out: the bytes are its own
            refusal = self.bytes.refusal(caller, n)
            if refusal is not None:
                raise BusyError(
                    f"no room for a body of {n} bytes within {self.limits.wait_s:g} s: {refusal}"
                ) from None
            self.bytes.acquire(caller, n)  # room as the time ran out
        except BaseException:
            if self._granted(waiter):
                self._give_back(caller, n)  # granted as the call was cancelled: not its own
            raise

    def _granted(self, waiter: _Waiter) -> bool:
        """Whether ``waiter``'s bytes were taken for it; if not, it leaves the line."""
        if waiter.granted.done() and not waiter.granted.cancelled():
            return True
        if waiter in self._waiters:  # a cancelled wait may have been dropped already
            self._waiters.remove(waiter)
        return False

    def _give_back(self, caller: str, n: int) -> None:
        if n <= 0:
            return
        self.bytes.release(caller, n)
        if self._waiters:
            self._grant()

    def _grant(self) -> None:
        """Take bytes for each waiter that fits now, first come first; wake those."""
        still: list[_Waiter] = []
        for waiter in self._waiters:
            if waiter.granted.done():  # its wait was cancelled: it is gone
                continue
            if self.bytes.refusal(waiter.caller, waiter.n) is not None:
                still.append(waiter)
                continue
            self.bytes.acquire(waiter.caller, waiter.n)
            waiter.granted.set_result(None)
        self._waiters = still


class Ticket:
    """One call's place at the gate: its request slot and the bytes its body holds. Closing it
    (or leaving its ``with`` block) gives everything back."""

    def __init__(self, gate: Gate, caller: str) -> None:
        self.gate = gate
        self.caller = caller
        self.held = 0
        self._closed = False

    async def reserve(self, n: int) -> None:
        """Take ``n`` more bytes, waiting for room up to the gate's ``wait_s``."""
        await self.gate._take(self.caller, n)
        self.held += n

    def keep(self, n: int) -> None:
        """Hold ``n`` bytes from now on (what a body took once it is read)."""
        if n < self.held:
            self.gate._give_back(self.caller, self.held - n)
        elif n > self.held:
            self.gate.bytes.acquire(self.caller, n - self.held)
        self.held = n

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        held, self.held = self.held, 0
        self.gate.requests.release(self.caller)
        self.gate._give_back(self.caller, held)

    def __enter__(self) -> Ticket:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
