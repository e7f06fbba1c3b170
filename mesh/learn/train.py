"""The user's training command, run on an export.

The command is configured as text (split like a shell would, not run by one) or as a list of
arguments; in each argument ``{data}`` becomes the path of the export the trainer learns from
(``x``, ``y`` in an ``.npz``), ``{provenance}`` its JSON, and ``{out}`` the path of the ONNX
model it must write. It runs with the job's folder as its working directory, for at most
``timeout_s``. A command that cannot start, exits non-zero, runs out of time or writes no model
gets a typed error naming why, with the end of what it printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mesh.errors import DeadlineExceededError, InvalidArgumentError

#: the end of a failed command's output kept in its error.
TAIL_CHARS = 1500
PLACEHOLDERS = ("data", "provenance", "out")


def command_of(command: str | Sequence[str], values: Mapping[str, str]) -> list[str]:
    """The arguments to run: ``command`` split (when text), each placeholder filled in."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise InvalidArgumentError("the training command is empty: give --train 'CMD {data} {out}'")
    filled: list[str] = []
    for arg in argv:
        try:
            filled.append(arg.format_map(dict(values)))
        except (KeyError, ValueError, IndexError) as exc:
            raise InvalidArgumentError(
                f"training command argument {arg!r} names {exc}: the placeholders are "
                f"{', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            ) from None
    if not any("{out}" in arg for arg in argv):
        raise InvalidArgumentError(
            "the training command must say where to write its model: put {out} in it"
        )
    return filled


@dataclass(frozen=True)
class Trained:
    """What a training run made: the model, and the end of what it printed."""

    model: Path
    output: str
    seconds: float


async def run_training(
    command: str | Sequence[str],
    *,
    data: Path,
    provenance: Path,
    out: Path,
    cwd: Path,
    timeout_s: float = 600.0,
) -> Trained:
    """Run the training command and return the model it wrote; a typed error otherwise."""
    argv = command_of(command, {"data": str(data), "provenance": str(provenance), "out": str(out)})
    await asyncio.to_thread(out.unlink, missing_ok=True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=str(cwd),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
    except OSError as exc:
        raise InvalidArgumentError(
            f"the training command {argv[0]!r} could not start: {exc}"
        ) from None
    try:
        async with asyncio.timeout(timeout_s):
            printed, _ = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise DeadlineExceededError(
            f"the training command ran over {timeout_s:g} s and was stopped; nothing was made"
        ) from None
    text = printed.decode(errors="replace")
    tail = text[-TAIL_CHARS:].strip()
    if proc.returncode != 0:
        raise InvalidArgumentError(
            f"the training command failed (exit {proc.returncode}); nothing was made. It "
            f"printed:\n{tail or '(nothing)'}"
        )
    if not await asyncio.to_thread(_written, out):
        raise InvalidArgumentError(
            f"the training command exited 0 but wrote no model at {out}; nothing was made. It "
            f"printed:\n{tail or '(nothing)'}"
        )
    return Trained(out, tail, loop.time() - started)


def _written(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 0


__all__ = ["PLACEHOLDERS", "Trained", "command_of", "run_training"]
