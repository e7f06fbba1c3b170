"""``mesh fleet init|assign|retry|status``, and the options every fleet command shares.

The registry lives in the hub's JetStream domain; these commands reach it from any server of
the fleet (``--domain`` names it) with the credentials given, by default those ``mesh up``
prints for the operator (``$MESH_HUB_URL``, ``$MESH_CONTROLLER_CREDS``). Writing it (push,
assign, retry) needs the controller's or the administrator's identity; reading it (list,
status), the console's too.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from mesh.cli.options import creds_option as creds_option_for
from mesh.cli.options import file_option, tls_ca_option
from mesh.cli.options import servers_option as servers_option_for
from mesh.errors import InvalidArgumentError, NotFoundError
from mesh.topology.processes import (
    ENV_CONTROLLER_CREDS,
    ENV_CREDS,
    ENV_HUB_URL,
    ENV_NATS_URL,
    ENV_SIGNING_KEY,
    ENV_TRUSTED_KEYS,
)

_T = TypeVar("_T")

servers_option = servers_option_for(
    "A NATS server of the fleet (the hub's or a site's).", env=(ENV_HUB_URL, ENV_NATS_URL)
)
creds_option = creds_option_for(
    "NATS credentials (.creds) of an identity allowed to do this.",
    env=(ENV_CONTROLLER_CREDS, ENV_CREDS),
)
trusted_option = click.option(
    "--trusted-key",
    "trusted_keys",
    multiple=True,
    default=lambda: [k for k in os.environ.get(ENV_TRUSTED_KEYS, "").split(",") if k],
    show_default=f"${ENV_TRUSTED_KEYS} (comma-separated)",
    help="Public key (ed25519:... or a .pub file) the nodes trust; repeat while keys rotate.",
)
signing_key_option = file_option(
    "--key",
    "key_path",
    env=ENV_SIGNING_KEY,
    help="Signing key from mesh keys generate (mesh up prints its own).",
)
domain_option = click.option(
    "--domain", default="hub", show_default=True, help="JetStream domain of the registry."
)


def registry_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--servers``, ``--creds``, ``--tls-ca`` and ``--domain``: how a command reaches the
    fleet's registry."""
    for option in (domain_option, tls_ca_option, creds_option, servers_option):
        command = option(command)
    return command


def release_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--key`` and ``--trusted-key`` before the registry's options: a command that signs a
    version and checks it against the keys the nodes trust before it pushes it."""
    return signing_key_option(trusted_option(registry_options(command)))


def signature_path_for(manifest: Path) -> Path:
    """Where ``mesh models sign`` writes a manifest's signature: beside it, ``.sig``."""
    return manifest.with_suffix(".sig")


@asynccontextmanager
async def _connect(
    servers: str, creds: Path | None, tls_ca: Path | None = None
) -> AsyncIterator[Any]:
    """A command's connection: the processes' options, but one try (a command fails at once)."""
    from mesh.cli.options import server_list
    from mesh.settings import NatsSettings
    from mesh.transport.connection import close_quietly, connect_options, open_connection

    settings = NatsSettings(
        servers=server_list(servers), credentials=creds, tls_ca=tls_ca, connect_timeout_s=5.0
    )
    options = await asyncio.to_thread(connect_options, settings, "mesh-cli")
    options.update(allow_reconnect=False, max_reconnect_attempts=0)
    nc = await open_connection(options.pop("servers"), first_connect_s=5.0, **options)
    try:
        yield nc
    finally:
        await close_quietly(nc)


def _run(coro: Callable[[], Awaitable[_T]]) -> _T:
    async def main() -> _T:
        return await coro()

    return asyncio.run(main())


# --- fleet ----------------------------------------------------------------------------------


@click.group()
def fleet() -> None:
    """The fleet's registry, desired state and node status."""


@fleet.command("init")
@registry_options
@click.option(
    "--site", "sites", multiple=True,
    help="JetStream domain of a site (repeat): its streams, mirrors and heartbeat bucket are made.",
)  # fmt: skip
@click.option(
    "--tiers", default="edge,gateway,cloud", show_default=True,
    help="The chain of tiers, lowest first.",
)  # fmt: skip
@click.option(
    "--hub-tiers", default="cloud", show_default=True,
    help="The tiers whose nodes connect to the hub (the others run at every site).",
)  # fmt: skip
@click.option(
    "--models", default="",
    help="Models whose events the entry tier takes (comma separated); empty: any model.",
)  # fmt: skip
@click.option("--no-events", is_flag=True, help="Make no event streams.")
@click.option(
    "--limits", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
    help="YAML of the streams' limits (mesh.topology.streams.StreamLimits: hard_examples, "
    "events); default: the documented defaults.",
)  # fmt: skip
@click.option(
    "--replicas", type=click.IntRange(1, 5), default=1, show_default=True,
    help="Replicas of the hub's streams (3 on a clustered hub).",
)  # fmt: skip
def fleet_init(
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    domain: str,
    sites: tuple[str, ...],
    tiers: str,
    hub_tiers: str,
    models: str,
    no_events: bool,
    limits: Path | None,
    replicas: int,
) -> None:
    """Provision the mesh's JetStream (administrator): every stream, bucket and store of the
    hub domain and each site's, from the topology. Idempotent: run it again after adding a
    site or a model; nodes and controllers create none themselves."""
    import yaml

    from mesh.topology.streams import MeshTopology, StreamLimits, TierPlacement
    from mesh.transport.jetstream import provision

    chain = [t.strip() for t in tiers.split(",") if t.strip()]
    at_hub = {t.strip() for t in hub_tiers.split(",") if t.strip()}
    unknown = sorted(at_hub - set(chain))
    if unknown:
        raise InvalidArgumentError(f"--hub-tiers {unknown} are not in --tiers {chain}")
    try:
        bounds = (
            StreamLimits.model_validate(yaml.safe_load(limits.read_text()) or {})
            if limits is not None
            else StreamLimits()
        )
        topology = MeshTopology(
            tiers=tuple(TierPlacement(t, at_sites=t not in at_hub) for t in chain),
            sites=sites,
            hub=domain,
            event_models=tuple(m.strip() for m in models.split(",") if m.strip()) or None,
            events=not no_events,
            limits=bounds,
            hub_replicas=replicas,
        )
    except (ValueError, yaml.YAMLError) as exc:
        raise InvalidArgumentError(f"cannot provision: {exc}") from None

    async def go() -> list[str]:
        async with _connect(servers, creds, tls_ca) as nc:
            return await provision(lambda d: nc.jetstream(domain=d), topology)

    made = _run(go)
    for line in made:
        click.echo(f"  {line}", err=True)
    click.echo(
        f"mesh provisioned: {len(made)} streams, buckets and stores in domain {domain}"
        f"{''.join(f', {s}' for s in sites)}"
    )


@fleet.command("assign")
@click.argument("model")
@click.argument("version")
@click.option(
    "--selector", "selectors", multiple=True, default=("all",), show_default=True,
    help="Which nodes: tier=edge, site=NAME, node=NAME, label.K=V (repeat or comma-join; all "
    "must match).",
)  # fmt: skip
@registry_options
def fleet_assign(
    model: str,
    version: str,
    selectors: tuple[str, ...],
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    domain: str,
) -> None:
    """Make VERSION the version of MODEL that the selected nodes serve.

    Refused (exit 2) when the version is not in the registry or the selector matches no node
    the fleet has seen."""
    from mesh.fleet import registry
    from mesh.fleet.desired import DesiredState, Selector
    from mesh.wire import NodeStatus

    selector = Selector.parse(selectors)

    async def go() -> list[str]:
        async with _connect(servers, creds, tls_ca) as nc:
            js = nc.jetstream(domain=domain)
            if not await registry.has_version(js, model, version):
                raise NotFoundError(
                    f"{model}@{version} is not in the registry (mesh models push it first)"
                )
            revocation = (await registry.read_revocations(js)).get(f"{model}@{version}")
            if revocation is not None:
                raise InvalidArgumentError(
                    f"{model}@{version} is revoked ({revocation.reason}): nodes refuse it"
                )
            beats = await registry.read_heartbeats(js)
            known = [b for b in beats.values() if isinstance(b, NodeStatus)]
            matched = [
                b.node for b in known if selector.matches(b.tier, b.site or "", b.node, b.labels)
            ]
            if not matched:
                raise InvalidArgumentError(
                    f"selector {selector.key} matches none of the {len(known)} nodes the fleet "
                    f"has seen ({', '.join(sorted(b.node for b in known)) or 'none'}): a node is "
                    "seen once a heartbeat of it reaches the hub, and `mesh fleet status` lists "
                    "them; fix the selector, or assign again once the node is listed"
                )
            state = DesiredState(
                model=model, version=version, selector=selector, time=time.time(),
                by=str(creds.stem) if creds else "",
            )  # fmt: skip
            await registry.assign(js, state)
            return sorted(matched)

    matched = _run(go)
    click.echo(
        f"assigned {model}@{version} to {selector.key} ({len(matched)} nodes: {', '.join(matched)})"
    )


@fleet.command("retry")
@click.argument("words", nargs=-1, metavar="NODE|--all MODEL VERSION")
@click.option("--all", "every", is_flag=True, help="Every node that refused the version.")
@click.option(
    "--wait", "wait_s", default=15.0, show_default=True,
    help="Seconds to wait for the nodes' heartbeats to show the refusal cleared.",
)  # fmt: skip
@registry_options
def fleet_retry(
    words: tuple[str, ...],
    every: bool,
    wait_s: float,
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    domain: str,
) -> None:
    """Clear a node's refusal of MODEL@VERSION (or every node's, with --all), once its cause is
    fixed (a version re-signed with the right key, a device freed): a node that still has it
    assigned takes it again. A version missing or incomplete at a site is never refused; it is
    waited for."""
    from mesh.fleet.admin import clear_refusals

    if len(words) != (2 if every else 3):
        raise click.UsageError("give NODE MODEL VERSION, or --all MODEL VERSION")
    node = None if every else words[0]
    model, version = words[-2:]

    async def go() -> Any:
        async with _connect(servers, creds, tls_ca) as nc:
            return await clear_refusals(
                nc.jetstream(domain=domain), model, version, node,
                by=creds.stem if creds else "", wait_s=wait_s,
            )  # fmt: skip

    done = _run(go)
    label = f"{model}@{version}"
    if not done.refused:
        click.echo(f"{node or 'no node'} has not refused {label}: nothing to clear")
        return
    if done.cleared:
        click.echo(f"refusal of {label} cleared on {', '.join(done.cleared)}")
    left = [n for n in done.refused if n not in done.cleared]
    if left:
        click.echo(
            f"not cleared yet on {', '.join(left)} after {wait_s:g}s (offline? a node clears it "
            "when it reads the request)"
        )


def status_rows(beats: dict[str, Any], now: float, offline_after_s: float) -> list[dict[str, Any]]:
    """The rows of ``mesh fleet status --json``: one per node, offline ones included."""
    from mesh.fleet.liveness import is_online, is_stopped
    from mesh.wire import NodeStatus

    rows: list[dict[str, Any]] = []
    for name, beat in sorted(beats.items()):
        if not isinstance(beat, NodeStatus):
            rows.append({"node": name, "online": False, "error": str(beat)})
            continue
        age = max(0.0, now - beat.time)
        rows.append(
            {
                "node": beat.node,
                "tier": beat.tier,
                "site": beat.site,
                "zone": beat.zone,
                "labels": beat.labels,
                "online": is_online(beat, now, offline_after_s),
                "last_seen_s": round(age, 3),
                "ready": beat.ready and not is_stopped(beat),
                "models": beat.models,
                "pending": beat.pending,
                "rejected": beat.rejected,
                "problems": beat.problems,
                "breakers": beat.breakers,
                "backlog": beat.backlog,
                "escalation_rate": beat.escalation_rate,
                "drift": beat.drift,
                "p99_ms": beat.p99_ms,
                "swaps": beat.swaps,
                "downgraded": beat.downgraded,
                "mesh_version": beat.mesh_version,
                "agreement": {
                    model: {
                        "version": e.version,
                        "compared": e.compared,
                        "agreed": e.agreed,
                        "agreement": round(e.agreed / e.compared, 4) if e.compared else None,
                        "audits": e.audits,
                        "audit_failures": e.audit_failures,
                        "requests": e.requests,
                    }
                    for model, e in beat.evidence.items()
                },
                "power": _power_row(beat.power),
            }
        )
    return rows


def _power_row(power: Any) -> dict[str, Any] | None:
    """A node's energy as ``mesh fleet status --json`` shows it (None: it keeps no ledger)."""
    if power is None:
        return None
    return {
        "profile": power.profile,
        "watts": power.watts,
        "window_s": power.window_s,
        "budget_w": power.budget_w,
        "steps": list(power.steps),
        "degrade_share": round(power.degrade_share, 4),
        "unreachable": power.unreachable,
        "joules_per_answer": power.joules_per_answer,
        "compute_j": round(power.compute_j, 6),
        "radio_j": round(power.radio_j, 6),
        "answers": power.answers,
        "battery_percent": power.battery_percent,
        "sensor_w": power.sensor_w,
    }


def power_text(power: dict[str, Any] | None) -> str:
    """``31/30mW 3 steps 57%``: the window's power, the budget, the ladder and the battery."""
    if power is None or power["watts"] is None:
        return "-"
    text = f"{power['watts'] * 1000:.0f}"
    if power["budget_w"] is not None:
        text += f"/{power['budget_w'] * 1000:.0f}"
    text += "mW"
    if power["steps"]:
        text += f" {len(power['steps'])}st"
    if power["battery_percent"] is not None:
        text += f" {power['battery_percent']:.0f}%"
    return text


@fleet.command("status")
@registry_options
@click.option("--json", "as_json", is_flag=True, help="A JSON list of nodes, for scripts.")
@click.option(
    "--offline-after", default=10.0, show_default=True,
    help="Seconds without a heartbeat after which a node counts as offline.",
)  # fmt: skip
def fleet_status(
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    domain: str,
    as_json: bool,
    offline_after: float,
) -> None:
    """Every node the fleet has seen: where it is, what it serves, how it is doing."""
    from mesh.fleet import registry

    async def go() -> dict[str, Any]:
        async with _connect(servers, creds, tls_ca) as nc:
            return dict(await registry.read_heartbeats(nc.jetstream(domain=domain)))

    rows = status_rows(_run(go), time.time(), offline_after)
    if as_json:
        click.echo(json.dumps(rows, indent=1))
        return
    click.echo(
        f"{'NODE':<14} {'TIER':<8} {'SITE':<10} {'STATE':<8} {'SEEN':>7} {'ESC':>5} "
        f"{'P99MS':>6} {'AGREE':>6} {'POWER':<18} MODELS"
    )
    for r in rows:
        if "error" in r:
            click.echo(f"{r['node']:<14} unreadable heartbeat: {r['error']}")
            continue
        state = "online" if r["online"] else "offline"
        esc = "-" if r["escalation_rate"] is None else f"{r['escalation_rate']:.2f}"
        p99 = "-" if r["p99_ms"] is None else f"{r['p99_ms']:g}"
        models = ", ".join(f"{k}@{v}" for k, v in sorted(r["models"].items()))
        rates = [a["agreement"] for a in r["agreement"].values() if a["agreement"] is not None]
        agree = f"{min(rates):.3f}" if rates else "-"
        if r["pending"]:
            models += " (taking " + ", ".join(f"{k}@{v}" for k, v in r["pending"].items()) + ")"
        click.echo(
            f"{r['node']:<14} {r['tier']:<8} {r['site']:<10} {state:<8} "
            f"{r['last_seen_s']:>6.1f}s {esc:>5} {p99:>6} {agree:>6} "
            f"{power_text(r['power']):<18} {models}"
        )
        for version, reason in r["rejected"].items():
            click.echo(f"{'':<14} rejected {version}: {reason}")
        for model, before in r["downgraded"].items():
            click.echo(
                f"{'':<14} WARNING downgraded {model} from {before} to "
                f"{r['models'].get(model, '?')}"
            )
    sys.stdout.flush()
