"""The ``mesh`` command: run nodes, the whole mesh, the demo, the benchmark; build models.

Each command imports what it runs only when it runs, so ``mesh node`` loads no development rig.
"""

from __future__ import annotations

import click

from mesh.cli.console import console
from mesh.cli.fleet import fleet
from mesh.cli.identities import identities
from mesh.cli.learn import learn, models_recalibrate
from mesh.cli.models import models
from mesh.cli.options import MeshGroup
from mesh.cli.releases import (
    keys,
    models_bump,
    models_list,
    models_push,
    models_revoke,
    models_sign,
)
from mesh.cli.review import review
from mesh.cli.rollouts import controller, rollout
from mesh.cli.runs import bench, demo, soak
from mesh.cli.serving import infer, ingress, node, publish, up


@click.group(cls=MeshGroup)
@click.version_option(package_name="edge-mesh")
def main() -> None:
    """Edge-cloud hybrid inference mesh over NATS."""


for _command in (
    node, infer, publish, up, ingress, models, identities, keys, fleet, rollout, controller,
    bench, demo, soak, review, console, learn,
):  # fmt: skip
    main.add_command(_command)
for _command in (
    models_sign, models_push, models_list, models_bump, models_revoke, models_recalibrate,
):  # fmt: skip
    models.add_command(_command)

__all__ = ["main"]
