"""``mesh console``: the operator console in a browser (``docs/console.md``)."""

from __future__ import annotations

from pathlib import Path

import click

from mesh.cli.options import NATS_FLAGS, FlagField, config_option, run_service


@click.command("console")
@config_option
@click.option(
    "--servers", default=None,
    help="NATS server of the hub (default: settings, $MESH_CONSOLE_NATS__SERVERS).",
)  # fmt: skip
@click.option(
    "--creds", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
    help="The console identity's credentials (mesh identities add DIR console --role console).",
)  # fmt: skip
@click.option(
    "--reviewer-creds", type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="A reviewer identity's credentials, to label review items (role reviewer).",
)  # fmt: skip
@click.option(
    "--tls-ca", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
    help="CA of the servers' TLS certificates (for tls:// servers).",
)  # fmt: skip
@click.option("--domain", default=None, help="JetStream domain of the fleet's registry (hub).")
@click.option("--host", default=None, help="Address to listen on (127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (8090; 0: any).")
@click.option(
    "--token", default=None,
    help="The token people open it with (default: $MESH_CONSOLE_TOKEN; 16 characters or more).",
)  # fmt: skip
@click.option(
    "--offline-after", type=float, default=None,
    help="Seconds without a heartbeat after which a node shows offline (10).",
)  # fmt: skip
@click.pass_context
def console(ctx: click.Context, /, config: Path | None, **_: object) -> None:
    """Serve the operator console: the fleet, rollouts, the review queue and ground truth, live.

    It reads NATS as the console identity and acts only through the mesh's NATS APIs (rollout
    records, the review API as a reviewer). Prints MESH_CONSOLE_READY http=URL once it serves.
    Settings: --config FILE, MESH_CONSOLE_* variables, and the flags, which win."""
    run_service(ctx, config, "mesh.services.console", CONSOLE_FLAGS)


#: where each flag of ``mesh console`` goes in ``ConsoleSettings``.
CONSOLE_FLAGS: dict[str, FlagField] = {
    **NATS_FLAGS,
    "reviewer_creds": "reviewer_credentials",
    "domain": "domain",
    "host": "host",
    "port": "port",
    "token": "token",
    "offline_after": "offline_after_s",
}
