"""Settings that cannot work are errors where they are read, naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from mesh.settings import NodeSettings

SHA = "a" * 64


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(text.replace("{SHA}", SHA))
    return path


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("tier: edge\nnats: {servrs: [x]}\n", "nats.servrs"),
        ("tier: edge\nupstream: {tier: cloud, breker: {}}\n", "upstream.breker"),
        (
            "tier: edge\nupstream: {tier: cloud, breaker: {failure_threshold: 0}}\n",
            "failure_threshold",
        ),
        ("tier: edge\nupstream: {tier: cloud, breaker: {failure_rate: 1.5}}\n", "failure_rate"),
        (
            "tier: edge\nupstream:\n  tier: cloud\n"
            "  breaker: {open_seconds: 5, max_open_seconds: 1}\n",
            "max_open_seconds",
        ),
        ("tier: edge\nmax_inflight: 0\n", "max_inflight"),
        (
            "tier: edge\nmodels: [{name: m, path: m.onnx, sha256: {SHA}, max_rows: -1}]\n",
            "max_rows",
        ),
        (
            "tier: edge\nmodels:\n"
            "- {name: m, path: m.onnx, sha256: {SHA}, batching: {max_batch_size: 0}}\n",
            "max_batch_size",
        ),
        (
            "tier: edge\nmodels: [{name: m, path: m.onnx, sha256: {SHA}, thresold: 0.5}]\n",
            "thresold",
        ),
        ("tier: edge\nhttp_port: 70000\n", "http_port"),
        ("tier: edge\nupstream: {tier: cloud, timeout_ms: 0}\n", "timeout_ms"),
    ],
)
def test_settings_that_cannot_work_are_refused_naming_the_field(
    tmp_path: Path, text: str, field: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        NodeSettings.load(_write(tmp_path, text))
    assert field in str(refused.value)


def test_a_model_given_by_path_without_its_sha256_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="needs its sha256"):
        NodeSettings.load(_write(tmp_path, "tier: edge\nmodels: [{name: m, path: m.onnx}]\n"))


def test_a_file_that_is_not_yaml_or_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(yaml.YAMLError):
        NodeSettings.load(_write(tmp_path, "tier: [edge\n"))
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        NodeSettings.load(_write(tmp_path, "- a\n- b\n"))


def test_a_good_file_loads_paths_relative_to_it_and_variables_win(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(
        tmp_path,
        "tier: edge\nmax_inflight: 10\nmodels: [{name: digits, manifest: models/m.json}]\n",
    )
    monkeypatch.setenv("MESH_MAX_INFLIGHT", "20")
    settings = NodeSettings.load(path)
    assert settings.max_inflight == 20
    assert settings.models[0].manifest == tmp_path / "models" / "m.json"


def test_a_misspelt_top_level_variable_is_refused_with_the_setting_it_meant() -> None:
    from mesh.settings import IngressSettings, NodeSettings, unknown_variables

    environ = {
        "MESH_UPSTREM__TIMEOUT_MS": "500",
        "MESH_UPSTREAM__TIMEOUT_MS": "500",
        "MESH_NATS_URL": "nats://x",  # a command's variable, not a setting
        "MESH_INGRESS_TOKEN": "t",  # another process's settings
        "MESH_MAX_INFLIGT": "3",
        "PATH": "/bin",
    }
    found = unknown_variables(NodeSettings, environ)
    assert found == [
        "MESH_UPSTREM__TIMEOUT_MS names no setting of NodeSettings; did you mean MESH_UPSTREAM?",
        "MESH_MAX_INFLIGT names no setting of NodeSettings; did you mean MESH_MAX_INFLIGHT?",
    ]
    assert unknown_variables(IngressSettings, {"MESH_INGRESS_TOKN": "x"}) == [
        "MESH_INGRESS_TOKN names no setting of IngressSettings; did you mean MESH_INGRESS_TOKEN?"
    ]
