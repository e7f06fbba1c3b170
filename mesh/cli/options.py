"""What the ``mesh`` commands share: the group that reports typed errors, the common options,
and the flags of a process command as a source of its settings."""

from __future__ import annotations

import hashlib
import importlib
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from click.core import ParameterSource

from mesh.topology.processes import ENV_CREDS, ENV_NATS_URL, ENV_TLS_CA

if TYPE_CHECKING:
    from mesh.services.process import ServiceMain

DEFAULT_CACHE = Path(os.environ.get("MESH_CACHE_DIR", Path.home() / ".cache" / "edge-mesh"))


def _checkout_key() -> str:
    """This checkout's own key: two checkouts (or installs) of the mesh never share a default
    demo cache, where one would rebuild the other's models under the same version names."""
    package = Path(__file__).resolve().parents[1]
    return hashlib.sha256(str(package).encode()).hexdigest()[:12]


#: the demo models' default cache, one per checkout.
DEFAULT_DEMO_CACHE = DEFAULT_CACHE / f"demo-{_checkout_key()}"

cache_option = click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=DEFAULT_DEMO_CACHE,
    show_default=True,
    help="Where the demo models are built and cached (built on the first run; one folder per "
    "checkout by default).",
)


def servers_option(
    help: str, env: Sequence[str] = (ENV_NATS_URL,)
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--servers``, default the first of ``env`` set (``mesh up`` prints them)."""
    return click.option(
        "--servers",
        default=lambda: _first_set(env) or "nats://127.0.0.1:4222",
        show_default=" or ".join(f"${name}" for name in env) + " or nats://127.0.0.1:4222",
        help=help,
    )


def creds_option(
    help: str, env: str | Sequence[str] = ENV_CREDS
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--creds``, a NATS credentials file, default the first of ``env`` set."""
    return file_option("--creds", env=env, help=help)


def file_option(
    *decls: str, env: str | Sequence[str], help: str
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """An existing file's flag, default the first of ``env`` set."""
    names = (env,) if isinstance(env, str) else tuple(env)
    return click.option(
        *decls,
        type=click.Path(path_type=Path, exists=True, dir_okay=False),
        default=lambda: _first_set(names),
        show_default=" or ".join(f"${name}" for name in names),
        help=help,
    )


tls_ca_option = file_option(
    "--tls-ca", env=ENV_TLS_CA, help="CA of the servers' TLS certificates (for tls:// servers)."
)


def _first_set(names: Sequence[str]) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


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


#: where the connection flags every service command shares go in its settings.
NATS_FLAGS: dict[str, FlagField] = {
    "servers": ("nats.servers", server_list),
    "creds": "nats.credentials",
    "tls_ca": "nats.tls_ca",
}


def run_service(
    ctx: click.Context, config: Path | None, module: str, fields: Mapping[str, FlagField]
) -> None:
    """Run the service whose entry point is ``module``'s ``main`` with the command's flags as
    settings (``fields``). The signal handlers go in before the service's imports: a stop asked
    for while it loads ends it as one asked for while it serves."""
    from mesh.services.stopping import exit_on_signal

    exit_on_signal()
    main: ServiceMain = importlib.import_module(module).main
    flags, defaults = flag_settings(ctx, fields)
    main(config, flags=flags, defaults=defaults)
