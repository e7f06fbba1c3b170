"""``mesh demo`` and ``mesh bench``: the whole story on this machine, and the measurements."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click

from mesh.cli.options import cache_option


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
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write the report as JSON here.",
)
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
