"""The model repository layout: versions per tier, the newest served, malformed folders named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mesh.errors import InvalidArgumentError
from mesh.models.manifest import HardwareProfile, ModelManifest, QualityTarget, save_manifest
from mesh.models.store import ModelRepository


def version(repo: Path, name: str, number: int, tier: str) -> None:
    folder = repo / name / str(number)
    folder.mkdir(parents=True)
    save_manifest(
        ModelManifest(
            name=name, version=str(number), tier_hint=tier, inputs=[], outputs=[], labels=[],
            preprocessing="", artifact="model.onnx", sha256="0" * 64,
            profile=HardwareProfile(latency_p99_ms=1, memory_mb=64),
            quality=QualityTarget(min_accuracy=0),
        ),
        folder / "manifest.json",
    )  # fmt: skip


def test_each_tier_serves_the_newest_version_made_for_it(tmp_path: Path) -> None:
    version(tmp_path, "iris", 1, "cloud")
    version(tmp_path, "iris", 2, "edge")
    version(tmp_path, "iris", 10, "edge")
    version(tmp_path, "big", 1, "cloud")
    repo = ModelRepository(tmp_path)
    assert [(e.name, e.version) for e in repo.served_on("edge")] == [("iris", "10")]
    assert [(e.name, e.version) for e in repo.served_on("cloud")] == [("big", "1"), ("iris", "1")]
    assert repo.tiers() == {"edge", "cloud"}
    assert repo.next_version("iris") == 11 and repo.next_version("new") == 1


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda r: (r / "iris" / "v1").mkdir(parents=True), "positive integer"),
        (lambda r: (r / "iris" / "1").mkdir(parents=True), "no manifest.json"),
        (lambda r: (r / "bad.name" / "1").mkdir(parents=True), "model name"),
    ],
)
def test_a_malformed_folder_is_named(tmp_path: Path, make: object, words: str) -> None:
    make(tmp_path)  # type: ignore[operator]
    with pytest.raises(InvalidArgumentError, match=words):
        ModelRepository(tmp_path).entries()
