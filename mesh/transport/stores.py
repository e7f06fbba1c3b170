"""Messages stored in a stream, many at a time: asynchronous JetStream publishes whose
acknowledgements come back on one wildcard inbox.

nats-py's ``JetStreamContext.publish`` waits for each message's acknowledgement before the
caller can send the next, and makes an inbox token, a future and a timer per message. Here a
batch is written at once (one flush carries it), its acknowledgements are awaited together, and
deadlines share the ``ReplyInbox``'s heap of ticks; the window of messages in flight is the
caller's (a batch at a time).

A refusal keeps nats-py's types, so that callers map them as before: ``APIError`` (its
``err_code`` and ``description``) for a stream's refusal, ``NoStreamResponseError`` when no
stream takes the subject, ``TimeoutError`` when no acknowledgement came in time.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass

import nats.js.errors
from nats.aio.client import Client as NATS

from mesh.errors import MeshError
from mesh.transport.replies import Pending, ReplyInbox

#: what a server answers in place of a reply when nobody takes the subject.
_NO_RESPONDERS = "503"
_STATUS = "Status"


@dataclass(frozen=True, slots=True)
class Stored:
    """A message's place in its stream; ``duplicate`` when its id was stored already."""

    stream: str
    seq: int
    duplicate: bool


#: one message to store: subject, payload, headers.
Entry = tuple[str, bytes, dict[str, str] | None]
#: a message written: its inbox token and what waits for its acknowledgement.
Sent = tuple[str, Pending]


class StreamWriter:
    """Stores messages in streams over ``nc``, acknowledgements on one inbox."""

    def __init__(self, nc: NATS) -> None:
        self._nc = nc
        self._tokens = itertools.count(1)
        self._inbox = ReplyInbox(nc, self._next_token)

    def _next_token(self) -> str:
        return f"{next(self._tokens):x}"

    async def send(self, entries: Sequence[Entry], timeout: float) -> list[Sent]:
        """Write ``entries`` at once; each gets its acknowledgement through ``collect``."""
        inbox = self._inbox
        prefix = inbox.prefix or await inbox.open()
        publish = self._nc.publish
        sent: list[Sent] = []
        try:
            for subject, payload, headers in entries:
                token = self._next_token()
                sent.append((token, inbox.expect(subject, timeout, headers, token)))
                await publish(subject, payload, reply=prefix + token, headers=headers)
        except BaseException:
            self._forget(sent)
            raise
        return sent

    async def collect(self, sent: Sequence[Sent]) -> list[Stored | Exception]:
        """The acknowledgement of each message ``send`` wrote, or why it was not stored."""
        outcomes: list[Stored | Exception] = []
        try:
            for _, pending in sent:
                try:
                    reply = await pending.future
                except (MeshError, OSError) as exc:  # refused on the spot (a permission)
                    outcomes.append(exc)
                    continue
                outcomes.append(_stored(reply[0], reply[1]) if reply else _timed_out(pending))
        finally:
            self._forget(sent)
        return outcomes

    def _forget(self, sent: Sequence[Sent]) -> None:
        waiting = self._inbox.waiting
        for token, _ in sent:
            waiting.pop(token, None)

    async def store_all(self, entries: Sequence[Entry], timeout: float) -> list[Stored | Exception]:
        """Store ``entries`` as one batch: every one written, then every acknowledgement read."""
        return await self.collect(await self.send(entries, timeout))

    async def store(
        self, subject: str, payload: bytes, headers: dict[str, str] | None, timeout: float
    ) -> Stored:
        (outcome,) = await self.store_all([(subject, payload, headers)], timeout)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def close(self) -> None:
        await self._inbox.close(unsubscribe=True)


def _stored(data: bytes, headers: dict[str, str] | None) -> Stored | Exception:
    if not data and headers and headers.get(_STATUS) == _NO_RESPONDERS:
        return nats.js.errors.NoStreamResponseError()
    try:
        ack = json.loads(data)
        error = ack.get("error")
        if error is not None:
            nats.js.errors.APIError.from_error(error)  # raises the error's own type
        return Stored(str(ack["stream"]), int(ack["seq"]), bool(ack.get("duplicate", False)))
    except nats.js.errors.Error as exc:
        return exc
    except (ValueError, KeyError, TypeError, AttributeError):
        return nats.js.errors.APIError(description=f"unreadable acknowledgement {data[:80]!r}")


def _timed_out(pending: Pending) -> Exception:
    return TimeoutError(f"no acknowledgement from the stream of {pending.subject} in time")


__all__ = ["Entry", "Sent", "Stored", "StreamWriter"]
