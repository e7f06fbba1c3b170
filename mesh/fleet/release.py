"""Releasing versions: a manifest and its artifact signed as the registry keeps them, and a
model's next version made from one in the registry (the same artifact and manifest under a new
version name, signed with the caller's key and pushed: ``mesh models bump``; its bytes passed
their evidence gate when the version they come from was pushed)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from nats.js import JetStreamContext

from mesh.errors import InvalidArgumentError, NotFoundError
from mesh.fleet import registry
from mesh.fleet.signing import SigningKey, sign, verify
from mesh.models.bump import bumped, next_version
from mesh.models.manifest import load_manifest, sha256_of, verify_artifact


def signed_artifact(manifest: Path, key: SigningKey) -> registry.Artifact:
    """A manifest file and its artifact, signed with ``key``. Blocking."""
    parsed = load_manifest(manifest)
    onnx = verify_artifact(parsed, manifest)
    signature = sign(key, json.loads(manifest.read_text("utf-8")), sha256_of(onnx))
    return registry.Artifact(
        onnx=onnx.read_bytes(),
        manifest_bytes=manifest.read_bytes(),
        signature_bytes=signature.to_json(),
    )


async def bump(
    js: JetStreamContext,
    model: str,
    source: str,
    key: SigningKey,
    *,
    version: str | None = None,
    trusted: Mapping[str, Any] | None = None,
) -> registry.Artifact:
    """Push ``model@source`` again as ``version`` (by default the model's next one), signed by
    ``key``; returns what was pushed. Refused: a source not in the registry or whose bytes do
    not match its signature, a version that exists, a key the ``trusted`` ones do not hold."""
    artifact, new = await source_and_version(js, model, source, version)
    return await store_resigned(js, artifact, bumped(artifact.manifest, new), key, trusted)


async def source_and_version(
    js: JetStreamContext, model: str, source: str, version: str | None
) -> tuple[registry.Artifact, str]:
    """``model@source`` from the registry, its bytes checked against its signature, and the
    version a new one made from it is pushed as: ``version``, or the model's next. Refused: a
    source not in the registry, bytes that do not match, a version that exists (listed, or
    stored but too broken to list)."""
    if not await registry.has_version(js, model, source):
        raise NotFoundError(f"{model}@{source} is not in the registry (mesh models list)")
    artifact = await registry.fetch(js, model, source)
    verify(artifact.signature, artifact.manifest, artifact.onnx, None)
    existing = [v.version for v in await registry.list_versions(js) if v.model == model]
    new = version or next_version(source, existing)
    if new in existing or await registry.has_version(js, model, new):
        raise InvalidArgumentError(f"{model}@{new} is in the registry already")
    return artifact, new


async def store_resigned(
    js: JetStreamContext,
    artifact: registry.Artifact,
    manifest: dict[str, Any],
    key: SigningKey,
    trusted: Mapping[str, Any] | None,
) -> registry.Artifact:
    """``artifact``'s bytes under a new ``manifest`` signed by ``key``, checked against the
    ``trusted`` keys when given, stored in the registry; returns what was stored."""
    signature = sign(key, manifest, artifact.signature.sha256)
    made = registry.Artifact(
        onnx=artifact.onnx,
        manifest_bytes=json.dumps(manifest, indent=2).encode() + b"\n",
        signature_bytes=signature.to_json(),
    )
    if trusted is not None:
        verify(made.signature, made.manifest, made.onnx, dict(trusted))
    await registry.store(js, made)
    return made
