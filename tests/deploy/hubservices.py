"""What the deployments' hub-side services for people must do once they run as written: the
operator console refuses every request without its token and answers with it, its fleet API
lists the nodes from their heartbeats, and the review desk answers through it (a list of the
queue the cascade filled, and a label given as the console's own reviewer identity)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

import aiohttp

#: a token of the right length that is not the console's.
WRONG_TOKEN = "not-the-console-token"


async def _get(
    session: aiohttp.ClientSession, url: str, token: str | None
) -> tuple[int, dict[str, Any] | None]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with session.get(url, headers=headers, allow_redirects=False) as resp:
        if resp.content_type != "application/json":
            return resp.status, None
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def refuses_without_its_token(session: aiohttp.ClientSession, url: str) -> None:
    """No page, API call or stream without the token, nor with another one."""
    for path in ("/", "/review", "/api/fleet", "/api/review", "/events"):
        for token in (None, WRONG_TOKEN):
            status, _ = await _get(session, f"{url}{path}", token)
            assert status == 401, (path, token, status)
    async with session.post(f"{url}/api/review/r0/skip", json={}) as resp:
        assert resp.status == 401, resp.status


async def lists_the_nodes(
    session: aiohttp.ClientSession, url: str, token: str, nodes: Iterable[str], timeout: float = 30
) -> dict[str, Any]:
    """The console's fleet API, once it shows every node of ``nodes`` online."""
    wanted = set(nodes)
    async with asyncio.timeout(timeout):
        while True:
            status, fleet = await _get(session, f"{url}/api/fleet", token)
            assert status == 200 and fleet is not None, status
            online = {n["node"] for n in fleet["nodes"] if n["online"]}
            if wanted <= online:
                return fleet
            await asyncio.sleep(0.5)


async def reviews_through_the_desk(
    session: aiohttp.ClientSession, url: str, token: str, timeout: float = 45
) -> dict[str, Any]:
    """The review queue as the console lists it through the desk, once the nodes' candidates
    reached it; then one of its items labelled through the console (its reviewer identity). The
    labelled item."""
    items: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while True:
            status, queue = await _get(session, f"{url}/api/review", token)
            assert status == 200 and queue is not None, status
            items = [i for i in queue["items"] if i.get("withheld") is None]
            if queue["problem"] is None and items:
                break
            await asyncio.sleep(0.5)
    item = items[0]
    label = item["answers"][-1]["label"]
    async with session.post(
        f"{url}/api/review/{item['id']}/label",
        json={"label": label},
        headers={"Authorization": f"Bearer {token}"},
    ) as resp:
        body = await resp.json()
        assert resp.status == 200, body
    labelled: dict[str, Any] = body["result"]
    assert labelled["status"] == "labelled" and labelled["label"]["label"] == label, labelled
    return labelled


async def serves_people(
    session: aiohttp.ClientSession, url: str, token: str, nodes: Iterable[str]
) -> None:
    """The console and the review desk behind it, as a person at the hub meets them."""
    await refuses_without_its_token(session, url)
    await lists_the_nodes(session, url, token, nodes)
    labelled = await reviews_through_the_desk(session, url, token)
    assert labelled["label"]["by"] == "console-reviewer", labelled["label"]
