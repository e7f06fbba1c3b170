"""``mesh identities``: a fleet's NATS identities (operator, accounts, users) and their creds."""

from __future__ import annotations

from pathlib import Path

import click

from mesh.security.permissions import Role


@click.group()
def identities() -> None:
    """Create and issue the fleet's NATS identities (decentralized JWT auth)."""


@identities.command("init")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False))
@click.option("--edge-replicas", default=1, show_default=True, help="Edge node identities.")
@click.option(
    "--tls/--no-tls",
    default=True,
    show_default=True,
    help="Also write a development CA and certificates (needs trustme; never for production).",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    help="A name the servers are dialled by, for the development server certificate "
    "(repeatable; 127.0.0.1 and localhost always).",
)
def init(directory: Path, edge_replicas: int, tls: bool, hosts: tuple[str, ...]) -> None:
    """Make a new fleet in DIRECTORY: operator, system and mesh accounts, the server
    configuration that trusts them (auth.conf, for every nats-server's `include`), and a
    creds file per identity of the README's three tiers."""
    from mesh.security.keystore import KeyStore, standard_identities

    names = list(dict.fromkeys(("127.0.0.1", "localhost", *hosts)))
    store = KeyStore.create(directory, tls=tls, hosts=names)
    for spec in standard_identities(edge_replicas):
        path = store.add(spec)
        click.echo(f"{spec.name} ({spec.role}): {path}")
    click.echo(f"server configuration: {store.auth_file}")
    if store.pki is not None:
        click.echo(f"development TLS files: {store.pki.ca_file.parent}")


@identities.command("add")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.argument("name")
@click.option("--role", type=click.Choice([r.value for r in Role]), required=True)
@click.option("--tier", default=None, help="A node's tier.")
@click.option("--upstream-tier", default=None, help="The tier a node escalates to.")
@click.option(
    "--downstream-tier",
    default=None,
    help="The tier below a node's (it takes up its hard examples).",
)
@click.option("--entry", is_flag=True, help="The node takes the entry subjects (lowest tier).")
@click.option(
    "--domain", default=None, help="JetStream domain of a node's server (its heartbeat's)."
)
@click.option(
    "--model", "models", multiple=True, help="Limit model subjects to these (repeatable)."
)
def add(
    directory: Path,
    name: str,
    role: str,
    tier: str | None,
    upstream_tier: str | None,
    downstream_tier: str | None,
    entry: bool,
    domain: str | None,
    models: tuple[str, ...],
) -> None:
    """Issue (or re-issue with a new key) identity NAME; prints its creds file.

    No server restarts: the servers trust the account, and the account signs the user."""
    from mesh.security.identities import IdentitySpec
    from mesh.security.keystore import KeyStore

    store = KeyStore.open(directory)
    spec = IdentitySpec(
        name,
        Role(role),
        tier,
        upstream_tier,
        entry,
        list(models) if models else None,
        downstream_tier=downstream_tier,
        domain=domain,
    )
    click.echo(str(store.add(spec)))


@identities.command("list")
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False, exists=True))
def list_(directory: Path) -> None:
    """The identities issued in DIRECTORY, one a line."""
    from mesh.security.keystore import KeyStore

    store = KeyStore.open(directory)
    for name, info in sorted(store.identities().items()):
        where = f" tier={info.get('tier')}" if info.get("tier") else ""
        up = f" upstream={info.get('upstream_tier')}" if info.get("upstream_tier") else ""
        if info.get("downstream_tier"):
            up += f" downstream={info.get('downstream_tier')}"
        if info.get("domain"):
            up += f" domain={info.get('domain')}"
        entry = " entry" if info.get("entry") else ""
        click.echo(f"{name}: {info.get('role')}{where}{up}{entry}")
