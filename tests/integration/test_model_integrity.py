"""A node loads only the artifact its manifest names, from the manifest's folder, hash checked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mesh.dev.models.demo import DemoArtifacts
from mesh.errors import InvalidArgumentError
from mesh.node.repository import load_model
from mesh.settings import ModelSettings


def _copy_manifest(demo: DemoArtifacts, tmp_path: Path, **changes: object) -> Path:
    manifest = json.loads(demo.edge.read_text())
    shutil.copy(demo.edge.parent / manifest["artifact"], tmp_path / manifest["artifact"])
    manifest.update(changes)
    path = tmp_path / "edge.manifest.json"
    path.write_text(json.dumps(manifest))
    return path


async def test_a_manifest_cannot_name_an_artifact_outside_its_folder(
    demo: DemoArtifacts, tmp_path: Path
) -> None:
    inner = tmp_path / "repo"
    inner.mkdir()
    outside = _copy_manifest(demo, tmp_path)
    manifest = json.loads(outside.read_text())
    manifest["artifact"] = "../" + manifest["artifact"]
    path = inner / "edge.manifest.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(InvalidArgumentError, match="outside its folder"):
        await load_model(ModelSettings(name="digits", manifest=path), "edge")


async def test_a_path_beside_a_manifest_cannot_swap_in_another_file(
    demo: DemoArtifacts, tmp_path: Path
) -> None:
    manifest = _copy_manifest(demo, tmp_path)
    other = tmp_path / "other.onnx"
    shutil.copy(demo.root / json.loads(demo.cloud.read_text())["artifact"], other)
    with pytest.raises(InvalidArgumentError, match="not the artifact"):
        await load_model(ModelSettings(name="digits", manifest=manifest, path=other), "edge")


async def test_an_artifact_changed_by_one_byte_is_refused(
    demo: DemoArtifacts, tmp_path: Path
) -> None:
    path = _copy_manifest(demo, tmp_path)
    artifact = tmp_path / json.loads(path.read_text())["artifact"]
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    with pytest.raises(InvalidArgumentError, match="does not match manifest"):
        await load_model(ModelSettings(name="digits", manifest=path), "edge")
