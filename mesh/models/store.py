"""A model repository: a folder of models and versions, in the spirit of Triton's.

The layout is ``<repo>/<model>/<version>/model.onnx`` beside ``<repo>/<model>/<version>/
manifest.json``; versions are positive integers, and each version is for one tier (its
manifest's ``tier_hint``). A tier serves the newest version made for it of each model, so an
edge variant and a cloud variant of one model live side by side, and a model with only a cloud
version is served in the cloud only. ``mesh models import`` writes versions; ``mesh up --models``
and ``mesh node`` (through ``model_settings_for``) read them.

Plain file-system code: no NATS, no ONNX Runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mesh.errors import InvalidArgumentError
from mesh.models.manifest import load_manifest
from mesh.settings import ModelSettings
from mesh.topology.subjects import check_token

ARTIFACT = "model.onnx"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RepositoryEntry:
    """One version of one model, for one tier."""

    name: str
    version: str
    tier: str
    manifest_path: Path


class ModelRepository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def entries(self) -> list[RepositoryEntry]:
        """Every version in the repository, by model then version; malformed folders are
        errors that name the folder (a repository is served as a whole or not at all)."""
        if not self.root.is_dir():
            raise InvalidArgumentError(f"model repository {self.root} is not a folder")
        found: list[RepositoryEntry] = []
        for model_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            if model_dir.name.startswith("."):
                continue
            name = _model_name(model_dir)
            for version_dir in sorted(
                (p for p in model_dir.iterdir() if p.is_dir()), key=lambda p: _version(p)
            ):
                manifest_path = version_dir / MANIFEST
                if not manifest_path.is_file():
                    raise InvalidArgumentError(
                        f"{version_dir} has no {MANIFEST}: add versions with mesh models import"
                    )
                manifest = load_manifest(manifest_path)
                if manifest.name != name:
                    raise InvalidArgumentError(
                        f"{manifest_path} is for model {manifest.name!r}, not {name!r}"
                    )
                found.append(
                    RepositoryEntry(name, version_dir.name, manifest.tier_hint, manifest_path)
                )
        return found

    def tiers(self) -> set[str]:
        return {entry.tier for entry in self.entries()}

    def latest(self, name: str, tier: str) -> RepositoryEntry | None:
        """The newest version of ``name`` made for ``tier``."""
        versions = [e for e in self.entries() if e.name == name and e.tier == tier]
        return max(versions, key=lambda e: int(e.version)) if versions else None

    def served_on(self, tier: str) -> list[RepositoryEntry]:
        """What ``tier`` serves: the newest version of each model made for it."""
        newest: dict[str, RepositoryEntry] = {}
        for entry in self.entries():
            if entry.tier != tier:
                continue
            held = newest.get(entry.name)
            if held is None or int(entry.version) > int(held.version):
                newest[entry.name] = entry
        return [newest[name] for name in sorted(newest)]

    def next_version(self, name: str) -> int:
        folder = self.root / check_token(name, "model name")
        if not folder.is_dir():
            return 1
        versions = [_version(p) for p in folder.iterdir() if p.is_dir()]
        return max(versions, default=0) + 1

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / check_token(name, "model name") / str(version)


def model_settings_for(repo: ModelRepository, tier: str) -> list[ModelSettings]:
    """A node's model settings for ``tier``: each model's newest version for it."""
    return [
        ModelSettings(name=entry.name, manifest=entry.manifest_path)
        for entry in repo.served_on(tier)
    ]


def _model_name(folder: Path) -> str:
    try:
        return check_token(folder.name, "model name")
    except ValueError as exc:
        raise InvalidArgumentError(f"{folder}: {exc}") from None


def _version(folder: Path) -> int:
    if not folder.name.isdigit() or int(folder.name) < 1:
        raise InvalidArgumentError(
            f"{folder}: a version folder is named by a positive integer (1, 2, ...)"
        )
    return int(folder.name)


__all__ = ["ARTIFACT", "MANIFEST", "ModelRepository", "RepositoryEntry", "model_settings_for"]
