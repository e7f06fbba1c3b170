"""One way to start a mesh process: its settings, its logs, then serve until a signal.

``mesh node``, ``mesh ingress`` and ``mesh controller`` each load a ``ServiceSettings`` class
(``load_settings``: a YAML file, ``MESH_*`` variables, command-line flags) and run a coroutine
``serve(settings, shutdown)`` with ``run_process``: JSON logs (``configure_logging``), then
``run_until_signalled`` (``mesh.services.stopping``). Settings that cannot work exit with
status 2 and one line naming the field; so does a typed error (``MeshError``) while it starts.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import yaml
from pydantic import ValidationError

from mesh.errors import MeshError
from mesh.observability.telemetry import configure_logging
from mesh.services.stopping import (
    STOP_GRACE_S,
    STOP_WITHIN_S,
    Serve,
    Shutdown,
    StopDeadline,
    exit_on_signal,
    run_until_signalled,
)
from mesh.settings import ServiceSettings

#: exit status of settings that cannot work and of a typed error at start.
EXIT_INVALID = 2

SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def run_process(
    serve: Serve, settings: ServiceSettings, service: str, *, stop_within_s: float = STOP_WITHIN_S
) -> int:
    """Configure logging, run ``serve`` until it returns or a signal stops it; the status.

    A typed error (``MeshError``) while it runs is one line on stderr and status 2."""
    configure_logging(settings.log_level, service=service)
    deadline = StopDeadline(stop_within_s)
    try:
        return asyncio.run(
            run_until_signalled(
                serve, grace_s=min(STOP_GRACE_S, stop_within_s), on_stop=deadline.arm
            )
        )
    except MeshError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return EXIT_INVALID
    finally:
        deadline.disarm()


def service_main(
    cls: type[SettingsT],
    what: str,
    serve: Callable[[SettingsT, Shutdown], Awaitable[int]],
    service: str,
    config: Path | None,
    *,
    flags: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    source: str = "MESH_* variables",
) -> None:
    """A process's ``main``: a second signal ends it at once, settings that cannot work exit 2
    with one line, then ``serve`` runs until a signal; its status is the process's."""
    exit_on_signal()
    settings = load_settings(cls, what, config, flags=flags, defaults=defaults, source=source)
    status = run_process(lambda shutdown: serve(settings, shutdown), settings, service)
    if status:
        sys.exit(status)


class ServiceMain(Protocol):
    def __call__(
        self,
        config: Path | None = None,
        *,
        flags: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None: ...


def entry_point(
    cls: type[SettingsT],
    what: str,
    serve: Callable[[SettingsT, Shutdown], Awaitable[int]],
    service: str,
    source: str,
) -> ServiceMain:
    """A service's ``main(config, flags=, defaults=)``, as the CLI calls it: runs the service
    until SIGINT or SIGTERM; invalid settings exit with status 2."""

    def main(
        config: Path | None = None,
        *,
        flags: Mapping[str, Any] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        service_main(
            cls, what, serve, service, config, flags=flags, defaults=defaults, source=source
        )

    return main


def load_settings(
    cls: type[SettingsT],
    what: str,
    config: Path | None,
    *,
    flags: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    source: str = "MESH_* variables",
) -> SettingsT:
    """The process's settings; settings that cannot work exit with status 2 and one line."""
    try:
        return cls.load(config, flags=flags, defaults=defaults)
    except (yaml.YAMLError, ValidationError, ValueError, OSError) as error:
        where = config or source
        print(f"error: invalid {what} settings ({where}): {settings_error(error)}", file=sys.stderr)
        sys.exit(EXIT_INVALID)


def settings_error(error: Exception) -> str:
    """What is wrong with the settings, on one line: an operator reads it in a process log."""
    if isinstance(error, ValidationError):
        return "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
            for item in error.errors()
        )
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"not valid YAML at line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    if isinstance(error, yaml.YAMLError):
        return "not valid YAML: " + " ".join(str(error).split())
    return " ".join(str(error).split())
