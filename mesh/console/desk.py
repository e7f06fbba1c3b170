"""What the console asks of the review queue's desk: the review API's operations, each answer a
plain dict as the API gives it, each failure one of the mesh's typed errors
(``mesh.review.client.ReviewClient`` is one)."""

from __future__ import annotations

from typing import Any, Protocol


class ReviewDesk(Protocol):
    async def list(
        self,
        *,
        model: str | None = None,
        reason: str | None = None,
        status: str = "pending",
        limit: int = 50,
    ) -> dict[str, Any]: ...

    async def show(self, item: str) -> dict[str, Any]: ...

    async def label(
        self, item: str, label: int | str, *, relabel: bool = False
    ) -> dict[str, Any]: ...

    async def skip(self, item: str) -> dict[str, Any]: ...

    async def stats(self, *, model: str | None = None) -> dict[str, Any]: ...

    async def report(self, *, model: str | None = None, days: int = 7) -> dict[str, Any]: ...


__all__ = ["ReviewDesk"]
