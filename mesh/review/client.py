"""A caller of the review API (``mesh review``, the console): one method per operation, each
answer a plain dict as the API gives it, each failure one of the mesh's typed errors.

The API's subject names the caller (``mesh.review.api.<op>.<name>``), and only that identity may
publish it, so a caller whose role does not allow an operation is refused by the server before
anything answers: ``on_error`` (the connection's error callback) turns that refusal into a
``PermissionDeniedError`` at once instead of a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from typing import Any

import nats.errors
from nats.aio.client import Client as NATS

from mesh.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    PermissionDeniedError,
    UnavailableError,
)
from mesh.review.api import decode_reply
from mesh.topology import subjects

_VIOLATION = re.compile(r'permissions violation for publish to "([^"]+)"', re.IGNORECASE)


class ReviewClient:
    def __init__(self, nc: NATS, name: str, *, timeout: float = 5.0) -> None:
        try:
            self.name = subjects.check_token(name, "identity name")
        except ValueError as exc:
            raise InvalidArgumentError(str(exc)) from None
        self.timeout = timeout
        self._nc = nc
        # every call in flight on a subject: concurrent calls (the console's pages) share one
        self._refused: dict[str, set[asyncio.Future[None]]] = {}

    async def on_error(self, exc: Exception) -> None:
        """The connection's error callback: a refused publish fails the call that made it."""
        found = _VIOLATION.search(str(exc))
        if found is None:
            return
        for waiting in self._refused.get(found.group(1), ()):
            if not waiting.done():
                waiting.set_result(None)

    async def call(self, operation: str, body: dict[str, Any] | None = None) -> Any:
        subject = subjects.review_api(operation, self.name)
        refused: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._refused.setdefault(subject, set()).add(refused)
        asking = asyncio.ensure_future(
            self._nc.request(subject, json.dumps(body or {}).encode(), timeout=self.timeout)
        )
        either: set[asyncio.Future[Any]] = {asking, refused}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if refused.done() and not asking.done():
                raise PermissionDeniedError(
                    f"identity {self.name} may not {operation} review items: its role does not "
                    "allow it (a reviewer labels: mesh identities add DIR NAME --role reviewer)"
                )
            msg = await asking
        except nats.errors.NoRespondersError:
            raise UnavailableError(
                "no review desk answers (mesh review serve runs at the hub)"
            ) from None
        except nats.errors.TimeoutError:
            raise DeadlineExceededError(
                f"the review desk did not answer {operation} in {self.timeout:g} s"
            ) from None
        finally:
            calls = self._refused[subject]
            calls.discard(refused)
            if not calls:
                del self._refused[subject]
            if not asking.done():
                asking.cancel()
                with contextlib.suppress(BaseException):
                    await asking
        return decode_reply(msg.data)

    async def list(
        self,
        *,
        model: str | None = None,
        reason: str | None = None,
        status: str = "pending",
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"status": status, "limit": limit, "offset": offset}
        if model is not None:
            body["model"] = model
        if reason is not None:
            body["reason"] = reason
        return dict(await self.call("list", body))

    async def show(self, item: str) -> dict[str, Any]:
        return dict(await self.call("show", {"id": item}))

    async def label(self, item: str, label: int | str, *, relabel: bool = False) -> dict[str, Any]:
        return dict(await self.call("label", {"id": item, "label": label, "relabel": relabel}))

    async def skip(self, item: str) -> dict[str, Any]:
        return dict(await self.call("skip", {"id": item}))

    async def stats(self, *, model: str | None = None) -> dict[str, Any]:
        return dict(await self.call("stats", {} if model is None else {"model": model}))

    async def report(self, *, model: str | None = None, days: int = 7) -> dict[str, Any]:
        body: dict[str, Any] = {"days": days}
        if model is not None:
            body["model"] = model
        return dict(await self.call("report", body))


__all__ = ["ReviewClient"]
