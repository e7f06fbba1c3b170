"""The node's cache of verified versions: ``<dir>/<model>/<version>/`` with the artifact, its
manifest and signature, and ``current.json`` naming the version of each model to serve after a
restart. Every read is verified again as if fetched."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from mesh.errors import InvalidArgumentError, NotFoundError
from mesh.fleet.registry import Artifact
from mesh.fleet.signing import verify
from mesh.models.manifest import ModelManifest
from mesh.settings import ModelSettings
from mesh.topology import subjects

CURRENT_FILE = "current.json"
#: ``model@version`` to why, for every revocation this node verified: a restart with no server
#: reachable does not serve a revoked version from the cache.
REVOKED_FILE = "revoked.json"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "signature.json"


class VersionCache:
    """Verified versions on disk: ``<dir>/<model>/<version>/`` and ``current.json``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def version_dir(self, model: str, version: str) -> Path:
        return self.root / subjects.check_token(model, "model name") / version

    def store(self, artifact: Artifact, manifest: ModelManifest) -> Path:
        """Write the three parts; returns the manifest's path. Blocking."""
        folder = self.version_dir(manifest.name, manifest.version)
        folder.mkdir(parents=True, exist_ok=True)
        onnx_path = (folder / manifest.artifact).resolve()
        if not onnx_path.is_relative_to(folder.resolve()) or onnx_path.name in (
            MANIFEST_FILE,
            SIGNATURE_FILE,
        ):
            raise InvalidArgumentError(
                f"manifest names artifact {manifest.artifact!r}, not a file name of its own"
            )
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        for path, data in (
            (onnx_path, artifact.onnx),
            (folder / SIGNATURE_FILE, artifact.signature_bytes),
            (folder / MANIFEST_FILE, artifact.manifest_bytes),
        ):
            _write_atomic(path, data)
        return folder / MANIFEST_FILE

    def current(self) -> dict[str, str]:
        return _read_names(self.root / CURRENT_FILE)

    def set_current(self, model: str, version: str) -> None:
        current = self.current()
        current[model] = version
        self._write_names(CURRENT_FILE, current)

    def revoked(self) -> dict[str, str]:
        return _read_names(self.root / REVOKED_FILE)

    def add_revoked(self, target: str, reason: str) -> None:
        revoked = self.revoked()
        if revoked.get(target) == reason:
            return
        revoked[target] = reason
        self._write_names(REVOKED_FILE, revoked)

    def _write_names(self, file: str, names: dict[str, str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.root / file, json.dumps(names, indent=1).encode())

    def load_verified(
        self, model: str, version: str, trusted: Mapping[str, Any]
    ) -> tuple[Artifact, ModelManifest, Path]:
        """A cached version, verified again as if fetched. Blocking."""
        folder = self.version_dir(model, version)
        try:
            manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
            signature_bytes = (folder / SIGNATURE_FILE).read_bytes()
            manifest = ModelManifest.model_validate_json(manifest_bytes)
            onnx = (folder / manifest.artifact).read_bytes()
        except (OSError, ValidationError) as exc:
            raise NotFoundError(f"cached {model}@{version} is incomplete: {exc}") from None
        artifact = Artifact(onnx, manifest_bytes, signature_bytes)
        verify(artifact.signature, artifact.manifest, onnx, dict(trusted))
        return artifact, manifest, folder / MANIFEST_FILE


def _read_names(path: Path) -> dict[str, str]:
    """A map of names the cache wrote (current versions, revocations); empty when it has none
    or the file is unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def settings_for(base: ModelSettings | None, name: str, manifest_path: Path) -> ModelSettings:
    """The settings of a fetched version: the node's settings of that model (batching, rows,
    threads), with the artifact, version and threshold taken from the new manifest."""
    if base is None:
        return ModelSettings(name=name, manifest=manifest_path)
    data = base.model_dump()
    data.update(path=None, manifest=manifest_path, sha256=None, version=None, threshold=None)
    return ModelSettings.model_validate(data)
