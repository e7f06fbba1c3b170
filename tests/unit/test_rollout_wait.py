"""Waiting for a rollout to end outlasts reads that fail while the hub's members change: a
NATS request timeout is an ``asyncio.TimeoutError`` too, and the soak once took one for its own
deadline and aborted a healthy rollout five seconds after a hub member was killed."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import nats.errors
import pytest

from mesh.fleet import admin


def _reads(*steps: object) -> Any:
    queue: Iterator[object] = iter(steps)

    async def read_rollouts(js: object) -> dict[str, object]:
        step = next(queue)
        if isinstance(step, BaseException):
            raise step
        return {"digits": step}

    return read_rollouts


async def test_a_read_timing_out_is_asked_again_not_taken_for_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ended = SimpleNamespace(id="r1", active=False)
    monkeypatch.setattr(
        admin,
        "read_rollouts",
        _reads(
            SimpleNamespace(id="r1", active=True),
            nats.errors.TimeoutError(),
            nats.errors.NoRespondersError(),
            ended,
        ),
    )
    got = await admin.wait_rollout_end(object(), "digits", "r1", timeout_s=5.0, poll_s=0.0)
    assert got is ended


async def test_none_when_the_rollout_has_not_ended_by_the_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running = SimpleNamespace(id="r1", active=True)

    async def read_rollouts(js: object) -> dict[str, object]:
        return {"digits": running}

    monkeypatch.setattr(admin, "read_rollouts", read_rollouts)
    assert (
        await admin.wait_rollout_end(object(), "digits", "r1", timeout_s=0.05, poll_s=0.01) is None
    )


async def test_another_rollouts_end_is_not_this_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        admin, "read_rollouts", _reads(*[SimpleNamespace(id="r0", active=False)] * 100)
    )
    assert (
        await admin.wait_rollout_end(object(), "digits", "r1", timeout_s=0.05, poll_s=0.001) is None
    )
