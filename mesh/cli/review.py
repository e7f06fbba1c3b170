"""``mesh review list|show|label|skip|stats|report`` and ``mesh review serve``.

The commands call the review API (``mesh.review.client``) as the identity of ``--creds``
(``$MESH_REVIEWER_CREDS``, which ``mesh up`` prints): a reviewer may label and skip, the console
only read. ``--json`` prints what the API answers; ``mesh review list --json`` is a list of items,
each with ``id``, ``model``, ``reason`` and ``answers`` (a contract).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from mesh.cli import options
from mesh.cli.options import (
    NATS_FLAGS,
    FlagField,
    config_option,
    run_service,
    server_list,
    tls_ca_option,
)
from mesh.topology.processes import ENV_NATS_URL, ENV_REVIEWER_CREDS

_T = TypeVar("_T")

servers_option = options.servers_option("A NATS server of the mesh (the site's or the hub's).")
creds_option = options.creds_option(
    "Credentials of the identity calling the review API (role reviewer to label).",
    env=ENV_REVIEWER_CREDS,
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the API's answer as JSON."
)


def api_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--servers``, ``--creds``, ``--tls-ca`` and ``--json``: how a command calls the review
    API and prints its answer."""
    for option in (json_option, tls_ca_option, creds_option, servers_option):
        command = option(command)
    return command


@click.group()
def review() -> None:
    """The review queue: what no tier was sure of, for a person to label."""


@asynccontextmanager
async def _client(servers: str, creds: Path | None, tls_ca: Path | None) -> AsyncIterator[Any]:
    from mesh.errors import InvalidArgumentError
    from mesh.review.client import ReviewClient
    from mesh.security.creds import user_claims
    from mesh.settings import NatsSettings
    from mesh.transport.connection import close_quietly, connect_options, open_connection

    if creds is None:
        raise InvalidArgumentError(
            f"give --creds (or {ENV_REVIEWER_CREDS}): the review API answers identities only"
        )
    name = str((await asyncio.to_thread(user_claims, creds)).get("name", ""))
    settings = NatsSettings(
        servers=server_list(servers), credentials=creds, tls_ca=tls_ca, connect_timeout_s=5.0
    )
    options = await asyncio.to_thread(connect_options, settings, "mesh-review-cli")
    holder: list[ReviewClient] = []

    async def on_error(exc: Exception) -> None:
        for client in holder:
            await client.on_error(exc)

    options.update(allow_reconnect=False, max_reconnect_attempts=0, error_cb=on_error)
    nc = await open_connection(options.pop("servers"), first_connect_s=5.0, **options)
    try:
        client = ReviewClient(nc, name)
        holder.append(client)
        yield client
    finally:
        await close_quietly(nc)


def _run(
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    work: Callable[[Any], Awaitable[_T]],
) -> _T:
    async def main() -> _T:
        async with _client(servers, creds, tls_ca) as client:
            return await work(client)

    return asyncio.run(main())


def _echo_json(value: object) -> None:
    click.echo(json.dumps(value, indent=1))


def _when(t: object) -> str:
    if not isinstance(t, int | float):
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _answers(item: dict[str, Any]) -> str:
    parts = []
    for a in item.get("answers", []):
        label = a.get("class") or a.get("label")
        confidence = a.get("confidence")
        served = "*" if a.get("served") else ""
        conf = f"@{confidence:.2f}" if isinstance(confidence, float | int) else ""
        parts.append(f"{a.get('tier')}:{label}{conf}{served}")
    return " ".join(parts)


def _line(item: dict[str, Any]) -> str:
    withheld = f" [input withheld: {item['withheld']}]" if item.get("withheld") else ""
    label = item.get("label")
    done = ""
    if label:
        done = f" -> {label.get('name') or label.get('label') or 'skipped'} by {label.get('by')}"
    return (
        f"{item['id']}  {item['model']}  {item['reason']:<12} {item['status']:<8} "
        f"{_answers(item)}{done}{withheld}\n    {item.get('why', '')}"
    )


@review.command("list")
@click.option("--model", default=None, help="Only this model's items.")
@click.option("--reason", default=None, help="Only items there for this reason.")
@click.option(
    "--status",
    default="pending",
    show_default=True,
    type=click.Choice(["pending", "labelled", "skipped", "all"]),
)
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 1000))
@api_options
def list_(
    model: str | None,
    reason: str | None,
    status: str,
    limit: int,
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    as_json: bool,
) -> None:
    """The queue's items, oldest first (pending ones unless --status says otherwise)."""
    found = _run(
        servers,
        creds,
        tls_ca,
        lambda c: c.list(model=model, reason=reason, status=status, limit=limit),
    )
    items = found.get("items", [])
    if as_json:
        _echo_json(items)
        return
    for item in items:
        click.echo(_line(item))
    click.echo(f"{len(items)} of {found.get('total', len(items))} {status}")


@review.command("show")
@click.argument("item")
@api_options
def show(item: str, servers: str, creds: Path | None, tls_ca: Path | None, as_json: bool) -> None:
    """One item: why it is there, every tier's answer, its input and its labels."""
    found = _run(servers, creds, tls_ca, lambda c: c.show(item))
    if as_json:
        _echo_json(found)
        return
    click.echo(_line(found))
    click.echo(
        f"  request {found['request_id']} row {found['row']} of {found['rows']}, asked by "
        f"{found.get('caller') or '-'}, from {found['node']} ({found['tier']}, site "
        f"{found['site'] or '-'}) at {_when(found['created_at'])}, trace {found['trace_id'] or '-'}"
    )
    classes = found.get("classes") or []
    if classes:
        click.echo("  classes: " + ", ".join(f"{i}={c}" for i, c in enumerate(classes)))
    tensors = found.get("input")
    if tensors is None:
        click.echo(f"  input: withheld ({found.get('withheld') or 'no longer in the queue'})")
    else:
        for name, tensor in tensors.items():
            data = tensor["data"]
            shown = ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in data[:16])
            more = ", ..." if len(data) > 16 else ""
            click.echo(f"  input {name} {tensor['dtype']}{tensor['shape']}: [{shown}{more}]")
    for record in found.get("history", []):
        what = record["name"] or record["label"] if record["kind"] == "label" else "skipped"
        again = " (relabel)" if record.get("relabel") else ""
        click.echo(f"  {record['kind']}: {what} by {record['by']} at {_when(record['at'])}{again}")


@review.command("label")
@click.argument("item")
@click.argument("label")
@click.option("--relabel", is_flag=True, help="Replace a label the item has (the old one is kept).")
@api_options
def label(
    item: str,
    label: str,
    relabel: bool,
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    as_json: bool,
) -> None:
    """Give ITEM the class LABEL (its id or its name); the item leaves the queue."""
    value: int | str = int(label) if label.lstrip("-").isdigit() else label
    found = _run(servers, creds, tls_ca, lambda c: c.label(item, value, relabel=relabel))
    if as_json:
        _echo_json(found)
        return
    given = found.get("label") or {}
    told = "; the caller is told" if found.get("told") else ""
    click.echo(
        f"{found['id']}: {given.get('label')} ({given.get('name') or '-'}) by {given.get('by')}"
        f"{' (relabel)' if given.get('relabel') else ''}{told}"
    )


@review.command("skip")
@click.argument("item")
@api_options
def skip(item: str, servers: str, creds: Path | None, tls_ca: Path | None, as_json: bool) -> None:
    """Pass ITEM over: it leaves the queue unlabelled (a label may still follow)."""
    found = _run(servers, creds, tls_ca, lambda c: c.skip(item))
    if as_json:
        _echo_json(found)
        return
    click.echo(f"{found['id']}: {found['status']}")


@review.command("stats")
@click.option("--model", default=None)
@api_options
def stats(
    model: str | None, servers: str, creds: Path | None, tls_ca: Path | None, as_json: bool
) -> None:
    """Ground truth per model, version and tier: labelled accuracy (95% Wilson interval),
    escalation rate, labels per 1,000 requests; and the queue by reason and status."""
    found = _run(servers, creds, tls_ca, lambda c: c.stats(model=model))
    if as_json:
        _echo_json(found)
        return
    for name, counts in sorted(found.get("queue", {}).items()):
        click.echo(
            f"{name}: {counts['queued']} queued, by reason {counts['by_reason']}, "
            f"by status {counts['by_status']}"
        )
    for v in found.get("versions", []):
        acc = v["accuracy"]
        shown = (
            f"{acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]"
            if acc["value"] is not None
            else "-"
        )
        click.echo(
            f"  {v['model']}@{v['version']} {v['tier']}: accuracy {shown} on {v['labelled']} "
            f"labels; {v['requests']} requests, escalation rate {v['escalation_rate']}, "
            f"{v['labels_per_1000']} labels per 1,000"
        )


@review.command("report")
@click.option("--model", default=None)
@click.option("--days", default=7, show_default=True, type=click.IntRange(1, 90))
@api_options
def report(
    model: str | None,
    days: int,
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    as_json: bool,
) -> None:
    """Productivity and error cost per day (the cost model is the review service's)."""
    found = _run(servers, creds, tls_ca, lambda c: c.report(model=model, days=days))
    if as_json:
        _echo_json(found)
        return
    cost_model = found["cost_model"]
    click.echo(
        f"cost model ({cost_model['unit']}): wrong answer {cost_model['wrong_answer']}, "
        f"escalation {cost_model['escalation']}, label {cost_model['human_label']}"
    )
    for day in found.get("days", []):
        cost = day["cost"]
        work = day["productivity"]
        click.echo(
            f"{day['day']} {day['model']}: {day['requests']} requests, {day['escalations']} "
            f"escalations, {day['labels']} labels; errors found {day['errors']['found']}, "
            f"estimated {day['errors']['estimated']}; cost {cost['total']} "
            f"({cost['per_1000_requests']} per 1,000); {work['answers_per_label']} answers "
            "per label"
        )


@review.command("serve")
@config_option
@click.option(
    "--servers",
    default=lambda: os.environ.get(ENV_NATS_URL, "nats://127.0.0.1:4222"),
    show_default=f"${ENV_NATS_URL}",
    help="The hub's NATS server(s), comma-separated.",
)
@click.option(
    "--creds",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="The desk's credentials (role review-desk).",
)
@click.option(
    "--intake-creds",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="The intake's credentials (role review-intake).",
)
@tls_ca_option
@click.option("--domain", default="hub", show_default=True, help="JetStream domain of the queue.")
@click.option("--http-port", default=0, show_default=True, help="Metrics and health (0: any).")
@click.pass_context
def serve(ctx: click.Context, /, config: Path | None, **_: object) -> None:
    """Run the review queue's service at the hub: the intake and the desk.

    Settings: --config FILE, MESH_REVIEW_SERVICE_* variables, and the flags, which win."""
    run_service(ctx, config, "mesh.services.review", SERVE_FLAGS)


#: where each flag of ``mesh review serve`` goes in ``ReviewServiceSettings``.
SERVE_FLAGS: dict[str, FlagField] = {
    **NATS_FLAGS,
    "intake_creds": "intake_credentials",
    "domain": "domain",
    "http_port": "http_port",
}
