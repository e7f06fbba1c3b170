"""The run's timeline: what happened, seconds into the run, for the live view and the log."""

from __future__ import annotations

from collections.abc import Callable

from mesh.dev.demo.state import Clock, LinkView


class Journal:
    """Every part of the run tells what it did here; the live view decides who reads it."""

    def __init__(self, view: LinkView) -> None:
        self.view = view
        self.clock = Clock()
        #: where a timestamped line goes besides the panel: nowhere on a terminal (the panel
        #: lists the latest), printed as it happens otherwise; the live view sets it.
        self.sink: Callable[[str], None] = lambda line: None

    def restart(self) -> None:
        """The run's clock starts with the load, not when the processes did."""
        self.clock = Clock()

    def now(self) -> float:
        return self.clock.now()

    def event(self, text: str) -> None:
        now = self.clock.now()
        self.view.events.append((now, text))
        self.sink(f"{now:5.1f}s  {text}")
