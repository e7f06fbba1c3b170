"""``mesh demo`` and ``mesh bench``: the whole story on this machine, and the measurements."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from mesh.cli.options import cache_option

report_option = click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the report as JSON here.",
)


@click.command()
@click.option("--quick", is_flag=True, help="Tiny request counts and one trial (a smoke run).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the figures and ratios as JSON here.",
)
@cache_option
@click.option(
    "--mlserver",
    envvar="MESH_BENCH_MLSERVER",
    default=None,
    help="The mlserver executable of a separate venv, for the MLServer peer row.",
)
@click.option(
    "--rows",
    default=None,
    help="Measure only these rows (comma-separated keys, e.g. mesh_edge,events_edge); "
    "ratios whose rows are missing report null.",
)
def bench(
    quick: bool, json_path: Path | None, cache: Path, mlserver: str | None, rows: str | None
) -> None:
    """Benchmark the mesh against the NATS and ONNX Runtime floor and against HTTP peers."""
    from mesh.dev.bench import bench_main, render

    def progress(text: str) -> None:
        click.echo(f"bench: {text}", err=True)

    try:
        report = asyncio.run(bench_main(quick, cache, mlserver, progress, only=_row_keys(rows)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("bench: interrupted; every process it started is stopped", err=True)
        sys.exit(130)
    render(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        click.echo(f"bench: JSON written to {json_path}", err=True)


def _row_keys(rows: str | None) -> frozenset[str] | None:
    return None if rows is None else frozenset(k.strip() for k in rows.split(",") if k.strip())


@click.command()
@report_option
@cache_option
@click.option(
    "--requests",
    "requests",
    type=click.IntRange(min=50),
    default=None,
    help="Requests to send (default 3,000 at 100/s; 600 at 50/s with --quick).",
)
@click.option("--quick", is_flag=True, help="A short run (about 12 s of load) for smoke tests.")
def demo(report_path: Path | None, cache: Path, requests: int | None, quick: bool) -> None:
    """Run the whole mesh, send the digits test split through it, cut the WAN link, report."""
    from mesh.dev.demo import demo_main

    sys.exit(demo_main(cache, requests, quick, report_path))


@click.command()
@click.option(
    "--minutes",
    type=click.FloatRange(min=1.0),
    default=10.0,
    show_default=True,
    help="How long the load runs (the chaos schedule fits itself to it).",
)
@click.option("--sites", type=click.IntRange(1, 20), default=3, show_default=True)
@click.option(
    "--hub-cluster",
    type=click.IntRange(1, 7),
    default=3,
    show_default=True,
    help="Servers of the hub (a cluster, its streams R3, from 3).",
)
@report_option
@click.option(
    "--rate",
    type=click.FloatRange(min=1.0),
    default=30.0,
    show_default=True,
    help="Requests per second over all sites.",
)
@click.option(
    "--events",
    "events_rate",
    type=click.FloatRange(min=0.1),
    default=3.0,
    show_default=True,
    help="Inference events per second over all sites.",
)
@click.option("--no-chaos", is_flag=True, help="Steady load only (a baseline).")
@click.option(
    "--only",
    "kinds",
    multiple=True,
    type=click.Choice(
        [
            "kill-hub-member",
            "flap-link",
            "kill-node",
            "slow-link",
            "fill-hard-examples",
            "restart-controller",
        ]
    ),
    help="Run only these kinds of chaos step (repeat); default: all of them in turn.",
)
@click.option(
    "--keep",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Keep the servers' and nodes' logs and data in this folder.",
)
@cache_option
def soak(
    minutes: float, sites: int, hub_cluster: int, report_path: Path | None, rate: float,
    events_rate: float, no_chaos: bool, kinds: tuple[str, ...], keep: Path | None, cache: Path,
) -> None:  # fmt: skip
    """Steady load through the SDK at every site of a mesh on a clustered hub, with a chaos
    schedule beside it; a report per minute.

    Exits 1 if a request was lost or an event had not exactly one result, 3 if nothing was lost
    but memory, p99, tasks or descriptors grew past their bounds, 2 if a phase missed its
    deadline (naming what it waited for)."""
    from mesh.dev.soak import SoakConfig, render, soak_main
    from mesh.dev.soak.chaos import KINDS, ORDER

    def say(text: str) -> None:
        click.echo(text, err=True)

    config = SoakConfig(
        minutes=minutes, sites=sites, hub_cluster=hub_cluster, rate_per_s=rate,
        events_per_s=events_rate, chaos=not no_chaos,
        only=tuple(KINDS[k] for k in kinds) or ORDER,
    )  # fmt: skip
    try:
        report = asyncio.run(soak_main(config, cache, say, keep))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("soak: interrupted; every process it started is stopped")
        sys.exit(130)
    if report_path is not None:
        report_path.parent.mkdir(parents=True, exist_ok=True)
        report_path.write_text(json.dumps(report.to_json(), indent=2) + "\n")
        say(f"soak: report written to {report_path}")
    sys.exit(render(report, say))
