"""``mesh node``, ``mesh up`` and ``mesh infer``: serve one tier, the whole mesh, ask it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from mesh.cli.options import (
    NATS_FLAGS,
    FlagField,
    cache_option,
    config_option,
    creds_option,
    run_service,
    servers_option,
)
from mesh.topology.processes import (
    ENV_CONSOLE_TOKEN,
    ENV_CONSOLE_URL,
    ENV_CONTROLLER_CREDS,
    ENV_CREDS,
    ENV_GRPC_URL,
    ENV_HTTP_URL,
    ENV_HUB_URL,
    ENV_INGRESS_TOKEN,
    ENV_NATS_URL,
    ENV_REVIEWER_CREDS,
    ENV_SIGNING_KEY,
    ENV_TRUSTED_KEYS,
)

if TYPE_CHECKING:
    from mesh.local.launcher import EmbeddedMesh, MeshLayout
    from mesh.local.phases import Phases
    from mesh.sdk.client import InferResult


@click.command()
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="YAML settings file; MESH_* environment variables override it.",
)
def node(config: Path | None) -> None:
    """Run one tier node."""
    from mesh.services.stopping import exit_on_signal

    exit_on_signal()
    from mesh.services.node import main as node_main

    node_main(config)


def _say(line: str) -> None:
    """A progress line on stderr; one that cannot be written (a closed pipe) is dropped."""
    with contextlib.suppress(OSError):
        click.echo(line, err=True)


def _tell(line: str) -> None:
    """A ``NAME=value`` line on stdout, written at once; one that cannot be written (a reader
    gone after the lines it waited for, as ``tee`` after Ctrl-C) is dropped: the mesh must
    still get to serve, and so stop as asked, clearing its folder."""
    with contextlib.suppress(OSError):
        click.echo(line)


def load_rows(file: Path, row: int | None) -> np.ndarray:
    """The rows of FILE.npy (or the ``x`` array of an .npz), or its row ``row``, as a 2-D
    array; a file with no rows there is the caller's mistake, said as such."""
    from mesh.errors import InvalidArgumentError

    try:
        loaded = np.load(file)
        array = loaded["x"] if file.suffix == ".npz" else loaded
    except KeyError:
        raise InvalidArgumentError(f"{file} holds no array named x: save the rows as x") from None
    except (OSError, ValueError) as exc:
        raise InvalidArgumentError(
            f"{file} is not a .npy or .npz file numpy can read: {exc}"
        ) from None
    array = np.asarray(array)
    if array.ndim == 1:
        array = array[None, :]
    if row is not None:
        if not -len(array) <= row < len(array):
            raise InvalidArgumentError(
                f"--row {row} is out of range: {file.name} has {len(array)} rows "
                f"(0 to {len(array) - 1})"
            )
        array = array[row : row + 1] if row >= 0 else array[row:][:1]
    if len(array) == 0:
        raise InvalidArgumentError(f"{file.name} holds no rows")
    return array


@click.command()
@click.argument("model")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@servers_option("NATS server URL.")
@creds_option("The application's NATS credentials (.creds); `mesh up` prints MESH_CREDS=...")
@click.option("--budget-ms", default=1000.0, show_default=True, help="Time budget of the request.")
@click.option(
    "--residency",
    default="any",
    show_default=True,
    type=click.Choice(["device", "site", "cloud", "any"]),
    help="Highest zone the raw input may reach.",
)
@click.option("--row", type=int, default=None, help="Send only this row of the array.")
@click.option(
    "--chunk-rows",
    type=click.IntRange(min=1),
    default=256,
    show_default=True,
    help="Most rows a request carries (a node's max_rows); larger files go in several requests.",
)
def infer(
    model: str,
    file: Path,
    servers: str,
    creds: Path | None,
    budget_ms: float,
    residency: str,
    row: int | None,
    chunk_rows: int,
) -> None:
    """Send FILE.npy (or the `x` array of an .npz) to MODEL; print the answer.

    A float64 file is sent as float32 when the model takes float32 (with a note); a file with
    more rows than --chunk-rows goes in chunks, answered in order."""
    from mesh import InvalidArgumentError, MeshClient

    array = load_rows(file, row)
    chunks = [array[i : i + chunk_rows] for i in range(0, len(array), chunk_rows)]

    async def ask(client: MeshClient, chunk: np.ndarray) -> InferResult:
        try:
            return await client.infer(model, chunk, budget_ms=budget_ms, residency=residency)
        except InvalidArgumentError as error:
            if chunk.dtype != np.float64 or "must be float32" not in error.message:
                raise
            click.echo(
                f"note: {file.name} holds float64; sent as float32, as {model} takes", err=True
            )
            return await client.infer(
                model, chunk.astype(np.float32), budget_ms=budget_ms, residency=residency
            )

    async def run() -> list[dict[str, object]]:
        options = {} if creds is None else {"user_credentials": str(creds)}
        async with await MeshClient.connect(servers, **options) as client:
            results = [await ask(client, chunk) for chunk in chunks]
        return [_answer(result) for result in results]

    answers = asyncio.run(run())
    if len(answers) == 1:
        click.echo(json.dumps(answers[0], indent=2))
    else:
        click.echo(json.dumps({"rows": len(array), "chunks": answers}, indent=2))


def _answer(result: InferResult) -> dict[str, object]:
    return {
        "id": result.id,
        "model": result.model,
        "labels": result.labels,
        "confidence": round(result.confidence, 4),
        "tier": result.tier,
        "node": result.node,
        "model_version": result.model_version,
        "degraded": result.degraded,
        "reason": result.reason,
        "path": [
            {
                "tier": h.tier,
                "node": h.node,
                "action": h.action,
                "latency_ms": round(h.latency_ms, 3),
            }
            for h in result.path
        ],
    }


@click.command()
@cache_option
@click.option("--edge-replicas", default=1, show_default=True)
@click.option(
    "--keep-logs",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Keep the servers' and nodes' logs and data in this folder (default: a temporary one, "
    "removed at the end).",
)
@click.option(
    "--models",
    "repository",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Serve this model repository (`mesh models import ... --repo DIR`) on the tiers it "
    "names, instead of the demo models.",
)
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Client port of the site server applications connect to (default: a free one).",
)
@click.option(
    "--hub-cluster",
    type=click.IntRange(1, 7),
    default=1,
    show_default=True,
    help="Servers of the hub: 3 runs it as a NATS cluster, every hub stream replicated R3.",
)
@click.option(
    "--sites",
    type=click.IntRange(1, 20),
    default=1,
    show_default=True,
    help="Sites, each a leaf server with its gateway and edge nodes (MESH_NATS_URL: the first).",
)
def up(
    cache: Path,
    edge_replicas: int,
    keep_logs: Path | None,
    repository: Path | None,
    port: int | None,
    hub_cluster: int,
    sites: int,
) -> None:
    """Start the whole mesh (NATS hub and site, cloud, gateway and edge nodes) until Ctrl-C.

    Every process it starts dies with it; a node that exits is reported and restarted. Each
    start-up phase has a deadline: one that passes stops everything and names what it waited
    for."""
    from mesh.local.launcher import EmbeddedMesh
    from mesh.local.phases import Phases
    from mesh.services.stopping import RIG_STOP_GRACE_S, Shutdown, run_until_signalled

    phases = Phases("mesh up")

    async def run(shutdown: Shutdown) -> int:
        async with phases.phase("models", 900, "the demo models' build and evidence gate"):
            served = await up_layout(cache, repository)
        plan = dataclasses.replace(
            served, edge_replicas=edge_replicas, fleet=True, events=True, operated=True,
            hub_cluster=hub_cluster, sites=sites,
        )  # fmt: skip
        plan.tiers()
        mesh = EmbeddedMesh(plan, work_dir=keep_logs, site_port=port)
        try:
            await start_mesh(mesh, phases)
            await announce(mesh, phases)
            supervisor = asyncio.create_task(mesh.supervise(_say))
            await shutdown.wait()
            supervisor.cancel()
        finally:
            # Whatever happens to the output (`mesh up | tee log` loses its reader on Ctrl-C),
            # the processes stop and the folder with the fleet's credentials goes.
            _say("stopping the mesh")
            await mesh.close()
        return 0

    asyncio.run(run_until_signalled(run, grace_s=RIG_STOP_GRACE_S))


async def up_layout(cache: Path, repository: Path | None) -> MeshLayout:
    """What ``mesh up`` serves: the repository's models on the tiers it names, or the demo's
    models once they passed the evidence gate here."""
    from mesh.dev.models.demo import ensure_demo
    from mesh.errors import InvalidArgumentError
    from mesh.local.launcher import MeshLayout
    from mesh.models.validate import require_valid

    if repository is not None:
        from mesh.models.store import ModelRepository, model_settings_for

        # Absolute: the nodes' settings files live elsewhere.
        repo = ModelRepository(await asyncio.to_thread(repository.resolve))
        entries = await asyncio.to_thread(repo.entries)
        tiers = sorted({entry.tier for entry in entries})
        if not tiers:
            raise InvalidArgumentError(
                f"{repository}: the repository holds no model; add one with mesh models import"
            )
        models = {
            tier: [
                settings.model_dump(mode="json", exclude_defaults=True)
                for settings in await asyncio.to_thread(model_settings_for, repo, tier)
            ]
            for tier in tiers
        }
        for tier, served in models.items():
            names = ", ".join(m["name"] for m in served)
            click.echo(f"repository {repository}: tier {tier} serves {names}", err=True)
        return MeshLayout(models=models)
    click.echo(f"demo models in {cache} (built on first run)", err=True)
    demo = await asyncio.to_thread(ensure_demo, cache, 0, _say)
    reports = await asyncio.to_thread(
        require_valid, [demo.edge_int8, demo.gateway, demo.cloud], demo.test
    )
    for report in reports:
        click.echo(f"evidence gate: {report.summary()}", err=True)
    return MeshLayout(
        edge_manifest=demo.edge_int8,
        gateway_manifest=demo.gateway,
        cloud_manifest=demo.cloud,
    )


async def announce(mesh: EmbeddedMesh, phases: Phases) -> None:
    """The nodes, the controller, then the ingress, the review service and the console as they
    start, then the ``NAME=value`` lines (the first five as they always were, the trusted key
    last: the README waits for it)."""
    for name, proc in mesh.nodes.items():
        click.echo(f"node {name}: pid {proc.pid}, http {proc.http_url}", err=True)
    click.echo(f"hub {mesh.hub_url}; logs in {mesh.work_dir}", err=True)
    controller = await mesh.controller_creds()
    if mesh.controller is not None:
        click.echo(f"controller {mesh.controller.name}: pid {mesh.controller.pid}", err=True)
    click.echo(
        f"fleet: {', '.join(mesh.published)} signed and in the registry; "
        f"mesh models bump, mesh rollout start and mesh fleet status use the "
        f"{ENV_HUB_URL}, {ENV_CONTROLLER_CREDS}, {ENV_SIGNING_KEY} and "
        f"{ENV_TRUSTED_KEYS} below",
        err=True,
    )
    token = secrets.token_urlsafe(24)
    async with phases.phase("ingress", 90, "the ingress's ready line"):
        ingress = await mesh.start_ingress(token)
    click.echo(f"ingress: pid {ingress.pid}, OIP REST and gRPC at the site", err=True)
    async with phases.phase("review", 90, "the review service's ready line"):
        review = await mesh.start_review()
    reviewer = await mesh.reviewer_creds()
    _say(
        f"review: pid {review.pid}, the queue at the hub; mesh review list uses the "
        f"{ENV_REVIEWER_CREDS} below"
    )
    console_token = secrets.token_urlsafe(24)
    async with phases.phase("console", 90, "the console's ready line"):
        console = await mesh.start_console(console_token)
    _say(f"console: pid {console.pid}, open {console.url}/?token=...")
    # the first five lines as they always were, then the operator's; the trusted key
    # last (the README waits for it)
    for name, value in (
        (ENV_NATS_URL, mesh.site_url),
        (ENV_CREDS, mesh.app_creds),
        (ENV_HTTP_URL, ingress.http_url),
        (ENV_GRPC_URL, ingress.grpc_address),
        (ENV_INGRESS_TOKEN, token),
        (ENV_HUB_URL, mesh.hub_url),
        (ENV_CONTROLLER_CREDS, controller),
        (ENV_SIGNING_KEY, mesh.signing_key_path),
        (ENV_REVIEWER_CREDS, reviewer),
        (ENV_CONSOLE_URL, console.url),
        (ENV_CONSOLE_TOKEN, console_token),
        (ENV_TRUSTED_KEYS, mesh.signing_public),
    ):
        _tell(f"{name}={value}")


async def start_mesh(mesh: EmbeddedMesh, phases: Phases) -> None:
    """The mesh's servers, nodes and controller, each step within its deadline."""
    lay = mesh.layout
    async with phases.phase("NATS servers", 120) as phase:
        phase.waiting_for(
            f"{lay.hub_cluster} hub server(s) with a JetStream leader, {lay.sites} site(s) "
            "linked, every stream provisioned"
        )
        await mesh.start_servers()
    async with phases.phase("nodes", 300) as phase:
        await mesh.start_nodes(waiting=phase.waiting_for)
    if lay.fleet and lay.operated:
        async with phases.phase("controller", 90, "the controller's ready line"):
            await mesh.start_controller()


@click.command()
@config_option
@servers_option("NATS server of the tier the ingress runs beside.")
@creds_option(
    "The ingress identity's NATS credentials (mesh identities add DIR NAME --role ingress).",
    env="MESH_INGRESS_CREDS",
)
@click.option(
    "--manifest", "manifests", multiple=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    help="Manifest of a model the entry tier serves (repeat): its metadata and input checks.",
)  # fmt: skip
@click.option(
    "--local", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
    help="An edge node's settings (YAML) to host here: the models it serves are answered in "
    "this process, what it is unsure of escalates over NATS (its own local-edge credentials).",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--http-port", default=8080, show_default=True, help="REST port (0: any free).")
@click.option("--grpc-port", default=8081, show_default=True, help="gRPC port (0: any free).")
@click.option(
    "--token",
    default=lambda: os.environ.get("MESH_INGRESS_TOKEN", ""),
    show_default="$MESH_INGRESS_TOKEN",
    help="Bearer token callers must send (Authorization: Bearer ...); empty: none required.",
)
@click.option(
    "--tls-ca",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="CA of the NATS server's TLS certificate (for a tls:// server).",
)
@click.option("--budget-ms", default=1000.0, show_default=True, help="Default request budget.")
@click.option("--max-body-mb", default=64.0, show_default=True, help="Largest request body.")
@click.pass_context
def ingress(ctx: click.Context, /, config: Path | None, **_: object) -> None:
    """Serve the Open Inference Protocol (KServe v2, REST and gRPC) in front of the mesh.

    Settings: --config FILE, MESH_INGRESS_* variables (MESH_INGRESS_NATS__SERVERS...), and the
    flags, which win."""
    run_service(ctx, config, "mesh.services.ingress", INGRESS_FLAGS)


#: where each flag of ``mesh ingress`` goes in ``IngressSettings``.
INGRESS_FLAGS: dict[str, FlagField] = {
    **NATS_FLAGS,
    "manifests": ("manifests", list),
    "local": "local",
    "host": "host",
    "http_port": "http_port",
    "grpc_port": "grpc_port",
    "token": "token",
    "budget_ms": "default_budget_ms",
    "max_body_mb": ("max_body_bytes", lambda mb: int(mb * 1024 * 1024)),
}


@click.command()
@click.argument("model")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@servers_option("NATS server of the site (its event stream is in the site's domain).")
@creds_option("The application's NATS credentials; its identity name is the events' source.")
@click.option("--source", default=None, help="Source name (default: the identity's name).")
@click.option("--event-id", default=None, help="Event id (one row only); default: generated.")
@click.option("--budget-ms", default=5000.0, show_default=True, help="Budget from publish.")
@click.option("--row", type=int, default=None, help="Publish only this row.")
@click.option("--wait", is_flag=True, help="Also wait for each event's result and print it.")
def publish(
    model: str,
    file: Path,
    servers: str,
    creds: Path | None,
    source: str | None,
    event_id: str | None,
    budget_ms: float,
    row: int | None,
    wait: bool,
) -> None:
    """Publish the rows of FILE.npy (or the `x` array of an .npz) as inference events, one a row.

    Prints one line of JSON per event stored (id, stream sequence, duplicate); with --wait, then
    one per result as it is stored."""
    from mesh import MeshClient
    from mesh.security.creds import user_claims

    array = load_rows(file, row)
    if event_id is not None and len(array) != 1:
        raise click.UsageError("--event-id names one event: give --row too")
    name = source
    if name is None:
        if creds is None:
            raise click.UsageError("give --source, or --creds (whose identity is the source)")
        name = str(user_claims(creds).get("name", ""))

    async def run() -> None:
        options = {} if creds is None else {"user_credentials": str(creds)}
        async with await MeshClient.connect(servers, **options) as client:
            ids = []
            for i in range(len(array)):
                ack = await client.publish(
                    model, array[i : i + 1].astype(np.float32), source=name,
                    event_id=event_id, budget_ms=budget_ms,
                )  # fmt: skip
                ids.append(ack.event_id)
                click.echo(json.dumps({"event_id": ack.event_id, "sequence": ack.sequence,
                                       "duplicate": ack.duplicate}))  # fmt: skip
            if not wait:
                return
            pending = set(ids)
            async for result in client.results(model, source=name):
                if result.event_id not in pending:
                    continue
                pending.discard(result.event_id)
                line: dict[str, object] = {"event_id": result.event_id, "error": str(result.error)}
                if result.error is None:
                    line = {"event_id": result.event_id, **_answer(result)}
                click.echo(json.dumps(line))
                if not pending:
                    return

    asyncio.run(run())
