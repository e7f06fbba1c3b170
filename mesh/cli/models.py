"""``mesh models ...``: build the demo models, quantize, calibrate and validate a model."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np


@click.group()
def models() -> None:
    """Build, shrink, calibrate and check models."""


@models.command("build-demo")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output directory.")
@click.option("--seed", default=0, show_default=True)
def build_demo(out: Path, seed: int) -> None:
    """Train the digits models (edge, gateway, cloud), export ONNX, write the splits."""
    from mesh.dev.models.demo import build_demo as build

    artifacts = build(out, seed=seed)
    for name, path in artifacts.manifests.items():
        click.echo(f"{name}: {path}")
    click.echo(f"test split: {artifacts.test}")
    click.echo(f"calibration split: {artifacts.calib}")


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
@click.option(
    "--calibration",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True,
    help="Rows (.npz with x) from the serving distribution that fix the activations' scales "
    "(not the --test rows, which measure the result).",
)
def quantize(manifest: Path, test_npz: Path, out: Path | None, calibration: Path) -> None:
    """Write an int8 variant of MANIFEST's model; report size, latency and accuracy.

    Activations are quantized statically, from the ``x`` rows of --calibration, so that answers
    do not depend on the batch a request is run in."""
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
    rows = np.load(calibration)["x"].astype(np.float32)
    quantize_model(artifact_path(source, manifest), onnx_out, calibration=rows)
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
@click.option(
    "--device",
    "devices",
    multiple=True,
    metavar="TIER=PROFILE",
    help="Device profile a tier's energy per answer is stated on, e.g. edge=jetson-orin-nano-7w "
    "(default: edge=rpi4, others x86-gateway).",
)
@click.option("--no-energy", is_flag=True, help="Leave out the energy per answer.")
def calibrate(
    edge: Path,
    upstream: tuple[Path, ...],
    calib_npz: Path,
    max_drop: float,
    plot: Path | None,
    dry_run: bool,
    devices: tuple[str, ...],
    no_energy: bool,
) -> None:
    """Pick each tier's threshold (EDGE, then UPSTREAM manifests up to the top) for a target,
    stating beside accuracy what an answer costs the tier's device at each threshold."""
    from mesh.models.calibrate import calibrate as run
    from mesh.models.calibrate import plot_curves

    chosen: dict[str, str] = {}
    for item in devices:
        tier, sep, profile = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not TIER=PROFILE", param_hint="--device")
        chosen[tier.strip()] = profile.strip()
    split = np.load(calib_npz)
    result = run(
        edge, list(upstream), split["x"], split["y"], max_drop,
        write=not dry_run, devices=chosen, energy=not no_energy,
    )  # fmt: skip
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
    help="Override the manifest's hardware profile, e.g. latency_p99_ms=0.01 or energy_mj=0.05.",
)
@click.option("--min-accuracy", type=float, default=None, help="Override the quality target.")
@click.option("--runs", default=500, show_default=True, help="Single-row runs to time.")
@click.option(
    "--device",
    default=None,
    help="Device profile energy is priced on: rpi4, jetson-orin-nano-15w, jetson-orin-nano-7w, "
    "x86-gateway (default: a Pi 4 for an edge model, else the x86 gateway).",
)
def validate(
    manifest: Path,
    test_npz: Path,
    profile: tuple[str, ...],
    min_accuracy: float | None,
    runs: int,
    device: str | None,
) -> None:
    """Measure latency, memory, energy and accuracy here; exit 1 when the manifest's targets
    fail."""
    from mesh.models.validate import validate_model

    overrides: dict[str, float] = {}
    for item in profile:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--profile")
        overrides[key.strip()] = float(value)
    quality = {"min_accuracy": min_accuracy} if min_accuracy is not None else None
    report = validate_model(
        manifest, test_npz, overrides or None, quality, runs=runs, device=device
    )
    click.echo(report.summary())
    if not report.passed:
        sys.exit(1)


@models.command("import")
@click.argument("onnx_file", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--name", required=True, help="Model name requests address (mesh.infer.NAME).")
@click.option("--tier", default="edge", show_default=True, help="Tier this version is for.")
@click.option(
    "--repo",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Model repository folder (created if missing): <repo>/<name>/<version>/.",
)
@click.option(
    "--labels",
    "labels_file",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Class names, one a line (default: the export's class labels, else 0..C-1).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Sample inputs (.npz with x; y too when labelled): reference statistics for novelty "
    "and drift, and with y a threshold calibrated against the model's top-tier version.",
)
@click.option(
    "--scored-output",
    default=None,
    help="The output holding class probabilities or scores, when the graph has several.",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=None,
    help="Largest accuracy drop against the top tier allowed by the calibration (0.005).",
)
def import_(
    onnx_file: Path,
    name: str,
    tier: str,
    repo: Path,
    labels_file: Path | None,
    data: Path | None,
    scored_output: str | None,
    max_drop: float | None,
) -> None:
    """Add ONNX_FILE to a model repository as the next version of NAME for TIER, its manifest
    written from the graph (and from --data when given), and checked as a node loads it."""
    from mesh.models.importer import import_model

    labels = None
    if labels_file is not None:
        labels = [line.strip() for line in labels_file.read_text().splitlines() if line.strip()]
    result = import_model(
        onnx_file,
        name=name,
        tier=tier,
        repo=repo,
        labels=labels,
        data=data,
        scored_output=scored_output,
        max_drop=max_drop,
    )
    click.echo(f"imported {name} version {result.version} for tier {tier}: {result.manifest_path}")
    for note in result.notes:
        click.echo(f"note: {note}")
