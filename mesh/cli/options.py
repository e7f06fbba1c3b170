"""What the ``mesh`` commands share: the group that reports typed errors, the common options,
and the flags of a process command as a source of its settings."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

DEFAULT_CACHE = Path(os.environ.get("MESH_CACHE_DIR", Path.home() / ".cache" / "edge-mesh"))

cache_option = click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=DEFAULT_CACHE / "demo",
    show_default=True,
    help="Where the demo models are built and cached (built on the first run).",
)


def servers_option(help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--servers``, default ``$MESH_NATS_URL`` (what ``mesh up`` prints)."""
    return click.option(
        "--servers",
        default=lambda: os.environ.get("MESH_NATS_URL", "nats://127.0.0.1:4222"),
        show_default="$MESH_NATS_URL or nats://127.0.0.1:4222",
        help=help,
    )


def creds_option(
    help: str, env: str = "MESH_CREDS"
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--creds``, a NATS credentials file, default ``$<env>``."""
    return click.option(
        "--creds",
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        default=lambda: os.environ.get(env) or None,
        show_default=f"${env}",
        help=help,
    )


#: what a refused identity should try instead, after its ``PERMISSION_DENIED`` line.
IDENTITY_HINT = (
    "hint: each command needs an identity whose role may do it: mesh infer and mesh publish "
    "an application's (MESH_CREDS), mesh fleet, mesh models push/list and mesh rollout the "
    "controller's (mesh up prints where its credentials are)"
)


class MeshGroup(click.Group):
    """Turns the mesh's typed errors into a one-line message and exit status 2, and so a
    failure of nats-py that reaches a command: a user's mistake is never a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        from mesh.errors import MeshError, PermissionDeniedError

        try:
            return super().invoke(ctx)
        except MeshError as error:
            click.echo(f"error: {error}", err=True)
            if isinstance(error, PermissionDeniedError):
                click.echo(IDENTITY_HINT, err=True)
            sys.exit(2)
        except Exception as error:
            if not type(error).__module__.startswith("nats."):
                raise
            from mesh.transport.failures import mesh_error

            click.echo(f"error: {mesh_error(error, 'talking to NATS')}", err=True)
            sys.exit(2)


config_option = click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="YAML settings file; MESH_* environment variables and the flags given override it.",
)

#: where a flag goes in a process's settings: a dotted field, or a field and a conversion.
FlagField = str | tuple[str, Callable[[Any], Any]]


def server_list(servers: str) -> list[str]:
    """``--servers`` as settings take it: comma-separated URLs."""
    return [url.strip() for url in servers.split(",") if url.strip()]


def flag_settings(
    ctx: click.Context, fields: Mapping[str, FlagField]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The command's flags as two layers of settings: those given on the command line (over
    the file and the variables) and the flags' defaults (under them)."""
    given: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    for param, field in fields.items():
        value = ctx.params.get(param)
        if value is None:
            continue
        path, convert = (field, None) if isinstance(field, str) else field
        layer = (
            given if ctx.get_parameter_source(param) is ParameterSource.COMMANDLINE else defaults
        )
        *sections, name = path.split(".")
        for section in sections:
            layer = layer.setdefault(section, {})
        layer[name] = convert(value) if convert is not None else value
    return given, defaults
