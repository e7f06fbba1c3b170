"""``mesh keys`` and ``mesh models sign|push|list|bump``: signed versions in the fleet's
registry. Pushing and bumping need the controller's (or the administrator's) identity; listing,
the console's too."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from mesh.cli.fleet import (
    _connect,
    _run,
    registry_options,
    release_options,
    signature_path_for,
    signing_key_option,
    trusted_option,
)
from mesh.errors import InvalidArgumentError, NotFoundError
from mesh.topology.processes import ENV_SIGNING_KEY

# --- keys -----------------------------------------------------------------------------------


@click.group()
def keys() -> None:
    """Signing keys for model artifacts."""


@keys.command("generate")
@click.argument("path", type=click.Path(path_type=Path, dir_okay=False))
def keys_generate(path: Path) -> None:
    """Write a new ed25519 signing key to PATH (mode 0600) and its public key to PATH.pub.

    Give the public key (printed) to the nodes as fleet.trusted_keys."""
    from mesh.fleet.signing import SigningKey

    if path.exists():
        raise InvalidArgumentError(f"{path} exists: refusing to overwrite a signing key")
    path.parent.mkdir(parents=True, exist_ok=True)
    key = SigningKey.generate()
    pub = key.save(path)
    click.echo(f"signing key {path}, public key {pub}", err=True)
    click.echo(key.public)


# --- models sign / push / list --------------------------------------------------------------


@click.command("sign")
@click.argument("manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@signing_key_option
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Default: MANIFEST.sig")
def models_sign(manifest: Path, key_path: Path | None, out: Path | None) -> None:
    """Sign a manifest and its artifact (sha256 of the bytes plus the whole manifest)."""
    from mesh.fleet.signing import SigningKey, sign
    from mesh.models.manifest import load_manifest, sha256_of, verify_artifact

    if key_path is None:
        raise click.UsageError(f"give the signing key: --key KEY or ${ENV_SIGNING_KEY}")

    parsed = load_manifest(manifest)
    artifact = verify_artifact(parsed, manifest)
    signature = sign(
        SigningKey.load(key_path), json.loads(manifest.read_text("utf-8")), sha256_of(artifact)
    )
    target = out or signature_path_for(manifest)
    target.write_bytes(signature.to_json() + b"\n")
    click.echo(f"signed {signature.model}@{signature.version} with {signature.key}: {target}")


@click.command("push")
@click.argument("manifest", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option(
    "--signature", "signature_path", type=click.Path(path_type=Path, exists=True), default=None,
    help="Signature from mesh models sign (default: MANIFEST.sig).",
)  # fmt: skip
@click.option(
    "--data", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
    help="Held-out .npz (x, y): the evidence gate checks accuracy too, not only the budget.",
)  # fmt: skip
@click.option("--runs", default=200, show_default=True, help="Single-row runs of the gate.")
@trusted_option
@registry_options
def models_push(
    manifest: Path,
    signature_path: Path | None,
    data: Path | None,
    runs: int,
    trusted_keys: list[str],
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    domain: str,
) -> None:
    """Upload a signed version (artifact, manifest, signature) to the fleet's registry.

    Refused (exit 2) when the signature does not verify, or is by none of the trusted keys
    when they are given, or the model fails its own evidence gate, measured here: latency and
    memory against the manifest's budget, and accuracy on --data when given. A version already
    in the registry is accepted again when identical; when only its signature differs, the new
    one replaces it if the trusted keys are given (re-signing with the right key); with other
    bytes or another manifest it is refused: versions are immutable."""
    from mesh.fleet import registry
    from mesh.fleet.signing import SignatureError, load_trusted_keys, verify
    from mesh.models.manifest import load_manifest, verify_artifact
    from mesh.models.validate import validate_model

    parsed = load_manifest(manifest)
    onnx_path = verify_artifact(parsed, manifest)
    sig_path = signature_path or signature_path_for(manifest)
    if not sig_path.is_file():
        raise SignatureError(
            f"{parsed.name}@{parsed.version} is not signed: no {sig_path} "
            "(mesh models sign MANIFEST --key KEY)"
        )
    artifact = registry.Artifact(
        onnx=onnx_path.read_bytes(),
        manifest_bytes=manifest.read_bytes(),
        signature_bytes=sig_path.read_bytes(),
    )
    trusted = load_trusted_keys(list(trusted_keys)) if trusted_keys else None
    verify(artifact.signature, artifact.manifest, artifact.onnx, trusted)
    report = validate_model(manifest, data, runs=runs)
    click.echo(f"evidence gate: {report.summary()}", err=True)
    report.raise_if_failed()

    async def go() -> registry.Pushed:
        async with _connect(servers, creds, tls_ca) as nc:
            return await registry.store(
                nc.jetstream(domain=domain), artifact, resign=trusted is not None
            )

    pushed = _run(go)
    label = f"{parsed.name}@{parsed.version}"
    what = "re-signed" if pushed == registry.Pushed.RESIGNED else "pushed"
    click.echo(
        f"{what} {label} ({len(artifact.onnx)} bytes, sha256 {artifact.signature.sha256}, "
        f"signed by {artifact.signature.key})"
        + ("; it was in the registry already" if pushed == registry.Pushed.UNCHANGED else "")
    )
    if pushed == registry.Pushed.RESIGNED:
        click.echo(
            f"note: nodes that refused {label} under its old signature keep their refusal "
            f"until cleared: mesh fleet retry --all {parsed.name} {parsed.version}",
            err=True,
        )


@click.command("list")
@registry_options
@click.option("--json", "as_json", is_flag=True, help="One JSON list instead of a table.")
def models_list(
    servers: str, creds: Path | None, tls_ca: Path | None, domain: str, as_json: bool
) -> None:
    """Versions in the registry: size, sha256, signer and what their gate holds them to."""
    from dataclasses import asdict

    from mesh.fleet import registry

    async def go() -> list[registry.VersionInfo]:
        async with _connect(servers, creds, tls_ca) as nc:
            return await registry.list_versions(nc.jetstream(domain=domain))

    versions = _run(go)
    if as_json:
        click.echo(json.dumps([asdict(v) for v in versions], indent=1))
        return
    click.echo(f"{'MODEL':<12} {'VERSION':<10} {'SIZE':>9} {'SHA256':<14} {'TIER':<8} GATE  SIGNER")
    for v in versions:
        gate = (
            f"p99<={v.profile.get('latency_p99_ms')}ms mem<={v.profile.get('memory_mb')}MB "
            f"acc>={v.quality.get('min_accuracy')}"
        )
        click.echo(
            f"{v.model:<12} {v.version:<10} {v.size:>9} {v.sha256[:12]:<14} {v.tier_hint:<8} "
            f"{gate}  {v.signer[:20]}..."
        )


@click.command("bump")
@click.argument("model")
@click.argument("source", metavar="FROM")
@click.option(
    "--version", "version", default=None,
    help="Name of the new version (default: the model's next, named like FROM: 1-edge-int8 "
    "gives 2-edge-int8).",
)  # fmt: skip
@release_options
def models_bump(
    model: str,
    source: str,
    version: str | None,
    key_path: Path | None,
    trusted_keys: list[str],
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    domain: str,
) -> None:
    """Make the next version of MODEL from version FROM in the registry (the same artifact and
    manifest under a new version name), sign it with --key and push it, ready to roll out.

    With the trusted keys given, a key they do not hold is refused."""
    from mesh.fleet.release import bump
    from mesh.fleet.signing import SigningKey, load_trusted_keys

    if key_path is None:
        raise click.UsageError(f"give the signing key: --key KEY or ${ENV_SIGNING_KEY}")
    key = SigningKey.load(key_path)
    trusted = load_trusted_keys(list(trusted_keys)) if trusted_keys else None

    async def go() -> Any:
        async with _connect(servers, creds, tls_ca) as nc:
            return await bump(
                nc.jetstream(domain=domain), model, source, key, version=version, trusted=trusted
            )

    made = _run(go)
    new = made.manifest["version"]
    click.echo(
        f"pushed {model}@{new}, made from {model}@{source} ({len(made.onnx)} bytes, tier "
        f"{made.manifest.get('tier_hint') or '?'}, signed by {key.public})"
    )
    click.echo(f"roll it out: mesh rollout start {model} {new}", err=True)


@click.command("revoke")
@click.argument("model")
@click.argument("version")
@click.option(
    "--key", "key_path", type=click.Path(path_type=Path, exists=True, dir_okay=False),
    required=True, help="The fleet's signing key (mesh keys generate): nodes obey revocations "
    "signed with a key they trust.",
)  # fmt: skip
@click.option("--reason", default="", help="Why, for the record and the nodes' events.")
@registry_options
def models_revoke(
    model: str,
    version: str,
    key_path: Path,
    reason: str,
    servers: str,
    creds: Path | None,
    tls_ca: Path | None,
    domain: str,
) -> None:
    """Revoke VERSION of MODEL for good: nodes refuse it, nodes serving it swap to their
    assigned or previous version, and a rollout of it is refused (or rolled back if running).

    Refused (exit 2) when the version is not in the registry."""
    from mesh.fleet import registry
    from mesh.fleet.revocation import sign_revocation
    from mesh.fleet.signing import SigningKey

    revocation = sign_revocation(
        SigningKey.load(key_path), model, version, reason, time=time.time(),
        by=str(creds.stem) if creds else "",
    )  # fmt: skip

    async def go() -> None:
        async with _connect(servers, creds, tls_ca) as nc:
            js = nc.jetstream(domain=domain)
            if not await registry.has_version(js, model, version):
                raise NotFoundError(f"{model}@{version} is not in the registry: nothing to revoke")
            await registry.put_revocation(js, revocation)

    _run(go)
    click.echo(f"revoked {model}@{version}: {revocation.reason} (signed by {revocation.key})")
