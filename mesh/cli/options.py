"""What the ``mesh`` commands share: the group that reports typed errors, the cache option."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

DEFAULT_CACHE = Path(os.environ.get("MESH_CACHE_DIR", Path.home() / ".cache" / "edge-mesh"))

cache_option = click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=DEFAULT_CACHE / "demo",
    show_default=True,
    help="Where the demo models are built and cached (built on the first run).",
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
