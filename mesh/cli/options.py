"""What the ``mesh`` commands share: the group that reports typed errors, the cache option."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

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


class MeshGroup(click.Group):
    """Turns the mesh's typed errors into a one-line message and exit status 2."""

    def invoke(self, ctx: click.Context) -> object:
        from mesh.errors import MeshError

        try:
            return super().invoke(ctx)
        except MeshError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)
