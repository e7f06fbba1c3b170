"""One process supervisor for every child the rigs start: nats-servers, tier nodes, bench helpers.

A ``ChildProcess`` starts a command that dies with its parent (``PR_SET_PDEATHSIG`` on Linux),
copies its output to a log file in chunks (so a megabyte-long line is copied like any other, where
asyncio's line reader would give up at 64 KiB), optionally waits for its ready line, and stops it
with SIGTERM, then SIGKILL after a grace period. ``stop`` and ``kill`` are safe to call twice and on
a child that already exited.

A ``Supervisor`` watches a set of them (and nats-servers, which share their shape) and starts
again whatever exits, as ``mesh up`` and the soak run the mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from mesh.errors import MeshError, UnavailableError
from mesh.lifecycle import cancel_and_wait

#: bytes read from a child's output at a time.
CHUNK = 64 * 1024


def die_with_parent() -> None:
    """``preexec_fn`` for children: the kernel sends them SIGTERM when their parent dies."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ChildProcess:
    """A supervised child process; ``info`` holds the ``key=value`` words of its ready line."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        ready_prefix: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
        grace_s: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.ready_prefix = ready_prefix
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.new_session = new_session
        self.grace_s = grace_s
        self.info: dict[str, str] = {}
        self._proc: asyncio.subprocess.Process | None = None
        self._copier: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    async def start(self, timeout: float = 60.0) -> None:
        """Start the child; with a ready prefix, return once it printed its ready line."""
        log = await asyncio.to_thread(_open_log, self.log_path)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdout=asyncio.subprocess.PIPE if self.ready_prefix else log,
                stderr=asyncio.subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                preexec_fn=die_with_parent,
                start_new_session=self.new_session,
            )
        finally:
            await asyncio.to_thread(log.close)
        if self.ready_prefix is None:
            return
        self._ready = asyncio.get_running_loop().create_future()
        self._copier = asyncio.create_task(self._copy_output(), name=f"log-{self.name}")
        try:
            async with asyncio.timeout(timeout):
                await self._ready
        except TimeoutError:
            await self.kill()
            raise UnavailableError(
                f"{self.name} not ready after {timeout:.0f}s; see {self.log_path}"
            ) from None
        except UnavailableError:
            await self.stop()
            raise

    async def _copy_output(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        stdout = self._proc.stdout
        pending = recent = b""
        with await asyncio.to_thread(_open_log, self.log_path) as log:
            while chunk := await stdout.read(CHUNK):
                await asyncio.to_thread(_write, log, chunk)
                if self._ready is not None and not self._ready.done():
                    recent = (recent + chunk)[-3000:]
                    pending = self._look_for_ready_line(pending + chunk)
        if self._ready is not None and not self._ready.done():
            tail = recent.decode(errors="replace")
            self._ready.set_exception(
                UnavailableError(
                    f"{self.name} exited during start-up; see {self.log_path}:\n{tail}"
                )
            )

    def _look_for_ready_line(self, seen: bytes) -> bytes:
        """Find the ready line in what was read so far; returns the unfinished last line."""
        assert self.ready_prefix is not None and self._ready is not None
        *lines, rest = seen.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace").strip()
            if text.startswith(self.ready_prefix):
                for part in text.split()[1:]:
                    key, _, value = part.partition("=")
                    self.info[key] = value
                self._ready.set_result(None)
                return b""
        return rest[-CHUNK:]

    async def kill(self) -> None:
        """SIGKILL, as a crash would."""
        await self._end(signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if the child is still there after ``grace_s``."""
        await self._end(signal.SIGTERM)

    async def wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def _end(self, sig: signal.Signals) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), self.grace_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        copier, self._copier = self._copier, None
        if copier is not None:
            try:
                await asyncio.wait_for(asyncio.shield(copier), 2.0)
            except (TimeoutError, asyncio.CancelledError, Exception):
                await cancel_and_wait(copier)


def _open_log(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def _write(log: BinaryIO, chunk: bytes) -> None:
    log.write(chunk)
    log.flush()


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The parent's environment without ``MESH_*`` (a child's settings are its own), plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESH_")}
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update(extra or {})
    return env


class Supervised(Protocol):
    """A process a ``Supervisor`` restarts when it exits."""

    @property
    def pid(self) -> int | None: ...

    async def start(self) -> None: ...

    async def wait(self) -> int: ...


@dataclass
class Watched:
    """One supervised process: how reports name it, and the line said once it is back."""

    label: str
    process: Supervised
    restarted: Callable[[], str]


class Supervisor:
    """Restarts what it watches when it exits, reporting each exit and each return.

    A process that exits more than ``max_restarts`` times in ``window_s`` is left down and
    reported so; one that fails to start again counts as an exit. ``hold`` keeps a process
    down once it exits (a chaos step that wants a server away for a while) until ``release``.
    ``run`` returns when cancelled; after ``stopping`` is set, exits are expected and ignored.
    """

    def __init__(
        self,
        watched: Mapping[str, Watched],
        report: Callable[[str], None],
        *,
        max_restarts: int = 5,
        window_s: float = 60.0,
    ) -> None:
        self.watched = dict(watched)
        self.report = report
        self.max_restarts = max_restarts
        self.window_s = window_s
        self.stopping = False
        #: restarts so far, by name.
        self.restarts: dict[str, int] = dict.fromkeys(self.watched, 0)
        self._recent: dict[str, list[float]] = {name: [] for name in self.watched}
        self._held: dict[str, asyncio.Event] = {}
        #: set each time a process is back (chaos steps wait on it).
        self._back: dict[str, asyncio.Event] = {name: asyncio.Event() for name in self.watched}

    def hold(self, name: str) -> None:
        """Keep ``name`` down after its next exit, until ``release``."""
        if name not in self.watched:
            raise KeyError(f"{name!r} is not supervised: {sorted(self.watched)}")
        self._held[name] = asyncio.Event()

    def release(self, name: str) -> None:
        held = self._held.pop(name, None)
        if held is not None:
            held.set()

    async def wait_back(self, name: str, restarts: int, timeout: float) -> None:
        """Until ``name`` has been restarted more than ``restarts`` times."""
        back = self._back[name]
        try:
            async with asyncio.timeout(timeout):
                while self.restarts[name] <= restarts:
                    back.clear()
                    await back.wait()
        except TimeoutError:
            raise UnavailableError(f"{name} not restarted within {timeout:.0f}s") from None

    async def run(self) -> None:
        keepers = [
            asyncio.create_task(self._keep(name), name=f"supervise-{name}") for name in self.watched
        ]
        try:
            await asyncio.gather(*keepers)
        finally:
            await cancel_and_wait(keepers)

    async def _keep(self, name: str) -> None:
        entry = self.watched[name]
        while True:
            try:
                status: int | str = await entry.process.wait()
            except Exception:
                status = "unknown"
            if self.stopping:
                return
            if not await self._restart(name, entry, status):
                return

    async def _restart(self, name: str, entry: Watched, status: int | str) -> bool:
        """Start ``name`` again; False once it is left down."""
        while True:
            now = time.monotonic()
            recent = [t for t in self._recent[name] if now - t < self.window_s]
            if len(recent) >= self.max_restarts:
                self.report(f"{entry.label} exited with status {status} again; left down")
                return False
            held = self._held.get(name)
            if held is not None:
                self.report(f"{entry.label} exited with status {status}; held down")
                await held.wait()
                recent = []
            else:
                self.report(f"{entry.label} exited with status {status}; restarting it")
                await asyncio.sleep(min(2.0 ** len(recent) * 0.5, 10.0))
            self._recent[name] = [*recent, time.monotonic()]
            if self.stopping:
                return False
            try:
                await entry.process.start()
            except MeshError as error:
                status = f"unknown (it did not start again: {error.message})"
                continue
            self.restarts[name] += 1
            self.report(entry.restarted())
            self._back[name].set()
            return True
