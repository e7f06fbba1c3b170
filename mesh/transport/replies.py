"""Requests over one wildcard inbox: deadlines and hedges on a heap of ticks, the first answer
wins.

nats-py's ``request`` makes a NUID and random bytes per token and runs an ``asyncio.wait_for``
each, a third of the SDK's CPU per request. Here a token is the owner's counter, and deadlines
share a timer per ``TICK_S`` instead of one timer each (a timer per request, pushed and
cancelled on the loop's heap, cost 10 % of a request): a request gives up at most ``TICK_S``
after its deadline.

A request given a ``HedgePolicy`` is sent again, to the same subject and so to any member of
its queue group, once its subject's usual answer time has passed, and again with backoff while
its budget lasts (``mesh.node.latency``). The hedge's time is one more entry on the same heap
of ticks: a request answered in time costs no timer. Each copy has a token of its own, so the
answer's time is measured from the copy that brought it, and the record stays the record of
live members (measured from the first send, a frozen member's share would teach the record
that answers take seconds, and hedges would stop). The copies are the same request (same
request id, what is left of the budget); the first answer resolves the request and the others
are dropped when they come.

A permission violation on a request's subject or on the inbox fails the request at once (on a
``GuardedClient``, which reports them: ``mesh.transport.guard``).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from mesh.errors import UnavailableError
from mesh.node.latency import HedgePolicy
from mesh.transport.denials import Operation, Violation
from mesh.transport.guard import GuardedClient

log = logging.getLogger("mesh.replies")

#: the resolution of deadlines and hedges: a request gives up at most this long after its own.
TICK_S = 0.005

#: a reply's payload, its headers (None: it had none) and the token of the copy it answered.
Reply = tuple[bytes, dict[str, str] | None, str]
#: the payload of a copy of ``request`` sent with this many ms of its budget left.
Resend = Callable[[Any, float], bytes]


@dataclass(slots=True, eq=False)
class Pending:
    """One request waiting for its reply; one that may be hedged also says how to send it
    again and when each copy left (one object a request: this is the hot path)."""

    future: asyncio.Future[Reply | None]
    subject: str
    headers: dict[str, str] | None
    #: loop time of the first send.
    started: float
    policy: HedgePolicy | None = None
    #: what ``Resend`` makes each copy's payload of.
    request: Any = None
    budget_ms: float = 0.0
    #: the wait before the next hedge.
    gap_ms: float = 0.0
    #: each hedge's token and loop time (None until the first hedge: most requests need none).
    sent_at: dict[str, float] | None = None

    def elapsed_ms(self, token: str, now: float) -> float:
        """Time from the send of the copy that ``token`` names to ``now``."""
        sent = self.started
        if self.sent_at is not None:
            sent = self.sent_at.get(token, sent)
        return (now - sent) * 1000.0


class ReplyInbox:
    """The replies of one connection's requests, on ``<inbox>.*``."""

    def __init__(
        self, nc: NATS, next_token: Callable[[], str], resend: Resend | None = None
    ) -> None:
        self._nc = nc
        self._next_token = next_token
        self._resend = resend
        #: the inbox subject replies come to, up to the token (ending with a dot).
        self.prefix = ""
        self.subscription: Subscription | None = None
        self.waiting: dict[str, Pending] = {}
        #: requests by the tick their deadline or their next hedge falls in (rounded up).
        self._deadlines: dict[int, list[Pending]] = {}
        self._hedges: dict[int, list[Pending]] = {}
        #: the ticks of both, a heap: a sweep finds the ticks that are due without looking at
        #: the others (a deadline of seconds keeps a thousand ticks waiting).
        self._ticks: list[int] = []
        self._sweep: asyncio.TimerHandle | None = None
        self._sweep_tick = 0
        self._opening = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.closed = False

    def expect(
        self,
        subject: str,
        timeout: float,
        headers: dict[str, str] | None,
        token: str,
        request: Any = None,
        policy: HedgePolicy | None = None,
        budget_ms: float = 0.0,
    ) -> Pending:
        """Wait for the reply to ``token`` (publish the request after this, with ``prefix`` +
        ``token`` as its reply subject): its future gets the reply, or None once ``timeout``
        passed. Given a ``policy`` (and the ``request`` that the inbox's ``resend`` makes
        copies of), a late request is hedged within ``budget_ms``. ``forget`` it once done."""
        if self.closed:
            raise UnavailableError("the client was closed")
        loop = self._loop or self._bind()
        now = loop.time()
        pending = Pending(loop.create_future(), subject, headers, now)
        self.waiting[token] = pending
        self._at(self._deadlines, now + timeout, pending)
        if policy is not None and self._resend is not None:
            gap = policy.first_gap_ms(budget_ms)
            if gap is not None:
                pending.policy, pending.request = policy, request
                pending.budget_ms, pending.gap_ms = budget_ms, gap
                self._at(self._hedges, now + gap / 1000.0, pending)
        return pending

    def now(self) -> float:
        """The loop's time (``Pending.elapsed_ms`` takes it)."""
        return (self._loop or self._bind()).time()

    def _bind(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    def forget(self, token: str, pending: Pending) -> None:
        """Stop waiting for the replies to ``pending`` (once answered, or given up)."""
        del self.waiting[token]
        if pending.sent_at is not None:
            self.forget_copies(pending)

    def forget_copies(self, pending: Pending) -> None:
        waiting = self.waiting
        for copy in pending.sent_at or ():
            waiting.pop(copy, None)

    async def ask(
        self,
        subject: str,
        payload: bytes,
        timeout: float,
        headers: dict[str, str] | None,
        token: str,
        request: Any = None,
        policy: HedgePolicy | None = None,
        budget_ms: float = 0.0,
    ) -> tuple[Reply | None, float]:
        """Publish and wait: the reply (None once ``timeout`` passed) and the ms it took,
        measured from the copy that brought it (``expect`` says the rest). nats-py's
        exceptions pass through."""
        pending = self.expect(subject, timeout, headers, token, request, policy, budget_ms)
        try:
            prefix = self.prefix or await self.open()
            await self._nc.publish(subject, payload, reply=prefix + token, headers=headers)
            reply = await pending.future
        finally:
            self.forget(token, pending)
        if reply is None:
            return None, 0.0
        return reply, pending.elapsed_ms(reply[2], self.now())

    async def open(self) -> str:
        async with self._opening:
            if not self.prefix:
                nc = self._nc
                inbox = nc.new_inbox()
                self.subscription = await nc.subscribe(inbox + ".*", cb=self.on_reply)
                if isinstance(nc, GuardedClient):
                    nc.reply_directly(inbox + ".", self.on_direct)
                    nc.on_denied(self.on_denied)
                self.prefix = inbox + "."
        return self.prefix

    async def on_reply(self, msg: Msg) -> None:
        """A reply through the subscription: one with headers, or any on a connection that is
        not a ``GuardedClient``."""
        token = msg.subject[len(self.prefix) :]
        pending = self.waiting.get(token)
        if pending is not None and not pending.future.done():
            pending.future.set_result((msg.data, msg.headers, token))

    def on_direct(self, token: str, data: bytes) -> None:
        """A reply without headers, from a ``GuardedClient``'s read loop."""
        pending = self.waiting.get(token)
        if pending is not None and not pending.future.done():
            pending.future.set_result((data, None, token))

    def on_denied(self, violation: Violation) -> None:
        """A ``GuardedClient`` heard the server refuse a subject: fail the requests it stops."""
        nc = self._nc
        assert isinstance(nc, GuardedClient)  # only those report violations
        for pending in set(self.waiting.values()):
            if not pending.future.done() and violation.blocks(pending.subject, self.prefix):
                # name the subject as it was sent: nats-py lowercased the server's words
                publish = violation.operation is Operation.PUBLISH
                spelled = pending.subject if publish else self.prefix + "*"
                pending.future.set_exception(nc.explain(violation, spelled))

    async def close(self, *, unsubscribe: bool) -> None:
        """Fail every waiting request: the connection no longer carries replies."""
        nc = self._nc
        if unsubscribe and self.subscription is not None:
            with contextlib.suppress(Exception):
                await self.subscription.unsubscribe()
        if isinstance(nc, GuardedClient) and self.prefix:
            nc.stop_replying_directly(self.prefix)
            nc.remove_denial_listener(self.on_denied)
        self.closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._deadlines.clear()
        self._hedges.clear()
        self._ticks.clear()
        for pending in self.waiting.values():
            if not pending.future.done():
                pending.future.set_exception(UnavailableError("the client was closed"))
        for task in list(self._sending):
            task.cancel()

    # --- the heap of ticks ------------------------------------------------------------------

    def _at(self, table: dict[int, list[Pending]], when: float, pending: Pending) -> None:
        tick = math.ceil(when / TICK_S)
        due = table.get(tick)
        if due is not None:
            due.append(pending)
            return
        table[tick] = [pending]
        heapq.heappush(self._ticks, tick)
        if self._sweep is None or tick < self._sweep_tick:
            self._arm(tick)

    def _arm(self, tick: int) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
        self._sweep = asyncio.get_running_loop().call_at(tick * TICK_S, self._expire)
        self._sweep_tick = tick

    def _expire(self) -> None:
        now, fired = asyncio.get_running_loop().time(), self._sweep_tick
        self._sweep = None
        ticks = self._ticks
        while ticks and (ticks[0] <= fired or ticks[0] * TICK_S <= now):
            tick = heapq.heappop(ticks)
            for pending in self._deadlines.pop(tick, ()):
                if not pending.future.done():
                    pending.future.set_result(None)
            for pending in self._hedges.pop(tick, ()):
                if not pending.future.done():
                    self._hedge(pending, now)
        if ticks:  # the earliest, whatever a hedge above armed
            self._arm(ticks[0])

    def _hedge(self, pending: Pending, now: float) -> None:
        policy, resend = pending.policy, self._resend
        assert policy is not None and resend is not None
        left_ms = pending.budget_ms - (now - pending.started) * 1000.0
        if not policy.allow(left_ms):
            return
        token = self._next_token()
        self.waiting[token] = pending
        if pending.sent_at is None:
            pending.sent_at = {}
        pending.sent_at[token] = now
        copy = self._send(
            pending.subject, resend(pending.request, left_ms), self.prefix + token, pending.headers
        )
        task = asyncio.get_running_loop().create_task(copy)
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        pending.gap_ms = policy.next_gap_ms(pending.gap_ms, pending.budget_ms)
        self._at(self._hedges, now + pending.gap_ms / 1000.0, pending)

    async def _send(
        self, subject: str, payload: bytes, reply: str, headers: dict[str, str] | None
    ) -> None:
        try:
            await self._nc.publish(subject, payload, reply=reply, headers=headers)
        except Exception as exc:  # the request's own copy or deadline still stands
            log.debug("a hedge on %s was not sent: %r", subject, exc)


__all__ = ["TICK_S", "Pending", "Reply", "ReplyInbox", "Resend"]
