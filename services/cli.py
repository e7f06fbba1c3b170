"""The ``mesh`` command: run nodes, the whole mesh, the demo, the benchmark; build models."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import click
import numpy as np

DEFAULT_CACHE = Path(os.environ.get("MESH_CACHE_DIR", Path.home() / ".cache" / "edge-mesh"))


cache_option = click.option(
    "--cache",
    type=click.Path(path_type=Path),
    default=DEFAULT_CACHE / "demo",
    show_default=True,
    help="Where the demo models are built and cached (built on the first run).",
)


class MeshGroup(click.Group):
    """Turns the mesh's typed errors into a one-line message and exit status 2."""

    def invoke(self, ctx: click.Context) -> object:
        from mesh.errors import MeshError

        try:
            return super().invoke(ctx)
        except MeshError as error:
            click.echo(f"error: {error}", err=True)
            sys.exit(2)


@click.group(cls=MeshGroup)
@click.version_option(package_name="edge-mesh")
def main() -> None:
    """Edge-cloud hybrid inference mesh over NATS."""


@main.command()
@click.option(
    "--config",
    "config",
    type=click.Path(path_type=Path, exists=True),
    default=None,
    help="YAML settings file; MESH_* environment variables override it.",
)
def node(config: Path | None) -> None:
    """Run one tier node."""
    from services.node import main as node_main

    node_main(config)


@main.command()
@click.argument("model")
@click.argument("file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--servers",
    default=lambda: os.environ.get("MESH_NATS_URL", "nats://127.0.0.1:4222"),
    show_default="$MESH_NATS_URL or nats://127.0.0.1:4222",
    help="NATS server URL.",
)
@click.option("--budget-ms", default=1000.0, show_default=True, help="Time budget of the request.")
@click.option(
    "--residency",
    default="any",
    show_default=True,
    type=click.Choice(["device", "site", "cloud", "any"]),
    help="Highest zone the raw input may reach.",
)
@click.option("--row", type=int, default=None, help="Send only this row of the array.")
def infer(
    model: str, file: Path, servers: str, budget_ms: float, residency: str, row: int | None
) -> None:
    """Send FILE.npy (or the `x` array of an .npz) as one request to MODEL; print the answer."""
    from mesh import MeshClient

    array = np.load(file)["x"] if file.suffix == ".npz" else np.load(file)
    if row is not None:
        array = array[row : row + 1]
    if array.ndim == 1:
        array = array[None, :]

    async def run() -> dict[str, object]:
        async with await MeshClient.connect(servers) as client:
            result = await client.infer(model, array, budget_ms=budget_ms, residency=residency)
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

    click.echo(json.dumps(asyncio.run(run()), indent=2))


@main.command()
@cache_option
@click.option("--edge-replicas", default=1, show_default=True)
def up(cache: Path, edge_replicas: int) -> None:
    """Start the whole mesh (NATS hub and site, cloud, gateway and edge nodes) until Ctrl-C."""
    from mesh.launcher import EmbeddedMesh, MeshLayout
    from mesh.models.demo import ensure_demo
    from mesh.models.validate import require_valid

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        click.echo(f"demo models in {cache} (built on first run)", err=True)
        demo = await asyncio.to_thread(ensure_demo, cache)
        reports = await asyncio.to_thread(
            require_valid, [demo.edge_int8, demo.gateway, demo.cloud], demo.test
        )
        for report in reports:
            click.echo(f"evidence gate: {report.summary()}", err=True)
        mesh = EmbeddedMesh(
            MeshLayout(
                edge_manifest=demo.edge_int8,
                gateway_manifest=demo.gateway,
                cloud_manifest=demo.cloud,
                edge_replicas=edge_replicas,
            )
        )
        try:
            await mesh.start()
            for name, proc in mesh.nodes.items():
                click.echo(f"node {name}: pid {proc.pid}, http {proc.http_url}", err=True)
            click.echo(f"hub {mesh.hub_url}; logs in {mesh.work_dir}", err=True)
            click.echo(f"MESH_NATS_URL={mesh.site_url}", nl=True)
            sys.stdout.flush()
            await stop.wait()
        finally:
            click.echo("stopping the mesh", err=True)
            await mesh.close()

    asyncio.run(run())


@main.group()
def models() -> None:
    """Build, shrink, calibrate and check models."""


@models.command("build-demo")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--seed", default=0, show_default=True)
def build_demo(out: Path, seed: int) -> None:
    """Train the digits models (edge, gateway, cloud), export ONNX, write the splits."""
    from mesh.models.demo import build_demo as build

    artifacts = build(out, seed=seed)
    for name, path in artifacts.manifests.items():
        click.echo(f"{name}: {path}")
    click.echo(f"test split: {artifacts.test}")
    click.echo(f"calibration split: {artifacts.calib}")


@main.command()
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
def bench(quick: bool, json_path: Path | None, cache: Path, mlserver: str | None) -> None:
    """Benchmark the mesh against the NATS and ONNX Runtime floor and against HTTP peers."""
    from services.bench import bench_main, render

    def progress(text: str) -> None:
        click.echo(f"bench: {text}", err=True)

    try:
        report = asyncio.run(bench_main(quick, cache, mlserver, progress))
    except (KeyboardInterrupt, asyncio.CancelledError):
        click.echo("bench: interrupted; every process it started is stopped", err=True)
        sys.exit(130)
    render(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"bench: JSON written to {json_path}", err=True)


@models.command("quantize")
@click.argument("manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--test",
    "test_npz",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="Held-out split (.npz with x, y) to compare the variants on.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Manifest of the int8 variant (default: <name>-int8.manifest.json beside it).",
)
def quantize(manifest: Path, test_npz: Path, out: Path | None) -> None:
    """Write an int8 variant of MANIFEST's model; report size, latency and accuracy."""
    from mesh.models.manifest import (
        artifact_path,
        load_manifest,
        save_manifest,
        sha256_of,
    )
    from mesh.models.quantize import quantization_report, quantize_model

    source = load_manifest(manifest)
    stem = manifest.name.removesuffix(".manifest.json").removesuffix(".json")
    out = out or manifest.with_name(f"{stem}-int8.manifest.json")
    onnx_out = out.with_name(out.name.removesuffix(".manifest.json") + ".onnx")
    quantize_model(artifact_path(source, manifest), onnx_out)
    variant = source.model_copy(deep=True)
    variant.version = f"{source.version}-int8"
    variant.artifact = onnx_out.name
    variant.sha256 = sha256_of(onnx_out)
    save_manifest(variant, out)
    split = np.load(test_npz)
    report = quantization_report(artifact_path(source, manifest), onnx_out, split["x"], split["y"])
    click.echo(report.summary())
    click.echo(f"int8 manifest: {out}")


@models.command("calibrate")
@click.argument("edge", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument(
    "upstream",
    nargs=-1,
    required=True,
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
)
@click.option(
    "--calib",
    "calib_npz",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="Labelled calibration split (.npz with x, y); not the test split.",
)
@click.option(
    "--max-drop",
    default=0.005,
    show_default=True,
    help="Largest cascade accuracy drop allowed against the top model alone.",
)
@click.option(
    "--plot",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the curve (share local against cascade accuracy) as a PNG.",
)
@click.option("--dry-run", is_flag=True, help="Print the thresholds without writing them.")
def calibrate(
    edge: Path,
    upstream: tuple[Path, ...],
    calib_npz: Path,
    max_drop: float,
    plot: Path | None,
    dry_run: bool,
) -> None:
    """Pick each tier's threshold (EDGE, then UPSTREAM manifests up to the top) for a target."""
    from mesh.models.calibrate import calibrate as run
    from mesh.models.calibrate import plot_curves

    split = np.load(calib_npz)
    result = run(edge, list(upstream), split["x"], split["y"], max_drop, write=not dry_run)
    click.echo(result.summary())
    for calibration in result.tiers:
        every = max(1, len(calibration.curve) // 25)
        click.echo(f"\n{calibration.tier}:\n" + result.curve_table(calibration.tier, every=every))
    if plot is not None:
        click.echo(f"plot: {plot_curves(result, plot)}")


@models.command("validate")
@click.argument("manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--test",
    "test_npz",
    type=click.Path(path_type=Path, exists=True),
    required=True,
    help="Held-out split (.npz with x, y).",
)
@click.option(
    "--profile",
    "profile",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override the manifest's hardware profile, e.g. latency_p99_ms=0.01.",
)
@click.option("--min-accuracy", type=float, default=None, help="Override the quality target.")
@click.option("--runs", default=500, show_default=True, help="Single-row runs to time.")
def validate(
    manifest: Path, test_npz: Path, profile: tuple[str, ...], min_accuracy: float | None, runs: int
) -> None:
    """Measure latency, memory and accuracy here; exit 1 when the manifest's targets fail."""
    from mesh.models.validate import validate_model

    overrides: dict[str, float] = {}
    for item in profile:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--profile")
        overrides[key.strip()] = float(value)
    quality = {"min_accuracy": min_accuracy} if min_accuracy is not None else None
    report = validate_model(manifest, test_npz, overrides or None, quality, runs=runs)
    click.echo(report.summary())
    if not report.passed:
        sys.exit(1)


@main.command()
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
    from services.demo import demo_main

    sys.exit(demo_main(cache, requests, quick, report_path))


if __name__ == "__main__":
    main()
