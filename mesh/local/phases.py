"""Deadlines on the phases of a long-running command (``mesh up``, ``mesh demo``, ``mesh bench``,
``mesh soak``, ``make fleet-500``): none of them waits for ever on a process, a server or a
stream that never comes.

A ``Phases`` is a command's clock: ``phase(name, deadline_s)`` is an async context manager that
ends its block when the deadline passes and raises ``PhaseTimeoutError`` naming the phase, its
deadline and what it was waiting for at that moment (``Phase.waiting_for`` updates that as the
phase moves on). Whatever the block started is stopped by the caller's own cleanup as the error
unwinds, so the command ends with one line saying what did not finish, and its processes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from mesh.errors import DeadlineExceededError


class PhaseTimeoutError(DeadlineExceededError):
    """A phase of a command did not finish within its deadline."""

    def __init__(self, command: str, phase: str, deadline_s: float, waiting_for: str) -> None:
        super().__init__(
            f"{command}: phase '{phase}' did not finish within {deadline_s:.0f}s "
            f"(waiting for {waiting_for})"
        )
        self.command = command
        self.phase = phase
        self.deadline_s = deadline_s
        self.waiting_for = waiting_for


@dataclass
class Phase:
    name: str
    deadline_s: float
    #: what the phase waits for now; said when its deadline passes.
    waiting: str
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None

    def waiting_for(self, what: str) -> None:
        self.waiting = what

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started


class Phases:
    """The phases of one command run, with the seconds each took (``timings``)."""

    def __init__(self, command: str, *, scale: float = 1.0) -> None:
        self.command = command
        #: every deadline is multiplied by this (a slow or shared machine).
        self.scale = scale
        self.done: list[Phase] = []
        self.current: Phase | None = None

    @contextlib.asynccontextmanager
    async def phase(
        self, name: str, deadline_s: float, waiting_for: str | None = None
    ) -> AsyncIterator[Phase]:
        deadline = deadline_s * self.scale
        phase = Phase(name, deadline, waiting_for or name)
        outer, self.current = self.current, phase
        try:
            async with asyncio.timeout(deadline) as clock:
                yield phase
        except TimeoutError:
            if clock.expired():
                raise PhaseTimeoutError(self.command, name, deadline, phase.waiting) from None
            raise
        finally:
            phase.ended = time.monotonic()
            self.done.append(phase)
            self.current = outer

    def timings(self) -> dict[str, float]:
        return {p.name: round(p.seconds, 2) for p in self.done}


__all__ = ["Phase", "PhaseTimeoutError", "Phases"]
