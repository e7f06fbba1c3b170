"""Serve until a signal, and stop within ``STOP_WITHIN_S`` of it in any state.

``run_until_signalled(serve)`` runs a process's coroutine ``serve(shutdown) -> status``, which
starts its parts, prints its ready line, waits on ``shutdown.wait()`` and tears its parts down.
A stop is asked for by SIGTERM or SIGINT (status 0) or by a part that cannot go on
(``shutdown.request(reason, status)``: a node whose connection died):

- asked while the process starts (connecting to a server that is not there, for instance), it
  cancels the start at once: there is nothing to drain yet;
- asked while it serves, it ends ``shutdown.wait()`` and the teardown runs;
- either way the teardown gets ``grace_s`` (``STOP_GRACE_S``), then is cancelled, again and
  again, as a part that is stopping can absorb a cancel (a dead connection's drain would
  otherwise wait out its timeouts);
- a signal after the first stop cancels at once;
- ``StopDeadline`` ends the process ``STOP_WITHIN_S`` after the stop whatever still runs (a
  thread blocked in a system call, a span exporter waiting on its collector): Kubernetes and
  compose send SIGKILL after their own grace, and a stop should never wait for it.

The status is what ``serve`` returns, or the stop's own when its teardown was cut short.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable

#: a process ends this long after SIGTERM or SIGINT at the latest.
STOP_WITHIN_S = 1.8
#: how long a serving process's teardown runs before it is cancelled.
STOP_GRACE_S = 1.2
#: the grace of a rig that stops many processes of its own (``mesh up``, ``mesh fleet
#: simulate``): each stops within seconds, one after another; a second signal cuts it short.
RIG_STOP_GRACE_S = 30.0
#: between cancels of a teardown that goes on after its grace.
RECANCEL_S = 0.1
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Shutdown:
    """The stop request of a process: a signal, or a part that found it cannot go on."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._on_stop: Callable[[], None] | None = None
        #: the signal that asked for the stop, if one did first.
        self.signal: signal.Signals | None = None
        #: why a part asked for the stop, if one did first.
        self.reason: str | None = None
        #: the exit status of the stop: 0 for a signal, the part's for a request.
        self.status = 0
        #: whether the process got to ``wait``: it serves, and its teardown may drain.
        self.serving = False

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str, status: int = 1) -> None:
        """Stop serving and exit with ``status`` (a stop asked for before keeps its own)."""
        if self._event.is_set():
            return
        self.reason, self.status = reason, status
        self._stop()

    async def wait(self) -> None:
        """Serve until a stop is requested."""
        self.serving = True
        await self._event.wait()

    def _signalled(self, sig: signal.Signals) -> None:
        self.signal = sig
        self._stop()

    def _stop(self) -> None:
        self._event.set()
        if self._on_stop is not None:
            self._on_stop()


Serve = Callable[[Shutdown], Awaitable[int]]


async def run_until_signalled(
    serve: Serve,
    *,
    grace_s: float = STOP_GRACE_S,
    on_stop: Callable[[int], None] | None = None,
) -> int:
    """Run ``serve`` until it returns, stopping it on SIGTERM or SIGINT; its status.

    ``on_stop`` hears the status of the first stop as it is asked for."""
    loop = asyncio.get_running_loop()
    shutdown = Shutdown()
    task = asyncio.ensure_future(serve(shutdown))
    recancel: asyncio.TimerHandle | None = None

    def cancel_until_done() -> None:
        nonlocal recancel
        if not task.done():
            task.cancel()
            recancel = loop.call_later(RECANCEL_S, cancel_until_done)

    def stopping() -> None:
        nonlocal recancel
        if on_stop is not None:
            on_stop(shutdown.status)
        if not shutdown.serving:
            task.cancel()
        recancel = loop.call_later(grace_s, cancel_until_done)

    def signalled(sig: signal.Signals) -> None:
        if not shutdown.requested:
            shutdown._signalled(sig)
            return
        if recancel is not None:
            recancel.cancel()
        cancel_until_done()

    shutdown._on_stop = stopping
    for sig in SIGNALS:
        loop.add_signal_handler(sig, signalled, sig)
    try:
        return await task
    except asyncio.CancelledError:
        if not (shutdown.requested and task.cancelled()):
            raise
        return shutdown.status
    finally:
        if recancel is not None:
            recancel.cancel()
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)


class StopDeadline:
    """Ends the process ``seconds`` after it is armed, from a thread of its own: the event loop
    may be the thing that is stuck."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._timer: threading.Timer | None = None

    def arm(self, status: int) -> None:
        self._timer = threading.Timer(self._seconds, self._exit, (status,))
        self._timer.daemon = True
        self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _exit(self, status: int) -> None:
        with contextlib.suppress(Exception):
            sys.stderr.write(f"stopped: still busy {self._seconds:.1f} s after the stop\n")
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def exit_on_signal() -> None:
    """Until the event loop takes them over, SIGTERM and SIGINT end the process with status 0
    (a process told to stop while it imports or reads its settings)."""

    def stop(signum: int, _: object) -> None:
        raise SystemExit(0)

    for sig in SIGNALS:
        signal.signal(sig, stop)
