"""nats-server configuration fragments that put the fleet's identities and TLS on a server.

Each function returns text in the style of ``mesh.local.servers.NatsServer._render_config``
(one setting a line, blocks in braces), to be appended to a server's configuration:

- ``auth_block(fleet)``: operator mode, at top level, on every server (hub and site).
- ``tls_block(files)``: at top level for the client port; ``leafnodes_block`` puts one on the
  port leaf servers dial.
- ``cluster_block(...)``: ``cluster { ... }`` on each member of a clustered hub: its route
  port, every member's route, the routes' password and mutual TLS.
- ``leaf_remote_block(...)``: one entry of ``leafnodes { remotes: [ ... ] }`` on a site's leaf
  server: the hub's URL, the site's leaf credentials, the local account the link binds to, and
  the CA (and client certificate) for TLS.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from mesh.security.identities import Fleet, ServerAuthConfig, auth_block
from mesh.security.tls import TLSFiles, client_tls_block, tls_block
from mesh.topology.streams import SITE_KEPT_SUBJECTS as KEPT
from mesh.topology.streams import site_local_subjects


def leafnodes_block(
    listen: str,
    *,
    tls: TLSFiles | None = None,
    verify: bool = False,
    no_advertise: bool = True,
) -> str:
    """``leafnodes { ... }`` for a hub accepting leaf servers, over TLS when ``tls`` is given."""
    entries = [f'listen: "{listen}"']
    if no_advertise:
        entries.append("no_advertise: true")
    if tls is not None:
        entries.append(tls_block(tls, verify=verify))
    return _braces("leafnodes ", entries)


#: subjects that stay in their site: every site has streams of the same names on them (its own
#: events, results, dead letters and hard examples), so they must not cross the leaf link either
#: way (``mesh.topology.streams.site_local_subjects``).
SITE_LOCAL_SUBJECTS = site_local_subjects()
#: subjects a site sends no further than itself: its acknowledgements (``SITE_KEPT_SUBJECTS``).
SITE_KEPT_SUBJECTS = KEPT


#: a leaf link's compression. Off: with nats-server's default (``s2_auto``, which the hub's side
#: accepts) each leaf connection held 2 to 6 MB of S2 encoder buffers on both servers, made anew
#: at every level change and reconnect (a loaded machine's RTT crosses the 10 ms threshold), and
#: a hub member that took over three sites' links grew by 15 to 25 MB in a soak (docs/scale.md).
#: The mesh's payloads are mostly float tensors, which S2 shrinks little. A site on a metered
#: link can set ``s2_fast`` in its server's configuration.
LEAF_COMPRESSION = "off"


def leaf_remote_block(
    urls: Sequence[str],
    *,
    credentials: Path | None = None,
    account: str | None = None,
    ca_file: Path | None = None,
    client_cert: TLSFiles | None = None,
    site_local: Sequence[str] = (),
    kept: Sequence[str] = (),
) -> str:
    """One leaf remote: ``{ urls: [...], credentials: ..., account: ..., tls { ... } }``.

    ``site_local`` subjects neither cross the link in nor out (``deny_imports`` and
    ``deny_exports``): a site's event streams (``SITE_LOCAL_SUBJECTS``); ``kept`` subjects do
    not go out (``deny_exports``): a site's acknowledgements (``SITE_KEPT_SUBJECTS``).

    ``account`` is the local account the link binds to (the mesh account's public key on a
    server in operator mode); ``credentials`` is the site's ``leaf`` identity; ``ca_file``
    turns TLS on and verifies the hub; ``client_cert`` answers a hub that ``verify``s.
    """
    quoted = ", ".join(f'"{url}"' for url in urls)
    entries = [f"urls: [ {quoted} ]", f"compression: {LEAF_COMPRESSION}"]
    if account is not None:
        entries.append(f'account: "{account}"')
    if credentials is not None:
        entries.append(f'credentials: "{credentials}"')
    if site_local:
        denied = ", ".join(f'"{subject}"' for subject in site_local)
        entries.append(f"deny_imports: [ {denied} ]")
    if site_local or kept:
        denied = ", ".join(f'"{subject}"' for subject in (*site_local, *kept))
        entries.append(f"deny_exports: [ {denied} ]")
    if ca_file is not None:
        entries.append(client_tls_block(ca_file, client_cert))
    return _braces("", entries)


def cluster_block(
    name: str,
    listen: str,
    routes: Sequence[str],
    *,
    user: str,
    password: str,
    tls: TLSFiles | None = None,
) -> str:
    """``cluster { ... }`` for a member of a cluster: it listens on ``listen`` for routes and
    dials every one of ``routes`` (``nats-route://host:port``) with ``user`` and ``password``.

    Routes carry every account's traffic and JetStream's replication, so only a member may
    open one: the password is the cluster's own, and with ``tls`` both ends present and check a
    certificate of the fleet's CA (a site's leaf certificate alone does not get in)."""
    if not password or any(c in password for c in '"@:/ '):
        raise ValueError("a cluster's route password must be non-empty and URL-safe")
    dialled = [
        route.replace("://", f"://{user}:{password}@", 1) if "@" not in route else route
        for route in routes
    ]
    entries = [
        f'name: "{name}"',
        f'listen: "{listen}"',
        f'authorization {{\n  user: "{user}"\n  password: "{password}"\n  timeout: 5\n}}',
        "routes: [ " + ", ".join(f'"{route}"' for route in dialled) + " ]",
    ]
    if tls is not None:
        entries.append(tls_block(tls, verify=True, timeout_s=5.0))
    return _braces("cluster ", entries)


def leaf_remotes_block(remotes: Sequence[str], *, reconnect_s: float = 1.0) -> str:
    """``leafnodes { remotes: [ ... ] }`` around blocks from ``leaf_remote_block``."""
    return _braces(
        "leafnodes ", [f'reconnect: "{reconnect_s:g}s"', _braces("remotes: ", remotes, "[]")]
    )


def _braces(head: str, entries: Sequence[str], brackets: str = "{}") -> str:
    body = "\n".join(textwrap.indent(entry, "  ") for entry in entries)
    return f"{head}{brackets[0]}\n{body}\n{brackets[1]}"


__all__ = [
    "Fleet",
    "ServerAuthConfig",
    "auth_block",
    "cluster_block",
    "leaf_remote_block",
    "leaf_remotes_block",
    "leafnodes_block",
    "tls_block",
]
