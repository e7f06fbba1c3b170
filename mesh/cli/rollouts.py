"""``mesh rollout start|status|pause|resume|abort``, ``mesh controller`` and
``mesh fleet simulate``.

A rollout is a record in the hub's ``MESH_FLEET_ROLLOUTS`` bucket; ``mesh controller`` (any
number of them, one leads) drives it by writing desired state. These commands need the
controller's (or the administrator's) identity to write, the console's to read.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any

import click

from mesh.cli.fleet import (
    _connect,
    _run,
    registry_options,
    trusted_option,
)
from mesh.cli.fleet import fleet as fleet_group
from mesh.cli.options import NATS_FLAGS, FlagField, config_option, run_service


@click.group()
def rollout() -> None:
    """Staged rollouts of a model version, gated on live evidence, rolled back on failure."""


@rollout.command("start")
@click.argument("model")
@click.argument("version")
@click.option(
    "--stages", default="1,10%,50%,100%", show_default=True,
    help="Node counts or shares of the matching nodes, in order; the last must be 100%.",
)  # fmt: skip
@click.option("--soak", default=None, help="How long each stage runs before it is judged (30s).")
@click.option(
    "--gate", "gates", multiple=True,
    help="A gate bound, metric=value (max_error_rate=0.01, min_agreement=0.9, "
    "max_agreement_drop=0.05, max_p99_ms=20, min_samples=40...); repeatable.",
)  # fmt: skip
@click.option(
    "--selector", "selector_terms", multiple=True,
    help="Which nodes: site=, label.K=V, node= (default: every node serving the model); "
    "always within the tier the version is made for (its manifest's tier_hint).",
)  # fmt: skip
@trusted_option
@registry_options
@click.option("--offline-after", default=10.0, show_default=True)
@click.option(
    "--shadow", is_flag=True,
    help="Begin with a shadow stage: the canary's nodes run the version beside the one they "
    "serve, on copies of its inputs, answering nobody, until it is judged.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the stored rollout as JSON.")
def rollout_start(
    model: str,
    version: str,
    stages: str,
    soak: str | None,
    gates: tuple[str, ...],
    selector_terms: tuple[str, ...],
    trusted_keys: list[str],
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    domain: str,
    offline_after: float,
    shadow: bool,
    as_json: bool,
) -> None:
    """Roll MODEL out at VERSION in stages, to the nodes of the tier it is made for; a running
    controller drives it (mesh up runs one)."""
    from mesh.fleet.admin import start_rollout, summary
    from mesh.fleet.desired import Selector
    from mesh.fleet.rollout import Gate, parse_stages
    from mesh.fleet.rollout.plan import distinct_stages

    selector = Selector.parse(selector_terms)

    async def go() -> Any:
        async with _connect(servers, creds, tls_ca) as nc:
            return await start_rollout(
                nc.jetstream(domain=domain),
                model,
                version,
                stages=stages,
                soak=soak,
                gate_terms=gates,
                selector=selector,
                trusted_keys=list(trusted_keys),
                by=creds.stem if creds else "",
                offline_after_s=offline_after,
                shadow=shadow,
            )

    r = _run(go)
    if as_json:
        click.echo(json.dumps(summary(r), indent=1))
        return
    sizes = ", ".join(f"{s.name} {r.stage_size(i)}" for i, s in enumerate(r.stages))
    click.echo(
        f"rollout {r.id}: {model}@{version} over {len(r.targets)} "
        f"node{'' if len(r.targets) == 1 else 's'} of {r.selector.key} "
        f"({sizes}), rolls back to {r.previous_version}"
    )
    _, dropped = distinct_stages(parse_stages(stages, Gate()), len(r.targets))
    if dropped:
        names = ", ".join(s.name for s in dropped)
        click.echo(
            f"note: stages {names} left out: on {len(r.targets)} nodes they would add none",
            err=True,
        )


@rollout.command("status")
@click.argument("model", required=False)
@registry_options
@click.option("--json", "as_json", is_flag=True, help="The rollout records as JSON.")
def rollout_status(
    model: str | None,
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    domain: str,
    as_json: bool,
) -> None:
    """The latest rollout of every model (or of MODEL)."""
    from mesh.cli.rollout_text import NO_ROLLOUTS, describe
    from mesh.errors import NotFoundError
    from mesh.fleet.admin import read_rollouts, summary

    async def go() -> Any:
        async with _connect(servers, creds, tls_ca) as nc:
            return await read_rollouts(nc.jetstream(domain=domain))

    found = _run(go)
    if model is not None:
        if model not in found:
            raise NotFoundError(f"no rollout of {model}")
        found = {model: found[model]}
    if as_json:
        click.echo(json.dumps([summary(r) for r in found.values()], indent=1))
        return
    if not found:
        click.echo(NO_ROLLOUTS)
    for r in found.values():
        for line in describe(r):
            click.echo(line)
    sys.stdout.flush()


_ACTIONS = {
    "pause": "Hold the rollout of MODEL where it is.",
    "resume": "Go on with a paused rollout of MODEL (its stage deploys and soaks again).",
    "abort": "Stop the rollout of MODEL and return its nodes to the previous version.",
}


def _action(action: str) -> Any:
    @rollout.command(action, help=_ACTIONS[action])
    @click.argument("model")
    @registry_options
    def command(
        model: str, servers: str, creds: Path | None, tls_ca: Path | None, domain: str
    ) -> None:
        from mesh.fleet.admin import act

        async def go() -> Any:
            async with _connect(servers, creds, tls_ca) as nc:
                return await act(
                    nc.jetstream(domain=domain), model, action, creds.stem if creds else ""
                )

        r = _run(go)
        click.echo(f"rollout {r.id} of {r.model}@{r.version}: {r.state}")

    return command


for _name in ("pause", "resume", "abort"):
    _action(_name)


@click.command("controller")
@config_option
@registry_options
@click.option(
    "--name", default=lambda: f"controller-{socket.gethostname()}",
    show_default="controller-<hostname>",
    help="This controller's name; give each its own (a restart under the same name takes "
    "its lease back at once).",
)  # fmt: skip
@click.option("--tick", default=1.0, show_default=True, help="Seconds between looks at the fleet.")
@click.option(
    "--lease", default=5.0, show_default=True, help="Seconds a silent leader keeps the lead."
)
@click.option("--offline-after", default=10.0, show_default=True)
@click.option(
    "--heartbeat", default=1.0, show_default=True,
    help="Seconds between the nodes' heartbeats: faster ones count once per half of it.",
)  # fmt: skip
@click.pass_context
def controller(ctx: click.Context, /, config: Path | None, **_: object) -> None:
    """Drive the fleet's rollouts (one of any number of controllers leads).

    Settings: --config FILE, MESH_CONTROLLER_* variables (MESH_CONTROLLER_NATS__SERVERS...), and
    the flags, which win."""
    run_service(ctx, config, "mesh.services.controller", CONTROLLER_FLAGS)


#: where each flag of ``mesh controller`` goes in ``ControllerSettings``.
CONTROLLER_FLAGS: dict[str, FlagField] = {
    **NATS_FLAGS,
    "domain": "domain",
    "name": "name",
    "tick": "tick_s",
    "lease": "lease_s",
    "offline_after": "offline_after_s",
    "heartbeat": "heartbeat_s",
}


@fleet_group.command("simulate")
@click.option("--nodes", default=500, show_default=True)
@click.option("--sites", default=5, show_default=True)
@click.option("--processes", default=None, type=int, help="Node processes (default: one per site).")
@click.option("--rate", default=1.0, show_default=True, help="Requests per second per node.")
@click.option("--audit-rate", default=0.05, show_default=True)
@click.option("--heartbeat", default=2.0, show_default=True, help="Seconds between heartbeats.")
@click.option(
    "--duration", default=None, type=float, help="Seconds to run (default: until Ctrl-C)."
)
@click.option("--controller/--no-controller", "with_controller", default=True, show_default=True)
@click.option(
    "--work-dir", type=click.Path(path_type=Path), default=None,
    help="Where the servers, keys and caches go (default: a new temporary directory).",
)  # fmt: skip
@click.option("--cache", type=click.Path(path_type=Path), default=None)
def simulate(
    nodes: int,
    sites: int,
    processes: int | None,
    rate: float,
    audit_rate: float,
    heartbeat: float,
    duration: float | None,
    with_controller: bool,
    work_dir: Path | None,
    cache: Path | None,
) -> None:
    """Run a simulated fleet on real servers: light nodes, many per process, under load.

    Prints how to reach it (MESH_NATS_URL, controller credentials, the trusted key) so that
    mesh rollout and mesh fleet status work against it, then the load and per-node cost."""
    import tempfile

    from mesh.cli.options import DEFAULT_DEMO_CACHE
    from mesh.dev.fleetsim.run import run_simulation
    from mesh.dev.fleetsim.simulate import SimulationSettings
    from mesh.dev.models.demo import ensure_demo
    from mesh.services.stopping import RIG_STOP_GRACE_S, Shutdown, run_until_signalled

    work = work_dir or Path(tempfile.mkdtemp(prefix="mesh-fleet-"))
    demo = ensure_demo(cache or DEFAULT_DEMO_CACHE)
    settings = SimulationSettings(
        work_dir=work,
        nodes=nodes,
        sites=sites,
        processes=processes,
        heartbeat_s=heartbeat,
        audit_rate=audit_rate,
    )

    async def go(shutdown: Shutdown) -> int:
        await run_simulation(
            settings, demo, rate=rate, duration=duration, with_controller=with_controller,
            shutdown=shutdown, say=click.echo,
        )  # fmt: skip
        return 0

    asyncio.run(run_until_signalled(go, grace_s=RIG_STOP_GRACE_S))
