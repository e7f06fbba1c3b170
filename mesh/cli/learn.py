"""``mesh learn run|export`` and ``mesh models recalibrate``: learning from the review queue's
labels, with the controller's identity (it reads the review queue, pushes versions and starts
rollouts: ``$MESH_CONTROLLER_CREDS`` under ``mesh up``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

import click

from mesh.cli.fleet import (
    _connect,
    creds_option,
    release_options,
    servers_option,
)
from mesh.cli.options import tls_ca_option
from mesh.topology.processes import ENV_SIGNING_KEY

_T = TypeVar("_T")

npz = click.Path(path_type=Path, exists=True, dir_okay=False)


@asynccontextmanager
async def _session(
    servers: str, creds: Path | None, tls_ca: Path | None
) -> AsyncIterator[tuple[Any, Any]]:
    """A connection, and the review API called as its identity (named in its credentials)."""
    from mesh.review.client import ReviewClient
    from mesh.security.creds import user_claims

    if creds is None:
        raise click.UsageError("give --creds: the review API answers identities only")
    name = str((await asyncio.to_thread(user_claims, creds)).get("name", ""))
    async with _connect(servers, creds, tls_ca) as nc:
        yield nc, ReviewClient(nc, name)


def _run(work: Callable[[], Awaitable[_T]]) -> _T:
    return asyncio.run(_main(work))


async def _main(work: Callable[[], Awaitable[_T]]) -> _T:
    return await work()


@click.group()
def learn() -> None:
    """Learn from the review queue's labels: export them, train, roll the result out."""


@learn.command("export")
@click.argument("model")
@click.option(
    "--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
    help="The .npz to write (x, y, item); its provenance goes beside it as .json.",
)  # fmt: skip
@click.option("--limit", type=click.IntRange(1), default=None, help="The oldest N labels only.")
@servers_option
@creds_option
@tls_ca_option
def learn_export(
    model: str, out: Path, limit: int | None, servers: str, creds: Path | None,
    tls_ca: Path | None,
) -> None:  # fmt: skip
    """Write MODEL's labelled items with their inputs and provenance, for retraining anywhere.

    Items whose input stayed below the hub (residency) or aged out are passed over, counted."""
    from mesh.learn.export import export_labelled, write_export

    async def go() -> Any:
        async with _session(servers, creds, tls_ca) as (_, review):
            return await export_labelled(review, model, limit=limit)

    labelled = _run(go)
    provenance = write_export(labelled, out)
    passed = ", ".join(f"{n} {why}" for why, n in labelled.passed_over.items()) or "none"
    click.echo(
        f"exported {len(labelled)} labelled items of {model} to {out} (provenance "
        f"{provenance}); by reason {labelled.by_reason()}; passed over: {passed}"
    )


@learn.command("run")
@click.argument("model")
@click.option(
    "--train", "train", required=True,
    help="The training command; {data} is the .npz it learns from (x, y), {provenance} its "
    "JSON, {out} the ONNX file it must write. Run without a shell.",
)  # fmt: skip
@click.option(
    "--reference", type=npz, required=True,
    help="Labelled rows of the tier's traffic (.npz x, y), never trained on: reference "
    "statistics, the threshold's calibration and the evidence gate's accuracy.",
)  # fmt: skip
@click.option("--tier", default="edge", show_default=True, help="The tier the version is for.")
@click.option(
    "--upstream", type=npz, default=None,
    help="Manifest of the top tier's version (default: the one its nodes serve, fetched).",
)  # fmt: skip
@click.option(
    "--from", "base", default=None, help="The version improved on (default: the most served)."
)
@click.option("--version", default=None, help="The new version's name (default: N-TIER-learned).")
@click.option("--min-labels", type=click.IntRange(1), default=300, show_default=True)
@click.option(
    "--held-back", type=click.FloatRange(0.0, 0.9), default=0.25, show_default=True,
    help="Share of the labelled inputs kept from the trainer to calibrate its model.",
)  # fmt: skip
@click.option(
    "--max-drop",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.005,
    show_default=True,
    help="Largest accuracy drop against the top tier allowed.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=float,
    default=600.0,
    show_default=True,
    help="Seconds the training command may run.",
)
@click.option(
    "--work",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="Folder for the export, the model and its manifest.",
)
@click.option("--stages", default="1,10%,50%,100%", show_default=True)
@click.option("--soak", default=None)
@click.option("--gate", "gates", multiple=True, help="A gate bound, metric=value; repeatable.")
@click.option("--no-shadow", is_flag=True, help="Roll out without a shadow stage first.")
@click.option("--no-rollout", is_flag=True, help="Push the version, start no rollout.")
@release_options
@click.option("--json", "as_json", is_flag=True)
def learn_run(**options: Any) -> None:
    """Train a better version of MODEL on its labels and roll it out, beginning in shadow:
    export, hold back a share to calibrate, run --train on the rest, import, recalibrate,
    evidence gate, sign, push, rollout. Nothing is pushed when a step fails."""
    from mesh.fleet.signing import SigningKey
    from mesh.learn.job import LearnSettings, learn

    o = options
    if o["key_path"] is None:
        raise click.UsageError(f"give the signing key: --key KEY or ${ENV_SIGNING_KEY}")
    key = SigningKey.load(o["key_path"])
    trusted = list(o["trusted_keys"]) or [key.public]
    settings = LearnSettings(
        model=o["model"], train=o["train"], reference=o["reference"], work_dir=o["work"],
        tier=o["tier"], upstream=o["upstream"], base=o["base"], version=o["version"],
        min_labels=o["min_labels"], held_share=o["held_back"], max_drop=o["max_drop"],
        train_timeout_s=o["timeout_s"], rollout=not o["no_rollout"], shadow=not o["no_shadow"],
        stages=o["stages"], soak=o["soak"], gates=tuple(o["gates"]),
    )  # fmt: skip

    async def go() -> Any:
        async with _session(o["servers"], o["creds"], o["tls_ca"]) as (nc, review):
            return await learn(
                nc.jetstream(domain=o["domain"]), review, settings, key, trusted,
                progress=lambda text: click.echo(text, err=True),
            )  # fmt: skip

    result = _run(go)
    if o["as_json"]:
        click.echo(json.dumps(result.to_json(), indent=1))
        return
    click.echo(
        f"{result.model}@{result.version} learned from {result.labels} labels "
        f"({result.trained_on} trained on, {result.held_back} held back), improving on "
        f"{result.base}: threshold {result.threshold:.4f}, accuracy {result.accuracy:.4f} on the "
        "reference data; "
        + (f"rollout {result.rollout} started" if result.rollout else "no rollout started")
    )


@click.command("recalibrate")
@click.argument("model")
@click.argument("source", metavar="VERSION")
@click.option(
    "--labels",
    type=npz,
    required=True,
    help="Labelled hard cases (.npz x, y), e.g. from mesh learn export.",
)
@click.option(
    "--reference",
    type=npz,
    default=None,
    help="The version's reference data (.npz x, y): its calibration split.",
)
@click.option("--upstream", type=npz, required=True, help="Manifest of the top tier's version.")
@click.option("--version", default=None, help="The new version's name (default: the next).")
@click.option(
    "--max-drop", type=click.FloatRange(0.0, 1.0, min_open=True), default=0.005, show_default=True
)
@release_options
def models_recalibrate(**options: Any) -> None:
    """Recalibrate VERSION's threshold on labelled hard cases plus its reference data, and push
    the result as MODEL's next version, signed with --key (the same bytes, a new manifest)."""
    from mesh.fleet.signing import SigningKey, load_trusted_keys
    from mesh.learn.recalibrate import recalibrate_version

    o = options
    if o["key_path"] is None:
        raise click.UsageError(f"give the signing key: --key KEY or ${ENV_SIGNING_KEY}")
    key = SigningKey.load(o["key_path"])
    trusted = load_trusted_keys(list(o["trusted_keys"])) if o["trusted_keys"] else None

    async def go() -> Any:
        async with _connect(o["servers"], o["creds"], o["tls_ca"]) as nc:
            return await recalibrate_version(
                nc.jetstream(domain=o["domain"]), o["model"], o["source"], key,
                labels=o["labels"], reference=o["reference"], upstream=o["upstream"],
                version=o["version"], max_drop=o["max_drop"], trusted=trusted,
            )  # fmt: skip

    made = _run(go)
    before = "none" if made.threshold_before is None else f"{made.threshold_before:.4f}"
    click.echo(
        f"pushed {made.model}@{made.version}: {made.model}@{made.source}'s bytes, threshold "
        f"{before} -> {made.threshold:.4f} on {made.rows} labelled rows"
    )
    click.echo(made.result.summary())
    click.echo(json.dumps({"version": made.version, **asdict(made.result.tiers[0].chosen)}))


__all__ = ["learn", "models_recalibrate"]
